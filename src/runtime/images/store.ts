// shoal's images, kept by containerd: an image is a containerd image record (its full name, pointing at a
// manifest or an index in the content store), its config blob, its layers, and the committed snapshots
// they unpack to. Names are full ("docker.io/library/busybox:latest"); the id is the config's digest, as
// docker's. Everything read back from containerd is parsed against its schema.
//
// What keeps what from containerd's garbage collector (its gc.ref labels): an image record keeps its
// manifest, a manifest its config and layers, a config the snapshot of its top layer, and a snapshot its
// parents. New content is written under a lease until its image record exists.

import { randomUUID } from "node:crypto";
import { mkdir, rm } from "node:fs/promises";
import { join } from "node:path";
import type { Logger } from "pino";
import type { z } from "zod";
import { ApiError, badRequest, conflict, notFound } from "../../api/errors.js";
import type { Image as ImageRecord } from "../../gen/containerd/images.js";
import type { Mount } from "../../gen/containerd/types.js";
import { blobPath, ingestDir } from "../containerd/blobfile.js";
import { type Containerd, isAlreadyExists, isNotFound, SNAPSHOTTER } from "../containerd/client.js";
import { ContentStore } from "../containerd/content.js";
import {
  completeFile,
  type GrowingFile,
  LayerApplier,
  type StagedLayer,
  UnsupportedLayerError,
} from "./apply/applier.js";
import {
  chainIds,
  type Descriptor,
  type ImageConfig,
  ImageConfigSchema,
  INDEX_TYPES,
  IndexSchema,
  MANIFEST_TYPES,
  type Manifest,
  ManifestSchema,
  parseDocument,
  pickManifest,
  UNCOMPRESSED_LAYER_TYPES,
} from "./oci.js";
import { familiarName, fullName, looksLikeId, parseReference, repositoryOf } from "./reference.js";

/** An image as shoal uses it: where it came from, what it runs, what it unpacks to. */
export interface ResolvedImage {
  /** The config's digest: docker's image id. */
  id: string;
  /** Full names pointing at it. */
  names: string[];
  /** The manifest (or index) digest each name points at. */
  targets: Descriptor[];
  manifest: Manifest;
  config: ImageConfig;
  /** The chain id of its top layer: the snapshot a container's root file system is prepared on. */
  topChainId: string;
  createdAt: Date | undefined;
}

export const noSuchImage = (ref: string): ApiError => notFound(`No such image: ${ref}`);

/** Labels that tie a blob's children to it for containerd's garbage collector. */
export function gcLabelsOfManifest(m: Manifest): Record<string, string> {
  const labels: Record<string, string> = { "containerd.io/gc.ref.content.config": m.config.digest };
  m.layers.forEach((l, i) => {
    labels[`containerd.io/gc.ref.content.l.${i}`] = l.digest;
  });
  return labels;
}

export function gcLabelsOfConfig(c: ImageConfig): Record<string, string> {
  const top = chainIds(c.rootfs.diff_ids).at(-1);
  return top ? { [`containerd.io/gc.ref.snapshot.${SNAPSHOTTER}`]: top } : {};
}

/** How many parsed documents (manifests, indexes, configs) an image store keeps. */
const DOCUMENT_CACHE_ENTRIES = 512;

export class ImageStore {
  readonly content: ContentStore;
  readonly log: Logger;
  /** Parsed documents by what they are and their digest, least recently used first. */
  private readonly documents = new Map<string, unknown>();

  /** shoald's own layer applier: layers unpack in a worker thread, while they download. */
  private readonly applier: LayerApplier;

  /** `root`: a managed containerd's root, where blobs are put in place (ContentStore) and read from. */
  constructor(
    private readonly cd: Containerd,
    logger: Logger,
    private readonly root?: string,
  ) {
    this.content = new ContentStore(cd, root);
    this.log = logger.child({ component: "images" });
    this.applier = new LayerApplier(this.log);
    // Warm before the first pull (a thread's start is tens of ms): it waits unref'd, keeping nothing alive.
    this.applier.start();
  }

