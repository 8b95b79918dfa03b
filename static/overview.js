// Ping Listener's overview: unlock with OVERVIEW_PASSWORD (or TESTING_PASSWORD), then every configured
// device's state and last 24 hours from POST /overview/state, refreshed every few seconds, and one
// device's day from POST /overview/day. Read-only: it never pings and never sends anything else.
//
// States, deadlines and silences are the server's (rules.py); this script only draws them. Every
// string from the server reaches the page through textContent or setAttribute, never as HTML.
"use strict";

const REFRESH_MS = 3000;
const SVG = "http://www.w3.org/2000/svg";
// The timeline's and the day chart's coordinates (their viewBox).
const WIDTH = 960;
const TIMELINE_HEIGHT = 32;
const CHART_HEIGHT = 120;
// A silence narrower than this (in viewBox units) is still drawn this wide, so that it can be seen.
const MIN_SHADE = 2;
// What a slot's character (the bit length of its ping count) means.
const LEVEL_WORDS = ["no ping", "1 ping", "2–3 pings", "4–7 pings", "8–15 pings", "16–31 pings",
  "32–63 pings", "64–127 pings", "128–255 pings", "256 or more pings"];

// How each kind of alert (the alerts table's) is drawn: a failure's alert is a failure, not a silence's.
const MARK_OF_ALERT = { late: "alert", run_timeout: "alert", failed: "failure", back: "recovery" };

let password = null;
let refreshTimer = null;
let latest = null; // the last /overview/state answer
// The rows shown: the server answers only those that changed since `version`, the answer they came with.
let version = null;
let shown = new Map(); // username -> its row, as last answered
let order = []; // the usernames, problems first
let openDay = null; // {username, year, month, day} while the day view is open
let opener = null; // the button that opened the day view, focused again when it closes

document.addEventListener("DOMContentLoaded", () => {
  onUnlock("/overview/state", refusal, async (attempt, answer) => {
    password = attempt;
    byId("unlock").hidden = true;
    byId("devices").hidden = false;
    show(await answer.json());
    scheduleRefresh();
  });
  byId("day-close").addEventListener("click", closeDay);
  byId("day-date").addEventListener("input", chooseDate);
  byId("day-before").addEventListener("click", () => moveDay(-1));
  byId("day-after").addEventListener("click", () => moveDay(1));
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && openDay) {
      closeDay();
    }
  });
});

async function refusal(answer) {
  const text = (await answer.text()).trim();
  if (answer.status === 401) {
    return "Wrong password: it is neither the OVERVIEW_PASSWORD nor (when that is not set) the TESTING_PASSWORD this server was started with.";
  }
  return `${answer.status}: ${text}`;
}

// Back to the password form: the server restarted with another password, or without one.
function lock(message) {
  password = null;
  forgetRows();
  clearTimeout(refreshTimer);
  closeDay();
  byId("rows").replaceChildren();
  byId("devices").hidden = true;
  byId("connection").hidden = true;
  byId("unlock").hidden = false;
  showUnlockError(message);
}

function scheduleRefresh() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refresh, REFRESH_MS);
}

// Never gives up: a refused or failed refresh is said, the last data stays, and the next one is tried.
async function refresh() {
  try {
    const answer = await postJson("/overview/state", { password, since: version });
    if (answer.status === 401 || answer.headers.get("Ping-Listener-Overview") === "disabled") {
      lock(await refusal(answer));
      return;
    }
    if (!answer.ok) {
      problem(`The server answered ${answer.status}: ${(await answer.text()).trim()}`);
    } else {
      show(await answer.json());
      if (openDay) {
        await loadDay(false);
      }
    }
  } catch (error) {
    problem(`The server does not answer (${error.message})`);
  }
  if (password !== null) {
    scheduleRefresh();
  }
}

function problem(message) {
  const status = byId("connection");
  const since = latest ? ` Showing what it said at ${clock(latest.now_local)}.` : "";
  status.textContent = `${message}.${since} Retrying every ${REFRESH_MS / 1000} s.`;
  status.classList.add("problem");
  status.hidden = false;
}

function forgetRows() {
  version = null;
  shown = new Map();
  order = [];
}

