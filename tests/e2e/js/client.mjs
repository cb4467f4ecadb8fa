// Drives the official socket.io-client (from npm) for dormant's end-to-end tests.
//
//   node client.mjs URL
//
// Reads one JSON command per line on stdin; writes one JSON line per happening on stdout:
//   {"cmd": "connect", "token": "...", "query": {...}?, "pong": true?}
//       -> {"type": "connected", "id"} | {"type": "connect_error", "message", "code"}
//   {"cmd": "emit", "event": "activity", "data": {...}, "ack": 7?}  -> {"type": "ack", "ack": 7, "answer"}
//   {"cmd": "disconnect"}                                          -> {"type": "disconnect", "reason"}
//   {"cmd": "exit"}
// Every event the server sends is written as {"type": "event", "event", "data"}. Pings are
// answered with pongs unless the connect command says "pong": false.
import { createInterface } from "node:readline";
import { io } from "socket.io-client";

const url = process.argv[2];
let socket = null;
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

function connect(cmd) {
  const options = { reconnection: false, transports: cmd.transports || ["polling", "websocket"] };
  if (cmd.token !== undefined) options.auth = { token: cmd.token };
  if (cmd.query) options.query = cmd.query;
  socket = io(url, options);
  socket.on("connect", () => out({ type: "connected", id: socket.id }));
  socket.on("connect_error", (err) =>
    out({ type: "connect_error", message: err.message, code: err.data ? err.data.code : null })
  );
  socket.on("disconnect", (reason) => out({ type: "disconnect", reason }));
  socket.onAny((event, data) => {
    out({ type: "event", event, data });
    if (event === "ping" && cmd.pong !== false) socket.emit("pong", { ts: data.ts });
  });
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
  if (cmd.cmd === "connect") connect(cmd);
  else if (cmd.cmd === "emit" && cmd.ack !== undefined) {
    socket.timeout(10000).emit(cmd.event, cmd.data, (err, answer) =>
      out({ type: "ack", ack: cmd.ack, answer: err ? { timeout: String(err) } : answer })
    );
  } else if (cmd.cmd === "emit") socket.emit(cmd.event, cmd.data);
  else if (cmd.cmd === "disconnect") socket.disconnect();
  else if (cmd.cmd === "exit") {
    if (socket) socket.disconnect();
    process.exit(0);
  } else out({ type: "driver_error", message: `unknown command ${cmd.cmd}` });
});
lines.on("close", () => {
  if (socket) socket.disconnect();
  process.exit(0);
});
out({ type: "ready" });
