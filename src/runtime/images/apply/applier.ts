// LayerApplier: unpacks an image layer into a containerd overlayfs snapshot itself, in a worker thread,
// while the layer is still downloading, writing what containerd's Diff.Apply would write (see README.md).
// What it leaves to containerd it refuses with UnsupportedLayerError before or while writing: the caller
// removes the snapshot and falls back to Diff.Apply.

import { closeSync, existsSync, openSync, readdirSync, statSync } from "node:fs";
import { lstat, readdir, rename } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { Worker } from "node:worker_threads";
import type pino from "pino";
import type { Mount } from "../../../gen/containerd/types.js";
import type { GrowingFile } from "../../containerd/blobfile.js";
import { LayerFormatError, UnsupportedLayerError } from "./errors.js";
import { ABORTED, DONE, FAILED, type Job, newProgress, publish, type Result } from "./progress.js";
import { fromLowersPlaced } from "./target.js";

/** A layer's bytes in a file that may still be growing (the pull's ingest file: the content store's type). */
export type { GrowingFile };
export { LayerFormatError, UnsupportedLayerError };

/** A GrowingFile of a file that is complete already (docker load, tests). */
export function completeFile(path: string, size: number): GrowingFile {
  return { path, size, available: size, onProgress: () => () => undefined, done: Promise.resolve() };
}

const PLAIN = new Set([
  "application/vnd.oci.image.layer.v1.tar",
  "application/vnd.oci.image.layer.nondistributable.v1.tar",
  "application/vnd.docker.image.rootfs.diff.tar",
]);
const GZIP = new Set([
  "application/vnd.oci.image.layer.v1.tar+gzip",
  "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
  "application/vnd.docker.image.rootfs.diff.tar.gzip",
  "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
]);

/** Whether a layer of mediaType is gzipped; UnsupportedLayerError for one this applier does not read. */
export function isGzip(mediaType: string): boolean {
  if (GZIP.has(mediaType)) return true;
  if (PLAIN.has(mediaType)) return false;
  throw new UnsupportedLayerError(`layer media type ${mediaType}`);
}

/** Where Snapshots.Prepare's mounts say the layer goes; UnsupportedLayerError for anything but a single
 *  rw bind mount (a snapshot without a parent) or a single overlay mount with an upperdir. */
export function targetOf(mounts: Mount[]): Job["target"] {
  const m = mounts.length === 1 ? mounts[0]! : undefined;
  if (m?.type === "bind" && !m.options.includes("ro")) return { kind: "bind", root: m.source, lowers: [] };
  if (m?.type === "overlay") {
    let upper: string | undefined;
    let lowers: string[] = [];
    let userxattr = false;
    for (const o of m.options) {
      if (o.startsWith("upperdir=")) upper = o.slice("upperdir=".length);
      else if (o.startsWith("lowerdir=")) lowers = o.slice("lowerdir=".length).split(":");
      // User-namespace overlays mark whiteouts in user.overlay.*: not what this writer makes.
      else if (o === "userxattr") userxattr = true;
    }
    if (!userxattr && upper?.startsWith("/") && lowers.every((l) => l.startsWith("/"))) {
      return { kind: "overlay", root: upper, lowers };
    }
  }
  throw new UnsupportedLayerError(`snapshot mounts ${JSON.stringify(mounts.map((x) => [x.type, x.options]))}`);
}

/** The worker's compiled file: beside this module, or (running from source, as vitest does) under dist/. */
function workerFile(): URL {
  const here = fileURLToPath(import.meta.url);
  if (here.endsWith(".js")) {
    const url = new URL("./worker.js", import.meta.url);
    if (!existsSync(url)) throw new Error(`${fileURLToPath(url)} is missing`);
    return url;
  }
  const dir = dirname(here);
  const root = join(dir, "../../../..");
  const built = join(root, "dist", dir.slice(root.length), "worker.js");
  const stale = readdirSync(dir)
    .filter((f) => f.endsWith(".ts"))
    .filter((f) => {
      const js = join(dirname(built), basename(f, ".ts") + ".js");
      return !existsSync(js) || statSync(js).mtimeMs < statSync(join(dir, f)).mtimeMs;
    });
  if (stale.length > 0) {
    throw new Error(`the layer applier's worker is not built (or older than ${stale.join(", ")}): run npx tsc -p .`);
  }
  return new URL(`file://${built}`);
}

