// The layer applier's worker runs compiled JS (dist/src/runtime/images/apply/worker.js): under vitest,
// which runs the TypeScript, a test that wants LayerApplier to apply layers (rather than leave them all to
// containerd, as it does when its worker cannot start) builds it first.

import { execFileSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { completeFile, type GrowingFile } from "../../src/runtime/images/apply/applier.js";

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

/** Runs tsc when the applier's compiled JS is missing or older than its sources (takes ~25 s). */
export function ensureApplierBuilt(): void {
  const src = join(repo, "src/runtime/images/apply");
  const stale = readdirSync(src).some((f) => {
    const js = join(repo, "dist/src/runtime/images/apply", f.replace(/\.ts$/, ".js"));
    return f.endsWith(".ts") && (!existsSync(js) || statSync(js).mtimeMs < statSync(join(src, f)).mtimeMs);
  });
  if (!stale) return;
  try {
    execFileSync("npx", ["tsc", "-p", "tsconfig.json"], { cwd: repo, stdio: "pipe", timeout: 180_000 });
  } catch {
    // tsc emits even when another file of the tree does not type-check; the applier checks its own JS.
  }
}

/** A fresh directory under `root` (a test's scratch directory). */
export function freshDir(root: string, name: string): string {
  const p = join(root, `${name}-${randomUUID().slice(0, 8)}`);
  mkdirSync(p, { recursive: true });
  return p;
}

/** `data` in a file of its own under `root`, as a layer file that is complete. */
export function layerFileUnder(root: string, data: Buffer): GrowingFile {
  const p = join(freshDir(root, "layer"), "blob");
  writeFileSync(p, data);
  return completeFile(p, data.length);
}
