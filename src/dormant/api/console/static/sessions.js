// The sessions table: a page asked of the server (filter, search, sort and paging happen
// there), kept live by the server's stream: rows in view are updated in place, and a change
// the page cannot place by itself (a new session, one gone, a filtered view) re-reads the page.
"use strict";

(() => {
  const { $, $$, el, api, ago, until, actionButtons, stream } = Console;
  const view = { q: "", state: "", level: "", template: "", tenant: "", sort: "created",
                 order: "desc", page: 1, per_page: 50 };
  let shown = new Map(); // id -> row element
  let reread = null;
  let loading = null;

  function fromLocation() {
    const params = new URLSearchParams(location.search);
    for (const key of Object.keys(view)) {
      if (params.has(key)) view[key] = key === "page" || key === "per_page"
        ? Number(params.get(key)) || view[key] : params.get(key);
    }
  }

  function query() {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(view)) if (value !== "") params.set(key, value);
    return params;
  }

  function fill(select, values) {
    const current = select.value;
    const first = select.options[0];
    select.replaceChildren(first, ...values.map((v) => el("option", { value: v }, v)));
    select.value = values.includes(current) ? current : "";
  }

  function activity(s) {
    const a = s.last_activity || {};
    if (!a.at) return el("span", { class: "muted" }, "none yet");
    return el("span", {}, el("span", { class: "kind" }, a.kind || "activity"),
      a.source ? el("span", { class: "muted" }, ` via ${a.source}`) : null,
      el("br"), el("span", { class: "age", dataset: { at: a.at } }, ago(a.at)));
  }

  function nextAction(s) {
    const n = s.next_action || {};
    const parts = [];
    if (n.action && n.action !== "none") {
      parts.push(el("span", { class: "kind" }, n.action),
        n.at ? el("span", { class: "age", dataset: { until: n.at } }, ` ${until(n.at)}`) : null,
        el("br"));
    }
    parts.push(el("span", { class: "why" }, s.why || n.reason || ""));
    return el("span", {}, parts);
  }

  function row(s) {
    const name = s.name ? el("span", { class: "muted" }, ` · ${s.name}`) : null;
    const cells = [
      ["User", el("a", { href: `/ui/sessions/${encodeURIComponent(s.id)}`, class: "user" },
        s.user_id), name, el("br"), el("span", { class: "muted id" }, s.id)],
      ["Tenant", s.tenant],
      ["Template", s.template],
      ["State", el("span", { class: `state st-${s.state}` }, s.state)],
      ["Level", el("span", { class: `level lv-${s.level}` }, s.level)],
      ["Conns", `${s.connections}${s.connection_quality ? ` (${s.connection_quality})` : ""}`],
      ["Last activity", activity(s)],
      ["Next action", nextAction(s)],
      ["URL", s.url ? el("a", { href: s.url, target: "_blank", rel: "noopener noreferrer",
        class: "url" }, s.url) : el("span", { class: "muted" }, "—")],
      ["Actions", actionButtons(s, () => scheduleReread(300))],
    ];
    return el("tr", { dataset: { id: s.id, state: s.state } },
      cells.map(([label, ...content]) => el("td", { dataset: { label } }, el("div", {}, content))));
  }

  function render(data) {
    fill($("#f-state"), data.facets.states);
    fill($("#f-level"), data.facets.levels);
    fill($("#f-template"), data.facets.templates);
    fill($("#f-tenant"), data.facets.tenants);
    for (const id of ["state", "level", "template", "tenant"]) $(`#f-${id}`).value = view[id];
    $("#f-tenant").hidden = !Console.me().admin;
    const body = $("#sessions tbody");
    shown = new Map();
    body.replaceChildren(...data.items.map((s) => {
      const tr = row(s);
      shown.set(s.id, tr);
      return tr;
    }));
    $("#empty").hidden = data.items.length > 0;
    $("#total").textContent = `${data.total} session${data.total === 1 ? "" : "s"}`;
    $("#pageinfo").textContent = `page ${data.page} of ${data.pages}`;
    $("#prev").disabled = data.page <= 1;
    $("#next").disabled = data.page >= data.pages;
    view.page = data.page;
    for (const th of $$("#sessions th[data-sort]")) {
      const on = th.dataset.sort === view.sort;
      th.setAttribute("aria-sort", on ? (view.order === "asc" ? "ascending" : "descending") : "none");
    }
    document.body.dataset.rendered = String(performance.now());
  }

  async function load() {
    const params = query();
    history.replaceState(null, "", `/ui?${params}`);
    const asked = (loading = api(`/ui/api/sessions?${params}`));
    try {
      const data = await asked;
      if (asked === loading) render(data);
    } catch (err) {
      if (err.status !== 401) Console.toast(`could not load sessions: ${err.message}`, "error");
    }
  }

  function scheduleReread(delay = 100) {
    if (reread) return;
    reread = setTimeout(() => { reread = null; load(); }, delay);
  }

  // What the stream says: rows in view in place; anything else re-reads the page (once per
  // burst), since only the server knows where a new or changed row belongs.
  function changed(update) {
    if (update === null) { scheduleReread(0); return; }
    const filtered = view.q || view.state || view.level || view.template || view.tenant;
    let placeable = !filtered && view.sort !== "state" && view.sort !== "level" &&
      view.sort !== "activity" && view.sort !== "next" && view.sort !== "connections";
    for (const s of update.changed) {
      const tr = shown.get(s.id);
      if (!tr) { placeable = false; continue; }
      const fresh = row(s);
      tr.replaceWith(fresh);
      shown.set(s.id, fresh);
    }
    if (update.removed.length) placeable = false;
    if (!placeable) scheduleReread();
  }

  function wire() {
    let typing = null;
    $("#q").addEventListener("input", () => {
      clearTimeout(typing);
      typing = setTimeout(() => { view.q = $("#q").value.trim(); view.page = 1; load(); }, 200);
    });
    $("#filters").addEventListener("submit", (e) => e.preventDefault());
    for (const id of ["state", "level", "template", "tenant"]) {
      $(`#f-${id}`).addEventListener("change", (e) => { view[id] = e.target.value; view.page = 1; load(); });
    }
    for (const th of $$("#sessions th[data-sort]")) {
      th.tabIndex = 0;
      const sort = () => {
        if (view.sort === th.dataset.sort) view.order = view.order === "asc" ? "desc" : "asc";
        else { view.sort = th.dataset.sort; view.order = "asc"; }
        view.page = 1;
        load();
      };
      th.addEventListener("click", sort);
      th.addEventListener("keydown", (e) => { if (e.key === "Enter") sort(); });
    }
    $("#prev").addEventListener("click", () => { view.page -= 1; load(); });
    $("#next").addEventListener("click", () => { view.page += 1; load(); });
    $("#per-page").addEventListener("change", (e) => { view.per_page = Number(e.target.value); view.page = 1; load(); });
    // Ages move with the clock, not with the server: refreshed here every 10 s.
    setInterval(() => {
      for (const node of $$("#sessions [data-at]")) node.textContent = ago(node.dataset.at);
      for (const node of $$("#sessions [data-until]")) node.textContent = ` ${until(node.dataset.until)}`;
    }, 10000);
  }

  Console.onReady(() => {
    fromLocation();
    $("#q").value = view.q;
    $("#per-page").value = String(view.per_page);
    wire();
    load();
    stream("", changed);
  });
})();
