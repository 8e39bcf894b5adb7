// The sha256 of files being written, computed off shoald's thread: one worker thread reads each file back
// (from the page cache: the bytes were just written) as far as the writer says it has written, and hashes
// it. The bytes hashed are the bytes in the file that is then linked in as the blob: what is named is what
// was checked. On shoald's thread a blob's bytes cost their network read and their file write (issued to
// the thread pool) only; hashing them there was its largest cost in a pull (~40 ms of 50 MB at ~1.3 GB/s).
//
// The worker is started at the first file, shared by all, and does not keep the process alive when no
// file is being hashed. If it dies, the files it was hashing fail (their writes fail) and the next file
// starts a new one.

import { Worker } from "node:worker_threads";

/** What the worker runs (CommonJS, evaluated: the same code under vitest's TypeScript and in dist/). */
const WORKER = `
const { parentPort } = require("node:worker_threads");
const { createHash } = require("node:crypto");
const { openSync, readSync, closeSync } = require("node:fs");
const jobs = new Map();
const buf = Buffer.allocUnsafe(1 << 20);
function drop(id) {
  const j = jobs.get(id);
  if (!j) return;
  jobs.delete(id);
  try { closeSync(j.fd); } catch {}
}
parentPort.on("message", (m) => {
  try {
    if (m.path !== undefined) jobs.set(m.id, { fd: openSync(m.path, "r"), hash: createHash("sha256"), at: 0 });
    const j = jobs.get(m.id);
    if (!j) return;
    if (m.drop) return drop(m.id);
    while (j.at < m.available) {
      const n = readSync(j.fd, buf, 0, Math.min(buf.length, m.available - j.at), j.at);
      if (n === 0) throw new Error("the file being hashed ends at " + j.at + " bytes, " + m.available + " were written");
      j.hash.update(buf.subarray(0, n));
      j.at += n;
    }
    if (m.end) {
      drop(m.id);
      parentPort.postMessage({ id: m.id, digest: "sha256:" + j.hash.digest("hex") });
    }
  } catch (e) {
    drop(m.id);
    parentPort.postMessage({ id: m.id, error: String((e && e.message) || e) });
  }
});
`;

interface Reply {
  id: number;
  digest?: string;
  error?: string;
}

let worker: Worker | undefined;
let nextId = 1;
const pending = new Map<number, { resolve(digest: string): void; reject(err: Error): void }>();
/** Files being hashed: while there are any, the worker keeps the process alive. */
let open = 0;

function theWorker(): Worker {
  if (worker) return worker;
  const w = new Worker(WORKER, { eval: true, name: "shoal-filehash" });
  if (open === 0) w.unref();
  w.on("message", (r: Reply) => {
    const p = pending.get(r.id);
    if (!p) return;
    pending.delete(r.id);
    if (r.digest !== undefined) p.resolve(r.digest);
    else p.reject(new Error(`hashing a blob being written: ${r.error ?? "failed"}`));
  });
  const gone = (err: Error): void => {
    if (worker !== w) return;
    worker = undefined;
    const all = [...pending.values()];
    pending.clear();
    for (const p of all) p.reject(err);
  };
  w.on("error", (err) => gone(err));
  w.on("exit", (code) => gone(new Error(`the blob hashing thread exited (${code})`)));
  worker = w;
  return w;
}

/** The hash of one file being written: told how far it is written, then its end. */
export class FileHash {
  private readonly id = nextId++;
  private readonly w: Worker;
  private readonly result: Promise<string>;
  private live = true;

  /** Starts hashing the file at `path` (it must exist: its writer has created it). */
  constructor(path: string) {
    this.w = theWorker();
    if (open++ === 0) this.w.ref();
    this.result = new Promise<string>((resolve, reject) => pending.set(this.id, { resolve, reject }));
    // Its failure is seen where digest() is awaited; a hash given up is not awaited at all.
    this.result.catch(() => undefined);
    this.w.postMessage({ id: this.id, path, available: 0 });
  }

  /** The file's first `available` bytes are written: they may be hashed. */
  grown(available: number): void {
    if (this.live) this.w.postMessage({ id: this.id, available });
  }

  /** The sha256 ("sha256:<hex>") of the file's first `size` bytes, once they are all written. */
  digest(size: number): Promise<string> {
    if (this.live) this.w.postMessage({ id: this.id, available: size, end: true });
    this.finish();
    return this.result;
  }

  /** The writer gave up: the hash is dropped. */
  drop(): void {
    if (this.live) this.w.postMessage({ id: this.id, drop: true });
    this.finish();
    const p = pending.get(this.id);
    pending.delete(this.id);
    p?.reject(new Error("dropped"));
  }

  private finish(): void {
    if (!this.live) return;
    this.live = false;
    // The worker stays referenced until the last digest is back: unref'd once no file is being hashed.
    void this.result
      .catch(() => undefined)
      .finally(() => {
        if (--open === 0) worker?.unref();
      });
  }
}
