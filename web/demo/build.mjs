// Bundles src/ into gateway/web/demo/, the demo page the gateway serves at /demo/ (gateway/web/demo.py).
// Run with `npm ci && npm run build`; the output is committed, so the gateway needs no Node at run time.
import { copyFile, mkdir, rm } from "node:fs/promises";
import { fileURLToPath } from "node:url";

import * as esbuild from "esbuild";

const out = fileURLToPath(new URL("../../gateway/web/demo/", import.meta.url));
await rm(out, { recursive: true, force: true });
await mkdir(`${out}assets`, { recursive: true });

await esbuild.build({
  entryPoints: [fileURLToPath(new URL("src/demo.js", import.meta.url))],
  outfile: `${out}assets/demo.js`,
  bundle: true,
  format: "esm",
  platform: "browser",
  target: ["es2020"],
  minify: true,
  // The licences of the bundled packages, in a file beside the bundle.
  legalComments: "linked",
  define: { "process.env.NODE_ENV": '"production"' },
  logLevel: "info",
});

await copyFile(fileURLToPath(new URL("src/index.html", import.meta.url)), `${out}index.html`);
await copyFile(fileURLToPath(new URL("src/demo.css", import.meta.url)), `${out}assets/demo.css`);
