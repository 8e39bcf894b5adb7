// Seeds that once failed outside the ranges the other simulation files run, each with what it caught.
// They run at the options that failed (default steps unless named).

import { describe, expect, it } from "vitest";
import { replayCommand, runSeed } from "./cluster.js";

const REGRESSIONS: { seed: number; steps?: number; caught: string }[] = [
  {
    seed: 9091227,
    caught:
      "a late rejection moved the leader's `next` below `match` and started a snapshot the follower did not " +
      "need; the leader then sent chunks forever and the follower never caught up (issue 10, item 3)",
  },
  {
    seed: 20013640,
    caught:
      "a caught-up learner whose replication dropped back to probing stayed there (no new entries moved its " +
      "match), so it was never promoted",
  },
  {
    seed: 30002040,
    caught:
      "a learner that asked whether it was still a member restarted its election clock each time, so it " +
      "never left the lease of its last leader and ignored the pre-votes the group needed from it",
  },
];

describe("raft simulation, regression seeds", () => {
  for (const r of REGRESSIONS) {
    it(`seed ${r.seed}: ${r.caught}`, () => {
      const res = runSeed({ seed: r.seed, ...(r.steps ? { steps: r.steps } : {}) });
      expect(res.ok, `${res.error}\n  replay: ${replayCommand(r.seed)} --trace`).toBe(true);
    });
  }
});
