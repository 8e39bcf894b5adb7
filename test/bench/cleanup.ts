// What a benchmark starts, registered so that whatever happens (an error, ^C, SIGTERM) no child process
// and no temp dir outlives it. `keep` leaves the temp dirs for a post-mortem.

import type { ChildProcess } from "node:child_process";
import { rmSync } from "node:fs";

export const children = new Set<ChildProcess>();
export const tempDirs = new Set<string>();
export const cleanupOptions = { keepTemp: false };

export function cleanupSync(): void {
  for (const p of children) {
    if (p.exitCode === null && p.signalCode === null) {
      try {
        p.kill("SIGKILL");
      } catch {
        /* already gone */
      }
    }
  }
  children.clear();
  if (!cleanupOptions.keepTemp) for (const d of tempDirs) rmSync(d, { recursive: true, force: true });
  tempDirs.clear();
}

process.on("exit", cleanupSync);
for (const sig of ["SIGINT", "SIGTERM"] as const) {
  process.on(sig, () => {
    console.error(`\n${sig}: cleaning up`);
    cleanupSync();
    process.exit(130);
  });
}
