// The console's Overview: figures and charts from GET /ui/api/overview?hours=N, drawn with the
// vendored uPlot (static/vendor/). Refreshed every 30 s while the page is visible.
"use strict";

(() => {
  const C = window.Console;
  const PALETTE = ["#2f5bd3", "#18794e", "#a15c07", "#b42318", "#5b50b3", "#0e7490",
                   "#9d174d", "#4d7c0f", "#667085", "#c2410c"];
  const STATE_COLORS = { running: "#18794e", sleeping: "#5b50b3", failed: "#b42318",
                         creating: "#a15c07", starting: "#c2410c", stopping: "#9d174d",
                         deleting: "#667085" };
  const LEVEL_COLORS = { active: "#18794e", idle: "#a15c07", background: "#667085" };
  const charts = {};
  let last = null;
  let timer = null;

  const hours = (value) => (value === null || value === undefined ? "–" : Number(value).toFixed(3));
  const secs = (value) => (value === null || value === undefined ? "–" : `${Number(value).toFixed(2)} s`);

  function money(value, currency) {
    try {
      return new Intl.NumberFormat(undefined, { style: "currency", currency }).format(value);
    } catch (err) {
      return `${Number(value).toFixed(2)} ${currency}`;
    }
  }

  function facts(target, pairs) {
    const box = C.$(target);
    box.replaceChildren(...pairs.flatMap(([key, value]) => [C.el("dt", {}, key), C.el("dd", {}, value)]));
  }

  function chart(id, title, xs, series, colors, bars = false) {
    const box = C.$(`#${id}`);
    const names = Object.keys(series).sort();
    const width = Math.max(box.clientWidth || 600, 260);
    const data = [xs, ...names.map((n) => series[n])];
    const opts = {
      title: undefined,
      width,
      height: 220,
      scales: { x: { time: true } },
      axes: [{}, { label: title, size: 50 }],
      series: [{}, ...names.map((name, i) => ({
        label: name,
        stroke: colors[name] || PALETTE[i % PALETTE.length],
        fill: bars ? (colors[name] || PALETTE[i % PALETTE.length]) + "55" : undefined,
        width: 2,
        paths: bars && uPlot.paths && uPlot.paths.bars ? uPlot.paths.bars({ size: [0.8, 40] }) : undefined,
        points: { show: bars ? false : xs.length < 60 },
      }))],
    };
    if (charts[id]) charts[id].destroy();
    box.replaceChildren();
    if (!names.length) {
      box.append(C.el("p", { class: "muted" }, "Nothing in this window."));
      charts[id] = null;
      return;
    }
    charts[id] = new uPlot(opts, data, box);
  }

  function render(data) {
    last = data;
    const s = data.savings;
    C.$("#saved-hours").textContent = hours(s.saved_hours);
    C.$("#saved-money").textContent = money(s.saved_money, s.currency);
    C.$("#run-hours").textContent = hours(s.run_hours);
    C.$("#always-hours").textContent = hours(s.always_on_hours);
    C.$("#saved-sessions").textContent = String(s.sessions);
    C.$("#price").textContent = money(s.price_per_container_hour, s.currency);
    C.$("#ov-saved").dataset.savedHours = String(s.saved_hours);
    C.$("#ov-saved").dataset.end = data.window.end;

    const now = data.now;
    facts("#ov-now", [
      ...Object.entries(now.by_state).filter(([, n]) => n > 0).map(([k, n]) => [k, String(n)]),
      ...Object.entries(now.by_level).map(([k, n]) => [`level ${k}`, String(n)]),
      ["queue length", String(now.queue_length)],
    ]);
    const w = data.wake_latency;
    facts("#ov-wake", [["wakes", String(w.count)], ["p50", secs(w.p50)], ["p95", secs(w.p95)],
                       ["p99", secs(w.p99)]]);
    const adminCard = C.$("#ov-admin-card");
    adminCard.hidden = data.instances === null;
    if (data.instances !== null) {
      facts("#ov-admin", [["orphans removed", String(data.orphans_removed)],
                          ["instances", String(data.instances.length)]]);
      C.$("#ov-instances").replaceChildren(...data.instances.map((i) =>
        C.el("li", {}, `${i.id}${i.this ? " (this one)" : ""} · ${i.host} pid ${i.pid} · beat ${C.ago(i.heartbeat_at)}`)));
    }

    const xs = data.series.times.map((t) => Date.parse(t) / 1000);
    chart("chart-states", "sessions", xs, data.series.states, STATE_COLORS);
    chart("chart-levels", "running", xs, data.series.levels, LEVEL_COLORS);
    const hx = data.per_hour.hours.map((t) => Date.parse(t) / 1000);
    const hourly = {};
    for (const kind of ["sleep", "wake", "delete"]) {
      for (const [code, counts] of Object.entries(data.per_hour[kind] || {})) hourly[`${kind}: ${code}`] = counts;
    }
    chart("chart-hourly", "per hour", hx, hourly, {}, true);
    C.$("#ov-updated").textContent = `updated ${new Date().toLocaleTimeString()}` +
      (data.inputs.truncated ? " · timelines truncated" : "");
  }

  async function load() {
    const hoursWanted = C.$("#ov-hours").value;
    try {
      render(await C.api(`/ui/api/overview?hours=${encodeURIComponent(hoursWanted)}`));
    } catch (err) {
      if (err.status !== 401) C.toast(`overview: ${err.message}`, "error");
    }
  }

  function schedule() {
    clearInterval(timer);
    timer = null;
    if (document.visibilityState === "visible") timer = setInterval(load, 30000);
  }

  C.onReady(() => {
    if (!C.$("#ov-saved")) return;
    C.$("#ov-hours").addEventListener("change", load);
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") load();
      schedule();
    });
    let resizing = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizing);
      resizing = setTimeout(() => last && render(last), 200);
    });
    load();
    schedule();
  });
})();
