// A public status page's daily bars: the page itself (written by the server) already says each device's
// state and uptimes; this draws the last 90 days of each from the page's JSON answer, each day coloured by
// its share of uptime, with that day's outages shown on hover (title) or on a tap (the line below the bars).
"use strict";

(function () {
  const DAY_CLASSES = [[1, "full"], [0.99, "most"], [0.9, "some"], [0, "low"]];

  function percent(value) {
    if (value === null) return "no data";
    return value === 1 ? "100%" : Math.min(value * 100, 99.99).toFixed(2) + "%";
  }

  function dayClass(value) {
    if (value === null) return "";
    for (const [least, name] of DAY_CLASSES) if (value >= least) return name;
    return "low";
  }

  function localTime(epoch) {
    return new Date(epoch * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function outagesOfDay(incidents, name, start, end) {
    return incidents
      .filter((incident) => incident.name === name && incident.began < end && (incident.ended === null || incident.ended > start))
      .map((incident) => {
        const from = incident.began < start ? "before" : localTime(incident.began);
        const until = incident.ended === null ? "ongoing" : incident.ended >= end ? "after" : localTime(incident.ended);
        return `down ${from}–${until}`;
      });
  }

  function draw(data) {
    for (const row of document.querySelectorAll(".device")) {
      const device = data.devices[Number(row.dataset.index)];
      const bars = row.querySelector(".bars");
      const line = row.querySelector(".day");
      if (!device || !bars) continue;
      bars.replaceChildren();
      device.daily.forEach((value, index) => {
        const start = data.days[index];
        const end = index + 1 < data.days.length ? data.days[index + 1] : data.updated;
        const date = new Date(start * 1000).toLocaleDateString([], { year: "numeric", month: "short", day: "numeric" });
        const outages = outagesOfDay(data.incidents, device.name, start, end);
        const text = `${date}: ${percent(value)} up` + (outages.length ? `; ${outages.join(", ")}` : "");
        const bar = document.createElement("button");
        bar.type = "button";
        bar.className = dayClass(value);
        bar.title = text;
        bar.setAttribute("aria-label", text);
        bar.addEventListener("click", () => {
          for (const other of bars.querySelectorAll(".chosen")) other.classList.remove("chosen");
          bar.classList.add("chosen");
          line.textContent = text;
          line.hidden = false;
        });
        bars.append(bar);
      });
    }
  }

  fetch(location.pathname.replace(/\/$/, "") + ".json", { headers: { Accept: "application/json" } })
    .then((answer) => (answer.ok ? answer.json() : null))
    .then((data) => data && draw(data))
    .catch(() => {});
})();
