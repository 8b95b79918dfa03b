// Ping Listener's testing page: unlock with TESTING_PASSWORD, simulate a configured device by pinging
// /ping while its switch is on, watch the server's view of each one in POST /testing/state, and send a
// test email through POST /testing/test-email. Every switch starts off: its pings are real pings.
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
// What each kind of email is called in the log.
const EMAIL_KINDS = { late: "alert", failed: "failure", run_timeout: "run timeout", back: "recovery" };

let password = null;
let pollTimer = null;
let unreachable = false;
// The server's clock minus this browser's, in ms, as of the last state: dates log lines the server did not.
let serverOffsetMs = 0;
// username -> {settings, card, timer, state, onSchedule, pingedFor}: a scheduled device's switch pings at
// each expected time (onSchedule), once for each (pingedFor), instead of on a timer.
const users = new Map();
// "channel #id" (an email's or a webhook delivery's) -> {status, attempts}, as last logged
const deliveries = new Map();

document.addEventListener("DOMContentLoaded", () => {
  onUnlock("/testing/config", refusal, async (attempt, answer) => {
    const config = await answer.json();
    password = attempt;
    byId("recipient").textContent = config.recipient ?? "none (settings.json has no recipient)";
    start(config.users);
  });
  byId("send-test-email").addEventListener("click", sendTestEmail);
});

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

function start(configuredUsers) {
  byId("unlock").hidden = true;
  byId("devices").hidden = false;
  byId("email").hidden = false;
  byId("activity").hidden = false;
  // No device is pinged until a person turns its switch on: on a real instance, simulated pings would
  // write into real history and hide a real outage.
  for (const [name, settings] of Object.entries(configuredUsers)) {
    addUser(name, settings);
  }
  poll();
}