function show(state) {
  const previous = latest;
  latest = state;
  const status = byId("connection");
  const loading = state.history_loading;
  const history = loading ? ` The last 24 hours of ${loading} device${loading === 1 ? " are" : "s are"} still loading: ${loading === 1 ? "its timeline follows" : "their timelines follow"}.` : "";
  status.textContent = `Updated ${clock(state.now_local)} (server time), every ${REFRESH_MS / 1000} s.${history}`;
  status.classList.remove("problem");
  status.hidden = false;
  byId("summary").textContent = state.summary.map((part) => `${part.users} ${part.state}`).join(" · ") || "No users configured";
  const windowMoved = previous === null || previous.window.start !== state.window.start;
  if (state.complete) {
    forgetRows();
    order = state.users.map((user) => user.username);
  } else {
    order = state.order || order;
    if (windowMoved) {
      moveSlots((state.window.start - previous.window.start) / state.window.slot_seconds);
    }
  }
  version = state.version;
  const changed = new Set(state.users.map((user) => user.username));
  for (const user of state.users) {
    shown.set(user.username, user);
  }
  const list = byId("rows");
  const existing = new Map([...list.children].map((row) => [row.dataset.username, row]));
  const rows = order.map((username) => {
    const user = shown.get(username);
    let row = existing.get(username);
    // A timeline is drawn again when its row changed, the window moved, or a silence goes on (it grows).
    const redraw = !row || changed.has(username) || windowMoved || user.silences.some((silence) => silence.end === null);
    row = row || newRow(username);
    fillRow(row, user, state, redraw);
    return row;
  });
  // Only move what moved, so that the keyboard focus stays where it is.
  rows.forEach((row, index) => {
    if (list.children[index] !== row) {
      list.insertBefore(row, list.children[index] || null);
    }
  });
  while (list.children.length > rows.length) {
    list.lastElementChild.remove();
  }
}

// The window moved by `slots` slots: each row the answer does not hold has the same pings, its first slots
// dropped and as many empty ones added (the server sends only the rows in which more changed).
function moveSlots(slots) {
  for (const user of shown.values()) {
    if (user.pings !== null) {
      user.pings = user.pings.slice(slots) + "0".repeat(slots);
    }
  }
}

function newRow(username) {
  const row = byId("row-template").content.firstElementChild.cloneNode(true);
  row.dataset.username = username;
  const name = row.querySelector(".name");
  name.textContent = username;
  name.addEventListener("click", () => openDayView(username, name));
  return row;
}

function fillRow(row, user, state, redraw) {
  const badge = row.querySelector(".badge");
  badge.textContent = user.state;
  badge.className = `badge state-${user.state}`;
  row.className = `row state-${user.state}`;
  row.querySelector(".parent").textContent = parentText(user.parent);
  row.querySelector(".name").setAttribute("aria-label", `${user.username}: ${user.state}; show its day`);
  const lastPing = row.querySelector(".last-ping");
  setTime(lastPing, user.last_ping, user.last_ping_local, user.last_ping === null ? "never pinged" : ago(state.now - user.last_ping));
  const [label, text] = deadlineWords(user, state.now);
  row.querySelector(".deadline-label").textContent = label;
  const deadline = row.querySelector(".deadline");
  if (user.snoozed_until !== null && user.snoozed_until > state.now) {
    setTime(deadline, user.snoozed_until, user.snoozed_until_local, text);
  } else {
    setTime(deadline, user.late_at, user.late_at_local, text);
  }
  if (redraw) {
    drawTimeline(row.querySelector(".timeline"), user, state);
  }
}

// What the row's second time is and says: what is due by when. A failed device stays failed until its next
// success whatever the clock says; its deadline is still the one for its next ping.
function deadlineWords(user, now) {
  if (user.snoozed_until !== null && user.snoozed_until > now) {
    // No alert before the snooze ends: that is the next moment that matters, and who snoozed it must see it.
    return ["alerts resume", `snoozed until ${user.snoozed_until_local}`];
  }
  const what = user.schedule === null ? "next ping due" : "next run's ping due";
  if (user.late_at === null) {
    return [what, "never: not watched"];
  }
  if (user.late_at > now) {
    return [what, `within ${clockDuration(user.late_at - now)}`];
  }
  return [what, `overdue by ${clockDuration(now - user.late_at)}`];
}

