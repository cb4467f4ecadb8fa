// A session's page: what it is doing and why, its actions, connections and presence, the
// policy values in effect, its timeline (also once deleted), and a preview of its URL.
"use strict";

(() => {
  const { $, $$, el, api, ago, until, clock, actionButtons, stream } = Console;
  const sid = decodeURIComponent(location.pathname.split("/").pop());
  let session = null;

  function facts(target, pairs) {
    $(target).replaceChildren(...pairs.filter(([, v]) => v !== undefined).flatMap(([k, v]) =>
      [el("dt", {}, k), el("dd", {}, v === null || v === "" ? "—" : v)]));
  }

  // The policy's durations are in seconds (its counts and switches are not).
  const DURATION = /(after|before|grace|lifetime|interval|within|keepalive|busy|timeout)$/;
  function seconds(key, value) {
    if (typeof value !== "number" || !DURATION.test(key)) return value;
    return value >= 60 ? `${value} s (${Console.seconds(value)})` : `${value} s`;
  }

  async function loadSession() {
    try {
      session = await api(`/v1/sessions/${encodeURIComponent(sid)}`);
    } catch (err) {
      if (err.status !== 404) throw err;
      session = null;
    }
    $("#sid").textContent = sid;
    if (session === null) {
      $("#title").textContent = `Session ${sid}`;
      $("#s-state").textContent = "deleted";
      $("#s-state").className = "state st-deleted";
      $("#why").textContent = "This session is deleted (or not yours); its timeline is kept for a while.";
      $("#actions").replaceChildren();
      facts("#facts", [["id", sid]]);
      return;
    }
    const s = session;
    $("#title").textContent = `${s.user_id}${s.name ? ` · ${s.name}` : ""}`;
    $("#s-state").textContent = s.state;
    $("#s-state").className = `state st-${s.state}`;
    const n = s.next_action || {};
    $("#why").textContent = s.why || [n.action !== "none" ? `${n.action} ${until(n.at)}` : "", n.reason].filter(Boolean).join(": ");
    $("#actions").replaceChildren(actionButtons(s, () => setTimeout(refresh, 300)));
    const a = s.last_activity || {};
    facts("#facts", [
      ["id", s.id], ["tenant", s.tenant], ["template", s.template], ["policy", s.policy],
      ["level", s.level], ["state since", `${clock(s.state_since)} (${ago(s.state_since)})`],
      ["created", clock(s.created_at)],
      ["last activity", a.at ? `${a.kind || "activity"} via ${a.source || "?"}, ${ago(a.at)}` : "none yet"],
      ["next action", n.action && n.action !== "none" ? `${n.action} ${until(n.at)} (${clock(n.at)})` : "none"],
      ["keep alive until", s.keepalive_until ? clock(s.keepalive_until) : null],
      ["busy until", s.busy_until ? clock(s.busy_until) : null],
      ["url", s.url ? el("a", { href: s.url, target: "_blank", rel: "noopener noreferrer" }, s.url) : null],
      // dormant.* labels are dormant's own bookkeeping (the id, user, tenant shown above).
      ["labels", Object.entries(s.labels || {}).filter(([k]) => !k.startsWith("dormant."))
        .map(([k, v]) => `${k}=${v}`).join(", ")],
      ["error", s.error],
      ["queue", s.queue_position ? `#${s.queue_position} behind ${s.queue_limit}` : undefined],
    ]);
    $("#preview-open").disabled = !s.url;
    $("#preview-note").textContent = !s.url ? "no URL while it is not running" :
      s.state === "sleeping" ? "opening it wakes the session" : "";
  }

  async function loadPresence() {
    if (session === null) { facts("#presence", [["connections", 0]]); return; }
    try {
      const p = await api(`/ui/api/sessions/${encodeURIComponent(sid)}/presence`);
      facts("#presence", [
        ["connections", String(p.connections)],
        ["quality", p.quality],
        ["by instance", Object.entries(p.connections_by_instance || {}).map(([k, v]) => `${k}: ${v}`).join(", ")],
      ]);
      $("#participants").replaceChildren(...p.participants.map((who) =>
        el("li", {}, el("strong", {}, who.name || who.user_id || "someone"),
          ` · ${who.quality}${who.rtt_ms !== null ? `, ${who.rtt_ms} ms` : ""}`)));
    } catch (err) {
      facts("#presence", [["connections", session.connections]]);
    }
  }

  async function loadPolicy() {
    try {
      const p = await api(`/v1/sessions/${encodeURIComponent(sid)}/policy`);
      facts("#policy", [["policy", p.policy], ...Object.entries(p.values || {}).map(([k, v]) =>
        [k, typeof v === "object" && v !== null ? JSON.stringify(v) : String(seconds(k, v))])]);
    } catch (err) {
      facts("#policy", [["policy", session ? session.policy : null],
        ["values", err.status === 404 ? "not available" : err.message]]);
    }
  }

  async function loadTimeline() {
    let data;
    try {
      data = await api(`/v1/sessions/${encodeURIComponent(sid)}/events`);
    } catch (err) {
      if (err.status === 404 && session === null) {
        $("#why").textContent = "No such session (or it belongs to another tenant).";
      }
      $("#timeline tbody").replaceChildren(el("tr", {}, el("td", { colspan: 4 }, err.message)));
      return;
    }
    const items = [...data.items].reverse(); // newest first
    $("#timeline tbody").replaceChildren(...items.map((e) => {
      const change = e.from_state || e.to_state ? `${e.from_state || "·"} → ${e.to_state || "·"}`
        : e.action || e.kind || "";
      const extra = [e.code !== change ? e.code : null, e.kind && e.kind !== change ? e.kind : null,
        e.source ? `via ${e.source}` : null].filter(Boolean).join(" · ");
      return el("tr", { dataset: { type: e.type } },
        el("td", { dataset: { label: "When" }, title: e.at }, clock(e.at)),
        el("td", { dataset: { label: "What" } }, el("span", { class: `ev ev-${e.type}` }, e.type)),
        el("td", { dataset: { label: "Change" } }, change, extra ? el("span", { class: "muted" }, ` ${extra}`) : null),
        el("td", { dataset: { label: "Reason" }, class: "reason" }, e.reason || ""));
    }));
  }

  let pending = null;
  function refresh() {
    if (pending) return;
    pending = setTimeout(async () => {
      pending = null;
      await loadSession().catch((err) => Console.toast(err.message, "error"));
      await Promise.all([loadPresence(), loadTimeline()]);
    }, 50);
  }

  function preview() {
    const frame = $("#preview");
    for (const button of $$(".devices button")) {
      button.addEventListener("click", () => {
        for (const b of $$(".devices button")) b.setAttribute("aria-pressed", String(b === button));
        frame.style.width = button.dataset.width;
      });
    }
    $("#preview-open").addEventListener("click", async () => {
      if (!session || !session.url) return;
      let url = session.url;
      try {
        // A one-time link lets the iframe in through the session proxy (it sets its cookie).
        url = (await api(`/v1/sessions/${encodeURIComponent(sid)}/links`, { method: "POST", body: {} })).url;
      } catch (err) {
        if (err.status !== 503) { Console.toast(err.message, "error"); return; }
      }
      frame.hidden = false;
      frame.src = url;
    });
  }

  Console.onReady(async () => {
    preview();
    await loadSession().catch((err) => Console.toast(err.message, "error"));
    await Promise.all([loadPresence(), loadPolicy(), loadTimeline()]);
    stream(`session=${encodeURIComponent(sid)}`, (update) => { if (update) refresh(); });
    setInterval(loadPresence, 30000);
  });
})();
