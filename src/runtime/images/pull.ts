// `docker pull`: the manifest (through an index, for this host) and its config, then every layer, each
// checked against its digest as it is written to containerd's content store under a lease, unpacked, and
// named. Progress is told in docker's JSON messages (what the docker CLI draws as per-layer bars). Until
// the manifest is resolved nothing is said, so a bad reference or an unknown image is an HTTP error.

import { badRequest } from "../../api/errors.js";
import { toBeTold } from "../async.js";
import { DigestMismatchError, type IngestFile, SizeMismatchError } from "../containerd/content.js";
import { HeadFirst } from "./headfirst.js";
import {
  type Descriptor,
  type ImageConfig,
  ImageConfigSchema,
  INDEX_TYPES,
  IndexSchema,
  type Manifest,
  ManifestSchema,
  parseDocument,
  pickManifest,
  sha256,
} from "./oci.js";
import { releaseChunk } from "./rawget.js";
import { familiarName, familiarRepository, fullName, parseReference, type Reference } from "./reference.js";
import { type Credentials, Registry, RegistryError, readBody } from "./registry.js";
import { gcLabelsOfConfig, gcLabelsOfManifest, type ImageStore } from "./store.js";

/** A message of docker's JSON progress stream. */
export interface PullProgress {
  status?: string;
  id?: string;
  progressDetail?: { current?: number; total?: number };
  progress?: string;
  error?: string;
  errorDetail?: { message: string };
}

export interface PullOptions {
  insecureRegistries: string[];
  /** Layers downloaded at once (default MAX_CONCURRENT_DOWNLOADS). */
  maxConcurrentDownloads?: number;
  credentials?: Credentials;
}

const MAX_CONFIG_BYTES = 8 * 1024 * 1024;
/**
 * How many layers download at once, unless shoald --max-concurrent-downloads says otherwise (3, as dockerd):
 * the others wait their turn, in the manifest's order, the next one starting as soon as the last one's bytes
 * are in (containerd still records them). Their bodies are read lowest layer first (headfirst.ts): from a
 * registry on the LAN, faster than shoald takes bytes, layers come in one after the other and the lower
 * ones are committed while the next ones download; from a registry far away, slower per connection, they
 * come side by side (hence dockerd's default).
 */
export const MAX_CONCURRENT_DOWNLOADS = 3;
/** How often (in bytes) a layer's download progress is told. */
const PROGRESS_STEP_BYTES = 512 * 1024;

function units(n: number): string {
  if (n < 1000) return `${n}B`;
  if (n < 1000 * 1000) return `${(n / 1000).toFixed(1)}kB`;
  if (n < 1000 * 1000 * 1000) return `${(n / 1e6).toFixed(1)}MB`;
  return `${(n / 1e9).toFixed(2)}GB`;
}

/** docker's progress bar: "[==========>                                        ]  1.2MB/5.4MB". */
export function progressBar(current: number, total: number): string {
  const width = 50;
  const done = total > 0 ? Math.min(width, Math.floor((current / total) * width)) : 0;
  const bar =
    done >= width
      ? "=".repeat(width)
      : `${"=".repeat(Math.max(0, done - 1))}${done > 0 ? ">" : ""}${" ".repeat(width - done)}`;
  return `[${bar}] ${units(current).padStart(8)}/${units(total)}`;
}

const short = (digest: string): string => digest.slice(7, 19);

/** Marks of a pull's timeline (ms since its start), logged at debug when it ends. */
type Mark = (what: string) => void;

