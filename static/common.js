// What the testing page and the overview share: one way to unlock with a password, to ask the server, and to
// write times, durations and signals for people, so that both pages say the same thing the same way.
// Loaded before each page's own script, which uses these names.
"use strict";

// What each kind of signal is called on the pages (logs_page.py's KIND_WORDS has the same words).
const KIND_WORDS = { success: "success", start: "start", fail: "failure", log: "log" };
// What each kind of alert is called (the alerts table's kinds, rules.py's SILENCE, FAILURE, RUN_TIMEOUT, BACK).
const ALERT_WORDS = { late: "silence alert", failed: "failure alert", run_timeout: "overrun alert", back: "recovery" };

const byId = (id) => document.getElementById(id);

function postJson(path, body) {
  return fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
    cache: "no-store",
  });
}

// The form #unlock posts its #password to `path`; a refusal is said in #unlock-error in the words of
// `refusal(answer)`, and a success calls `unlocked(password, answer)` with the field emptied.
function onUnlock(path, refusal, unlocked) {
  byId("unlock").addEventListener("submit", async (event) => {
    event.preventDefault();
    const attempt = byId("password").value;
    showUnlockError("");
    let answer;
    try {
      answer = await postJson(path, { password: attempt });
    } catch (error) {
      showUnlockError(`The server does not answer: ${error.message}`);
      return;
    }
    if (!answer.ok) {
      showUnlockError(await refusal(answer));
      byId("password").select();
      return;
    }
    byId("password").value = "";
    await unlocked(attempt, answer);
  });
}

function showUnlockError(message) {
  const error = byId("unlock-error");
  error.textContent = message;
  error.hidden = !message;
}

// "16:13:20" out of the server's "2026-09-21 16:13:20 CEST" or "26/09/21 16:13:20".
function timeOfDay(serverTime) {
  const match = serverTime.match(/\d\d:\d\d:\d\d/);
  return match ? match[0] : serverTime;
}

// "2026-09-21 16:13:20 CEST" -> "16:13:20 CEST"; times on the pages are the server's local times.
function clock(local) {
  return local.slice(11);
}

function ago(seconds) {
  return seconds < 1 ? "just now" : `${clockDuration(seconds)} ago`;
}

// A duration between two readings of the clock, to the second: no fraction of one ticking by.
function clockDuration(seconds) {
  return duration(Math.max(1, Math.round(seconds)));
}

// One way to write a duration on every page (localtime.short_duration writes the same): "0.031 s", "42 s",
// "1 min 35 s", "25 min", "1 h", "2 h 5 min", "3 days".
function duration(seconds) {
  if (seconds < 60) {
    return `${Number(seconds.toFixed(seconds < 10 ? 3 : 0))} s`;
  }
  const minutes = Math.floor(seconds / 60);
  const rest = Math.round(seconds - minutes * 60);
  if (minutes < 10 && rest > 0 && rest < 60) {
    return `${minutes} min ${rest} s`;
  }
  if (minutes < 60) {
    return `${minutes} min`;
  }
  const hours = Math.floor(minutes / 60);
  if (hours < 48) {
    return minutes % 60 ? `${hours} h ${minutes % 60} min` : `${hours} h`;
  }
  return `${Math.floor(hours / 24)} days`;
}

// What a device depends on, for its card or row: "" if nothing.
function parentText(parent) {
  return parent ? `depends on ${parent}` : "";
}
