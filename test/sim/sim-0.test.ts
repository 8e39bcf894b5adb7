// Seeds 0-999 of the default simulation run (2,000 seeds of at least 2,000 steps, split
// across files so that vitest runs them on both cores).

import { describe, it } from "vitest";
import { expectSeedsPass } from "./run-range.js";

describe("raft simulation, seeds 0-999", () => {
  for (let batch = 0; batch < 10; batch++) {
    const from = 0 + batch * 100;
    it(`seeds ${from}-${from + 99}: safety after every step, linearizable history, liveness after healing`, () => {
      expectSeedsPass(from, 100);
    });
  }
});
