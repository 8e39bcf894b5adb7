// `docker load`: images from a `docker save` archive (manifest.json, a config and layer tars per image) or
// an OCI image layout (oci-layout, index.json, blobs/sha256/...). Every blob is checked against its digest
// as it is written, under a lease: the images are named only once everything is in and unpacked, so a
// corrupt or truncated archive imports nothing.

import { createHash } from "node:crypto";
import { type FileHandle, open } from "node:fs/promises";
import { type ApiError, badRequest } from "../../api/errors.js";
import { DigestMismatchError, SizeMismatchError } from "../containerd/content.js";
import {
  type Descriptor,
  DockerArchiveManifestSchema,
  type ImageConfig,
  ImageConfigSchema,
  INDEX_TYPES,
  type Index,
  IndexSchema,
  MANIFEST_TYPES,
  type Manifest,
  ManifestSchema,
  MEDIA,
  parseDocument,
  pickManifest,
  sha256,
} from "./oci.js";
import { familiarName, fullName, parseReference } from "./reference.js";
import { gcLabelsOfConfig, gcLabelsOfManifest, type ImageStore } from "./store.js";
import { entryChunks, indexTar, readEntry, type TarEntry, TarError } from "./tar.js";

/** An image found in an archive, ready to be written: its blobs, its manifest, the names it gets. */
interface Found {
  names: string[];
  manifest: Manifest;
  manifestBytes: Buffer;
  config: ImageConfig;
  configBytes: Buffer;
  /** Where each layer's bytes are in the archive. */
  layers: TarEntry[];
}

const corrupt = (why: string): ApiError => badRequest(`invalid archive: ${why}`);

