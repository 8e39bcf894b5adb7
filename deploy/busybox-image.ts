// Test and demo images built on this machine from Debian's busybox-static (nothing is downloaded): a
// one-layer image whose /bin holds busybox and its applets (sh, ping, wget, nslookup, httpd, ...), written
// as a `docker save` archive or an OCI image layout archive. Extra layers of random bytes make images of a
// chosen size (the pull benchmark's ~50 MB).

import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { MEDIA, sha256 } from "../src/runtime/images/oci.js";
import { type TarFile, writeTar } from "../src/runtime/images/tar.js";

export const BUSYBOX = "/bin/busybox";
const MTIME = 1_700_000_000;

export interface BuiltImage {
  /** The image's name inside the archive ("busybox:latest"). */
  name: string;
  configDigest: string;
  manifestDigest: string;
  layers: { digest: string; data: Buffer }[];
  config: Buffer;
  manifest: Buffer;
}

function applets(): string[] {
  const out = execFileSync(BUSYBOX, ["--list"], { encoding: "utf8" });
  return out.split("\n").filter((a) => /^[a-z0-9_.[-]+$/.test(a) && a !== "busybox");
}

/** The root file system layer: busybox, its applets, and the few files a shell and httpd expect. */
export function busyboxLayer(): Buffer {
  const files: TarFile[] = [
    { name: "bin", mtime: MTIME },
    { name: "bin/busybox", data: readFileSync(BUSYBOX), mode: 0o755, mtime: MTIME },
    ...applets().map((a) => ({ name: `bin/${a}`, link: "busybox", mtime: MTIME })),
    { name: "etc", mtime: MTIME },
    {
      name: "etc/passwd",
      data: Buffer.from(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\nwww:x:33:33:www:/var/www:/bin/false\n",
      ),
      mtime: MTIME,
    },
    { name: "etc/group", data: Buffer.from("root:x:0:\nnogroup:x:65534:\nwww:x:33:\n"), mtime: MTIME },
    { name: "root", mode: 0o700, mtime: MTIME },
    { name: "tmp", mode: 0o1777, mtime: MTIME },
    { name: "var", mtime: MTIME },
    { name: "var/www", mtime: MTIME },
    { name: "var/www/index.html", data: Buffer.from("hello from shoal's busybox\n"), mtime: MTIME },
    { name: "proc", mtime: MTIME },
    { name: "sys", mtime: MTIME },
    { name: "dev", mtime: MTIME },
    { name: "usr", mtime: MTIME },
    { name: "usr/bin", mtime: MTIME },
  ];
  return writeTar(files);
}

/** A layer of `bytes` random (incompressible) bytes in /data/<name>. */
export function randomLayer(name: string, bytes: number): Buffer {
  return writeTar([
    { name: "data", mtime: MTIME },
    { name: `data/${name}`, data: randomBytes(bytes), mtime: MTIME },
  ]);
}

export interface ImageOptions {
  name?: string;
  cmd?: string[];
  entrypoint?: string[];
  env?: string[];
  workingDir?: string;
  user?: string;
  labels?: Record<string, string>;
  /** Layers on top of busybox. */
  extraLayers?: Buffer[];
}

/** An image of busybox (and extra layers): its layers, config and manifest (OCI media types). */
export function buildImage(opts: ImageOptions = {}): BuiltImage {
  const layers = [busyboxLayer(), ...(opts.extraLayers ?? [])].map((data) => ({ digest: sha256(data), data }));
  const config = Buffer.from(
    JSON.stringify({
      created: new Date(MTIME * 1000).toISOString(),
      architecture: "amd64",
      os: "linux",
      config: {
        Env: opts.env ?? ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        Cmd: opts.cmd ?? ["sh"],
        ...(opts.entrypoint ? { Entrypoint: opts.entrypoint } : {}),
        ...(opts.workingDir ? { WorkingDir: opts.workingDir } : {}),
        ...(opts.user ? { User: opts.user } : {}),
        ...(opts.labels ? { Labels: opts.labels } : {}),
      },
      rootfs: { type: "layers", diff_ids: layers.map((l) => l.digest) },
      history: layers.map(() => ({ created: new Date(MTIME * 1000).toISOString(), created_by: "shoal busybox-image" })),
    }),
  );
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MEDIA.ociManifest,
      config: { mediaType: MEDIA.ociConfig, digest: sha256(config), size: config.length },
      layers: layers.map((l) => ({ mediaType: MEDIA.ociLayer, digest: l.digest, size: l.data.length })),
    }),
  );
  return {
    name: opts.name ?? "busybox:latest",
    configDigest: sha256(config),
    manifestDigest: sha256(manifest),
    layers,
    config,
    manifest,
  };
}

const hex = (digest: string): string => digest.slice("sha256:".length);

/** An OCI image layout archive (what `docker save` writes since docker 25, and skopeo's oci-archive). */
export function ociArchive(img: BuiltImage): Buffer {
  const index = {
    schemaVersion: 2,
    mediaType: MEDIA.ociIndex,
    manifests: [
      {
        mediaType: MEDIA.ociManifest,
        digest: img.manifestDigest,
        size: img.manifest.length,
        annotations: {
          "org.opencontainers.image.ref.name": img.name.split(":").at(-1) ?? "latest",
          "io.containerd.image.name": img.name,
        },
      },
    ],
  };
  return writeTar([
    { name: "oci-layout", data: Buffer.from('{"imageLayoutVersion":"1.0.0"}'), mtime: MTIME },
    { name: "index.json", data: Buffer.from(JSON.stringify(index)), mtime: MTIME },
    { name: "blobs", mtime: MTIME },
    { name: "blobs/sha256", mtime: MTIME },
    ...[img.manifest, img.config, ...img.layers.map((l) => l.data)].map((data) => ({
      name: `blobs/sha256/${hex(sha256(data))}`,
      data,
      mtime: MTIME,
    })),
  ]);
}

/** A classic `docker save` archive: manifest.json, <id>.json, <layer>/layer.tar. */
export function dockerArchive(img: BuiltImage): Buffer {
  const manifest = [
    {
      Config: `${hex(img.configDigest)}.json`,
      RepoTags: [img.name],
      Layers: img.layers.map((l) => `${hex(l.digest)}/layer.tar`),
    },
  ];
  return writeTar([
    { name: "manifest.json", data: Buffer.from(JSON.stringify(manifest)), mtime: MTIME },
    { name: `${hex(img.configDigest)}.json`, data: img.config, mtime: MTIME },
    ...img.layers.flatMap((l) => [
      { name: hex(l.digest), mtime: MTIME },
      { name: `${hex(l.digest)}/layer.tar`, data: l.data, mtime: MTIME },
    ]),
  ]);
}

export async function writeArchive(path: string, data: Buffer): Promise<void> {
  await writeFile(path, data);
}
