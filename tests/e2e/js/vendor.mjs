// Copies the official socket.io-client browser bundle (the version pinned in package-lock.json)
// into src/dormant/web/vendor/, where dormant serves it as part of /static/dormant.js.
// Run after changing the version: `npm --prefix tests/e2e/js ci && npm --prefix tests/e2e/js run vendor`.
import { copyFileSync, readFileSync } from "node:fs";
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
