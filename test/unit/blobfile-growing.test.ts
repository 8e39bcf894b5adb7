// A blob put in place in a managed containerd's root (blobfile.ts) hands out the file it writes as it grows:
// a reader following `available` reads exactly the blob's bytes, in order, while the source is still
// coming; `done` resolves once the digest is checked, and rejects on a digest mismatch, a short body or a
// body that breaks; the file stays readable at its path until the reader releases it, and then nothing is
// left in shoald's ingest directory. No containerd needed: only the file side.

import { createHash, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, open, readdir, readFile, rm } from "node:fs/promises";
import os from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, test } from "vitest";
import {
  blobPath,
  DigestMismatchError,
  type IngestFile,
  ingestDir,
  placeBlob,
  SizeMismatchError,
} from "../../src/runtime/containerd/blobfile.js";

const digestOf = (b: Buffer): string => `sha256:${createHash("sha256").update(b).digest("hex")}`;

/** `b` in pieces of `piece` bytes, each in its own turn of the event loop; `gate` is awaited before piece i. */
async function* inPieces(
  b: Buffer,
  piece: number,
  gate?: (at: number) => Promise<void>,
  fail?: Error,
): AsyncGenerator<Buffer> {
  for (let at = 0; at < b.length; at += piece) {
    await gate?.(at);
    yield b.subarray(at, at + piece);
    await new Promise((r) => setImmediate(r));
  }
  if (fail) throw fail;
}

/** A reader of a growing file: reads what is available each time it grows, in order, from its own fd. */
function follow(file: IngestFile): { bytes: () => Buffer; seen: number[]; finished: Promise<void> } {
  const parts: Buffer[] = [];
  const seen: number[] = [];
  let read = 0;
  let chain = Promise.resolve();
  const fdP = open(file.path, "r");
  const step = (): void => {
    chain = chain.then(async () => {
      const fd = await fdP;
      while (read < file.available) {
        const buf = Buffer.alloc(file.available - read);
        const { bytesRead } = await fd.read(buf, 0, buf.length, read);
        expect(bytesRead).toBeGreaterThan(0);
        parts.push(buf.subarray(0, bytesRead));
        read += bytesRead;
      }
    });
  };
  const off = file.onProgress((a) => {
    seen.push(a);
    step();
  });
  const finished = file.done.then(
    async () => {
      off();
      step();
      await chain;
      await (await fdP).close();
    },
    async (err: unknown) => {
      off();
      await chain.catch(() => undefined);
      await (await fdP).close();
      throw err;
    },
  );
  finished.catch(() => undefined);
  return { bytes: () => Buffer.concat(parts), seen, finished };
}

describe.each([
  ["hashed by the worker reading the file back", false],
  ["hashed on the writer's thread", true],
])("a blob's file handed out as it grows, %s", (_how, hashHere) => {
  let root = "";
  beforeEach(async () => {
    root = await mkdtemp(join(os.tmpdir(), "shoal-growing-"));
  });
  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });
  const leftovers = (): Promise<string[]> => readdir(ingestDir(root)).catch(() => []);

  test("a reader following `available` reads the blob's bytes in order while the body is still coming", async () => {
    const blob = randomBytes(5 * 1024 * 1024 + 4321);
    let file: IngestFile | undefined;
    let reader: ReturnType<typeof follow> | undefined;
    // The body's second half waits until the reader has been told of bytes: the file is read as it grows,
    // not once it is whole.
    let toldHalf: () => void = () => undefined;
    const half = new Promise<void>((r) => {
      toldHalf = r;
    });
    const gate = async (at: number): Promise<void> => {
      if (at >= blob.length / 2) await half;
    };
    const placed = placeBlob(root, { digest: digestOf(blob), size: blob.length }, inPieces(blob, 65_537, gate), {
      hashHere,
      onFile: (f) => {
        file = f;
        expect(f.available).toBe(0);
        expect(f.size).toBe(blob.length);
        reader = follow(f);
        f.onProgress((a) => {
          if (a >= 2 * 1024 * 1024) toldHalf();
        });
      },
    });
    await placed;
    await reader!.finished;
    expect(reader!.bytes().equals(blob)).toBe(true);
    // `available` only grows, ends at the size, and was told along the way (not just at the end).
    const seen = reader!.seen;
    expect(seen.length).toBeGreaterThan(2);
    expect([...seen].sort((a, b) => a - b)).toEqual(seen);
    expect(seen.at(-1)).toBe(blob.length);
    expect(file!.available).toBe(blob.length);
    // The blob is in the store; the ingest file is kept for its reader until released, then gone.
    expect((await readFile(blobPath(root, digestOf(blob)))).equals(blob)).toBe(true);
    expect((await readFile(file!.path)).equals(blob)).toBe(true);
    file!.release();
    await new Promise((r) => setTimeout(r, 20));
    expect(existsSync(file!.path)).toBe(false);
    expect(await leftovers()).toEqual([]);
  }, 30_000);

  test("corrupt, short and broken bodies: done rejects, the write throws, the file stays until released, then nothing is left", async () => {
    const blob = randomBytes(3 * 1024 * 1024 + 99);
    const claimed = digestOf(blob);
    const corrupt = Buffer.from(blob);
    corrupt[2 * 1024 * 1024 + 3] = corrupt[2 * 1024 * 1024 + 3]! ^ 0x01;
    const cases: [string, AsyncIterable<Buffer>, RegExp | (new (...a: never[]) => Error)][] = [
      ["digest mismatch", inPieces(corrupt, 65_536), DigestMismatchError],
      ["truncated body", inPieces(blob.subarray(0, blob.length - 1), 65_536), SizeMismatchError],
      ["body that breaks", inPieces(blob.subarray(0, 1024 * 1024), 65_536, undefined, new Error("reset")), /reset/],
    ];
    for (const [what, body, expected] of cases) {
      let file: IngestFile | undefined;
      const placed = placeBlob(root, { digest: claimed, size: blob.length }, body, {
        hashHere,
        onFile: (f) => {
          file = f;
        },
      });
      await expect(placed, what).rejects.toThrow(expected);
      await expect(file!.done, what).rejects.toThrow(expected);
      // Still readable at its path: a reader may finish with what it has.
      expect(existsSync(file!.path), what).toBe(true);
      await readFile(file!.path);
      expect(existsSync(blobPath(root, claimed)), what).toBe(false);
      file!.release();
      file!.release();
      await new Promise((r) => setTimeout(r, 20));
      expect(await leftovers(), what).toEqual([]);
    }
  }, 30_000);

  test("without a reader, the ingest file goes with the write; empty and odd-sized blobs are placed", async () => {
    for (const blob of [Buffer.alloc(0), randomBytes(1), randomBytes(1024 * 1024), randomBytes(2 * 1024 * 1024 + 1)]) {
      await placeBlob(root, { digest: digestOf(blob), size: blob.length }, inPieces(blob, 16_384), { hashHere });
      expect((await readFile(blobPath(root, digestOf(blob)))).equals(blob)).toBe(true);
      expect(await leftovers()).toEqual([]);
    }
    const bad = randomBytes(100_000);
    await expect(
      placeBlob(root, { digest: digestOf(randomBytes(100_000)), size: bad.length }, inPieces(bad, 16_384), {
        hashHere,
      }),
    ).rejects.toThrow(DigestMismatchError);
    expect(await leftovers()).toEqual([]);
  }, 30_000);
});
