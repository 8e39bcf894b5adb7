// A pull's layer downloads take turns: at most n at once (turns), the others start in the manifest's order as
// places free up, so the lower layers (unpacked first) come in first; a download's place frees as soon as its
// bytes are in (inTurn), while containerd still commits it.

import { describe, expect, test } from "vitest";
import { inTurn, turns } from "../../src/runtime/images/pull.js";

/** A task that runs until it is told to end. */
function task(name: string, started: string[]) {
  let end: (v: string) => void = () => undefined;
  let fail: (e: Error) => void = () => undefined;
  const run = (): Promise<string> => {
    started.push(name);
    return new Promise<string>((resolve, reject) => {
      end = resolve;
      fail = reject;
    });
  };
  return { run, end: () => end(name), fail: (e: Error) => fail(e) };
}

const settle = () => new Promise((r) => setImmediate(r));

describe("layer downloads take turns", () => {
  test("three at once; the next starts, in order, as one ends (well or not)", async () => {
    const started: string[] = [];
    const turn = turns(3);
    const tasks = ["l0", "l1", "l2", "l3", "l4", "l5"].map((n) => task(n, started));
    const results = tasks.map((t) => turn(t.run));
    await settle();
    expect(started).toEqual(["l0", "l1", "l2"]);
    tasks[1]!.end();
    await settle();
    expect(started).toEqual(["l0", "l1", "l2", "l3"]);
    tasks[0]!.fail(new Error("connection reset"));
    await expect(results[0]).rejects.toThrow("connection reset");
    await settle();
    expect(started).toEqual(["l0", "l1", "l2", "l3", "l4"]);
    for (const t of tasks.slice(2)) {
      t.end();
      await settle();
    }
    expect(started).toEqual(["l0", "l1", "l2", "l3", "l4", "l5"]);
    expect(await Promise.all([results[1], results[2], results[3], results[5]])).toEqual(["l1", "l2", "l3", "l5"]);
  });
});

describe("a download's turn", () => {
  test("ends when its bytes are in, before it ends (its commit overlaps the next download), or when it fails", async () => {
    const turn = turns(1);
    const started: string[] = [];
    const ends: Record<string, { received: () => void; end: (v: string) => void; fail: (e: Error) => void }> = {};
    const download = (name: string) =>
      inTurn(
        turn,
        (received) =>
          new Promise<string>((end, fail) => {
            started.push(name);
            ends[name] = { received, end, fail };
          }),
      );
    const results = ["l0", "l1", "l2"].map(download);
    await settle();
    expect(started).toEqual(["l0"]);
    ends.l0!.received();
    await settle();
    // l0 is still being committed: l1 downloads meanwhile.
    expect(started).toEqual(["l0", "l1"]);
    ends.l1!.fail(new Error("connection reset"));
    await expect(results[1]).rejects.toThrow("connection reset");
    await settle();
    expect(started).toEqual(["l0", "l1", "l2"]);
    ends.l2!.end("l2");
    ends.l0!.end("l0");
    expect(await Promise.all([results[0], results[2]])).toEqual(["l0", "l2"]);
  });
});
