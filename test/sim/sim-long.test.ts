// Long runs: 200 seeds of 20,000 steps each. Rare interleavings (three leaders in a row with divergent
// logs) need long histories to show up.

import { describe, it } from "vitest";
import { expectSeedsPass } from "./run-range.js";

describe("raft simulation, long runs", () => {
  for (let batch = 0; batch < 4; batch++) {
    const from = 100_000 + batch * 50;
    it(`seeds ${from}-${from + 49} at 20,000 steps`, () => {
      expectSeedsPass(from, 50, 20_000);
    });
  }
});
