// A reconnect storm with the official socket.io-client (from npm): N connections opened within
// a spread of milliseconds, as when a replica dies and its browsers come back all at once.
//
//   node storm.mjs URL TOKENS_FILE [--transports websocket|default] [--spread-ms 1000]
//
// TOKENS_FILE holds a JSON list of gateway tokens, one connection each. Every connection is its
// own Manager (forceNew: one Engine.IO socket each, as N browsers would have), without
// reconnection, with socket.io-client's default connect timeout (20 s): that timeout is the only
// bound; a connection that does not make it in time reports connect_error "timeout".
//
// Writes JSON lines on stdout:
//   {"type": "started", "count", "spread_ms", "transports"}
//   {"type": "summary", "count", "connected", "refused", "errors": {code: n}, "messages":
//    {message: n}, "opened_ms", "all_connected_ms", "last_connected_ms", "transports_used":
//    {websocket: n, polling: n}, "events": {event: n}, "event_bytes": {event: n}, "cpu_ms":
//    {user, system}}
//       once every connection has connected or failed ("all_connected_ms" is null unless all
//       connected; times are from the first connection's start)
//   {"type": "disconnects", "count", "reasons": {reason: n}}  (if any connection dropped since)
//   {"type": "closed", "count"}                               after {"cmd": "close"} on stdin
// Stdin: {"cmd": "close"} closes every connection, reports, and exits; end of input exits too.
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { io } from "socket.io-client";

const args = process.argv.slice(2);
const url = args[0];
const tokens = JSON.parse(readFileSync(args[1], "utf8"));
const option = (name, fallback) => {
  const at = args.indexOf(name);
  return at >= 0 ? args[at + 1] : fallback;
};
const transports =
  option("--transports", "websocket") === "websocket" ? ["websocket"] : ["polling", "websocket"];
const spreadMs = Number(option("--spread-ms", "1000"));
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

const sockets = [];
const errors = {};
const messages = {};
const reasons = {};
const events = {};
const eventBytes = {};
let connected = 0;
let failed = 0;
let disconnects = 0;
let lastConnected = 0;
let opened = 0;
let summarized = false;
let closing = false;
const cpuStart = process.cpuUsage();
const t0 = performance.now();

const count = (table, key) => (table[key] = (table[key] || 0) + 1);

function settle() {
  if (summarized || connected + failed < tokens.length) return;
  summarized = true;
  const used = {};
  for (const socket of sockets) if (socket.connected) count(used, socket.io.engine.transport.name);
  const cpu = process.cpuUsage(cpuStart);
  out({
    type: "summary",
    count: tokens.length,
    connected,
    refused: failed,
    errors,
    messages,
    opened_ms: Math.round(opened),
    all_connected_ms: failed === 0 ? Math.round(lastConnected) : null,
    last_connected_ms: Math.round(lastConnected),
    transports_used: used,
    events,
    event_bytes: eventBytes,
    cpu_ms: { user: Math.round(cpu.user / 1000), system: Math.round(cpu.system / 1000) },
  });
}

function open(token) {
  const socket = io(url, { forceNew: true, reconnection: false, transports, auth: { token } });
  sockets.push(socket);
  let done = false;
  socket.on("connect", () => {
    if (done) return;
    done = true;
    connected += 1;
    lastConnected = performance.now() - t0;
    settle();
  });
  socket.on("connect_error", (err) => {
    if (done) return;
    done = true;
    failed += 1;
    count(errors, err.data && err.data.code ? err.data.code : "none");
    const cause = err.description;
    const detail = cause && typeof cause === "object" ? cause.code || cause.message : cause;
    count(messages, detail === undefined ? err.message : `${err.message} (${detail})`);
    settle();
  });
  socket.onAny((event, data) => {
    if (summarized) return;
    count(events, event);
    eventBytes[event] = (eventBytes[event] || 0) + JSON.stringify(data).length;
  });
  socket.on("disconnect", (reason) => {
    if (closing) return; // our own closing is not a drop
    disconnects += 1;
    count(reasons, reason);
  });
}

out({ type: "started", count: tokens.length, spread_ms: spreadMs, transports });
tokens.forEach((token, i) => {
  setTimeout(() => {
    open(token);
    if (i === tokens.length - 1) opened = performance.now() - t0;
  }, (i * spreadMs) / tokens.length);
});

function closeAll() {
  if (disconnects) out({ type: "disconnects", count: disconnects, reasons });
  closing = true;
  for (const socket of sockets) socket.disconnect();
  out({ type: "closed", count: sockets.length });
}

const lines = createInterface({ input: process.stdin });
lines.on("line", (line) => {
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (err) {
    out({ type: "driver_error", message: `bad command: ${err}` });
    return;
  }
  if (cmd.cmd === "close") {
    closeAll();
    setTimeout(() => process.exit(0), 200);
  } else if (cmd.cmd === "status") {
    out({ type: "status", connected: sockets.filter((s) => s.connected).length, disconnects, reasons });
  } else out({ type: "driver_error", message: `unknown command ${cmd.cmd}` });
});
lines.on("close", () => {
  for (const socket of sockets) socket.disconnect();
  process.exit(0);
});
