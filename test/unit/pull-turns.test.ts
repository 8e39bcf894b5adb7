// A pull's layer downloads take turns: at most n at once (turns), the others start in the manifest's order as
// places free up, so the lower layers (unpacked first) come in first; a download's place frees as soon as its
// bytes are in (inTurn), while containerd still commits it. Their bodies are read lowest first (HeadFirst):
// one above is read only while none below has bytes waiting.

import { PassThrough } from "node:stream";
import { describe, expect, test } from "vitest";
import { HeadFirst } from "../../src/runtime/images/headfirst.js";
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

/** A body fed by hand: chunks pushed are waiting (readableLength) until read. */
function body(): PassThrough {
  return new PassThrough({ highWaterMark: 1 << 20 });
}

/** Reads `chunks` in the background, recording each chunk's layer in `taken`. */
function reader(order: HeadFirst, i: number, b: PassThrough, taken: number[]): Promise<void> {
  return (async () => {
    for await (const _ of order.read(i, b)) {
      taken.push(i);
      // A consumer that takes a moment per chunk (hashing, a file write).
      await settle();
    }
  })();
}

describe("layer bodies are read lowest first", () => {
  test("while the lowest body has bytes waiting, the one above is not read; when it ends, it is", async () => {
    const order = new HeadFirst();
    const [b0, b1] = [body(), body()];
    for (let k = 0; k < 20; k++) {
      b0.write(Buffer.alloc(1000, 0));
      b1.write(Buffer.alloc(1000, 1));
    }
    const taken: number[] = [];
    const readers = [reader(order, 0, b0, taken), reader(order, 1, b1, taken)];
    // A registry faster than shoald: the lowest body never runs dry while it is read.
    for (let k = 0; k < 20; k++) {
      b0.write(Buffer.alloc(1000, 0));
      await settle();
    }
    expect(taken.length).toBeGreaterThan(0);
    expect(taken.every((i) => i === 0)).toBe(true);
    b0.end();
    b1.end();
    await Promise.all(readers);
    expect(taken.at(-1)).toBe(1);
    expect(taken.indexOf(1)).toBeGreaterThan(taken.lastIndexOf(0));
  });

  test("while the lowest body has nothing waiting (a slow registry), the one above is read beside it", async () => {
    const order = new HeadFirst();
    const [b0, b1] = [body(), body()];
    const taken: number[] = [];
    const readers = [reader(order, 0, b0, taken), reader(order, 1, b1, taken)];
    for (let k = 0; k < 10; k++) {
      b1.write(Buffer.alloc(1000, 1));
      await settle();
      await settle();
    }
    // Layer 1 came in while layer 0, begun before it, has not sent a byte.
    expect(taken.filter((i) => i === 1).length).toBeGreaterThan(0);
    expect(taken.includes(0)).toBe(false);
    b0.end(Buffer.alloc(10));
    b1.end();
    await Promise.all(readers);
    expect(taken.includes(0)).toBe(true);
  });

  test("a body that fails lets those above go on", async () => {
    const order = new HeadFirst();
    const [b0, b1] = [body(), body()];
    b0.write(Buffer.alloc(1000));
    b1.write(Buffer.alloc(1000, 1));
    const taken: number[] = [];
    const failed = (async () => {
      for await (const _ of order.read(0, b0)) throw new Error("size mismatch");
    })();
    const above = reader(order, 1, b1, taken);
    await expect(failed).rejects.toThrow("size mismatch");
    b1.end();
    await above;
    expect(taken).toEqual([1]);
  });
});