/** A layer applied into a directory of its own, waiting for its snapshot (LayerApplier.stage). */
export interface StagedLayer {
  dir: string;
  kind: "bind" | "overlay";
  /** The parents it made for its entries, for place() to give the lowers' attributes. */
  implicit: string[];
  /** The sha256 of its uncompressed stream, when it was asked for. */
  diffId?: string;
}

interface Slot {
  worker: Worker;
  jobs: Map<number, (r: Result) => void>;
}

export class LayerApplier {
  private readonly log: pino.Logger;
  private readonly slots: Slot[] = [];
  private nextId = 1;
  private closed = false;

  /** `workers`: how many layers may be applied at once (each in its own thread). */
  constructor(
    log: pino.Logger,
    private readonly workers = 2,
  ) {
    this.log = log.child({ component: "layer-applier" });
  }

  /** Starts the worker threads ahead of the first apply (one that cannot start is logged, and every apply
   *  is then left to containerd). */
  start(): void {
    if (this.slots.length > 0 || this.closed) return;
    try {
      // All of them: a thread started when a pull's second layer comes is ~100 ms late to it.
      while (this.slots.length < this.workers) this.spawn();
    } catch (err) {
      this.log.warn({ err }, "the layer applier cannot start its worker: containerd will apply layers");
    }
  }

  /**
   * Applies the layer (mediaType: OCI/docker tar or tar+gzip; anything else: UnsupportedLayerError) read
   * from `source` into the snapshot whose Snapshots.Prepare mounts are `mounts`. `source.path` is opened in
   * this call: it may be renamed or unlinked after. `hash` false: no SHA-256 (an uncompressed layer's diff
   * id is its digest, which the download verifies). Resolves with the sha256 of the uncompressed stream
   * ("sha256:<hex>"), or {} when hash is false. Rejects with UnsupportedLayerError (remove the snapshot;
   * containerd's Diff.Apply will do), LayerFormatError (the layer is bad), `source.done`'s error, the
   * signal's reason, or an Error from the file system.
   */
  async apply(
    source: GrowingFile,
    mediaType: string,
    mounts: Mount[],
    opts: { hash: boolean; signal?: AbortSignal },
  ): Promise<{ diffId?: string }> {
    const r = await this.unpack(source, mediaType, targetOf(mounts), opts);
    return r.diffId === undefined ? {} : { diffId: r.diffId };
  }

  /**
   * Applies a layer, as its bytes come, into `dir` (a new directory on the snapshots' file system) before
   * its snapshot can be prepared: its parent is not committed yet (the layer below still downloads or
   * unpacks). `base`: the layer will have no parent. place() then moves it into its snapshot.
   */
  async stage(
    source: GrowingFile,
    mediaType: string,
    dir: string,
    base: boolean,
    opts: { hash: boolean; signal?: AbortSignal },
  ): Promise<StagedLayer> {
    const kind = base ? "bind" : "overlay";
    const r = await this.unpack(source, mediaType, { kind, root: dir, lowers: [], staged: true }, opts);
    return { dir, kind, implicit: r.implicit, ...(r.diffId === undefined ? {} : { diffId: r.diffId }) };
  }