function addUser(name, settings) {
  const card = userCard(name, settings);
  users.set(name, { settings, card, timer: null, state: undefined, onSchedule: false, pingedFor: null });
  byId("users").append(card);
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
    // In the order of /testing/config's, so that an unchanged user compares equal.
    const settings = {
      monitor: live.monitor,
      max_sleep: live.max_sleep,
      schedule: live.schedule,
      tz: live.tz,
      grace: live.grace,
      email_frequency: live.email_frequency,
    };
    const user = users.get(name);
    if (user === undefined) {
      addLog("switch", null, `${name}: added to the server's settings`);
      addUser(name, settings);
    } else if (JSON.stringify(settings) !== JSON.stringify(user.settings)) {
      user.settings = settings;
      showSettings(user.card, settings);
      addLog("switch", null, `${name}: its settings changed on the server`);
      if (user.timer !== null || user.onSchedule) {
        clearInterval(user.timer);
        user.timer = null;
        user.onSchedule = false;
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
  deliveries.clear();
  byId("users").replaceChildren();
  byId("summary").hidden = true;
  byId("devices").hidden = true;
  byId("email").hidden = true;
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
  for (const button of card.querySelectorAll(".signals button")) {
    button.setAttribute("aria-label", `send a ${button.dataset.status} signal from ${name}`);
    button.addEventListener("click", () => sendSignal(name, button.dataset.status));
  }
  return card;
}

function showSettings(card, settings) {
  card.querySelector(".monitor").textContent = settings.monitor ? "yes" : "no (never emails)";
  const scheduled = settings.schedule !== null;
  card.querySelector(".watch").textContent = scheduled ? "schedule" : "max_sleep";
  card.querySelector(".max-sleep").textContent = scheduled
    ? `${settings.schedule} in ${settings.tz}, grace ${duration(settings.grace)}`
    : duration(settings.max_sleep);
  card.querySelector(".email-frequency").textContent = duration(settings.email_frequency);
}

function startPinging(name) {
  const user = users.get(name);
  if (user.settings.schedule !== null) {
    addLog(
      "switch",
      null,
      `${name}: simulated pings on, one at each expected time of its schedule: real pings, recorded in` +
        ` ${name}'s history; while on, they hide a real outage of ${name}`,
    );
    user.onSchedule = true;
    ping(name);
    return;
  }
  const interval = Math.min(Math.max((user.settings.max_sleep * 1000) / 2, MIN_PING_INTERVAL_MS), MAX_TIMER_MS);
  addLog(
    "switch",
    null,
    `${name}: simulated pings on, every ${duration(interval / 1000)}: real pings, recorded in ${name}'s history;` +
      ` while on, they hide a real outage of ${name}`,
  );
  ping(name);
  user.timer = setInterval(() => ping(name), interval);
}

function stopPinging(name) {
  const user = users.get(name);
  clearInterval(user.timer);
  user.timer = null;
  user.onSchedule = false;
  addLog("switch", null, `${name}: simulated pings off, the device is silent now`);
}

function ping(name) {
  return sendSignal(name, null);
}

// One signal from `name` through the query form (a name may contain "/"): a ping if `status` is null.
async function sendSignal(name, status) {
  const what = status === null ? "ping" : `${status} signal`;
  const query = `username=${encodeURIComponent(name)}${status === null ? "" : `&status=${status}`}`;
  let answer;
  try {
    answer = await fetch(`/ping?${query}`, { method: "POST", cache: "no-store" });
  } catch (error) {
    addLog("problem", null, `${what} from ${name}: no answer (${error.message})`);
    return;
  }
  const text = (await answer.text()).trim();
  // A signal's answer is the server's local time of the signal.
  addLog(answer.ok ? "ping" : "problem", answer.ok ? { local: text } : null, `${what} from ${name}: ${answer.status} ${text}`);
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
  serverOffsetMs = state.now * 1000 - Date.now();
  const now = { epoch: state.now, local: state.now_local };
  const clock = byId("server-time");
  clock.querySelector("span").textContent = state.now_local;
  clock.hidden = false;
  followSettings(state.users);
  for (const [name, live] of Object.entries(state.users)) {
    if (users.has(name)) {
      showUser(name, live, now);
    }
  }
  for (const delivery of [...state.emails, ...state.webhooks]) {
    showDelivery(delivery, now);
  }
  showSummary(state);
}

// One line on top: how many devices are in each state, which are pinged from here, and the emails' fate.
function showSummary(state) {
  const states = Object.values(state.users).map((live) => live.state);
  const counts = (values) =>
    [...new Set(values)].map((value) => `${values.filter((other) => other === value).length} ${value}`).join(", ");
  const pinged = [...users].filter(([, user]) => user.timer !== null).map(([name]) => name);
  const emailStates = state.emails.map((email) => email.status);
  const webhookStates = state.webhooks.map((delivery) => delivery.status);
  const devices = `${states.length} device${states.length === 1 ? "" : "s"}${states.length ? `: ${counts(states)}` : ""}`;
  const simulated = `simulated pings: ${pinged.length ? pinged.join(", ") : "none"}`;
  const sent =
    `alert emails: ${emailStates.length ? counts(emailStates) : "none yet"}` +
    (webhookStates.length ? ` · webhooks: ${counts(webhookStates)}` : "");
  const summary = byId("summary");
  summary.textContent = `${devices} · ${simulated} · ${sent}`;
  summary.hidden = false;
}

function showUser(name, live, now) {
  const user = users.get(name);
  const card = user.card;
  card.className = `user state-${live.state}`;
  const badge = card.querySelector(".state");
  badge.textContent = live.state;
  badge.className = `state badge state-${live.state}`;
  card.querySelector(".parent").textContent = parentText(live.depends_on);
  card.querySelector(".last-ping").textContent = live.last_ping_local ?? "never pinged";
  card.querySelector(".expected-at").textContent = live.expected_at_local ?? "never (monitor is off)";
  card.querySelector(".late-at").textContent = live.late_at_local ?? "never (monitor is off)";
  if (user.onSchedule && live.expected_at !== null && live.expected_at <= now.epoch && user.pingedFor !== live.expected_at) {
    user.pingedFor = live.expected_at;
    ping(name);
  }
  card.querySelector(".last-alert").textContent = live.last_alert_local ?? "none";
  card.querySelector(".next-alert").textContent = nextAlert(live);
  card.querySelector(".run-started").textContent = live.run_started_local ?? "no run open";
  card.querySelector(".last-duration").textContent = live.last_duration === null ? "no run yet" : duration(live.last_duration);
  const previous = user.state;
  user.state = live.state;
  if (previous === live.state) {
    return;
  }
  if (previous === undefined) {
    addLog("state-change", now, `${name} is ${live.state}${heldBack(live)}`);
    return;
  }
  const wasLate = previous === "late" || previous === "alerted" || previous === "suppressed";
  const time = (name) => (live[name] === null ? null : { epoch: live[name], local: live[`${name}_local`] });
  // A poll may fall between going late and being alerted; the late moment is known all the same.
  if (live.state === "alerted" && !wasLate) {
    logStateChange(name, previous, live, "late", time("late_at"));
    logStateChange(name, "late", live, "alerted", time("last_alert"));
  } else {
    const at = {
      pinging: time("last_ping"),
      late: time("late_at"),
      alerted: time("last_alert"),
      failed: time("failed_at"),
      running: time("run_started"),
      snoozed: now,
      suppressed: now,
    };
    logStateChange(name, previous, live, live.state, at[live.state] ?? now);
  }
}

// What the card says of the next alert: none while snoozed or suppressed, held back by email_frequency or
// by its parent's deadline until a time, or due at once.
function nextAlert(live) {
  if (live.state === "snoozed") {
    return `none while snoozed (until ${live.snoozed_until_local})`;
  }
  if (live.state === "suppressed") {
    return `none while ${live.depends_on} is down (suppressed)`;
  }
  if (live.held_back_by === "parent") {
    return `alert not before ${live.held_back_until_local} (waits for ${live.depends_on}'s deadline)`;
  }
  if (live.held_back_until_local) {
    const what = live.state === "alerted" ? "reminder" : "alert";
    return `${what} not before ${live.held_back_until_local} (email_frequency)`;
  }
  return live.state === "late" ? "at the server's next check" : "none due";
}

function heldBack(live) {
  if (live.state !== "late" || !live.held_back_until_local) {
    return "";
  }
  if (live.held_back_by === "parent") {
    return `; next alert not before ${timeOfDay(live.held_back_until_local)} (waits for ${live.depends_on}'s deadline)`;
  }
  return `; next alert not before ${timeOfDay(live.held_back_until_local)} (email_frequency holds it back)`;
}

function logStateChange(name, from, live, to, at) {
  const user = users.get(name);
  const silence = user.settings.schedule === null
    ? `silent for more than its max_sleep of ${duration(user.settings.max_sleep)}`
    : `no ping by its expected time ${live.expected_at_local} plus its grace of ${duration(user.settings.grace)}`;
  const overrun = live.run_started !== null
    ? ` (its run outlasted its max_runtime, or ${silence})`
    : ` (${silence})`;
  const why = {
    late: `${overrun}${heldBack(live)}`,
    alerted: " (alert email queued)",
    failed: " (failure reported)",
    running: " (run started)",
    snoozed: live.snoozed_until_local ? ` (until ${timeOfDay(live.snoozed_until_local)}: no alert meanwhile)` : "",
    suppressed: ` (${live.depends_on} is down: its alert is recorded, not sent)`,
  };
  addLog("state-change", at, `${name}: ${from} → ${to}${why[to] ?? ""}`);
}

async function sendTestEmail() {
  const button = byId("send-test-email");
  const result = byId("test-email-result");
  button.disabled = true;
  result.hidden = false;
  result.textContent = "Sending…";
  let message;
  try {
    const answer = await postJson("/testing/test-email", { password });
    if (answer.ok) {
      const outcome = await answer.json();
      message = outcome.sent
        ? `Test email to ${outcome.recipient} accepted by the SMTP server.`
        : `Test email to ${outcome.recipient} not sent: ${outcome.result}. The service's log has the details.`;
    } else {
      message = `Test email not sent: ${await refusal(answer)}`;
    }
  } catch (error) {
    message = `Test email not sent: the server does not answer (${error.message}).`;
  } finally {
    button.disabled = false;
  }
  result.textContent = message;
  addLog("email", null, message);
}

// An email (channel "email", to its recipient) or a webhook delivery (channel "webhook:NAME") and its fate.
function showDelivery(delivery, now) {
  const key = `${delivery.channel} #${delivery.id}`;
  const known = deliveries.get(key);
  const noun = delivery.channel === "email" ? "email" : "webhook";
  const to = delivery.recipient ?? delivery.channel;
  const about = `${EMAIL_KINDS[delivery.kind] ?? "alert"} ${noun} #${delivery.id} about ${delivery.username}`;
  const silence = delivery.last_ping_local
    ? `last ping ${timeOfDay(delivery.last_ping_local)}`
    : "no ping since monitoring began";
  const queued = { epoch: delivery.queued_at, local: delivery.queued_at_local };
  const finished = { epoch: delivery.finished_at, local: delivery.finished_at_local };
  if (!known) {
    addLog("email", queued, `${about} (${silence}) queued for ${to}`);
  }
  // A digest carried several emails to one recipient in one: said on each line it carried.
  const digest = delivery.digest_id ? ` in digest #${delivery.digest_id} “${delivery.digest_subject}”` : "";
  if (delivery.status === "sent" && known?.status !== "sent") {
    addLog("email", finished, `${about} (${silence}) sent to ${to}${digest}`);
  } else if (delivery.status === "failed" && known?.status !== "failed") {
    addLog("problem", finished, `${about} to ${to} refused for good (see the service's log)`);
  } else if (delivery.status === "queued" && delivery.attempts > (known?.attempts ?? 0)) {
    addLog(
      "problem",
      now,
      `${about} to ${to} not sent yet: attempt ${delivery.attempts} failed, retrying (see the service's log)`,
    );
  }
  deliveries.set(key, { status: delivery.status, attempts: delivery.attempts });
}

// Newest first, in the order of the server's clock. `at` is when it happened: {epoch, local} as the server
// gave them (either may be missing), or null for now. Lines without an epoch are placed at the server's
// time estimated from the last state; lines without a local time show none.
function addLog(kind, at, text) {
  const epoch = at?.epoch ?? (Date.now() + serverOffsetMs) / 1000;
  const item = document.createElement("li");
  item.className = kind;
  item.dataset.epoch = String(epoch);
  const stamp = document.createElement("time");
  stamp.textContent = at?.local ? timeOfDay(at.local) : "";
  if (at?.local) {
    stamp.title = at.local;
  }
  const message = document.createElement("span");
  message.textContent = text;
  item.append(stamp, message);
  const log = byId("log");
  // Above every line from the same moment or before: of two lines at one time, the later logged is on top.
  const older = [...log.children].find((line) => Number(line.dataset.epoch) <= epoch);
  log.insertBefore(item, older ?? null);
  while (log.childElementCount > MAX_LOG_LINES) {
    log.lastElementChild.remove();
  }
}