function setTime(element, epoch, local, text) {
  element.textContent = text;
  if (epoch === null) {
    element.removeAttribute("datetime");
    element.removeAttribute("title");
  } else {
    element.setAttribute("datetime", new Date(epoch * 1000).toISOString());
    element.setAttribute("title", local);
  }
}

function drawTimeline(svg, user, state) {
  const { start, end, slot_seconds: slotSeconds } = state.window;
  const x = (epoch) => ((Math.min(Math.max(epoch, start), end) - start) / (end - start)) * WIDTH;
  const parts = [];
  for (const silence of user.silences) {
    const from = silence.start;
    const to = silence.end === null ? state.now : silence.end;
    if (to < start) {
      continue;
    }
    const shade = svgElement("rect", { class: "silence", x: x(from), y: 0, width: Math.max(x(to) - x(from), MIN_SHADE), height: TIMELINE_HEIGHT });
    shade.append(title(silenceText(silence, state.now, user.last_ping === null)));
    parts.push(shade);
  }
  // null while the server is still loading this device's last 24 hours: no ticks yet.
  const slots = user.pings || "";
  const slotWidth = WIDTH / slots.length;
  [...slots].forEach((character, slot) => {
    const level = Number(character);
    if (level > 0) {
      const height = 6 + (level * (TIMELINE_HEIGHT - 8)) / 9;
      const tick = svgElement("rect", { class: "tick", x: slot * slotWidth + slotWidth * 0.2, y: TIMELINE_HEIGHT - height, width: slotWidth * 0.6, height });
      const slotStart = start + slot * slotSeconds;
      tick.append(title(`${LEVEL_WORDS[level]} in the ${slotSeconds / 60} minutes from ${ago(state.now - slotStart)}`));
      parts.push(tick);
    }
  });
  for (const [kind, events] of [["alert", user.alerts], ["recovery", user.recoveries], ["failure", user.failures]]) {
    for (const event of events.filter((event) => event.at >= start)) {
      const mark = svgElement("line", { class: kind, x1: x(event.at), x2: x(event.at), y1: 0, y2: TIMELINE_HEIGHT });
      mark.append(title(`${kind} at ${event.at_local}`));
      parts.push(mark);
    }
  }
  svg.replaceChildren(...parts);
  svg.dataset.start = start;
  svg.dataset.end = end;
  const silent = user.silences.length;
  const loading = user.pings === null ? " (still loading)" : "";
  svg.classList.toggle("loading", user.pings === null);
  const failures = user.failures.filter((event) => event.at >= start).length;
  svg.setAttribute("aria-label", `${user.username}'s last 24 hours${loading}: ${silent} silence${silent === 1 ? "" : "s"} past its deadline, ${user.alerts.length} alert${user.alerts.length === 1 ? "" : "s"}, ${failures} failure${failures === 1 ? "" : "s"}`);
}

function svgElement(name, attributes) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) {
    element.setAttribute(key, value);
  }
  return element;
}

function title(text) {
  const element = svgElement("title", {});
  element.textContent = text;
  return element;
}

// A silence past the deadline; `neverPinged`: the device has sent nothing since it is watched.
function silenceText(silence, now, neverPinged) {
  const from = clock(silence.start_local);
  if (silence.end === null) {
    const since = neverPinged ? `never pinged; watched since ${from}` : `silent since ${from}`;
    return `${since} (still silent, ${clockDuration(now - silence.start)} so far)`;
  }
  return `silent ${duration(silence.end - silence.start)}: ${from} → ${clock(silence.end_local)}`;
}

function openDayView(username, button) {
  opener = button;
  const [year, month, day] = latest.now_local.slice(0, 10).split("-").map(Number);
  openDay = { username, year, month, day };
  byId("day-date").value = latest.now_local.slice(0, 10);
  byId("day-date").setCustomValidity("");
  byId("day-title").textContent = username;
  byId("devices").hidden = true;
  byId("day").hidden = false;
  byId("day-title").focus();
  loadDay(true);
}

