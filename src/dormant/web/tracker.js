/*!
 * dormant.js: tells dormant what the user of a session is doing, and shows what dormant decides.
 * Built on the official socket.io-client browser bundle (served together as /static/dormant.js).
 * MIT License.
 *
 *   const d = Dormant.connect({url: "https://dormant.example", token: () => fetchToken()});
 *   d.on("session", (s) => render(s.state, s.level));
 *   d.on("sleep-warning", (w) => banner(`sleeping at ${w.at}: ${w.reason}`));
 *   d.on("presence", (p) => people(p.participants, p.occupancy));
 *   d.on("event", (e) => console.log(e.type, e.data));
 *
 * Tracks clicks (elements with data-dormant-activity="build" report that kind), key presses
 * (throttled; never which key), page visibility, window focus and in-page navigation. Answers
 * the server's heartbeats. Reconnects with exponential backoff; a token given as a function is
 * asked again on every (re)connect, so short-lived tokens keep working.
 */
(function (root) {
  "use strict";

  var VERSION = "1";
  var MEANINGFUL = ["user-interaction", "file-change", "build", "chat", "command", "request", "api"];
  var PRESENCE = ["navigation", "focus", "visibility"];
  // Refusals that retrying cannot fix (without a new token from the page's backend).
  var FINAL = ["unauthorized", "invalid_token", "session_not_found", "token_in_query", "key_revoked"];
  var EVENTS = ["session", "sleep-warning", "presence", "event", "error", "connect", "disconnect", "status"];

  function now() {
    return Date.now();
  }

  function Tracker(options) {
    options = options || {};
    if (!root.io) {
      throw new Error("dormant.js: socket.io-client is missing (load /static/dormant.js whole)");
    }
    if (!options.token) {
      throw new Error("dormant.js: connect({url, token}) needs a token (or a function giving one)");
    }
    var self = this;
    var track = options.track || {};
    this.options = options;
    this.session = null;
    this.presence = null;
    this.status = "connecting";
    this.lastError = null;
    this.sent = 0;
    this._handlers = {};
    this._cleanup = [];
    this._lastSent = {};
    this._retries = 0;
    this._retryTimer = null;
    this._closed = false;
    this._backoff = {
      base: options.reconnectionDelay || 1000,
      max: options.reconnectionDelayMax || 30000,
      jitter: options.randomizationFactor === undefined ? 0.5 : options.randomizationFactor,
    };
    EVENTS.forEach(function (name) {
      var key = "on" + name.replace(/(^|-)([a-z])/g, function (_, __, c) { return c.toUpperCase(); });
      if (typeof options[key] === "function") self.on(name, options[key]);
    });

    this.socket = root.io(options.url || root.location.origin, {
      path: options.path || "/socket.io",
      auth: function (cb) {
        self._token().then(
          function (token) { cb({ token: token }); },
          function (err) {
            self._fire("error", { code: "token_unavailable", message: String(err) });
            cb({ token: "" });
          }
        );
      },
      reconnection: true,
      reconnectionDelay: this._backoff.base,
      reconnectionDelayMax: this._backoff.max,
      randomizationFactor: this._backoff.jitter,
      transports: options.transports || ["polling", "websocket"],
    });
    var socket = this.socket;

    socket.on("connect", function () {
      self._retries = 0;
      self.lastError = null;
      self._setStatus("connected");
      self._fire("connect", { id: socket.id });
    });
    socket.on("connect_error", function (err) {
      var code = (err && err.data && err.data.code) || "connect_failed";
      self.lastError = { code: code, message: err && err.message };
      self._fire("error", self.lastError);
      if (socket.active) {
        self._setStatus("reconnecting"); // a transport problem: socket.io retries by itself
      } else if (FINAL.indexOf(code) >= 0 && typeof options.token !== "function") {
        self._setStatus("refused");
      } else if (code === "session_not_found") {
        self._setStatus("refused");
      } else {
        self._retry(); // capacity, an expired token we can renew, the server restarting
      }
    });
    socket.on("disconnect", function (reason) {
      self._fire("disconnect", { reason: reason });
      if (self._closed) return;
      if (reason === "io server disconnect") {
        // The server closed us: session deleted (final) or a missed heartbeat (retry).
        if (self.lastError && self.lastError.code === "session_deleted") {
          self._setStatus("closed");
        } else {
          self._retry();
        }
      } else {
        self._setStatus("reconnecting");
      }
    });
    socket.on("ping", function (msg) {
      if (msg && typeof msg.ts === "number") socket.emit("pong", { ts: msg.ts });
    });
    socket.on("session", function (s) {
      self.session = s;
      self._fire("session", s);
    });
    socket.on("sleep-warning", function (w) { self._fire("sleep-warning", w); });
    socket.on("presence", function (p) {
      self.presence = p;
      self._fire("presence", p);
    });
    socket.on("event", function (e) { self._fire("event", e); });
    socket.on("error", function (e) {
      self.lastError = e;
      self._fire("error", e);
    });

    var doc = root.document;
    if (doc && track.clicks !== false) {
      this._listen(doc, "click", function (e) {
        var el = e.target && e.target.closest ? e.target.closest("[data-dormant-activity]") : null;
        var kind = (el && el.getAttribute("data-dormant-activity")) || "user-interaction";
        self._throttled(kind, options.clickThrottleMs || 250, { input: "click" });
      }, true);
    }
    if (doc && track.keys !== false) {
      this._listen(doc, "keydown", function () {
        self._throttled("user-interaction", options.keyThrottleMs || 1000, { input: "key" });
      }, true);
    }
    if (doc && track.visibility !== false) {
      this._listen(doc, "visibilitychange", function () {
        self.activity("visibility", { visible: !doc.hidden });
      });
    }
    if (root.addEventListener && track.focus !== false) {
      this._listen(root, "focus", function () { self.activity("focus", { focused: true }); });
      this._listen(root, "blur", function () { self.activity("focus", { focused: false }); });
    }
    if (root.history && track.navigation !== false) {
      var navigated = function () {
        self.activity("navigation", { path: root.location.pathname + root.location.hash });
      };
      this._listen(root, "popstate", navigated);
      this._listen(root, "hashchange", navigated);
      ["pushState", "replaceState"].forEach(function (name) {
        var original = root.history[name];
        root.history[name] = function () {
          var result = original.apply(this, arguments);
          navigated();
          return result;
        };
        self._cleanup.push(function () { root.history[name] = original; });
      });
    }
  }

  Tracker.prototype.on = function (name, fn) {
    (this._handlers[name] = this._handlers[name] || []).push(fn);
    var list = this._handlers[name];
    return function () {
      var i = list.indexOf(fn);
      if (i >= 0) list.splice(i, 1);
    };
  };

  /** Report activity. Resolves with the server's answer ({ok, counted} or {ok: false, error}). */
  Tracker.prototype.activity = function (kind, detail) {
    var socket = this.socket;
    if (!socket.connected) {
      // Dropped, not queued: replaying stale activity after a reconnect would lie about when
      // the user was last active.
      return Promise.resolve({ ok: false, error: { code: "not_connected", message: "offline" } });
    }
    this.sent += 1;
    var body = detail === undefined ? { kind: kind } : { kind: kind, detail: detail };
    return new Promise(function (resolve) {
      socket.timeout(10000).emit("activity", body, function (err, answer) {
        resolve(err ? { ok: false, error: { code: "timeout", message: String(err) } } : answer);
      });
    });
  };

  Tracker.prototype.close = function () {
    this._closed = true;
    if (this._retryTimer) clearTimeout(this._retryTimer);
    this._cleanup.forEach(function (undo) { undo(); });
    this._cleanup = [];
    this.socket.disconnect();
    this._setStatus("closed");
  };

  Tracker.prototype._token = function () {
    var token = this.options.token;
    try {
      return Promise.resolve(typeof token === "function" ? token() : token);
    } catch (err) {
      return Promise.reject(err);
    }
  };

  Tracker.prototype._retry = function () {
    if (this._closed || this._retryTimer) return;
    var b = this._backoff;
    var delay = Math.min(b.max, b.base * Math.pow(2, this._retries));
    delay = delay * (1 + b.jitter * (2 * Math.random() - 1));
    this._retries += 1;
    this._setStatus("reconnecting");
    var self = this;
    this._retryTimer = setTimeout(function () {
      self._retryTimer = null;
      if (!self._closed && !self.socket.connected) self.socket.connect();
    }, Math.max(0, delay));
  };

  Tracker.prototype._throttled = function (kind, every, detail) {
    var last = this._lastSent[kind] || 0;
    if (now() - last < every) return;
    this._lastSent[kind] = now();
    this.activity(kind, detail);
  };

  Tracker.prototype._listen = function (target, name, fn, capture) {
    target.addEventListener(name, fn, !!capture);
    this._cleanup.push(function () { target.removeEventListener(name, fn, !!capture); });
  };

  Tracker.prototype._setStatus = function (status) {
    if (this.status === status) return;
    this.status = status;
    this._fire("status", status);
  };

  Tracker.prototype._fire = function (name, value) {
    (this._handlers[name] || []).slice().forEach(function (fn) {
      try {
        fn(value);
      } catch (err) {
        if (root.console) root.console.error("dormant.js: a " + name + " handler failed", err);
      }
    });
  };

  root.Dormant = {
    version: VERSION,
    kinds: { meaningful: MEANINGFUL.slice(), presence: PRESENCE.slice() },
    connect: function (options) { return new Tracker(options); },
  };
})(typeof globalThis !== "undefined" ? globalThis : this);
