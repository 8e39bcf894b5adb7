// Shared by the simulation test files: run a range of seeds and fail with the commands that replay the
// failures.

import { expect } from "vitest";
import { replayCommand, runSeed } from "./cluster.js";

export function expectSeedsPass(from: number, count: number, steps?: number): void {
  const failures: string[] = [];
  for (let seed = from; seed < from + count; seed++) {
    const r = runSeed({ seed, ...(steps ? { steps } : {}) });
    if (!r.ok) {
      failures.push(
        `seed ${seed}: ${r.error?.trim()}\n  replay: ${replayCommand(seed, steps ? ` --steps ${steps}` : "")} --trace`,
      );
    }
  }
  expect(failures, failures.join("\n")).toEqual([]);
}