  /** Ends the applier's worker. */
  close(): Promise<void> {
    return this.applier.close();
  }

  /**
   * A lease for a write (an import, a pull): what is written under it stays until `done` is called. A write
   * that failed ends its lease with `collect`: containerd's garbage collector then runs before `done`
   * resolves, and takes what nothing else keeps (the blobs, documents and snapshots of the failed write).
   */
  async lease(): Promise<{ id: string; done(collect?: boolean): Promise<void> }> {
    const id = `shoal-${randomUUID()}`;
    await this.cd.call(this.cd.leases, this.cd.leases.create, { id, labels: {} });
    return {
      id,
      done: async (collect = false) => {
        await this.cd
          .call(this.cd.leases, this.cd.leases.delete, { id, sync: collect })
          .catch((err: unknown) =>
            this.log.warn(
              { err, lease: id },
              "could not delete a lease: what was written under it stays kept from garbage collection",
            ),
          );
      },
    };
  }

  /**
   * A JSON document (manifest, index, config) of the content store, parsed. Content is addressed by its
   * digest, so a document read once is the same ever after: the parsed ones are kept (the most recent
   * DOCUMENT_CACHE_ENTRIES), and a `docker run` of a present image reads none of them again.
   */
  async readJson<S extends Parameters<typeof parseDocument>[0]>(
    schema: S,
    digest: string,
    what: string,
  ): Promise<z.infer<S>> {
    const key = `${what} ${digest}`;
    const cached = this.documents.get(key);
    if (cached !== undefined) {
      this.documents.delete(key);
      this.documents.set(key, cached);
      return cached as z.infer<S>;
    }
    const doc = parseDocument(schema, await this.content.read(digest));
    if (doc === undefined) throw new ApiError(500, `the ${what} ${digest} in the content store is not a valid ${what}`);
    this.documents.set(key, doc);
    if (this.documents.size > DOCUMENT_CACHE_ENTRIES) this.documents.delete(this.documents.keys().next().value!);
    return doc;
  }

  /** The manifest for this host that a target (manifest or index) names. */
  async manifestOf(target: Descriptor): Promise<{ manifest: Manifest; digest: string }> {
    if (INDEX_TYPES.includes(target.mediaType)) {
      const index = await this.readJson(IndexSchema, target.digest, "index");
      const m = pickManifest(index);
      if (!m) throw badRequest("no matching manifest for linux/amd64 in the manifest list entries");
      return { manifest: await this.readJson(ManifestSchema, m.digest, "manifest"), digest: m.digest };
    }
    if (!MANIFEST_TYPES.includes(target.mediaType)) throw badRequest(`unsupported media type ${target.mediaType}`);
    return { manifest: await this.readJson(ManifestSchema, target.digest, "manifest"), digest: target.digest };
  }

  private async records(): Promise<ImageRecord[]> {
    const r = await this.cd.call(this.cd.images, this.cd.images.list, { filters: [] });
    return r.images;
  }

  private targetOf(r: ImageRecord): Descriptor {
    const t = r.target;
    if (!t) throw new ApiError(500, `image ${r.name} has no target`);
    return { mediaType: t.mediaType, digest: t.digest, size: t.size };
  }

  private async resolveRecords(records: ImageRecord[]): Promise<ResolvedImage> {
    const first = records[0]!;
    const { manifest } = await this.manifestOf(this.targetOf(first));
    const config = await this.readJson(ImageConfigSchema, manifest.config.digest, "image config");
    return {
      id: manifest.config.digest,
      names: records.map((r) => r.name),
      targets: records.map((r) => this.targetOf(r)),
      manifest,
      config,
      topChainId: chainIds(config.rootfs.diff_ids).at(-1) ?? "",
      createdAt: first.createdAt,
    };
  }

