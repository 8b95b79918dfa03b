// Ping Listener's testing page: unlock with TESTING_PASSWORD, simulate every configured device by
// pinging /ping, and watch the server's view of each one in POST /testing/state.
//
// Usernames and every other string from the server reach the page only through textContent and
// setAttribute, never as HTML; the Content-Security-Policy forbids inline script besides.
"use strict";

const POLL_INTERVAL_MS = 1000;
// A max_sleep of 0 cannot be satisfied by any device; do not flood the server trying.
const MIN_PING_INTERVAL_MS = 200;
// Browsers run longer setInterval delays at once.
const MAX_TIMER_MS = 2 ** 31 - 1;
const MAX_LOG_LINES = 500;

let password = null;
let pollTimer = null;
let unreachable = false;
// username -> {settings, card, timer, state}
const users = new Map();
// email id -> {status, attempts}, as last logged
const emails = new Map();

const byId = (id) => document.getElementById(id);

document.addEventListener("DOMContentLoaded", () => {
  byId("unlock").addEventListener("submit", unlock);
});

async function unlock(event) {
  event.preventDefault();
  const attempt = byId("password").value;
  showUnlockError("");
  let answer;
  try {
    answer = await postJson("/testing/config", { password: attempt });
  } catch (error) {
    showUnlockError(`The server does not answer: ${error.message}`);
    return;
  }
  if (!answer.ok) {
    showUnlockError(await refusal(answer));
    byId("password").select();
    return;
  }
  const config = await answer.json();
  password = attempt;
  byId("password").value = "";
  start(config.users);
}

function postJson(path, body) {
  return fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
    cache: "no-store",
  });
}

async function refusal(answer) {
  const text = (await answer.text()).trim();
  if (answer.status === 401) {
    return "Wrong password: it is not the TESTING_PASSWORD this server was started with.";
  }
  if (answer.status === 429) {
    return `${text.charAt(0).toUpperCase()}${text.slice(1)}.`;
  }
  return `${answer.status}: ${text}`;
}

function showUnlockError(message) {
  const error = byId("unlock-error");
  error.textContent = message;
  error.hidden = !message;
}

function start(configuredUsers) {
  byId("unlock").hidden = true;
  byId("devices").hidden = false;
  byId("activity").hidden = false;
  for (const [name, settings] of Object.entries(configuredUsers)) {
    addUser(name, settings);
  }
  poll();
}

function addUser(name, settings) {
  const card = userCard(name, settings);
  users.set(name, { settings, card, timer: null, state: undefined });
  byId("users").append(card);
  startPinging(name);
}

// The server's settings can be reloaded (SIGHUP) while the page is open: follow the users it reports.
function followSettings(liveUsers) {
  for (const [name, user] of users) {
    if (!Object.hasOwn(liveUsers, name)) {
      clearInterval(user.timer);
      user.card.remove();
      users.delete(name);
      addLog("switch", null, `${name}: no longer in the server's settings`);
    }
  }
  for (const [name, live] of Object.entries(liveUsers)) {
    const settings = { monitor: live.monitor, max_sleep: live.max_sleep, email_frequency: live.email_frequency };
    const user = users.get(name);
    if (user === undefined) {
      addLog("switch", null, `${name}: added to the server's settings`);
      addUser(name, settings);
    } else if (JSON.stringify(settings) !== JSON.stringify(user.settings)) {
      user.settings = settings;
      showSettings(user.card, settings);
      addLog("switch", null, `${name}: its settings changed on the server`);
      if (user.timer !== null) {
        clearInterval(user.timer);
        startPinging(name);
      }
    }
  }
}

// Back to the password form, e.g. after the server restarted with another password.
function lock(message) {
  password = null;
  clearTimeout(pollTimer);
  for (const user of users.values()) {
    clearInterval(user.timer);
  }
  users.clear();
  emails.clear();
  byId("users").replaceChildren();
  byId("devices").hidden = true;
  byId("unlock").hidden = false;
  showUnlockError(message);
  addLog("problem", null, `locked: ${message}`);
}

function userCard(name, settings) {
  const card = byId("user-template").content.firstElementChild.cloneNode(true);
  card.querySelector(".name").textContent = name;
  card.querySelector(".state").textContent = "…";
  showSettings(card, settings);
  const toggle = card.querySelector("input");
  toggle.setAttribute("aria-label", `simulated pings from ${name}`);
  toggle.addEventListener("change", () => (toggle.checked ? startPinging(name) : stopPinging(name)));
  return card;
}

function showSettings(card, settings) {
  card.querySelector(".monitor").textContent = settings.monitor ? "yes" : "no (never emails)";
  card.querySelector(".max-sleep").textContent = seconds(settings.max_sleep);
  card.querySelector(".email-frequency").textContent = seconds(settings.email_frequency);
}

function startPinging(name) {
  const user = users.get(name);
  const interval = Math.min(Math.max((user.settings.max_sleep * 1000) / 2, MIN_PING_INTERVAL_MS), MAX_TIMER_MS);
  addLog("switch", null, `${name}: simulated pings on, every ${seconds(interval / 1000)}`);
  ping(name);
  user.timer = setInterval(() => ping(name), interval);
}

function stopPinging(name) {
  const user = users.get(name);
  clearInterval(user.timer);
  user.timer = null;
  addLog("switch", null, `${name}: simulated pings off, the device is silent now`);
}