/** The manifest a reference names, for this host, checked against its digest. */
async function resolveManifest(
  reg: Registry,
  ref: Reference,
): Promise<{ manifest: Manifest; bytes: Buffer; target: Descriptor; index?: { bytes: Buffer; target: Descriptor } }> {
  const reference = ref.digest ?? ref.tag!;
  const got = await reg.manifest(reference);
  const digest = sha256(got.data);
  if (ref.digest && digest !== ref.digest)
    throw new RegistryError(500, `manifest verification failed for digest ${ref.digest}`);
  if (got.digestHeader && got.digestHeader !== digest)
    throw new RegistryError(
      500,
      `manifest verification failed: the registry says ${got.digestHeader}, its bytes are ${digest}`,
    );
  const target: Descriptor = { mediaType: got.mediaType, digest, size: got.data.length };
  if (!INDEX_TYPES.includes(got.mediaType)) {
    const manifest = parseDocument(ManifestSchema, got.data);
    if (!manifest) throw new RegistryError(500, `the manifest of ${familiarRepository(ref)} is not an image manifest`);
    return { manifest, bytes: got.data, target };
  }
  const index = parseDocument(IndexSchema, got.data);
  if (!index) throw new RegistryError(500, `the manifest list of ${familiarRepository(ref)} is not an image index`);
  const m = pickManifest(index);
  if (!m) throw new RegistryError(404, "no matching manifest for linux/amd64 in the manifest list entries");
  const inner = await reg.manifest(m.digest);
  if (sha256(inner.data) !== m.digest)
    throw new RegistryError(500, `manifest verification failed for digest ${m.digest}`);
  const manifest = parseDocument(ManifestSchema, inner.data);
  if (!manifest) throw new RegistryError(500, `the manifest ${m.digest} is not an image manifest`);
  return { manifest, bytes: inner.data, target: { ...m, mediaType: m.mediaType }, index: { bytes: got.data, target } };
}

async function fetchConfig(reg: Registry, desc: Descriptor): Promise<{ bytes: Buffer; config: ImageConfig }> {
  const bytes = await readBody(await reg.blob(desc.digest), MAX_CONFIG_BYTES);
  if (sha256(bytes) !== desc.digest)
    throw new RegistryError(500, `digest mismatch for image config ${desc.digest}: the registry sent ${sha256(bytes)}`);
  const config = parseDocument(ImageConfigSchema, bytes);
  if (!config) throw new RegistryError(500, `${desc.digest} is not an image config`);
  return { bytes, config };
}

/** The chunks of `source`; `onEnd` is told when they have all been taken (or the taker stopped). */
async function* whole(source: AsyncIterable<Buffer>, onEnd: () => void): AsyncGenerator<Buffer> {
  try {
    yield* source;
  } finally {
    onEnd();
  }
}

/** What a pull tells of one layer's download. */
interface LayerFetch {
  /** Told when the layer's bytes are all in (containerd still commits them). */
  received: () => void;
  /**
   * Told once, as soon as it is known: the file the layer is being downloaded into (its unpack follows it),
   * or undefined (the layer is there already, or its bytes go to a containerd's content store through its
   * API: it unpacks once it is in).
   */
  file: (f: IngestFile | undefined) => void;
}

/**
 * Downloads one layer into the content store (unless it is there), telling its progress; false if it was.
 */
async function fetchLayer(
  store: ImageStore,
  reg: Registry,
  l: Descriptor,
  at: { index: number; order: HeadFirst },
  lease: string,
  say: (p: PullProgress) => void,
  tell: LayerFetch,
  mark: Mark,
): Promise<boolean> {
  const id = short(l.digest);
  mark(`${id} turn`);
  if (await store.content.has(l.digest)) {
    say({ status: "Already exists", progressDetail: {}, id });
    tell.file(undefined);
    return false;
  }
  say({ status: "Pulling fs layer", progressDetail: {}, id });
  const body = whole(at.order.read(at.index, await reg.blob(l.digest)), () => {
    mark(`${id} received`);
    tell.received();
  });
  mark(`${id} response`);
  let told = 0;
  const verified = (): void => {
    say({ status: "Verifying Checksum", progressDetail: {}, id });
    say({ status: "Download complete", progressDetail: {}, id });
  };
  let following = false;
  // The body's chunks are the registry client's reused memory (rawget.ts): given back once written.
  await store.content.write({ digest: l.digest, size: l.size }, body, lease, {
    onWritten: releaseChunk,
    onProgress: (bytes) => {
      if (bytes - told >= PROGRESS_STEP_BYTES || bytes === l.size) {
        told = bytes;
        say({
          status: "Downloading",
          progressDetail: { current: bytes, total: l.size },
          progress: progressBar(bytes, l.size),
          id,
        });
      }
    },
    onFile: (file) => {
      following = true;
      // Said once the bytes are verified, before the unpack that follows the file can end (docker's order:
      // the layer's download is complete before its extraction is).
      file.done.then(
        () => {
          mark(`${id} verified`);
          verified();
        },
        () => undefined,
      );
      tell.file(file);
    },
  });
  mark(`${id} committed`);
  if (!following) {
    tell.file(undefined);
    verified();
  }
  return true;
}