  /**
   * Moves a staged layer into the snapshot just prepared for it (`mounts`: empty, on the same file system):
   * the parents it made for its entries take their attributes from the lowers, as they would have had the
   * layer been applied there, then its top entries are renamed into the snapshot (what is in them moves
   * with them). UnsupportedLayerError if that cannot be done (a parent through a lower's symlink, another
   * file system): the caller removes the snapshot and lets containerd apply the layer.
   */
  async place(staged: StagedLayer, mounts: Mount[]): Promise<void> {
    const target = targetOf(mounts);
    if (target.kind !== staged.kind) {
      throw new UnsupportedLayerError(
        `a layer staged for a ${staged.kind} snapshot, which was prepared as ${target.kind}`,
      );
    }
    if ((await readdir(target.root)).length > 0) throw new UnsupportedLayerError(`${target.root} is not empty`);
    for (const rel of staged.implicit) {
      const path = join(staged.dir, rel);
      if ((await lstat(path).catch(() => undefined))?.isDirectory()) await fromLowersPlaced(rel, path, target.lowers);
    }
    for (const child of await readdir(staged.dir)) {
      try {
        await rename(join(staged.dir, child), join(target.root, child));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === "EXDEV")
          throw new UnsupportedLayerError(`${staged.dir} is not on the snapshot's file system`);
        throw err;
      }
    }
  }

  private async unpack(
    source: GrowingFile,
    mediaType: string,
    target: Job["target"],
    opts: { hash: boolean; signal?: AbortSignal },
  ): Promise<{ diffId?: string; implicit: string[] }> {
    const gzip = isGzip(mediaType);
    if (this.closed) throw new Error("the layer applier is closed");
    opts.signal?.throwIfAborted();
    // Opened now, in the call (a descriptor is the process's): the pull may move its ingest file into place
    // at any time after.
    const fd = openSync(source.path, "r");
    const progress = newProgress();
    publish(progress, { available: source.available });
    const unsubscribe = source.onProgress((available) => publish(progress, { available }));
    let sourceError: unknown;
    source.done.then(
      () => publish(progress, { available: source.size, status: DONE }),
      (err: unknown) => {
        sourceError = err;
        publish(progress, { status: FAILED });
      },
    );
    const onAbort = () => publish(progress, { status: ABORTED });
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    const t0 = performance.now();
    try {
      const job: Job = {
        id: this.nextId++,
        fd,
        size: source.size,
        gzip,
        hash: opts.hash,
        target,
        progress,
      };
      const r = await this.run(job);
      if (r.ok) {
        this.log.debug(
          { path: source.path, bytes: r.stats.bytes, ms: Math.round(performance.now() - t0) },
          "layer applied",
        );
        return r.diffId === undefined ? { implicit: r.implicit } : { diffId: r.diffId, implicit: r.implicit };
      }
      switch (r.kind) {
        case "unsupported":
          throw new UnsupportedLayerError(r.message);
        case "format":
          throw new LayerFormatError(r.message);
        case "source":
          throw sourceError ?? new Error(r.message);
        case "aborted":
          throw opts.signal?.reason ?? new Error(r.message);
        default:
          throw new Error(`applying the layer: ${r.message}`);
      }
    } finally {
      unsubscribe();
      opts.signal?.removeEventListener("abort", onAbort);
      closeSync(fd);
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    const slots = this.slots.splice(0);
    await Promise.all(slots.map((s) => s.worker.terminate()));
  }

  private run(job: Job): Promise<Result> {
    let slot = this.slots.reduce<Slot | undefined>(
      (a, s) => (a === undefined || s.jobs.size < a.jobs.size ? s : a),
      undefined,
    );
    if (slot === undefined || (slot.jobs.size > 0 && this.slots.length < this.workers)) slot = this.spawn();
    const s = slot;
    return new Promise<Result>((resolve) => {
      s.jobs.set(job.id, resolve);
      s.worker.ref();
      s.worker.postMessage(job);
    });
  }

  private spawn(): Slot {
    let worker: Worker;
    try {
      worker = new Worker(workerFile());
    } catch (err) {
      throw new UnsupportedLayerError(`the layer applier's worker cannot start: ${(err as Error).message}`);
    }
    const slot: Slot = { worker, jobs: new Map() };
    worker.unref();
    const fail = (message: string) => {
      const i = this.slots.indexOf(slot);
      if (i >= 0) this.slots.splice(i, 1);
      for (const [id, resolve] of slot.jobs) resolve({ id, ok: false, kind: "failed", message });
      slot.jobs.clear();
    };
    worker.on("message", (r: Result) => {
      const resolve = slot.jobs.get(r.id);
      slot.jobs.delete(r.id);
      if (slot.jobs.size === 0) worker.unref();
      resolve?.(r);
    });
    worker.on("error", (err) => {
      this.log.error({ err }, "the layer applier's worker failed");
      fail(`the layer applier's worker failed: ${err.message}`);
    });
    worker.on("exit", (code) => fail(`the layer applier's worker exited (${code})`));
    this.slots.push(slot);
    return slot;
  }
}
