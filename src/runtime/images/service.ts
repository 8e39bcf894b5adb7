// The Engine API's image calls in Docker's shapes: `images`, `image inspect`, `rmi`, `tag`, `load`, `save`
// and `pull`, over the image store. What the API's JSON looks like is here; what images are is store.ts.

import { badRequest } from "../../api/errors.js";
import { type Descriptor, type ImageConfig, MEDIA, sha256 } from "./oci.js";
import { type PullOptions, type PullProgress, pullImage } from "./pull.js";
import { familiarName, fullName, parseReference } from "./reference.js";
import type { ImageStore, ResolvedImage } from "./store.js";
import { type TarFile, writeTar } from "./tar.js";

/** GET /images/json: docker's image.Summary. */
export interface ImageSummary {
  Id: string;
  ParentId: string;
  RepoTags: string[];
  RepoDigests: string[];
  /** Unix seconds. */
  Created: number;
  Size: number;
  SharedSize: number;
  Labels: Record<string, string>;
  Containers: number;
}

/** GET /images/{name}/json: docker's image.InspectResponse (the parts shoal has). */
export interface ImageInspect {
  Id: string;
  RepoTags: string[];
  RepoDigests: string[];
  Parent: string;
  Comment: string;
  Created: string;
  DockerVersion: string;
  Author: string;
  Config: unknown;
  Architecture: string;
  Os: string;
  Size: number;
  GraphDriver: { Name: string; Data: null };
  RootFS: { Type: string; Layers: string[] };
  Metadata: { LastTagTime: string };
}

export type RemoveResult = { Untagged?: string; Deleted?: string }[];

function sizeOf(img: ResolvedImage): number {
  return img.manifest.layers.reduce((n, l) => n + l.size, 0);
}

function createdOf(config: ImageConfig): string {
  return config.created ?? "0001-01-01T00:00:00Z";
}

function tagsOf(img: ResolvedImage): string[] {
  return img.names.filter((n) => !n.startsWith("sha256:") && !parseReference(n).digest).map(familiarName);
}

export class ImageService {
  constructor(
    readonly store: ImageStore,
    /** How pulls reach registries: shoald's --insecure-registry and --max-concurrent-downloads. */
    private readonly registries: Pick<PullOptions, "insecureRegistries" | "maxConcurrentDownloads">,
    /** The container that uses an image (rmi's check). */
    private readonly containerUsing: (imageId: string) => string | undefined,
  ) {}

  async list(): Promise<ImageSummary[]> {
    const out = (await this.store.list()).map((img) => ({
      Id: img.id,
      ParentId: "",
      RepoTags: tagsOf(img),
      RepoDigests: this.store.repoDigests(img),
      Created: Math.floor(Date.parse(createdOf(img.config)) / 1000) || 0,
      Size: sizeOf(img),
      SharedSize: -1,
      Labels: img.config.config?.Labels ?? {},
      Containers: -1,
    }));
    return out.sort((a, b) => b.Created - a.Created);
  }

  async inspect(ref: string): Promise<ImageInspect> {
    const img = await this.store.resolve(ref);
    const c = img.config;
    return {
      Id: img.id,
      RepoTags: tagsOf(img),
      RepoDigests: this.store.repoDigests(img),
      Parent: "",
      Comment: "",
      Created: createdOf(c),
      DockerVersion: "",
      Author: c.author ?? "",
      Config: c.config ?? null,
      Architecture: c.architecture,
      Os: c.os,
      Size: sizeOf(img),
      GraphDriver: { Name: "overlayfs", Data: null },
      RootFS: { Type: "layers", Layers: [...c.rootfs.diff_ids] },
      Metadata: { LastTagTime: img.createdAt?.toISOString() ?? "0001-01-01T00:00:00Z" },
    };
  }

  remove(ref: string, force: boolean): Promise<RemoveResult> {
    return this.store.remove(ref, force, this.containerUsing);
  }

  async tag(source: string, repo: string, tag: string): Promise<void> {
    if (repo === "") throw badRequest("repository name must have at least one component");
    await this.store.tag(source, tag ? `${repo}:${tag}` : repo);
  }

  /** `docker save`: an archive that `docker load` reads (both a docker manifest.json and an OCI layout). */
  async save(refs: string[]): Promise<Buffer> {
    if (refs.length === 0) throw badRequest("no images to save: name at least one");
    const files = new Map<string, TarFile>();
    const manifest: { Config: string; RepoTags: string[]; Layers: string[] }[] = [];
    const index: Descriptor[] = [];
    for (const ref of refs) {
      const img = await this.store.resolve(ref);
      const named = fullName(parseReference(ref));
      const tags = img.names.includes(named) ? [familiarName(named)] : tagsOf(img);
      const blobs = [img.manifest.config, ...img.manifest.layers];
      for (const b of blobs) {
        const name = `blobs/sha256/${b.digest.slice(7)}`;
        if (!files.has(name)) files.set(name, { name, data: await this.store.content.read(b.digest) });
      }
      const m = Buffer.from(JSON.stringify(img.manifest));
      files.set(`blobs/sha256/${sha256(m).slice(7)}`, { name: `blobs/sha256/${sha256(m).slice(7)}`, data: m });
      manifest.push({
        Config: `blobs/sha256/${img.manifest.config.digest.slice(7)}`,
        RepoTags: tags,
        Layers: img.manifest.layers.map((l) => `blobs/sha256/${l.digest.slice(7)}`),
      });
      for (const t of tags) {
        index.push({
          mediaType: img.manifest.mediaType ?? MEDIA.ociManifest,
          digest: sha256(m),
          size: m.length,
          annotations: {
            "io.containerd.image.name": fullName(parseReference(t)),
            "org.opencontainers.image.ref.name": t.split(":").at(-1) ?? "latest",
          },
        });
      }
    }
    const head: TarFile[] = [
      { name: "oci-layout", data: Buffer.from('{"imageLayoutVersion":"1.0.0"}') },
      {
        name: "index.json",
        data: Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MEDIA.ociIndex, manifests: index })),
      },
      { name: "manifest.json", data: Buffer.from(JSON.stringify(manifest)) },
      { name: "blobs" },
      { name: "blobs/sha256" },
    ];
    return writeTar([...head, ...files.values()]);
  }

  /** `docker pull`: progress goes to `onProgress` in docker's JSON message shapes. */
  pull(
    ref: string,
    opts: Omit<PullOptions, "insecureRegistries" | "maxConcurrentDownloads">,
    onProgress: (p: PullProgress) => void,
  ): Promise<void> {
    return pullImage(this.store, ref, { ...opts, ...this.registries }, onProgress);
  }
}