/** Runs at most `n` of the tasks given it at once, the others in the order they were given. */
export function turns(n: number): <T>(task: () => Promise<T>) => Promise<T> {
  let running = 0;
  const queue: (() => void)[] = [];
  // A task that ends hands its place to the next one waiting.
  const next = (): void => {
    const start = queue.shift();
    if (start) start();
    else running--;
  };
  return <T>(task: () => Promise<T>): Promise<T> =>
    new Promise<void>((start) => {
      if (running < n) {
        running++;
        start();
      } else queue.push(start);
    }).then(async () => {
      try {
        return await task();
      } finally {
        next();
      }
    });
}

/**
 * Runs `task` in its turn, a turn that ends as soon as the task says its bytes are all received (or it
 * ends): the next download starts while containerd commits the last one's blob (its fsync). Resolves as
 * the task does.
 */
export function inTurn<T>(turn: ReturnType<typeof turns>, task: (received: () => void) => Promise<T>): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    void turn(
      () =>
        new Promise<void>((received) => {
          task(received).then(resolve, reject).finally(received);
        }),
    );
  });
}

/**
 * Writes the documents of a pull (config, manifest, and the index it came through) into the content store,
 * each with the gc.ref labels that keep its children.
 */
function writeDocuments(
  store: ImageStore,
  resolved: Awaited<ReturnType<typeof resolveManifest>>,
  config: ImageConfig,
  configBytes: Buffer,
  lease: string,
): Promise<void>[] {
  const { manifest, bytes: manifestBytes } = resolved;
  const writes = [
    store.content.write(
      { digest: manifest.config.digest, size: manifest.config.size, labels: gcLabelsOfConfig(config) },
      configBytes,
      lease,
    ),
    store.content.write(
      { digest: resolved.target.digest, size: manifestBytes.length, labels: gcLabelsOfManifest(manifest) },
      manifestBytes,
      lease,
    ),
  ];
  if (resolved.index) {
    const labels = { "containerd.io/gc.ref.content.m.0": resolved.target.digest };
    writes.push(
      store.content.write(
        { digest: resolved.index.target.digest, size: resolved.index.bytes.length, labels },
        resolved.index.bytes,
        lease,
      ),
    );
  }
  return writes;
}

/**
 * Pulls `text` ("busybox", "registry.lab:5000/tools/busybox:1.36"). Throws (an HTTP error) before the first
 * message when the image cannot be found; after that, failures are thrown too and the caller says them as
 * the stream's error message.
 */
export async function pullImage(
  store: ImageStore,
  text: string,
  opts: PullOptions,
  say: (p: PullProgress) => void,
): Promise<void> {
  const t0 = performance.now();
  const marks: string[] = [];
  const mark: Mark = (what) => marks.push(`${(performance.now() - t0).toFixed(1)} ${what}`);
  try {
    await pull(store, text, opts, say, mark);
  } finally {
    store.log.debug({ marks }, "pull timeline");
  }
}

