// dormant's console: what every page shares. Sign-in, the API with the cookie and the CSRF
// header, the confirm dialog, and small DOM helpers that only ever write text (never markup),
// so that user ids, names and labels can hold anything without running in the page.
"use strict";

const Console = (() => {
  let me = null;
  const starters = [];

  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

  // el("td", {class: "x", dataset: {id}}, "text", child...): children are text or nodes.
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(path, { method = "GET", body, quiet = false } = {}) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method !== "GET" && me && me.csrf) headers["X-CSRF-Token"] = me.csrf;
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        credentials: "same-origin",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      throw new ApiError(0, "network", "dormant did not answer: " + err.message);
    }
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null;
    }
    if (!response.ok) {
      const error = (data && data.error) || {};
      const failure = new ApiError(
        response.status,
        error.code || "error",
        error.message || `${response.status} ${response.statusText}`
      );
      if (response.status === 401 && !quiet) showSignIn(failure.message);
      throw failure;
    }
    return data;
  }

  function toast(text, kind = "info") {
    const box = $("#toast");
    box.textContent = text;
    box.className = `show ${kind}`;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => (box.className = ""), 5000);
  }

  // A confirmation in the page's own dialog (window.confirm would block, and says nothing).
  function confirmAction(text, extra = null, okLabel = "Confirm") {
    const dialog = $("#confirm");
    $("#confirm-text").textContent = text;
    $("#confirm-extra").replaceChildren(...(extra ? [extra] : []));
    $("#confirm-ok").textContent = okLabel;
    dialog.returnValue = "";
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
      dialog.showModal();
    });
  }

  // --- time -------------------------------------------------------------------------------
  function seconds(total) {
    const s = Math.abs(Math.round(total));
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m${s % 60 ? ` ${s % 60}s` : ""}`;
    if (s < 86400) return `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60)}m`;
    return `${Math.floor(s / 86400)}d${Math.floor((s % 86400) / 3600)}h`;
  }
  function ago(iso) {
    if (!iso) return "—";
    const diff = (Date.now() - Date.parse(iso)) / 1000;
    return diff >= 0 ? `${seconds(diff)} ago` : `in ${seconds(diff)}`;
  }
  function until(iso) {
    if (!iso) return "";
    const diff = (Date.parse(iso) - Date.now()) / 1000;
    return diff >= 0 ? `in ${seconds(diff)}` : `${seconds(diff)} overdue`;
  }
  function clock(iso) {
    return iso ? new Date(iso).toLocaleString() : "—";
  }

  // --- actions ----------------------------------------------------------------------------
  const KEEP = [
    ["15 minutes", 900],
    ["1 hour", 3600],
    ["4 hours", 14400],
    ["24 hours", 86400],
  ];

  // Sleep, wake, delete or keep alive for…: confirmed, then sent to the REST API, which
  // records the acting key in the session's timeline.
  async function act(session, action) {
    const who = `${session.user_id} (${session.id})`;
    let body;
    let path = `/v1/sessions/${encodeURIComponent(session.id)}/${action}`;
    let method = "POST";
    if (action === "keepalive") {
      const select = el("select", { id: "keep-for", "aria-label": "Keep alive for" },
        KEEP.map(([label, secs]) => el("option", { value: secs }, label)));
      if (!(await confirmAction(`Keep ${who} alive for…`, select, "Keep alive"))) return null;
      const secs = Number(select.value);
      body = { until: new Date(Date.now() + secs * 1000).toISOString() };
    } else {
      const words = {
        sleep: ["Put %s to sleep? Its container stops; its URL wakes it again.", "Sleep"],
        wake: ["Wake %s now?", "Wake"],
        delete: ["Delete %s? Its container and data are removed.", "Delete"],
      }[action];
      if (!(await confirmAction(words[0].replace("%s", who), null, words[1]))) return null;
      if (action === "delete") {
        path = `/v1/sessions/${encodeURIComponent(session.id)}`;
        method = "DELETE";
      }
    }
    try {
      const answer = await api(path, { method, body });
      toast(`${action} requested for ${session.user_id}`, "ok");
      return answer;
    } catch (err) {
      toast(`${action} refused: ${err.message}`, "error");
      return null;
    }
  }

  function actionButtons(session, after) {
    const live = !["deleting", "deleted"].includes(session.state);
    const buttons = [];
    const add = (action, label, enabled, cls = "secondary") =>
      buttons.push(el("button", {
        type: "button", class: `${cls} act-${action}`, disabled: !enabled,
        onclick: async () => { const done = await act(session, action); if (after) after(done); },
      }, label));
    add("sleep", "Sleep", ["running", "starting", "creating"].includes(session.state));
    add("wake", "Wake", ["sleeping", "failed"].includes(session.state));
    add("keepalive", "Keep alive…", live && session.state !== "failed");
    add("delete", "Delete", live, "danger");
    return el("div", { class: "act" }, buttons);
  }

  // --- live stream --------------------------------------------------------------------------
  // Server-sent events: the browser reconnects by itself; the badge says whether we are live.
  function stream(query, onChange) {
    const badge = $("#live");
    const source = new EventSource(`/ui/api/stream${query ? `?${query}` : ""}`);
    let connected = false;
    source.addEventListener("hello", () => {
      if (badge) { badge.textContent = "live"; badge.className = "live on"; }
      if (connected) onChange(null); // reconnected: what happened meanwhile is unknown
      connected = true;
    });
    source.addEventListener("sessions", (event) => onChange(JSON.parse(event.data)));
    source.onerror = () => {
      if (badge) { badge.textContent = "reconnecting…"; badge.className = "live off"; }
    };
    return source;
  }

  // --- sign-in ------------------------------------------------------------------------------
  function showSignIn(message) {
    me = null;
    $("#main").hidden = true;
    $("#signout").hidden = true;
    $("#who").textContent = "";
    $("#signin").hidden = false;
    $("#signin-error").textContent = message && !/missing X-API-Key/.test(message) ? message : "";
    $("#signin-key").focus();
  }

  function signedIn(info) {
    me = info;
    $("#signin").hidden = true;
    $("#main").hidden = false;
    $("#signout").hidden = false;
    $("#who").textContent = `key ${info.key_id} · ${info.admin ? "admin" : `tenant ${info.tenant}`}`;
    for (const start of starters.splice(0)) start(info);
  }

  async function boot() {
    $("#signin-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const input = $("#signin-key");
      $("#signin-error").textContent = "";
      try {
        const info = await api("/ui/api/signin", {
          method: "POST", body: { key: input.value.trim() }, quiet: true,
        });
        input.value = "";
        signedIn(info);
      } catch (err) {
        $("#signin-error").textContent = err.message;
      }
    });
    $("#signout").addEventListener("click", async () => {
      try { await api("/ui/api/signout", { method: "POST", quiet: true }); } catch (err) { /* gone */ }
      location.assign("/ui");
    });
    try {
      signedIn(await api("/ui/api/me", { quiet: true }));
    } catch (err) {
      showSignIn(err.status === 401 ? err.message : `dormant did not answer: ${err.message}`);
    }
  }

  // A page's code runs once signed in: onReady(fn) with the signed-in key's details.
  function onReady(fn) {
    if (me) fn(me);
    else starters.push(fn);
  }

  document.addEventListener("DOMContentLoaded", boot);
  return { $, $$, el, api, toast, confirmAction, act, actionButtons, stream, ago, until, clock,
           seconds, onReady, me: () => me };
})();
window.Console = Console;
