// Copies the official socket.io-client browser bundle (the version pinned in package-lock.json)
// into src/dormant/web/vendor/, where dormant serves it as part of /static/dormant.js.
// Run after changing the version: `npm --prefix tests/e2e/js ci && npm --prefix tests/e2e/js run vendor`.
import { copyFileSync, mkdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const pkgDir = dirname(require.resolve("socket.io-client/package.json"));
const { version } = JSON.parse(readFileSync(join(pkgDir, "package.json"), "utf8"));
const target = join(here, "..", "..", "..", "src", "dormant", "web", "vendor");
copyFileSync(join(pkgDir, "dist", "socket.io.min.js"), join(target, "socket.io.min.js"));
copyFileSync(join(pkgDir, "LICENSE"), join(target, "socket.io-client.LICENSE"));
console.log(`vendored socket.io-client ${version} into ${target}`);

// uPlot (the console's Overview charts and the usage sparkline) into src/dormant/api/console/static/vendor/.
{
  const uplotDir = dirname(require.resolve("uplot/package.json"));
  const { version: uplotVersion } = JSON.parse(readFileSync(join(uplotDir, "package.json"), "utf8"));
  const consoleVendor = join(here, "..", "..", "..", "src", "dormant", "api", "console", "static", "vendor");
  mkdirSync(consoleVendor, { recursive: true });
  copyFileSync(join(uplotDir, "dist", "uPlot.iife.min.js"), join(consoleVendor, "uPlot.iife.min.js"));
  copyFileSync(join(uplotDir, "dist", "uPlot.min.css"), join(consoleVendor, "uPlot.min.css"));
  copyFileSync(join(uplotDir, "LICENSE"), join(consoleVendor, "uPlot.LICENSE"));
  console.log(`vendored uPlot ${uplotVersion} into ${consoleVendor}`);
}
