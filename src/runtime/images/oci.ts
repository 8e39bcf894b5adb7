// The image formats shoal reads and writes: OCI and Docker schema 2 manifests and indexes, image configs,
// and the digests that name them. Every document read back (from an archive, a registry, the content
// store) is parsed against these schemas before use.

import { createHash } from "node:crypto";
import { z } from "zod";

export const MEDIA = {
  ociIndex: "application/vnd.oci.image.index.v1+json",
  ociManifest: "application/vnd.oci.image.manifest.v1+json",
  ociConfig: "application/vnd.oci.image.config.v1+json",
  ociLayer: "application/vnd.oci.image.layer.v1.tar",
  ociLayerGzip: "application/vnd.oci.image.layer.v1.tar+gzip",
  dockerList: "application/vnd.docker.distribution.manifest.list.v2+json",
  dockerManifest: "application/vnd.docker.distribution.manifest.v2+json",
  dockerConfig: "application/vnd.docker.container.image.v1+json",
  dockerLayer: "application/vnd.docker.image.rootfs.diff.tar",
  dockerLayerGzip: "application/vnd.docker.image.rootfs.diff.tar.gzip",
} as const;

export const MANIFEST_TYPES: string[] = [MEDIA.ociManifest, MEDIA.dockerManifest];
export const INDEX_TYPES: string[] = [MEDIA.ociIndex, MEDIA.dockerList];
export const LAYER_TYPES: string[] = [MEDIA.ociLayer, MEDIA.ociLayerGzip, MEDIA.dockerLayer, MEDIA.dockerLayerGzip];
/** Layers stored as plain tar: their diff id (the digest of the tar) is their digest. */
export const UNCOMPRESSED_LAYER_TYPES: string[] = [MEDIA.ociLayer, MEDIA.dockerLayer];

export const Digest = z.string().regex(/^sha256:[0-9a-f]{64}$/, "must be a sha256 digest");

export const DescriptorSchema = z.object({
  mediaType: z.string().max(255),
  digest: Digest,
  size: z.number().int().nonnegative(),
  annotations: z.record(z.string(), z.string()).optional(),
  platform: z.object({ architecture: z.string(), os: z.string(), variant: z.string().optional() }).optional(),
});
export type Descriptor = z.infer<typeof DescriptorSchema>;

export const ManifestSchema = z.object({
  schemaVersion: z.literal(2),
  mediaType: z.string().optional(),
  config: DescriptorSchema,
  layers: z.array(DescriptorSchema).max(256),
  annotations: z.record(z.string(), z.string()).optional(),
});
export type Manifest = z.infer<typeof ManifestSchema>;

export const IndexSchema = z.object({
  schemaVersion: z.literal(2),
  mediaType: z.string().optional(),
  manifests: z.array(DescriptorSchema).max(1024),
  annotations: z.record(z.string(), z.string()).optional(),
});
export type Index = z.infer<typeof IndexSchema>;

const StringList = z.array(z.string()).nullable().optional();

/** The parts of an image's run config that docker applies (and shows in inspect). */
export const RunConfigSchema = z
  .object({
    User: z.string().optional(),
    Env: StringList,
    Entrypoint: StringList,
    Cmd: StringList,
    WorkingDir: z.string().optional(),
    Labels: z.record(z.string(), z.string()).nullable().optional(),
    StopSignal: z.string().optional(),
    ExposedPorts: z.record(z.string(), z.object({})).nullable().optional(),
    Volumes: z.record(z.string(), z.object({})).nullable().optional(),
  })
  .passthrough();
export type RunConfig = z.infer<typeof RunConfigSchema>;

export const ImageConfigSchema = z
  .object({
    created: z.string().optional(),
    author: z.string().optional(),
    architecture: z.string(),
    os: z.string(),
    variant: z.string().optional(),
    config: RunConfigSchema.nullable().optional(),
    rootfs: z.object({ type: z.literal("layers"), diff_ids: z.array(Digest).max(256) }),
    history: z.array(z.object({}).passthrough()).optional(),
  })
  .passthrough();
export type ImageConfig = z.infer<typeof ImageConfigSchema>;

/** The manifest.json of a `docker save` archive. */
export const DockerArchiveManifestSchema = z
  .array(
    z.object({
      Config: z.string(),
      RepoTags: z.array(z.string()).nullable().optional(),
      Layers: z.array(z.string()).max(256),
    }),
  )
  .max(1024);

export function sha256(data: Buffer | string): string {
  return `sha256:${createHash("sha256").update(data).digest("hex")}`;
}

/** The chain ids of a stack of layers (diff ids): each names the snapshot of that layer on those below. */
export function chainIds(diffIds: string[]): string[] {
  const out: string[] = [];
  for (const d of diffIds) {
    const prev = out[out.length - 1];
    out.push(prev === undefined ? d : sha256(`${prev} ${d}`));
  }
  return out;
}

/** The platform of this host in OCI's words. */
export function hostPlatform(): { os: string; architecture: string } {
  const arch: Record<string, string> = {
    x64: "amd64",
    arm64: "arm64",
    arm: "arm",
    ia32: "386",
    s390x: "s390x",
    ppc64: "ppc64le",
  };
  return { os: "linux", architecture: arch[process.arch] ?? process.arch };
}

/** The manifest of an index that runs here; undefined when there is none. */
export function pickManifest(index: Index): Descriptor | undefined {
  const here = hostPlatform();
  const manifests = index.manifests.filter((m) => MANIFEST_TYPES.includes(m.mediaType));
  return (
    manifests.find((m) => m.platform?.os === here.os && m.platform.architecture === here.architecture) ??
    (manifests.length === 1 && !manifests[0]!.platform ? manifests[0] : undefined)
  );
}

/** Parses JSON text against a schema; undefined when it is not JSON or not that shape. */
export function parseDocument<S extends z.ZodType>(schema: S, data: Buffer): z.infer<S> | undefined {
  let value: unknown;
  try {
    value = JSON.parse(data.toString("utf8"));
  } catch {
    // Not JSON: the caller says what it was meant to be.
    return undefined;
  }
  const r = schema.safeParse(value);
  return r.success ? r.data : undefined;
}
