// Copies the official socket.io-client browser bundle (the version pinned in package-lock.json)
// into src/dormant/web/vendor/, where dormant serves it as part of /static/dormant.js.
// Run after changing the version: `npm --prefix tests/e2e/js ci && npm --prefix tests/e2e/js run vendor`.
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
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

// Swagger UI and ReDoc (dormant's /docs and /redoc, which work offline) into src/dormant/api/docs_assets/.
{
  const docsAssets = join(here, "..", "..", "..", "src", "dormant", "api", "docs_assets");
  mkdirSync(docsAssets, { recursive: true });
  const versions = {};
  const copy = (pkg, files) => {
    const dir = dirname(require.resolve(`${pkg}/package.json`));
    versions[pkg] = JSON.parse(readFileSync(join(dir, "package.json"), "utf8")).version;
    for (const [from, to] of files) copyFileSync(join(dir, from), join(docsAssets, to));
  };
  copy("swagger-ui-dist", [
    ["swagger-ui-bundle.js", "swagger-ui-bundle.js"],
    ["swagger-ui-bundle.js.LICENSE.txt", "swagger-ui-bundle.js.LICENSE.txt"],
    ["swagger-ui.css", "swagger-ui.css"],
    ["favicon-32x32.png", "favicon-32x32.png"],
    ["LICENSE", "swagger-ui.LICENSE"],
    ["NOTICE", "swagger-ui.NOTICE"],
  ]);
  copy("redoc", [
    ["bundles/redoc.standalone.js", "redoc.standalone.js"],
    ["bundles/redoc.standalone.js.LICENSE.txt", "redoc.standalone.js.LICENSE.txt"],
    ["LICENSE", "redoc.LICENSE"],
  ]);
  // ReDoc's menu shows Redocly's logo from their CDN: the one request it makes elsewhere. An
  // empty src fails at once without a request, and ReDoc then leaves the image out.
  const redoc = join(docsAssets, "redoc.standalone.js");
  const logo = '"https://cdn.redoc.ly/redoc/logo-mini.svg"';
  const bundle = readFileSync(redoc, "utf8");
  if (bundle.split(logo).length !== 2) throw new Error(`expected ${logo} once in ${redoc}`);
  writeFileSync(redoc, bundle.replace(logo, '""'));
  writeFileSync(join(docsAssets, "versions.json"), JSON.stringify(versions, null, 2) + "\n");
  console.log(`vendored ${JSON.stringify(versions)} into ${docsAssets}`);
}
