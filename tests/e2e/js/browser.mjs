// Drives Debian's Chromium through playwright-core for dormant's end-to-end tests.
//
//   node browser.mjs USER_DATA_DIR
//
// One JSON command per line on stdin, one JSON answer per line on stdout ({"id", "ok", "value"}
// or {"id", "ok": false, "error"}); console messages and page errors are written as
// {"type": "console" | "pageerror", ...}. Closing stdin closes the browser.
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

const context = await chromium.launchPersistentContext(process.argv[2], {
  executablePath,
  headless: true,
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
  viewport: { width: 1180, height: 760 },
});
const page = context.pages()[0] || (await context.newPage());
page.on("console", (msg) => out({ type: "console", level: msg.type(), text: msg.text() }));
page.on("pageerror", (err) => out({ type: "pageerror", text: String(err) }));

let closing = false;
async function close() {
  if (closing) return;
  closing = true;
  await context.close().catch(() => {});
  process.exit(0);
}

const commands = {
  goto: (c) => page.goto(c.url, { waitUntil: "load" }).then(() => null),
  click: (c) => page.click(c.selector).then(() => null),
  type: (c) => page.locator(c.selector).pressSequentially(c.text, { delay: c.delay || 20 }).then(() => null),
  text: (c) => page.locator(c.selector).textContent(),
  waitText: async (c) => {
    const locator = page.locator(c.selector);
    try {
      await page.waitForFunction(
        ([selector, text]) => (document.querySelector(selector)?.textContent || "").includes(text),
        [c.selector, c.text],
        { timeout: c.timeout || 20000 }
      );
    } catch (err) {
      throw new Error(`${c.selector} never contained ${JSON.stringify(c.text)}; it shows ${JSON.stringify(await locator.textContent())}`);
    }
    return locator.textContent();
  },
  eval: (c) => page.evaluate(c.expr),
  screenshot: (c) => page.screenshot({ path: c.path, fullPage: Boolean(c.full) }).then(() => c.path),
  // The response's status of a navigation (goto answers null).
  open: (c) => page.goto(c.url, { waitUntil: "load" }).then((r) => (r ? r.status() : null)),
  // Requests to any other origin than c.origin are aborted and remembered (see `blocked`).
  onlyOrigin: (c) =>
    context.route("**/*", (route) => {
      const url = route.request().url();
      if (new URL(url).origin === c.origin) return route.continue();
      blocked.push(url);
      return route.abort();
    }).then(() => null),
  blocked: () => blocked,
  // Only loopback hosts (127.0.0.1, localhost, [::1]) are reached; anything else is aborted
  // and remembered (see `blocked`): the page must not need the internet.
  onlyLoopback: () =>
    context.route("**/*", (route) => {
      const url = route.request().url();
      const { hostname, protocol } = new URL(url);
      if (["127.0.0.1", "localhost", "[::1]"].includes(hostname) || protocol === "data:") return route.continue();
      blocked.push(url);
      return route.abort();
    }).then(() => null),
  // The text of the first frame whose URL starts with c.prefix (an iframe of another origin,
  // which the page's own scripts cannot read); null while there is none.
  frameText: async (c) => {
    const frame = page.frames().find((f) => f.url().startsWith(c.prefix));
    return frame ? frame.evaluate(() => document.body ? document.body.innerText : "") : null;
  },
  viewport: (c) => page.setViewportSize({ width: c.width, height: c.height }).then(() => null),
  fill: (c) => page.fill(c.selector, c.text).then(() => null),
  press: (c) => page.press(c.selector, c.key).then(() => null),
  // The page's cookies (also HttpOnly ones), and cookies set as given (to forge one).
  cookies: () => context.cookies(),
  addCookies: (c) => context.addCookies(c.cookies).then(() => null),
  clearCookies: () => context.clearCookies().then(() => null),
  // Waits until an expression of the page is truthy; answers its value. Polled through
  // page.evaluate (waitForFunction compiles a string, which a strict CSP forbids).
  waitUntil: async (c) => {
    const deadline = Date.now() + (c.timeout || 20000);
    for (;;) {
      const value = await page.evaluate(c.expr);
      if (value) return value;
      if (Date.now() > deadline) throw new Error(`${c.expr} stayed falsy: ${JSON.stringify(value)}`);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  },
  // Waits for an element (also across navigations and reloads).
  waitFor: (c) =>
    page.locator(c.selector).first().waitFor({ timeout: c.timeout || 20000 }).then(() => page.url()),
  close: () => close(),
};
const blocked = [];

// Commands run one after another, in the order they arrive.
let chain = Promise.resolve();
const lines = createInterface({ input: process.stdin });
lines.on("line", (line) => {
  chain = chain.then(async () => {
    let cmd;
    try {
      cmd = JSON.parse(line);
      const run = commands[cmd.cmd];
      if (!run) throw new Error(`unknown command ${cmd.cmd}`);
      out({ id: cmd.id, ok: true, value: await run(cmd) });
    } catch (err) {
      out({ id: cmd ? cmd.id : null, ok: false, error: String(err && err.message ? err.message : err) });
    }
  });
});
lines.on("close", () => chain.then(close));
out({ type: "ready", version: context.browser() ? context.browser().version() : "persistent" });