async function pull(
  store: ImageStore,
  text: string,
  opts: PullOptions,
  say: (p: PullProgress) => void,
  mark: Mark,
): Promise<void> {
  const ref = parseReference(text);
  const reg = new Registry(ref, opts.insecureRegistries, opts.credentials);
  const resolved = await resolveManifest(reg, ref);
  mark("manifest");
  const { manifest } = resolved;
  // docker names the repository's path in its registry ("library/busybox", "team/web"), not the registry.
  say({ status: `Pulling from ${ref.path}`, id: ref.tag ?? ref.digest ?? "latest" });
  const name = fullName(ref);
  const before = await store.find(name);
  const target0 = resolved.index?.target ?? resolved.target;
  if (before?.targets.some((t) => t.digest === target0.digest) && (await store.unpacked(before))) {
    say({ status: `Digest: ${target0.digest}` });
    say({ status: `Status: Image is up to date for ${familiarName(name)}` });
    return;
  }
  const lease = await store.lease();
  mark("lease");
  let failed = true;
  try {
    // The config and every layer download at once; each layer is unpacked as soon as it and the layers
    // below it are in (and the config, which names what each unpacks to, is here). The documents go into
    // the content store as soon as the config is here, beside the layers: the lease keeps them (and what
    // their gc.ref labels name) until the image record does.
    const configFetch = fetchConfig(reg, manifest.config);
    const turn = turns(opts.maxConcurrentDownloads ?? MAX_CONCURRENT_DOWNLOADS);
    const order = new HeadFirst();
    const files = manifest.layers.map(() => toBeTold<IngestFile | undefined>());
    const downloads = manifest.layers.map((l, index) => {
      const d = inTurn(turn, (received) =>
        fetchLayer(store, reg, l, { index, order }, lease.id, say, { received, file: files[index]!.resolve }, mark),
      );
      // A download that failed before its file was known has none to follow.
      d.catch(() => undefined).finally(() => files[index]!.resolve(undefined));
      return d;
    });
    const documents = configFetch.then(({ bytes, config }) =>
      Promise.allSettled(writeDocuments(store, resolved, config, bytes, lease.id)).finally(() => mark("documents")),
    );
    const settled = Promise.allSettled([documents, ...downloads]);
    const fetched: boolean[] = [];
    const id = (i: number): string => short(manifest.layers[i]!.digest);
    try {
      const { config } = await configFetch;
      mark("config");
      if (config.rootfs.diff_ids.length !== manifest.layers.length)
        throw badRequest("the image config and its manifest name different numbers of layers");
      await store.unpack(manifest, config, lease.id, {
        source: async (i) => {
          const file = await files[i]!.promise;
          if (file) {
            fetched[i] = true;
            mark(`${id(i)} unpack (following the download)`);
          }
          return file;
        },
        ready: async (i) => {
          fetched[i] = await downloads[i]!;
          mark(`${id(i)} unpack`);
        },
        done: (i) => {
          mark(`${id(i)} unpacked`);
          if (!fetched[i]) return;
          say({ status: "Extracting", progressDetail: {}, id: id(i) });
          say({ status: "Pull complete", progressDetail: {}, id: id(i) });
        },
      });
      for (const w of await documents) if (w.status === "rejected") throw w.reason;
    } finally {
      // No download or write outlives the pull, nor its lease: after a failure the others are waited for.
      await settled;
      // The unpack is over: the files it followed may go (the blobs stay, linked into the content store).
      for (const f of files) void f.promise.then((file) => file?.release());
    }
    const target = resolved.index?.target ?? resolved.target;
    await store.setName(name, target, lease.id);
    mark("named");
    say({ status: `Digest: ${target.digest}` });
    say({ status: `Status: Downloaded newer image for ${familiarName(name)}` });
    failed = false;
  } catch (err) {
    if (err instanceof DigestMismatchError || err instanceof SizeMismatchError) {
      throw new RegistryError(500, `failed to pull ${familiarName(name)}: ${err.message}`);
    }
    throw err;
  } finally {
    // A failed pull leaves nothing behind: what it wrote (layers, documents, snapshots) goes with its lease.
    await lease.done(failed);
    mark("lease done");
  }
}
