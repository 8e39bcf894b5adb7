// shoald as a containerd client: one gRPC channel to containerd's unix socket, every call in shoal's own
// containerd namespace (the containerd-namespace header), so shoald never sees or touches other users'
// containers and images; writes that must not be garbage-collected half-way carry a lease.
//
// containerd's errors arrive as gRPC statuses; they leave here as ContainerdError with the status kept, so
// callers can tell "not found" and "already exists" from a containerd that is not there.

import {
  type CallOptions,
  type ClientReadableStream,
  credentials,
  Metadata,
  type ServiceError,
  status,
} from "@grpc/grpc-js";
import { ContainersClient } from "../../gen/containerd/containers.js";
import { ContentClient } from "../../gen/containerd/content.js";
import { DiffClient } from "../../gen/containerd/diff.js";
import { EventsClient } from "../../gen/containerd/events.js";
import { ImagesClient } from "../../gen/containerd/images.js";
import { LeasesClient } from "../../gen/containerd/leases.js";
import { SnapshotsClient } from "../../gen/containerd/snapshots.js";
import { TasksClient } from "../../gen/containerd/tasks.js";
import { VersionClient } from "../../gen/containerd/version.js";
import { WireSession } from "./wire.js";

export const NAMESPACE = "shoal";
export const SNAPSHOTTER = "overlayfs";
export const RUNTIME = "io.containerd.runc.v2";

/** A containerd call that failed, with its gRPC status code and containerd's own words. */
export class ContainerdError extends Error {
  constructor(
    readonly code: status,
    readonly detail: string,
    method: string,
  ) {
    super(method ? `containerd ${method}: ${detail}` : `containerd: ${detail}`);
  }
  get notFound(): boolean {
    return this.code === status.NOT_FOUND;
  }
  get alreadyExists(): boolean {
    return this.code === status.ALREADY_EXISTS;
  }
  get unavailable(): boolean {
    return this.code === status.UNAVAILABLE;
  }
}

export function isNotFound(err: unknown): boolean {
  return err instanceof ContainerdError && err.notFound;
}

export function isAlreadyExists(err: unknown): boolean {
  return err instanceof ContainerdError && err.alreadyExists;
}

type Callback<Res> = (err: ServiceError | null, res: Res) => void;
type UnaryMethod<Req, Res> = (req: Req, md: Metadata, opts: Partial<CallOptions>, cb: Callback<Res>) => unknown;

export interface CallOpts {
  /** Written under this lease (kept from the garbage collector until the lease is deleted). */
  lease?: string;
  /** Gives up after this long; default: no deadline. */
  timeoutMs?: number;
}

export class Containerd {
  readonly containers: ContainersClient;
  readonly content: ContentClient;
  readonly diff: DiffClient;
  readonly events: EventsClient;
  readonly images: ImagesClient;
  readonly leases: LeasesClient;
  readonly snapshots: SnapshotsClient;
  readonly tasks: TasksClient;
  readonly version: VersionClient;
  /** A plain HTTP/2 session for the streams that carry bulk data (content writes: wire.ts). */
  readonly wire: WireSession;

  constructor(
    readonly socketPath: string,
    readonly namespace = NAMESPACE,
  ) {
    const address = `unix://${socketPath}`;
    const creds = credentials.createInsecure();
    // containerd's default message limit is 16 MiB; content is written in smaller chunks.
    const options = {
      "grpc.max_receive_message_length": 16 * 1024 * 1024,
      "grpc.max_send_message_length": 16 * 1024 * 1024,
      // The authority of a unix socket: containerd's Go server refuses the default (the path).
      "grpc.default_authority": "localhost",
    };
    this.containers = new ContainersClient(address, creds, options);
    this.content = new ContentClient(address, creds, options);
    this.diff = new DiffClient(address, creds, options);
    this.events = new EventsClient(address, creds, options);
    this.images = new ImagesClient(address, creds, options);
    this.leases = new LeasesClient(address, creds, options);
    this.snapshots = new SnapshotsClient(address, creds, options);
    this.tasks = new TasksClient(address, creds, options);
    this.version = new VersionClient(address, creds, options);
    this.wire = new WireSession(socketPath);
  }

  /** The metadata every call carries, as HTTP/2 headers (for a stream of `wire`). */
  headers(lease?: string): Record<string, string> {
    return { "containerd-namespace": this.namespace, ...(lease ? { "containerd-lease": lease } : {}) };
  }

  /** The metadata every call carries: shoal's namespace, and the lease when there is one. */
  metadata(lease?: string): Metadata {
    const md = new Metadata();
    md.set("containerd-namespace", this.namespace);
    if (lease) md.set("containerd-lease", lease);
    return md;
  }

  callOptions(opts: CallOpts): Partial<CallOptions> {
    return opts.timeoutMs === undefined ? {} : { deadline: Date.now() + opts.timeoutMs };
  }

  /** One unary call as a promise: `call(c.tasks, c.tasks.start, req)`. */
  call<C, Req, Res>(client: C, method: UnaryMethod<Req, Res>, req: Req, opts: CallOpts = {}): Promise<Res> {
    return new Promise((resolve, reject) => {
      method.call(client, req, this.metadata(opts.lease), this.callOptions(opts), (err, res) => {
        if (err) reject(fromServiceError(err, method.name));
        else resolve(res);
      });
    });
  }

  /** Collects a server stream (content reads) into an array, failing as a call does. */
  collect<T>(stream: ClientReadableStream<T>, method: string): Promise<T[]> {
    return new Promise((resolve, reject) => {
      const out: T[] = [];
      stream.on("data", (m: T) => out.push(m));
      stream.on("error", (err: ServiceError) => reject(fromServiceError(err, method)));
      stream.on("end", () => resolve(out));
    });
  }

  close(): void {
    for (const c of [
      this.containers,
      this.content,
      this.diff,
      this.events,
      this.images,
      this.leases,
      this.snapshots,
      this.tasks,
      this.version,
    ]) {
      c.close();
    }
    this.wire.close();
  }
}

export function fromServiceError(err: ServiceError, method: string): ContainerdError {
  return new ContainerdError(err.code ?? status.UNKNOWN, err.details || err.message, method);
}
