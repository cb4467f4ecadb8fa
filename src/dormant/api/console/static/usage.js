// Live CPU and memory of a running session, on its page: fills <section id="usage"
// data-session="ID"> from GET /ui/api/sessions/ID/usage every 3 s while the page is visible,
// with a small sparkline of the last readings (drawn on a canvas: no library needed).
"use strict";

(() => {
  const C = window.Console;
  const EVERY = 3000;
  const KEEP = 40;
  const MIB = 1024 * 1024;
  const cpu = [];
  const mem = [];
  let timer = null;
  let busy = false;

  function bytes(n) {
    if (n === null || n === undefined) return "–";
    if (n >= 1024 * MIB) return `${(n / 1024 / MIB).toFixed(2)} GiB`;
    return `${(n / MIB).toFixed(1)} MiB`;
  }

  function spark(canvas, values, color, top) {
    const ctx = canvas.getContext("2d");
    const ratio = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || 240;
    const h = canvas.clientHeight || 40;
    canvas.width = w * ratio;
    canvas.height = h * ratio;
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, w, h);
    if (values.length < 2) return;
    const max = Math.max(top || 0, ...values) || 1;
    ctx.beginPath();
    values.forEach((v, i) => {
      const x = (i / (values.length - 1)) * w;
      const y = h - 2 - (v / max) * (h - 4);
      if (i === 0) ctx.moveTo(x, y);
      else ctx.lineTo(x, y);
    });
    ctx.strokeStyle = color;
    ctx.lineWidth = 1.5;
    ctx.stroke();
  }

  function build(section) {
    const none = section.querySelector("#usage-none");
    if (none) none.remove();
    section.append(
      C.el("dl", { class: "facts" },
        C.el("dt", {}, "CPU"), C.el("dd", {}, C.el("span", { id: "usage-cpu" }, "…")),
        C.el("dt", {}, "Memory"), C.el("dd", {}, C.el("span", { id: "usage-mem" }, "…"),
          C.el("span", { id: "usage-limit", class: "muted" })),
        C.el("dt", {}, "Read"), C.el("dd", { id: "usage-at", class: "muted" }, "–")),
      C.el("canvas", { id: "usage-cpu-spark", class: "spark", "aria-label": "CPU, last readings" }),
      C.el("canvas", { id: "usage-mem-spark", class: "spark", "aria-label": "Memory, last readings" }),
      C.el("p", { id: "usage-note", class: "muted" }));
    // Sized here (CSSOM, allowed by the page's CSP): the session page loads no stylesheet of ours.
    for (const canvas of section.querySelectorAll("canvas.spark")) {
      Object.assign(canvas.style, { display: "block", width: "100%", maxWidth: "320px", height: "40px" });
    }
  }

  async function read(section) {
    if (busy) return;
    busy = true;
    const sid = section.dataset.session;
    try {
      const u = await C.api(`/ui/api/sessions/${encodeURIComponent(sid)}/usage`, { quiet: true });
      cpu.push(u.cpu_percent);
      mem.push(u.memory_bytes);
      if (cpu.length > KEEP) cpu.shift();
      if (mem.length > KEEP) mem.shift();
      C.$("#usage-cpu").textContent = `${Number(u.cpu_percent).toFixed(1)} %`;
      C.$("#usage-mem").textContent = bytes(u.memory_bytes);
      C.$("#usage-limit").textContent = u.memory_limit_bytes ? ` of ${bytes(u.memory_limit_bytes)}` : " (no limit)";
      C.$("#usage-at").textContent = new Date(u.at).toLocaleTimeString();
      C.$("#usage-note").textContent = "";
      section.dataset.cpu = String(u.cpu_percent);
      section.dataset.memory = String(u.memory_bytes);
      section.dataset.readings = String(Number(section.dataset.readings || 0) + 1);
      spark(C.$("#usage-cpu-spark"), cpu, "#2f5bd3", 5);
      spark(C.$("#usage-mem-spark"), mem, "#18794e", 0);
    } catch (err) {
      C.$("#usage-cpu").textContent = "–";
      C.$("#usage-mem").textContent = "–";
      C.$("#usage-note").textContent = err.status === 409 ? "Not running: no live usage." : err.message;
    } finally {
      busy = false;
    }
  }

  function schedule(section) {
    clearInterval(timer);
    timer = null;
    if (document.visibilityState !== "visible") return;
    read(section);
    timer = setInterval(() => read(section), EVERY);
  }

  C.onReady(() => {
    const section = document.getElementById("usage");
    if (!section || !section.dataset.session) return;
    build(section);
    document.addEventListener("visibilitychange", () => schedule(section));
    schedule(section);
  });
})();