function closeDay() {
  if (!openDay) {
    return;
  }
  openDay = null;
  byId("day").hidden = true;
  byId("devices").hidden = password === null;
  if (opener && opener.isConnected) {
    opener.focus();
  }
}

// The date is written as every date on the page, YYYY-MM-DD: the day is loaded once it is a whole date.
function chooseDate() {
  const input = byId("day-date");
  const match = input.value.match(/^(\d{4})-(\d{2})-(\d{2})$/);
  input.setCustomValidity(match ? "" : "a date as YYYY-MM-DD");
  if (!openDay || !match) {
    return;
  }
  const [year, month, day] = match.slice(1).map(Number);
  Object.assign(openDay, { year, month, day });
  loadDay(true);
}

function moveDay(days) {
  const date = new Date(Date.UTC(openDay.year, openDay.month - 1, openDay.day + days));
  byId("day-date").value = date.toISOString().slice(0, 10);
  chooseDate();
}

async function loadDay(fresh) {
  const asked = { ...openDay };
  const summary = byId("day-summary");
  if (fresh) {
    summary.textContent = "Loading…";
  }
  let answer;
  try {
    answer = await postJson("/overview/day", { password, ...asked });
  } catch (error) {
    summary.textContent = `The server does not answer (${error.message}); retrying every ${REFRESH_MS / 1000} s.`;
    return;
  }
  if (!openDay || JSON.stringify(asked) !== JSON.stringify(openDay)) {
    return; // another day or device was chosen meanwhile
  }
  if (!answer.ok) {
    summary.textContent = `The server answered ${answer.status}: ${(await answer.text()).trim()}`;
    return;
  }
  showDay(await answer.json());
}

// How long a device may be silent, in words: its longest silence, or its schedule and grace.
function watchText(day) {
  if (day.schedule === null) {
    return `may be silent for ${duration(day.max_sleep)}`;
  }
  return `expected on schedule ${day.schedule} (${day.tz}), ${duration(day.grace)} of grace`;
}

function showDay(day) {
  const truncated = day.truncated ? " (too many to show: the day is shown up to the last of them)" : "";
  byId("day-summary").textContent = `${day.date_local}: ${day.pings} ping${day.pings === 1 ? "" : "s"}${truncated}; ${watchText(day)}.`;
  drawDayChart(day);
  const failures = day.failures.map(failureItem);
  byId("day-failures").replaceChildren(...(failures.length ? failures : [listItem("None.", "none")]));
  const silences = day.silences.map((silence) => listItem(silenceText(silence, day.now, false), "silence"));
  byId("day-silences").replaceChildren(...(silences.length ? silences : [listItem("None.", "none")]));
  const alerts = day.alerts.map((alert) => {
    const lastPing = alert.last_ping_local ? `last ping ${clock(alert.last_ping_local)}` : "no ping since monitoring began";
    const item = listItem(`${ALERT_WORDS[alert.kind] ?? "alert"} at ${clock(alert.at_local)} (${lastPing})`, alert.kind === "failed" ? "failure" : "alert");
    const emails = document.createElement("ul");
    for (const email of alert.emails) {
      const line = document.createElement("li");
      const badge = document.createElement("span");
      badge.className = `badge email-${email.status}`;
      badge.textContent = email.status;
      const when = email.finished_at_local ? ` at ${clock(email.finished_at_local)}` : "";
      line.append(badge, ` email to ${email.recipient}${when}, ${email.attempts} attempt${email.attempts === 1 ? "" : "s"}`);
      emails.append(line);
    }
    for (const delivery of alert.deliveries) {
      const line = document.createElement("li");
      const badge = document.createElement("span");
      badge.className = `badge email-${delivery.status}`;
      badge.textContent = delivery.status;
      const when = delivery.finished_at_local ? ` at ${clock(delivery.finished_at_local)}` : "";
      line.append(badge, ` ${delivery.channel}${when}, ${delivery.attempts} attempt${delivery.attempts === 1 ? "" : "s"}`);
      emails.append(line);
    }
    item.append(emails);
    return item;
  });
  byId("day-alerts").replaceChildren(...(alerts.length ? alerts : [listItem("None.", "none")]));
  byId("day-logs").setAttribute("href", day.logs_url);
}

