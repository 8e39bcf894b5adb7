// Blobs written to a real containerd's content store through shoal's Write stream: a body that arrives in
// pieces of any size is sent as 1 MiB messages made of those pieces (not copied), and comes back byte for
// byte; blobs written at once where one is corrupt: the good ones are committed, the corrupt one refused,
// with nothing of it committed or left half-written; a blob is kept by its lease alone. Each way a blob goes
// in: through the Write stream, and put in place in the root of a containerd shoald manages (blobfile.ts).
// Root only (containerd); run under the heavy lock.

import { createHash, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { WriteAction, WriteContentRequest } from "../../src/gen/containerd/content.js";
import { blobPath, type IngestFile, ingestDir } from "../../src/runtime/containerd/blobfile.js";
import { type Containerd, ContainerdError } from "../../src/runtime/containerd/client.js";
import {
  ContentStore,
  DigestMismatchError,
  digestMismatchOf,
  writeFrames,
} from "../../src/runtime/containerd/content.js";
import { CAN_RUN_CONTAINERS, testContainerd } from "./runtime-fixtures.js";

const digestOf = (b: Buffer): string => `sha256:${createHash("sha256").update(b).digest("hex")}`;

/** `b` in pieces of the given sizes, in turn (as a socket hands a body over). */
async function* inPieces(b: Buffer, sizes: number[]): AsyncGenerator<Buffer> {
  let i = 0;
  for (let at = 0; at < b.length; i++) {
    const n = sizes[i % sizes.length]!;
    yield b.subarray(at, at + n);
    at += n;
    await new Promise((r) => setImmediate(r));
  }
}

/** The message of a gRPC frame sent as `parts`, checked against its 5-byte prefix. */
function unframe(parts: Buffer[]): Buffer {
  const all = Buffer.concat(parts);
  expect(all[0]).toBe(0);
  expect(all.readUInt32BE(1)).toBe(all.length - 5);
  return all.subarray(5);
}

describe("a Write message built from pieces", () => {
  test("is the gRPC frame of the message the generated encoder makes, whatever the pieces, which it sends as they are", () => {
    const data = randomBytes(1024 * 1024 + 3);
    const req = {
      action: WriteAction.WRITE,
      ref: "shoal-x",
      total: 0,
      expected: "",
      offset: 5 * 1024 * 1024,
      data: Buffer.alloc(0),
      labels: {},
    };
    for (const cuts of [[data.length], [1, 65536, 100_000], [16384]]) {
      const pieces: Buffer[] = [];
      for (let at = 0, i = 0; at < data.length; i++) {
        pieces.push(data.subarray(at, at + cuts[i % cuts.length]!));
        at += cuts[i % cuts.length]!;
      }
      const frames = writeFrames({ req, data: pieces, bytes: data.length });
      // The data goes out in the very buffers it came in.
      expect(frames.slice(1)).toEqual(pieces);
      for (const [i, p] of pieces.entries()) expect(frames[i + 1]).toBe(p);
      const decoded = WriteContentRequest.decode(unframe(writeFrames({ req, data: pieces, bytes: data.length })));
      expect(decoded.offset).toBe(req.offset);
      expect(decoded.ref).toBe("shoal-x");
      expect(Buffer.from(decoded.data).equals(data)).toBe(true);
    }
    const commit = { ...req, action: WriteAction.COMMIT, labels: { a: "b" } };
    expect(WriteContentRequest.decode(unframe(writeFrames({ req: commit, data: [], bytes: 0 })))).toEqual(
      WriteContentRequest.decode(WriteContentRequest.encode(commit).finish()),
    );
  });
});

describe("containerd's refusal of a commit", () => {
  test("is a digest mismatch when containerd found other bytes than the digest named, and only then", () => {
    const [a, b] = [digestOf(Buffer.from("a")), digestOf(Buffer.from("b"))];
    const refused = digestMismatchOf(
      new ContainerdError(
        status.FAILED_PRECONDITION,
        `unexpected commit digest ${a}, expected ${b}: failed precondition`,
        "content.Write",
      ),
    );
    expect(refused).toBeInstanceOf(DigestMismatchError);
    expect([refused?.expected, refused?.actual]).toEqual([b, a]);
    // Other refusals stay what they are.
    expect(
      digestMismatchOf(new ContainerdError(status.FAILED_PRECONDITION, "unexpected commit size 3, expected 4", "")),
    ).toBeUndefined();
    expect(
      digestMismatchOf(new ContainerdError(status.UNAVAILABLE, `unexpected commit digest ${a}, expected ${b}`, "")),
    ).toBeUndefined();
  });
});

// Each way a blob goes in: through containerd's Write stream (a containerd shoald does not manage), and put
// in place in the local content store of the containerd it manages (blobfile.ts).
describe.skipIf(!CAN_RUN_CONTAINERS).each([
  ["through containerd's Write stream", false],
  ["put in place in containerd's root", true],
])("blobs in containerd's content store, %s", (_way, placed) => {
  let dir = "";
  let root = "";
  let cd: Containerd;
  let stop: () => Promise<void> = async () => undefined;
  let content: ContentStore;
  let lease = "";

  /** What is left of blobs being written: containerd's ingest directory, and shoald's. */
  const leftovers = async (): Promise<string[]> => [
    ...(await readdir(join(root, "io.containerd.content.v1.content", "ingest")).catch(() => [])),
    ...(await readdir(ingestDir(root)).catch(() => [])),
  ];

  beforeAll(async () => {
    dir = await mkdtemp(join(os.tmpdir(), "shoal-content-"));
    ({ containerd: cd, root, stop } = await testContainerd(dir));
    content = new ContentStore(cd, placed ? root : undefined);
    lease = "content-write-test";
    await cd.call(cd.leases, cd.leases.create, { id: lease, labels: {} });
  }, 60_000);

  afterAll(async () => {
    await stop();
    await rm(dir, { recursive: true, force: true });
  });

  test("a blob that arrives in odd pieces is stored byte for byte", async () => {
    const blob = randomBytes(3 * 1024 * 1024 + 12345);
    await content.write({ digest: digestOf(blob), size: blob.length }, inPieces(blob, [70_001, 1, 16384]), lease);
    expect((await content.read(digestOf(blob))).equals(blob)).toBe(true);
  }, 60_000);

  test("a streamed write hands out the file it writes, as it grows, only when blobs are put in place", async () => {
    const blob = randomBytes(2 * 1024 * 1024 + 3);
    let file: IngestFile | undefined;
    let told = 0;
    await content.write({ digest: digestOf(blob), size: blob.length }, inPieces(blob, [65536]), lease, {
      onProgress: (n) => {
        told = n;
      },
      onFile: (f) => {
        file = f;
      },
    });
    expect(told).toBe(blob.length);
    expect(content.growingFiles).toBe(placed);
    expect((await content.read(digestOf(blob))).equals(blob)).toBe(true);
    if (!placed) {
      // containerd given with --containerd: no file of shoald's; the caller reads the blob from the store.
      expect(file).toBeUndefined();
      return;
    }
    await file!.done;
    expect(file!.available).toBe(blob.length);
    expect((await readFile(file!.path)).equals(blob)).toBe(true);
    file!.release();
    await new Promise((r) => setTimeout(r, 20));
    expect(await leftovers()).toEqual([]);
  }, 60_000);

  test("blobs written at once, one corrupt: the good ones are kept, nothing of the corrupt one", async () => {
    const good = [randomBytes(2 * 1024 * 1024 + 1), randomBytes(3 * 1024 * 1024)];
    const bad = randomBytes(3 * 1024 * 1024 + 7);
    const claimed = digestOf(bad);
    bad[2 * 1024 * 1024 + 10] = bad[2 * 1024 * 1024 + 10]! ^ 0xff;
    const results = await Promise.allSettled([
      ...good.map((b) => content.write({ digest: digestOf(b), size: b.length }, inPieces(b, [65536]), lease)),
      content.write({ digest: claimed, size: bad.length }, inPieces(bad, [65536]), lease),
    ]);
    expect(results.map((r) => r.status)).toEqual(["fulfilled", "fulfilled", "rejected"]);
    // containerd's own check at the commit (shoald hashes nothing), or shoald's before it puts a blob in
    // place: what was found, and what was named.
    const refused = (results[2] as PromiseRejectedResult).reason as DigestMismatchError;
    expect(refused).toBeInstanceOf(DigestMismatchError);
    expect(refused.expected).toBe(claimed);
    expect(refused.actual).toBe(digestOf(bad));
    expect(refused.message).toBe(`digest mismatch: expected ${claimed}, got ${digestOf(bad)}`);
    for (const b of good) expect((await content.read(digestOf(b))).equals(b)).toBe(true);
    expect(await content.has(claimed)).toBe(false);
    expect(existsSync(blobPath(root, claimed))).toBe(false);
    // No write is left half-done.
    expect(await leftovers()).toEqual([]);
  }, 60_000);

  test("a blob of whole MiBs, an empty one and one there already are written; too many or too few bytes are refused, nothing left", async () => {
    const whole = randomBytes(2 * 1024 * 1024);
    const empty = Buffer.alloc(0);
    await content.write({ digest: digestOf(whole), size: whole.length }, inPieces(whole, [65536]), lease);
    await content.write({ digest: digestOf(empty), size: 0 }, inPieces(empty, [1]), lease);
    // Written again: containerd has it (AlreadyExists), the write resolves and the blob is as it was.
    await content.write({ digest: digestOf(whole), size: whole.length }, inPieces(whole, [100_000]), lease);
    expect((await content.read(digestOf(whole))).equals(whole)).toBe(true);
    expect((await content.read(digestOf(empty))).length).toBe(0);
    const long = randomBytes(1024 * 1024 + 10);
    const claimed = long.subarray(0, 1024 * 1024);
    await expect(
      content.write({ digest: digestOf(claimed), size: claimed.length }, inPieces(long, [65536]), lease),
    ).rejects.toThrow(/size mismatch/);
    await expect(
      content.write({ digest: digestOf(long), size: long.length + 1 }, inPieces(long, [65536]), lease),
    ).rejects.toThrow(/size mismatch/);
    expect(await content.has(digestOf(claimed))).toBe(false);
    expect(await content.has(digestOf(long))).toBe(false);
    for (const d of [digestOf(claimed), digestOf(long)]) expect(existsSync(blobPath(root, d))).toBe(false);
    expect(await leftovers()).toEqual([]);
  }, 60_000);

  test("a blob is kept by its lease only: when the lease ends, containerd's garbage collector takes it, file and all", async () => {
    const blob = randomBytes(1024 * 1024 + 5);
    // One containerd's store has, but not in shoal's namespace (a write cut short after its blob was put
    // in place): it is written all the same.
    const there = randomBytes(4096);
    await mkdir(join(blobPath(root, digestOf(there)), ".."), { recursive: true });
    await writeFile(blobPath(root, digestOf(there)), there);
    const short = "content-write-short";
    await cd.call(cd.leases, cd.leases.create, { id: short, labels: {} });
    for (const b of [blob, there])
      await content.write({ digest: digestOf(b), size: b.length }, inPieces(b, [65536]), short);
    for (const b of [blob, there]) expect((await content.read(digestOf(b))).equals(b)).toBe(true);
    await cd.call(cd.leases, cd.leases.delete, { id: short, sync: true });
    for (const b of [blob, there]) {
      expect(await content.has(digestOf(b))).toBe(false);
      expect(existsSync(blobPath(root, digestOf(b)))).toBe(false);
    }
  }, 60_000);
});
