// Version numbers. VERSION comes from package.json, found by walking up from this file, so it is the same
// whether this module runs from src/ (vitest) or from dist/src/ (after `npm run build`).

import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** The Docker Engine API version shoald speaks (the newest it understands). */
export const API_VERSION = "1.50";
/** The oldest Engine API version a client may ask for. */
export const MIN_API_VERSION = "1.24";

function readPackageVersion(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8")) as { name?: unknown; version?: unknown };
      if (pkg.name === "shoal" && typeof pkg.version === "string") return pkg.version;
    } catch {
      // no (readable) package.json here: keep walking up
    }
    const parent = dirname(dir);
    if (parent === dir) return "0.0.0-unknown";
    dir = parent;
  }
}

/** The shoal release, from package.json ("0.1.0"). */
export const VERSION: string = readPackageVersion();
