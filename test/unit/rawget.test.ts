// A blob fetched from a registry over plain HTTP is read into reused memory (rawget.ts) and comes out byte for
// byte: bodies sent in odd pieces, several at once and one after the other (the memory of one used again
// for the next), put in place by blobfile.ts with each chunk given back once written; a chunked answer is
// read again through node:http; a 401 is answered with credentials; a body cut short fails the write and
// leaves nothing; an unreachable registry is said in docker's words.

import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import os from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { blobPath, type IngestFile, ingestDir, placeBlob } from "../../src/runtime/containerd/blobfile.js";
import { releaseChunk } from "../../src/runtime/images/rawget.js";
import { Registry, readBody } from "../../src/runtime/images/registry.js";

const digestOf = (b: Buffer): string => `sha256:${createHash("sha256").update(b).digest("hex")}`;

describe("blobs over plain HTTP, read into reused memory", () => {
  const blobs = new Map<string, Buffer>();
  let server: Server;
  let port = 0;
  let root = "";
  /** How the server answers: "length" (Content-Length, sent in odd pieces), "chunked", "cut" (closes early). */
  let mode: "length" | "chunked" | "cut" = "length";
  let needAuth = false;

  beforeAll(async () => {
    root = await mkdtemp(join(os.tmpdir(), "shoal-rawget-"));
    for (const n of [3 * 1024 * 1024 + 17, 2 * 1024 * 1024, 700_001, 1, 12 * 1024 * 1024 + 3]) {
      const b = randomBytes(n);
      blobs.set(digestOf(b), b);
    }
    server = createServer(async (req, res) => {
      if (needAuth && req.headers.authorization !== `Basic ${Buffer.from("u:p").toString("base64")}`) {
        res.writeHead(401, { "www-authenticate": 'Basic realm="x"', "content-length": 2 });
        res.end("no");
        return;
      }
      const b = blobs.get(req.url!.split("/").pop()!);
      if (!b) {
        res.writeHead(404, { "content-length": 0 });
        res.end();
        return;
      }
      if (mode === "chunked") {
        res.writeHead(200);
        for (let at = 0; at < b.length; at += 100_003) res.write(b.subarray(at, at + 100_003));
        res.end();
        return;
      }
      res.writeHead(200, { "content-length": b.length });
      const end = mode === "cut" ? Math.floor(b.length / 2) : b.length;
      for (let at = 0, i = 0; at < end; i++) {
        const n = Math.min(end - at, [1, 70_001, 300_000, 4096][i % 4]!);
        res.write(b.subarray(at, at + n));
        at += n;
        if (i % 8 === 0) await new Promise((r) => setImmediate(r));
      }
      if (mode === "cut") res.destroy();
      else res.end();
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
    await rm(root, { recursive: true, force: true });
  });

  const registry = (credentials?: { username: string; password: string }): Registry =>
    new Registry({ domain: `127.0.0.1:${port}`, path: "t/img", tag: "latest" }, [], credentials);

  const place = async (reg: Registry, digest: string, onFile?: (f: IngestFile) => void): Promise<void> => {
    const b = blobs.get(digest)!;
    await placeBlob(root, { digest, size: b.length }, await reg.blob(digest), { onWritten: releaseChunk, onFile });
  };

  test("bodies in odd pieces, several at once and one after another, are placed byte for byte", async () => {
    mode = "length";
    const reg = registry();
    const all = [...blobs.keys()];
    for (let round = 0; round < 3; round++) {
      await rm(join(root, "io.containerd.content.v1.content"), { recursive: true, force: true });
      await Promise.all(all.map((d) => place(reg, d)));
      for (const d of all) expect((await readFile(blobPath(root, d))).equals(blobs.get(d)!)).toBe(true);
    }
    // And read whole (the config's way: its chunks kept, not given back).
    const d = all[2]!;
    expect((await readBody(await reg.blob(d), 10 << 20)).equals(blobs.get(d)!)).toBe(true);
  }, 30_000);

  test("a reader slower than the network holds the sender back (the socket pauses) and still reads every byte", async () => {
    mode = "length";
    const d = [...blobs.keys()][4]!;
    const body = await registry().blob(d);
    // The body waits unread: the socket stops at the high-water mark, with the rest still to come.
    await new Promise((r) => setTimeout(r, 300));
    expect(body.readableLength).toBeGreaterThan(0);
    expect(body.readableLength).toBeLessThan(blobs.get(d)!.length);
    const parts: Buffer[] = [];
    for await (const c of body) {
      parts.push(Buffer.from(c));
      releaseChunk(c);
      await new Promise((r) => setTimeout(r, 1));
    }
    expect(Buffer.concat(parts).equals(blobs.get(d)!)).toBe(true);
  }, 30_000);

  test("a chunked answer is read through node:http; a 401 is answered with the credentials", async () => {
    mode = "chunked";
    const d = [...blobs.keys()][0]!;
    expect((await readBody(await registry().blob(d), 10 << 20)).equals(blobs.get(d)!)).toBe(true);
    mode = "length";
    needAuth = true;
    try {
      expect(
        (await readBody(await registry({ username: "u", password: "p" }).blob(d), 10 << 20)).equals(blobs.get(d)!),
      ).toBe(true);
      await expect(registry().blob(d)).rejects.toThrow(/pull access denied/);
    } finally {
      needAuth = false;
    }
  }, 30_000);

  test("a body cut short fails the write and its growing file, nothing left; an unknown blob or registry is an error", async () => {
    mode = "cut";
    const d = [...blobs.keys()][0]!;
    let file: IngestFile | undefined;
    await expect(place(registry(), d, (f) => (file = f))).rejects.toThrow(
      /closed the connection after \d+ of \d+ bytes/,
    );
    await expect(file!.done).rejects.toThrow(/closed the connection/);
    file!.release();
    await new Promise((r) => setTimeout(r, 20));
    expect(await readdir(ingestDir(root))).toEqual([]);
    mode = "length";
    await expect(registry().blob(digestOf(Buffer.from("none")))).rejects.toThrow(/HTTP 404/);
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, "127.0.0.1", r));
    const gone = (closed.address() as AddressInfo).port;
    await new Promise((r) => closed.close(r));
    await expect(
      new Registry({ domain: `127.0.0.1:${gone}`, path: "t/img", tag: "latest" }, [], undefined).blob(d),
    ).rejects.toThrow(/^Get "http:\/\/127\.0\.0\.1:\d+\/v2\/": connect ECONNREFUSED/);
  }, 30_000);
});