// How many lines of a failure's output the day view shows at first; the rest is a click away.
const OUTPUT_LINES = 3;

// A failure: when, its exit code and run time, the first lines of its output, and the whole of it on demand.
function failureItem(failure) {
  const facts = [`failure at ${clock(failure.at_local)}`];
  facts.push(failure.exit_code === null ? "no exit code" : `exit code ${failure.exit_code}`);
  if (failure.duration !== null) {
    facts.push(`run time ${duration(failure.duration)}`);
  }
  const item = listItem(facts.join(" · "), "failure");
  if (failure.body === null) {
    item.append(" · no output");
    return item;
  }
  const lines = failure.body.replace(/\n$/, "").split("\n");
  const head = document.createElement("pre");
  head.className = "output";
  head.textContent = lines.slice(0, OUTPUT_LINES).join("\n");
  item.append(head);
  if (lines.length > OUTPUT_LINES) {
    const more = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = `The whole output (${lines.length} lines)`;
    const whole = document.createElement("pre");
    whole.className = "output";
    whole.textContent = failure.body;
    more.append(summary, whole);
    item.append(more);
  }
  return item;
}

function drawDayChart(day) {
  const svg = byId("day-chart");
  const x = (epoch) => ((Math.min(Math.max(epoch, day.start), day.end) - day.start) / (day.end - day.start)) * WIDTH;
  const parts = [];
  for (const silence of day.silences) {
    const to = silence.end === null ? Math.min(day.now, day.end) : silence.end;
    const shade = svgElement("rect", { class: "silence", x: x(silence.start), y: 0, width: Math.max(x(to) - x(silence.start), MIN_SHADE), height: CHART_HEIGHT });
    shade.append(title(silenceText(silence, day.now, false)));
    parts.push(shade);
  }
  const columnWidth = WIDTH / day.columns.length;
  day.columns.forEach((count, index) => {
    if (count > 0) {
      // As the timeline's ticks: by the bit length of the count, so that one ping is a short bar.
      const level = Math.min(Math.floor(Math.log2(count)) + 1, 9);
      const height = 6 + (level * (CHART_HEIGHT - 10)) / 9;
      const bar = svgElement("rect", { class: "tick", x: index * columnWidth, y: CHART_HEIGHT - height, width: Math.max(columnWidth * 0.8, 1), height });
      bar.append(title(`${count} ping${count === 1 ? "" : "s"} in the ${day.column_seconds / 60} minutes from ${sinceMidnight(index * day.column_seconds)}`));
      parts.push(bar);
    }
  });
  const marks = [
    ...day.alerts.map((alert) => [MARK_OF_ALERT[alert.kind] ?? "alert", alert.at, `${ALERT_WORDS[alert.kind] ?? "alert"} at ${alert.at_local}`]),
    ...day.failures.map((failure) => ["failure", failure.at, `failure at ${failure.at_local}${failure.exit_code === null ? "" : `, exit code ${failure.exit_code}`}`]),
  ];
  for (const [kind, at, text] of marks) {
    const mark = svgElement("line", { class: kind, x1: x(at), x2: x(at), y1: 0, y2: CHART_HEIGHT });
    mark.append(title(text));
    parts.push(mark);
  }
  svg.replaceChildren(...parts);
  svg.dataset.start = day.start;
  svg.dataset.end = day.end;
  svg.setAttribute("aria-label", `pings of ${day.username} on ${day.date_local}, in columns of ${day.column_seconds / 60} minutes`);
}

function listItem(text, kind) {
  const item = document.createElement("li");
  item.className = kind;
  item.textContent = text;
  return item;
}

// A time of day given in seconds since midnight, "14:05" (an hour off after a daylight saving change).
function sinceMidnight(seconds) {
  const minutes = Math.floor(seconds / 60);
  return `${String(Math.floor(minutes / 60)).padStart(2, "0")}:${String(minutes % 60).padStart(2, "0")}`;
}