function entry(entries: Map<string, TarEntry>, name: string): TarEntry {
  const e = entries.get(name.replace(/^\.\//, ""));
  if (!e) throw corrupt(`${name} is missing`);
  return e;
}

async function hashEntry(fh: FileHandle, e: TarEntry): Promise<string> {
  const h = createHash("sha256");
  for await (const chunk of entryChunks(fh, e)) h.update(chunk);
  return `sha256:${h.digest("hex")}`;
}

/** The images of a `docker save` archive. */
async function fromDockerArchive(fh: FileHandle, entries: Map<string, TarEntry>): Promise<Found[]> {
  const list = parseDocument(DockerArchiveManifestSchema, await readEntry(fh, entry(entries, "manifest.json")));
  if (!list) throw corrupt("manifest.json is not a docker save manifest");
  const out: Found[] = [];
  for (const item of list) {
    const configBytes = await readEntry(fh, entry(entries, item.Config));
    const config = parseDocument(ImageConfigSchema, configBytes);
    if (!config) throw corrupt(`${item.Config} is not an image config`);
    if (config.rootfs.diff_ids.length !== item.Layers.length)
      throw corrupt(
        `${item.Config} names ${config.rootfs.diff_ids.length} layers, manifest.json ${item.Layers.length}`,
      );
    const layers = item.Layers.map((l) => entry(entries, l));
    const descriptors: Descriptor[] = [];
    for (const [i, l] of layers.entries()) {
      const digest = await hashEntry(fh, l);
      // docker save writes layers uncompressed: each one's digest is its diff id.
      if (digest !== config.rootfs.diff_ids[i])
        throw corrupt(
          `layer ${item.Layers[i]} has digest ${digest}, its image config says ${config.rootfs.diff_ids[i]}`,
        );
      descriptors.push({ mediaType: MEDIA.dockerLayer, digest, size: l.size });
    }
    const manifest: Manifest = {
      schemaVersion: 2,
      mediaType: MEDIA.dockerManifest,
      config: { mediaType: MEDIA.dockerConfig, digest: sha256(configBytes), size: configBytes.length },
      layers: descriptors,
    };
    const names = (item.RepoTags ?? []).map((t) => fullName(parseReference(t)));
    out.push({ names, manifest, manifestBytes: Buffer.from(JSON.stringify(manifest)), config, configBytes, layers });
  }
  return out;
}

function blobEntry(entries: Map<string, TarEntry>, digest: string): TarEntry {
  return entry(entries, `blobs/${digest.replace(":", "/")}`);
}

/** The name an OCI layout gives a manifest (containerd's annotation, or the ref name as docker reads it). */
function ociNames(d: Descriptor): string[] {
  const full = d.annotations?.["io.containerd.image.name"];
  if (full) return [fullName(parseReference(full))];
  const ref = d.annotations?.["org.opencontainers.image.ref.name"];
  if (!ref) return [];
  // A bare tag names nothing (docker load then prints the image id); a full reference names the image.
  return /[/:]/.test(ref) ? [fullName(parseReference(ref))] : [];
}

/** The images of an OCI layout: every manifest its index names (through nested indexes, for this host). */
async function fromOciLayout(fh: FileHandle, entries: Map<string, TarEntry>): Promise<Found[]> {
  const index = parseDocument(IndexSchema, await readEntry(fh, entry(entries, "index.json")));
  if (!index) throw corrupt("index.json is not an OCI image index");
  const out: Found[] = [];
  for (const d of index.manifests) {
    const found = await ociManifest(fh, entries, d, ociNames(d));
    if (found) out.push(found);
  }
  return out;
}

async function ociManifest(
  fh: FileHandle,
  entries: Map<string, TarEntry>,
  d: Descriptor,
  names: string[],
): Promise<Found | undefined> {
  const bytes = await readEntry(fh, blobEntry(entries, d.digest));
  if (sha256(bytes) !== d.digest) throw corrupt(`blob ${d.digest} does not match its digest`);
  if (INDEX_TYPES.includes(d.mediaType)) {
    const nested: Index | undefined = parseDocument(IndexSchema, bytes);
    if (!nested) throw corrupt(`${d.digest} is not an image index`);
    const m = pickManifest(nested);
    return m ? ociManifest(fh, entries, m, names) : undefined;
  }
  if (!MANIFEST_TYPES.includes(d.mediaType)) return undefined;
  const manifest = parseDocument(ManifestSchema, bytes);
  if (!manifest) throw corrupt(`${d.digest} is not an image manifest`);
  const configBytes = await readEntry(fh, blobEntry(entries, manifest.config.digest));
  const config = parseDocument(ImageConfigSchema, configBytes);
  if (!config) throw corrupt(`${manifest.config.digest} is not an image config`);
  const layers = manifest.layers.map((l) => blobEntry(entries, l.digest));
  return { names, manifest, manifestBytes: bytes, config, configBytes, layers };
}

/** Writes one found image's blobs under the lease and unpacks it. */
async function writeImage(store: ImageStore, fh: FileHandle, img: Found, lease: string): Promise<void> {
  for (const [i, l] of img.manifest.layers.entries()) {
    await store.content.write({ digest: l.digest, size: l.size }, entryChunks(fh, img.layers[i]!), lease);
  }
  const c = img.manifest.config;
  await store.content.write(
    { digest: c.digest, size: c.size, labels: gcLabelsOfConfig(img.config) },
    img.configBytes,
    lease,
  );
  const m = {
    digest: sha256(img.manifestBytes),
    size: img.manifestBytes.length,
    labels: gcLabelsOfManifest(img.manifest),
  };
  await store.content.write(m, img.manifestBytes, lease);
  await store.unpack(img.manifest, img.config, lease);
}

/**
 * Loads an archive; returns docker load's lines ("Loaded image: busybox:latest"). All or nothing: a bad
 * archive or blob leaves no image and no name changed.
 */
export async function loadImages(store: ImageStore, path: string): Promise<string[]> {
  const fh = await open(path, "r");
  try {
    let found: Found[];
    try {
      const entries = await indexTar(fh);
      if (entries.has("manifest.json")) found = await fromDockerArchive(fh, entries);
      else if (entries.has("index.json")) found = await fromOciLayout(fh, entries);
      else throw corrupt("neither manifest.json (docker save) nor index.json (OCI layout) found");
    } catch (err) {
      if (err instanceof TarError) throw badRequest(`invalid archive: ${err.message}`);
      throw err;
    }
    if (found.length === 0) throw corrupt("it holds no image for this platform");
    const lease = await store.lease();
    try {
      for (const img of found) await writeImage(store, fh, img, lease.id);
      const lines: string[] = [];
      for (const img of found) {
        const target = {
          mediaType: img.manifest.mediaType ?? MEDIA.ociManifest,
          digest: sha256(img.manifestBytes),
          size: img.manifestBytes.length,
        };
        const names = img.names.length > 0 ? img.names : [img.manifest.config.digest];
        for (const n of names) await store.setName(n, target, lease.id);
        if (img.names.length === 0) lines.push(`Loaded image ID: ${img.manifest.config.digest}`);
        for (const n of img.names) lines.push(`Loaded image: ${familiarName(n)}`);
      }
      return lines;
    } catch (err) {
      if (err instanceof DigestMismatchError || err instanceof SizeMismatchError)
        throw badRequest(`invalid archive: ${err.message}`);
      throw err;
    } finally {
      await lease.done();
    }
  } finally {
    await fh.close();
  }
}
