// The simulation must be able to fail. With the core broken on purpose (a leader commits entries of earlier
// terms by counting replicas: the Figure 8 mistake of the Raft paper, §5.4.2), the checks must catch a
// violation within a few hundred long seeds; with the rule in place the same seeds pass.

import { describe, expect, it } from "vitest";
import { runSeed } from "./cluster.js";

describe("simulation self-test", () => {
  it("catches a core that commits entries of earlier terms by counting replicas", () => {
    let caught: { seed: number; error: string } | undefined;
    for (let seed = 0; seed < 400 && !caught; seed++) {
      const r = runSeed({ seed, steps: 20_000, unsafeCommitAnyTerm: true });
      if (!r.ok) caught = { seed, error: r.error ?? "" };
    }
    expect(caught, "no seed caught the broken commit rule").toBeDefined();
    expect(caught!.error).toMatch(/leader completeness|state machine safety|linearizable|log matching/);
    // The same seed passes with the rule in place: it was the rule that made the difference.
    expect(runSeed({ seed: caught!.seed, steps: 20_000 }).ok).toBe(true);
  });
});