async function ping(name) {
  let answer;
  try {
    answer = await fetch(`/ping?username=${encodeURIComponent(name)}`, { method: "POST", cache: "no-store" });
  } catch (error) {
    addLog("problem", null, `ping from ${name}: no answer (${error.message})`);
    return;
  }
  const text = (await answer.text()).trim();
  // A ping's answer is the server's local time of the ping.
  addLog(answer.ok ? "ping" : "problem", answer.ok ? text : null, `ping from ${name}: ${answer.status} ${text}`);
}

async function poll() {
  try {
    await pollOnce();
  } finally {
    // Whatever went wrong this time, keep watching until the page is locked again.
    if (password !== null) {
      pollTimer = setTimeout(poll, POLL_INTERVAL_MS);
    }
  }
}

async function pollOnce() {
  let answer;
  try {
    answer = await postJson("/testing/state", { password });
  } catch (error) {
    if (!unreachable) {
      addLog("problem", null, `the server does not answer: ${error.message}`);
    }
    unreachable = true;
    return;
  }
  if (unreachable) {
    unreachable = false;
    addLog("state-change", null, "the server answers again");
  }
  if (answer.ok) {
    showState(await answer.json());
    return;
  }
  const message = await refusal(answer);
  // A 503 for a storage problem passes; a wrong password, a refusal or disabled testing mode does not.
  // The server marks the last with a header, so that the page never depends on its wording.
  const disabled = answer.headers.get("Ping-Listener-Testing") === "disabled";
  if (answer.status === 401 || answer.status === 429 || disabled) {
    lock(message);
    return;
  }
  addLog("problem", null, `state: ${message}`);
}

function showState(state) {
  const clock = byId("server-time");
  clock.querySelector("span").textContent = state.now_local;
  clock.hidden = false;
  followSettings(state.users);
  for (const [name, live] of Object.entries(state.users)) {
    if (users.has(name)) {
      showUser(name, live, state.now_local);
    }
  }
  for (const email of state.emails) {
    showEmail(email, state.now_local);
  }
}

function showUser(name, live, nowLocal) {
  const user = users.get(name);
  const card = user.card;
  card.className = `user ${live.state}`;
  card.querySelector(".state").textContent = live.state;
  card.querySelector(".last-ping").textContent = live.last_ping_local ?? "none since monitoring began";
  card.querySelector(".late-at").textContent = live.late_at_local ?? "never (monitor is off)";
  card.querySelector(".last-alert").textContent = live.last_alert_local ?? "none";
  const previous = user.state;
  user.state = live.state;
  if (previous === live.state) {
    return;
  }
  if (previous === undefined) {
    addLog("state-change", nowLocal, `${name} is ${live.state}`);
    return;
  }
  const wasLate = previous === "late" || previous === "alerted";
  // A poll may fall between going late and being alerted; the late moment is known all the same.
  if (live.state === "alerted" && !wasLate) {
    logStateChange(name, previous, "late", live.late_at_local, user.settings);
    logStateChange(name, "late", "alerted", live.last_alert_local, user.settings);
  } else {
    const at = { pinging: live.last_ping_local, late: live.late_at_local, alerted: live.last_alert_local };
    logStateChange(name, previous, live.state, at[live.state] ?? nowLocal, user.settings);
  }
}

function logStateChange(name, from, to, at, settings) {
  const why = {
    late: ` (silent for more than its max_sleep of ${seconds(settings.max_sleep)})`,
    alerted: " (alert email queued)",
  };
  addLog("state-change", at, `${name}: ${from} → ${to}${why[to] ?? ""}`);
}

function showEmail(email, nowLocal) {
  const known = emails.get(email.id);
  const about = `alert email #${email.id} about ${email.username}`;
  const silence = email.last_ping_local ? `last ping ${timeOfDay(email.last_ping_local)}` : "no ping since monitoring began";
  if (!known) {
    addLog("email", email.queued_at_local, `${about} (${silence}) queued for ${email.recipient}`);
  }
  if (email.status === "sent" && known?.status !== "sent") {
    addLog("email", email.finished_at_local, `${about} (${silence}) sent to ${email.recipient}`);
  } else if (email.status === "failed" && known?.status !== "failed") {
    addLog("problem", email.finished_at_local, `${about} to ${email.recipient} refused for good (see the service's log)`);
  } else if (email.status === "queued" && email.attempts > (known?.attempts ?? 0)) {
    addLog(
      "problem",
      nowLocal,
      `${about} to ${email.recipient} not sent yet: attempt ${email.attempts} failed, retrying (see the service's log)`,
    );
  }
  emails.set(email.id, { status: email.status, attempts: email.attempts });
}

// Newest first. `serverTime` is a time the server formatted (its time zone), or null.
function addLog(kind, serverTime, text) {
  const item = document.createElement("li");
  item.className = kind;
  const stamp = document.createElement("time");
  stamp.textContent = serverTime ? timeOfDay(serverTime) : "";
  if (serverTime) {
    stamp.title = serverTime;
  }
  const message = document.createElement("span");
  message.textContent = text;
  item.append(stamp, message);
  const log = byId("log");
  log.prepend(item);
  while (log.childElementCount > MAX_LOG_LINES) {
    log.lastElementChild.remove();
  }
}

// "16:13:20" out of the server's "2026-09-21 16:13:20 CEST" or "26/09/21 16:13:20".
function timeOfDay(serverTime) {
  const match = serverTime.match(/\d\d:\d\d:\d\d/);
  return match ? match[0] : serverTime;
}

function seconds(value) {
  return `${Number(value.toFixed(3))} s`;
}