  /** Every image, once per id, with all its names. */
  async list(): Promise<ResolvedImage[]> {
    const byId = new Map<string, ImageRecord[]>();
    for (const r of await this.records()) {
      try {
        const { manifest } = await this.manifestOf(this.targetOf(r));
        const list = byId.get(manifest.config.digest) ?? [];
        list.push(r);
        byId.set(manifest.config.digest, list);
      } catch (err) {
        this.log.warn({ err, image: r.name }, "skipping an image whose manifest cannot be read");
      }
    }
    const out: ResolvedImage[] = [];
    for (const records of byId.values()) out.push(await this.resolveRecords(records));
    return out;
  }

  /** An image by name or id; undefined when there is none (other failures are thrown). */
  async find(ref: string): Promise<ResolvedImage | undefined> {
    try {
      return await this.resolve(ref);
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) return undefined;
      throw err;
    }
  }

  /** An image by name ("busybox", "busybox:1", "x@sha256:...") or by id or unique id prefix. */
  async resolve(ref: string): Promise<ResolvedImage> {
    let name: string | undefined;
    try {
      name = fullName(parseReference(ref));
    } catch (err) {
      if (!looksLikeId(ref)) throw err;
    }
    const all = await this.records();
    if (name !== undefined) {
      const r = all.find((x) => x.name === name);
      if (r) return this.withAllNames(r, all);
    }
    if (looksLikeId(ref)) {
      const prefix = ref.startsWith("sha256:") ? ref : `sha256:${ref}`;
      const images = (await this.list()).filter((i) => i.id.startsWith(prefix));
      if (images.length === 1) return images[0]!;
      if (images.length > 1) throw badRequest(`multiple images found with provided prefix: ${ref}`);
    }
    throw noSuchImage(ref);
  }

  /** The image a record points at, with every name that points at the same image (config). */
  private async withAllNames(r: ImageRecord, all: ImageRecord[]): Promise<ResolvedImage> {
    const id = (await this.manifestOf(this.targetOf(r))).manifest.config.digest;
    const same: ImageRecord[] = [r];
    for (const x of all) {
      if (x === r || x.name === r.name) continue;
      try {
        if ((await this.manifestOf(this.targetOf(x))).manifest.config.digest === id) same.push(x);
      } catch (err) {
        this.log.warn({ err, image: x.name }, "skipping an image whose manifest cannot be read");
      }
    }
    return this.resolveRecords(same);
  }

  /** Points `name` (a full name) at `target`, replacing what it pointed at. */
  async setName(name: string, target: Descriptor, lease?: string): Promise<void> {
    const image = {
      name,
      labels: {},
      target: { ...target, annotations: {} },
      createdAt: new Date(),
      updatedAt: new Date(),
    };
    try {
      await this.cd.call(this.cd.images, this.cd.images.create, { image }, lease ? { lease } : {});
    } catch (err) {
      if (!isAlreadyExists(err)) throw err;
      await this.cd.call(this.cd.images, this.cd.images.delete, { name, sync: false });
      await this.cd.call(this.cd.images, this.cd.images.create, { image }, lease ? { lease } : {});
    }
  }

  /** `docker tag SOURCE TARGET`. */
  async tag(source: string, target: string): Promise<void> {
    const img = await this.resolve(source);
    const name = fullName(parseReference(target));
    if (parseReference(target).digest) throw badRequest("refusing to create a tag with a digest reference");
    // The first name is the one `source` named (or, by id, any): the new name points where it points.
    await this.setName(name, img.targets[0]!);
  }

  /**
   * `docker rmi`: removes a name (or, by id, every name of the image). `inUse` names a container that uses
   * the image; then only `force` removes it. Returns docker's list of what was untagged and deleted.
   */
  async remove(
    ref: string,
    force: boolean,
    inUse: (imageId: string) => string | undefined,
  ): Promise<{ Untagged?: string; Deleted?: string }[]> {
    const img = await this.resolve(ref);
    const byName = !looksLikeId(ref) || img.names.some((n) => n === safeFullName(ref));
    const names = byName ? [safeFullName(ref)!] : img.names;
    if (!byName && img.names.length > 1 && !force) {
      throw conflict(
        `conflict: unable to delete ${img.id.slice(7, 19)} (must be forced) - image is referenced in multiple repositories`,
      );
    }
    const last = names.length === img.names.length;
    const user = inUse(img.id);
    if (last && user && !force) {
      throw conflict(
        `conflict: unable to remove repository reference "${ref}" (must force) - container ${user.slice(0, 12)} is using its referenced image ${img.id.slice(7, 19)}`,
      );
    }
    const out: { Untagged?: string; Deleted?: string }[] = [];
    for (const n of names) {
      await this.cd.call(this.cd.images, this.cd.images.delete, { name: n, sync: last && !user });
      out.push({ Untagged: familiarName(n) });
    }
    if (last && !user) out.push({ Deleted: img.id });
    return out;
  }

  /** Whether an image's top snapshot is there (the image is unpacked). */
  async unpacked(img: ResolvedImage): Promise<boolean> {
    if (img.topChainId === "") return true;
    try {
      await this.cd.call(this.cd.snapshots, this.cd.snapshots.stat, { snapshotter: SNAPSHOTTER, key: img.topChainId });
      return true;
    } catch (err) {
      if (isNotFound(err)) return false;
      throw err;
    }
  }

  /**
   * Unpacks an image's layers into committed snapshots (those there already are kept), bottom up. A layer is
   * applied by shoald's own applier (apply/, in worker threads) from the file its bytes are in: `source(i)`
   * gives a pull's layer as the file it is still downloading into, as soon as its download starts, and the
   * layer applies as its bytes come; otherwise, once `ready(i)` says the layer is in the content store, from
   * its blob there (a managed containerd's). Every layer applies at once, each into a directory of its own
   * (staged): a snapshot can only be prepared on a committed parent, so each is then moved into its
   * snapshot, bottom up, and committed once its bytes are verified against the digest and its diff id
   * checked against the config's. A layer the applier does not take (zstd, a path through a symlink), or
   * one there is no file for (another containerd's content store), is applied by containerd (Diff.Apply).
   * `done(i)` is told when layer i is unpacked.
   */
  async unpack(
    manifest: Manifest,
    config: ImageConfig,
    lease: string,
    hooks: {
      source?: (i: number) => Promise<GrowingFile | undefined>;
      ready?: (i: number) => Promise<void>;
      done?: (i: number) => void;
    } = {},
  ): Promise<void> {
    const chain = chainIds(config.rootfs.diff_ids);
    if (chain.length !== manifest.layers.length) {
      throw badRequest(`image config has ${chain.length} layers but its manifest ${manifest.layers.length}`);
    }
    const there = await Promise.all(chain.map((c) => this.snapshotExists(c)));
    // Each layer's ready() is asked once, by whichever needs it first.
    const readies = new Map<number, Promise<void>>();
    const ready = (i: number): Promise<void> => {
      let r = readies.get(i);
      if (r === undefined) {
        r = Promise.resolve(hooks.ready?.(i));
        readies.set(i, r);
      }
      return r;
    };
    const staging = manifest.layers.map((layer, i) => {
      if (there[i]) return undefined;
      const s = this.stage(layer, config.rootfs.diff_ids[i]!, i === 0, hooks.source?.(i), () => ready(i));
      // Its failure is thrown where the layer's turn awaits it; one whose turn never comes is not unhandled.
      s.catch(() => undefined);
      return s;
    });
    try {
      let parent = "";
      for (const [i, layer] of manifest.layers.entries()) {
        const chainId = chain[i]!;
        if (there[i]) await ready(i);
        else {
          await this.applyLayer(layer, config.rootfs.diff_ids[i]!, parent, chainId, lease, {
            staged: staging[i]!,
            ready: () => ready(i),
          });
        }
        hooks.done?.(i);
        parent = chainId;
      }
    } finally {
      // Placed layers leave their directories empty; after a failure the others may still be staging (until
      // their downloads end, which the pull waits for anyway): their directories go once they are done.
      await Promise.all(
        staging.map((s) =>
          s?.then(
            (st) => st && this.dropStaged(st),
            () => undefined,
          ),
        ),
      );
    }
  }

  private async snapshotExists(key: string): Promise<boolean> {
    try {
      await this.cd.call(this.cd.snapshots, this.cd.snapshots.stat, { snapshotter: SNAPSHOTTER, key });
      return true;
    } catch (err) {
      if (isNotFound(err)) return false;
      throw err;
    }
  }

  /**
   * Applies a layer into a directory of its own (LayerApplier.stage), from `source` (a pull's file, as it
   * downloads) or, with none, from its blob once `ready`; resolves once its bytes are verified too.
   * Undefined when there is nothing to apply it from or the applier leaves it to containerd.
   */
  private async stage(
    layer: Descriptor,
    diffId: string,
    base: boolean,
    source: Promise<GrowingFile | undefined> | undefined,
    ready: () => Promise<void>,
  ): Promise<StagedLayer | undefined> {
    if (this.root === undefined) return undefined;
    let file = await source;
    if (!file) {
      await ready();
      file = this.blobFile(layer);
      if (!file) return undefined;
    }
    const dir = join(ingestDir(this.root), `stage-${randomUUID()}`);
    await mkdir(dir, { recursive: true });
    // An uncompressed layer's diff id is its digest, which the download (or the content store) verified.
    const known = UNCOMPRESSED_LAYER_TYPES.includes(layer.mediaType) && diffId === layer.digest;
    // Both settle before anything else is done: a download that failed stops the applier, and the
    // directory is removed only once nothing writes into it.
    const [a, d] = await Promise.allSettled([
      this.applier.stage(file, layer.mediaType, dir, base, { hash: !known }),
      file.done,
    ]);
    if (d.status === "fulfilled" && a.status === "fulfilled") {
      return known ? { ...a.value, diffId: layer.digest } : a.value;
    }
    await rm(dir, { recursive: true, force: true });
    if (d.status === "rejected") throw d.reason;
    const err: unknown = (a as PromiseRejectedResult).reason;
    if (!(err instanceof UnsupportedLayerError)) throw err;
    this.log.debug({ layer: layer.digest, reason: err.message }, "layer left to containerd to apply");
    return undefined;
  }

  private async dropStaged(st: StagedLayer): Promise<void> {
    await rm(st.dir, { recursive: true, force: true }).catch((err: unknown) =>
      this.log.warn({ err, dir: st.dir }, "could not remove a staged layer (it goes when shoald next starts)"),
    );
  }

  /** A layer's blob as a file to read, when the content store is a managed containerd's (its root known). */
  private blobFile(layer: Descriptor): GrowingFile | undefined {
    if (this.root === undefined || !/^sha256:[0-9a-f]{64}$/.test(layer.digest)) return undefined;
    return completeFile(blobPath(this.root, layer.digest), layer.size);
  }

  private async prepare(key: string, parent: string, lease: string): Promise<Mount[]> {
    const r = await this.cd.call(
      this.cd.snapshots,
      this.cd.snapshots.prepare,
      { snapshotter: SNAPSHOTTER, key, parent, labels: {} },
      { lease },
    );
    return r.mounts;
  }

  private async removeSnapshot(key: string): Promise<void> {
    await this.cd
      .call(this.cd.snapshots, this.cd.snapshots.remove, { snapshotter: SNAPSHOTTER, key })
      .catch((e: unknown) => {
        if (!isNotFound(e))
          this.log.warn({ err: e, key }, "could not remove a half-unpacked layer: the lease's end removes it");
      });
  }

  /**
   * Applies one layer onto `parent` and commits it as `chainId`: the layer `staged` by shoald's applier is
   * moved into the snapshot, else containerd applies it once it is `ready` (in the content store).
   */
  private async applyLayer(
    layer: Descriptor,
    diffId: string,
    parent: string,
    chainId: string,
    lease: string,
    from: { staged: Promise<StagedLayer | undefined>; ready: () => Promise<void> },
  ): Promise<void> {
    const cd = this.cd;
    let key = `extract-${randomUUID()} ${chainId}`;
    const t0 = performance.now();
    // Prepared as soon as its parent is committed, while the layer may still be staging.
    let mounts = await this.prepare(key, parent, lease);
    const t1 = performance.now();
    let by = "shoald";
    try {
      const staged = await from.staged;
      let applied: string | undefined;
      if (staged) {
        try {
          await this.applier.place(staged, mounts);
          applied = staged.diffId;
        } catch (err) {
          if (!(err instanceof UnsupportedLayerError)) throw err;
          this.log.debug({ layer: layer.digest, reason: err.message }, "layer left to containerd to apply");
          // What was moved in goes with its snapshot: containerd applies onto a new one.
          await this.removeSnapshot(key);
          key = `extract-${randomUUID()} ${chainId}`;
          mounts = await this.prepare(key, parent, lease);
        }
      }
      if (applied === undefined) {
        by = "containerd";
        await from.ready();
        const r = await cd.call(cd.diff, cd.diff.apply, {
          diff: { mediaType: layer.mediaType, digest: layer.digest, size: layer.size, annotations: {} },
          mounts,
          payloads: {},
        });
        applied = r.applied?.digest;
      }
      if (applied !== diffId) {
        throw badRequest(
          `layer ${layer.digest} unpacks to ${applied ?? "nothing"}, but the image config says ${diffId}`,
        );
      }
      const t2 = performance.now();
      try {
        await cd.call(
          cd.snapshots,
          cd.snapshots.commit,
          { snapshotter: SNAPSHOTTER, name: chainId, key, labels: {} },
          { lease },
        );
      } catch (err) {
        if (!isAlreadyExists(err)) throw err;
        // Another unpack committed it meanwhile (a pull of another image with this layer, at the same time):
        // a chain id names the same content. Kept by this lease too, for the layers above it; this one goes.
        await cd.call(cd.leases, cd.leases.addResource, {
          id: lease,
          resource: { id: chainId, type: `snapshots/${SNAPSHOTTER}` },
        });
        await this.removeSnapshot(key);
        this.log.debug({ layer: layer.digest }, "layer unpacked meanwhile by another pull");
        return;
      }
      this.log.debug(
        { layer: layer.digest, by, prepareMs: ms(t1 - t0), applyMs: ms(t2 - t1), commitMs: ms(performance.now() - t2) },
        "layer applied",
      );
    } catch (err) {
      await this.removeSnapshot(key);
      throw err;
    }
  }

  /** The repository@digest names of an image (docker's RepoDigests). */
  repoDigests(img: ResolvedImage): string[] {
    const out = new Set<string>();
    img.names.forEach((n, i) => {
      const ref = parseReference(n);
      if (ref.domain !== "" && img.targets[i]) out.add(familiarName(`${repositoryOf(ref)}@${img.targets[i]!.digest}`));
    });
    return [...out];
  }
}

/** A duration for a log line, in ms to a tenth. */
const ms = (x: number): number => Math.round(x * 10) / 10;

function safeFullName(ref: string): string | undefined {
  try {
    return fullName(parseReference(ref));
  } catch {
    // Not a name (an id): it names no tag.
    return undefined;
  }
}
