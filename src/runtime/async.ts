// Small waits the runtime needs: a delay, a bounded wait for a promise, the end of a stream.

import type { Readable } from "node:stream";

export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

/** Resolves true if `p` settles within `ms`. */
export async function within(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  const r = await Promise.race([p.then(() => true), t]);
  clearTimeout(timer);
  return r;
}

/** Resolves when a readable stream has ended, closed or failed. */
export function streamDone(s: Readable): Promise<void> {
  return new Promise((resolve) => {
    if (s.destroyed || s.readableEnded) {
      resolve();
      return;
    }
    s.once("close", () => resolve());
    s.once("end", () => resolve());
    s.once("error", () => resolve());
  });
}

/** A promise with its resolve at hand (Promise.withResolvers, which Node 20 lacks), for a value told later. */
export function toBeTold<T>(): { promise: Promise<T>; resolve: (v: T) => void } {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}
