// The managers' election timeout (ELECTION_TICKS, at the daemon's 100 ms tick) against the two things it has
// to tell apart, on the Raft core with the managers' setting (pre-vote and check-quorum are on, as in every
// manager): a leader that is alive but silent for a while (its event loop stopped by a long garbage
// collection: 1.6 s was seen on a leader holding 5,000 nodes on a loaded 2-core machine) must keep the
// leadership; a leader that dies must still be replaced within a few ticks, because its followers'
// transports see its connections close (RawNode.reportUnreachable). Ticks, not time: nothing here waits.

import { describe, expect, it } from "vitest";
import { ELECTION_TICKS } from "../../src/manager/manager.js";
import { Network } from "./raft-harness.js";

/** The daemon's tick (--raft-tick-ms default). */
const TICK_MS = 100;

function threeManagers(seed: number): Network {
  const net = new Network({ voters: [1, 2, 3], seed, config: { electionTick: ELECTION_TICKS } });
  net.elect(1);
  expect(net.leader().id).toBe(1);
  return net;
}

describe(`the managers' election timeout (${ELECTION_TICKS} ticks of ${TICK_MS} ms)`, () => {
  it("a leader whose event loop stops for 2 s (a long garbage collection) keeps the leadership, in the same term", () => {
    const pauseTicks = 2000 / TICK_MS;
    for (let seed = 1; seed <= 20; seed++) {
      const net = threeManagers(seed);
      const term = net.node(1).term;
      // The leader neither ticks nor reads nor sends while paused; its followers tick on.
      net.isolate(1);
      net.tick(pauseTicks, [2, 3]);
      net.heal();
      net.tick(3 * ELECTION_TICKS);
      expect(net.leader().id, `seed ${seed}: the leader after its pause`).toBe(1);
      for (const n of net.nodes.values()) expect(n.term, `seed ${seed}: node ${n.id}'s term`).toBe(term);
    }
  });

  it("a leader that dies is replaced within a few ticks: its followers see its connections close", () => {
    for (let seed = 1; seed <= 20; seed++) {
      const net = threeManagers(seed);
      net.crash(1, [2, 3]);
      const ticks = net.tickUntil(() => net.leaders().some((n) => n.id !== 1), ELECTION_TICKS, [2, 3]);
      expect(ticks, `seed ${seed}: no new leader within ${ELECTION_TICKS} ticks`).toBeGreaterThan(0);
      expect(ticks, `seed ${seed}: ticks to a new leader`).toBeLessThanOrEqual(10);
    }
  });

  it("a leader silent for longer than the timeout (alive, but cut off) is replaced, not before the timeout", () => {
    for (let seed = 1; seed <= 20; seed++) {
      const net = threeManagers(seed);
      net.isolate(1);
      // Two survivors may split their first vote: a few timeouts at most.
      const ticks = net.tickUntil(() => net.leaders().some((n) => n.id !== 1), 4 * ELECTION_TICKS, [2, 3]);
      expect(ticks, `seed ${seed}: no new leader within ${4 * ELECTION_TICKS} ticks`).toBeGreaterThan(0);
      expect(ticks).toBeGreaterThanOrEqual(ELECTION_TICKS);
    }
  });
});
