// The Engine API's image calls in Docker's shapes: `images`, `image inspect`, `rmi`, `tag`, `load`, `save`
// and `pull`, over the image store. What the API's JSON looks like is here; what images are is store.ts.

import { z } from "zod";
import { badRequest } from "../../api/errors.js";
import { EventLog } from "../events.js";
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

/** GET /images/{name}/history: one entry of docker's image.HistoryResponseItem, newest first. */
export interface HistoryItem {
  Id: string;
  /** Unix seconds. */
  Created: number;
  CreatedBy: string;
  Tags: string[] | null;
  Size: number;
  Comment: string;
}

/** What an image prune removes: untagged images only (docker's default), or every unused one (-a). */
export interface ImagePruneFilter {
  danglingOnly: boolean;
  /** Created after this (ms since the epoch): kept. */
  untilMs?: number;
  labels(labels: Record<string, string>): boolean;
}

/** One entry of an image config's history (what docker history shows), as the OCI spec has it. */
const HistoryEntrySchema = z.object({
  created: z.string().optional(),
  created_by: z.string().optional(),
  comment: z.string().optional(),
  empty_layer: z.boolean().optional(),
});

/** An image's size as `docker images` shows it: its layers' bytes. */
export function sizeOf(img: ResolvedImage): number {
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
    /** Where `docker events` hears of pulls, loads, tags, untags and deletions. */
    readonly events: EventLog = new EventLog(),
  ) {}

  /** The events of an rmi (or a prune's removal): an untag per name, a delete for the image. */
  private removed(img: { id: string }, result: RemoveResult): RemoveResult {
    for (const r of result) {
      if (r.Untagged) this.events.emit("image", "untag", img.id, { name: r.Untagged });
      if (r.Deleted) this.events.emit("image", "delete", r.Deleted, {});
    }
    return result;
  }

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

  /**
   * `docker system df`: the images, each with how many containers use it (`uses`: a container's image id
   * to count), and the bytes of their layers counted once however many images share them.
   */
  async diskUsage(uses: string[]): Promise<{ layersSize: number; images: ImageSummary[] }> {
    const images = await this.store.list();
    const layers = new Map<string, number>();
    for (const img of images) for (const l of img.manifest.layers) layers.set(l.digest, l.size);
    const summaries = (await this.list()).map((s) => ({
      ...s,
      SharedSize: 0,
      Containers: uses.filter((id) => id === s.Id).length,
    }));
    return { layersSize: [...layers.values()].reduce((a, b) => a + b, 0), images: summaries };
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

  /**
   * `docker history`: the config's history, newest first; an entry that made a layer has that layer's
   * size. The newest entry carries the image's id and tags, the others "<missing>" (as dockerd says of
   * layers that are no image of their own).
   */
  async history(ref: string): Promise<HistoryItem[]> {
    const img = await this.store.resolve(ref);
    const entries = (img.config.history ?? []).map((h) => HistoryEntrySchema.safeParse(h).data ?? {});
    const layers = img.manifest.layers;
    let layer = 0;
    const out: HistoryItem[] = entries.map((h) => {
      const size = h.empty_layer ? 0 : (layers[layer++]?.size ?? 0);
      return {
        Id: "<missing>",
        Created: Math.floor(Date.parse(h.created ?? "") / 1000) || 0,
        CreatedBy: h.created_by ?? "",
        Tags: null,
        Size: size,
        Comment: h.comment ?? "",
      };
    });
    if (out.length === 0) {
      const created = Math.floor(Date.parse(createdOf(img.config)) / 1000) || 0;
      out.push({ Id: "<missing>", Created: created, CreatedBy: "", Tags: null, Size: sizeOf(img), Comment: "" });
    }
    out.reverse();
    const tags = tagsOf(img);
    out[0] = { ...out[0]!, Id: img.id, Tags: tags.length > 0 ? tags : null };
    return out;
  }

  /**
   * `docker image prune [-a]`: every image no container uses (with danglingOnly, only those without a tag)
   * that passes the filter loses all its names, and so goes. Answers docker's list of what was untagged
   * and deleted, and the bytes of the images deleted.
   */
  async prune(filter: ImagePruneFilter): Promise<{ deleted: RemoveResult; reclaimedBytes: number }> {
    const deleted: RemoveResult = [];
    let reclaimedBytes = 0;
    for (const img of await this.store.list()) {
      if (filter.danglingOnly && tagsOf(img).length > 0) continue;
      if (this.containerUsing(img.id)) continue;
      const created = Date.parse(createdOf(img.config));
      if (filter.untilMs !== undefined && !(created <= filter.untilMs)) continue;
      if (!filter.labels(img.config.config?.Labels ?? {})) continue;
      for (const name of img.names) {
        try {
          const r = this.removed(img, await this.store.remove(name, false, this.containerUsing));
          deleted.push(...r);
          if (r.some((x) => x.Deleted)) reclaimedBytes += sizeOf(img);
        } catch {
          // Gone meanwhile, or a container took it: not for pruning now.
          break;
        }
      }
    }
    return { deleted, reclaimedBytes };
  }

  async remove(ref: string, force: boolean): Promise<RemoveResult> {
    const img = await this.store.resolve(ref);
    return this.removed(img, await this.store.remove(ref, force, this.containerUsing));
  }

  async tag(source: string, repo: string, tag: string): Promise<void> {
    if (repo === "") throw badRequest("repository name must have at least one component");
    const target = tag ? `${repo}:${tag}` : repo;
    await this.store.tag(source, target);
    const img = await this.store.resolve(target);
    this.events.emit("image", "tag", img.id, { name: familiarName(fullName(parseReference(target))) });
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
  async pull(
    ref: string,
    opts: Omit<PullOptions, "insecureRegistries" | "maxConcurrentDownloads">,
    onProgress: (p: PullProgress) => void,
  ): Promise<void> {
    await pullImage(this.store, ref, { ...opts, ...this.registries }, onProgress);
    const name = familiarName(fullName(parseReference(ref)));
    this.events.emit("image", "pull", name, { name });
  }
}
