// The applier's worker thread: applies one layer at a time, reading the layer file only as far as the
// main thread says it has grown (progress.ts), gunzipping (zlib, off this thread) and hashing as it goes.

import { createHash, type Hash } from "node:crypto";
import { readSync } from "node:fs";
import { Readable, Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { parentPort } from "node:worker_threads";
import { createGunzip } from "node:zlib";
import { LayerFormatError, UnsupportedLayerError } from "./errors.js";
import { ABORTED, AVAILABLE, type ErrorKind, FAILED, GEN, type Job, type Result, STATUS } from "./progress.js";
import { TarSink } from "./tar-sink.js";
import { Target } from "./target.js";

const READ_BYTES = 1 << 20;

/** Atomics.waitAsync (Node 16+; in TypeScript's lib from ES2024 on). */
const waitAsync = (
  Atomics as unknown as {
    waitAsync(a: BigInt64Array, i: number, v: bigint, ms: number): { async: boolean; value: Promise<string> | string };
  }
).waitAsync;

class Stopped extends Error {
  constructor(readonly kind: "aborted" | "source") {
    super(kind === "aborted" ? "the apply was aborted" : "the layer's download failed");
  }
}

/** Throws if the apply was aborted or the download failed; else the status. */
function stopIfAsked(s: BigInt64Array): number {
  const status = Number(Atomics.load(s, STATUS));
  if (status === ABORTED) throw new Stopped("aborted");
  if (status === FAILED) throw new Stopped("source");
  return status;
}

/** The buffer a plain (not gzipped) layer is read into, each read taken before the next. */
const plain = Buffer.allocUnsafeSlow(READ_BYTES);

/**
 * One step through a layer file: its next bytes (read into `bufferOf(size)`) if there are any past `pos`,
 * else the generation to wait on for more, or undefined at its end. Throws if the apply was aborted, the
 * download failed, or the file is shorter than announced.
 */
function readStep(job: Job, pos: number, bufferOf: (size: number) => Buffer): Buffer | bigint | undefined {
  const s = job.progress;
  const gen = Atomics.load(s, GEN);
  stopIfAsked(s);
  const available = Math.min(Number(Atomics.load(s, AVAILABLE)), job.size);
  if (pos < available) {
    const buf = bufferOf(Math.min(READ_BYTES, available - pos));
    const n = readSync(job.fd, buf, 0, buf.length, pos);
    if (n === 0) throw new LayerFormatError(`the layer file is shorter than the ${available} bytes announced`);
    return n === buf.length ? buf : buf.subarray(0, n);
  }
  return pos >= job.size ? undefined : gen;
}

/**
 * A plain layer's bytes, each read handed to `take` as they become available, in one synchronous loop that
 * blocks this thread while it waits for more (it has nothing else to do meanwhile): in a pull the machine is
 * busy, and a loop of promises (an async generator's) cost this thread about four times its reading and
 * writing, in wake-ups. Each read is taken before the next, into the one buffer.
 */
function plainChunks(job: Job, take: (b: Buffer) => void): void {
  for (let pos = 0; ; ) {
    const r = readStep(job, pos, (size) => plain.subarray(0, size));
    if (r === undefined) return;
    if (typeof r === "bigint") Atomics.wait(job.progress, GEN, r, 1000);
    else {
      pos += r.length;
      take(r);
    }
  }
}

/** A gzipped layer's bytes, as they become available: a fresh buffer per read (zlib may still hold the last). */
async function* chunks(job: Job): AsyncGenerator<Buffer> {
  for (let pos = 0; ; ) {
    const r = readStep(job, pos, (size) => Buffer.allocUnsafe(size));
    if (r === undefined) return;
    if (typeof r === "bigint") {
      const w = waitAsync(job.progress, GEN, r, 1000);
      if (w.async) await w.value;
    } else {
      pos += r.length;
      yield r;
    }
  }
}

async function apply(job: Job): Promise<{ diffId?: string; bytes: number; implicit: string[] }> {
  const target = new Target(job.target);
  const sink = new TarSink(target);
  const hash: Hash | undefined = job.hash ? createHash("sha256") : undefined;
  let bytes = 0;
  const take = (b: Buffer): void => {
    // A small gzip can unpack to a great deal: an abort is seen between its output chunks too.
    stopIfAsked(job.progress);
    hash?.update(b);
    bytes += b.length;
    if (!sink.ended) sink.feed(b);
  };
  try {
    if (job.gzip) {
      const sinkStream = new Writable({
        write(b: Buffer, _enc, cb) {
          try {
            take(b);
            cb();
          } catch (err) {
            cb(err as Error);
          }
        },
      });
      await pipeline(Readable.from(chunks(job)), createGunzip({ chunkSize: 1 << 20 }), sinkStream);
    } else {
      plainChunks(job, take);
    }
    sink.end();
    target.end();
  } finally {
    target.abandon();
  }
  return {
    diffId: hash === undefined ? undefined : `sha256:${hash.digest("hex")}`,
    bytes,
    implicit: [...target.implicit],
  };
}

function kindOf(err: unknown): ErrorKind {
  if (err instanceof Stopped) return err.kind;
  if (err instanceof UnsupportedLayerError) return "unsupported";
  if (err instanceof LayerFormatError) return "format";
  // zlib's own errors: a corrupt or truncated gzip stream.
  const code = (err as NodeJS.ErrnoException).code;
  if (typeof code === "string" && code.startsWith("Z_")) return "format";
  return "failed";
}

const port = parentPort;
if (port !== null) {
  let queue: Promise<void> = Promise.resolve();
  port.on("message", (job: Job) => {
    queue = queue.then(async () => {
      let r: Result;
      try {
        const { diffId, bytes, implicit } = await apply(job);
        r = { id: job.id, ok: true, diffId, stats: { bytes }, implicit };
      } catch (err) {
        const kind = kindOf(err);
        const message =
          kind === "format" && !(err instanceof LayerFormatError)
            ? `the layer's gzip stream: ${(err as Error).message}`
            : (err as Error).message;
        r = { id: job.id, ok: false, kind, message };
      }
      port.postMessage(r);
    });
  });
}
