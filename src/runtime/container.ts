// One container as the runtime holds it: the record that state.json keeps (parsed against its schema when
// read back, as everything from disk is), and what lives only while the daemon runs (the process, the
// listeners of attached clients and waiters, the chain that orders operations on it).

import { randomBytes } from "node:crypto";
import type { Socket } from "node:net";
import { join } from "node:path";
import { z } from "zod";
import { ApiError } from "../api/errors.js";
import { NetworkRecordSchema } from "../api/objects.js";
import { Serial } from "../serial.js";
import type { OpenFifos } from "./containerd/tasks.js";
import type { LogRecord } from "./jsonlog.js";
import type { AttachedEndpoint, ContainerConfig, ContainerStatus, EndpointSettingsRequest } from "./types.js";

export const ZERO_TIME = "0001-01-01T00:00:00Z";

const EndpointRequestSchema = z.object({
  IPAMConfig: z.object({ IPv4Address: z.string().optional() }).nullable().optional(),
  Aliases: z.array(z.string()).nullable().optional(),
}) satisfies z.ZodType<EndpointSettingsRequest>;

const AttachedEndpointSchema = z.object({
  networkId: z.string(),
  networkName: z.string(),
  endpointId: z.string(),
  ip: z.string(),
  prefixLen: z.number().int(),
  mac: z.string(),
  gateway: z.string(),
  aliases: z.array(z.string()),
  /** Absent in records of daemons that did not save it: such an endpoint is not adopted. */
  wiring: z
    .object({
      nodeId: z.string().min(1),
      ifname: z.string().regex(/^eth\d{1,4}$/),
      network: NetworkRecordSchema,
    })
    .optional(),
}) satisfies z.ZodType<AttachedEndpoint>;

const NetworkAttachmentSchema = z.object({
  /** The network as the user named it. */
  ref: z.string(),
  cfg: EndpointRequestSchema,
  /** While running: what the attacher made. */
  endpoint: AttachedEndpointSchema.nullable(),
});
export type NetworkAttachment = z.infer<typeof NetworkAttachmentSchema>;

const ContainerConfigSchema = z.object({
  Hostname: z.string(),
  Domainname: z.string(),
  User: z.string(),
  AttachStdin: z.boolean(),
  AttachStdout: z.boolean(),
  AttachStderr: z.boolean(),
  Tty: z.boolean(),
  OpenStdin: z.boolean(),
  StdinOnce: z.boolean(),
  Env: z.array(z.string()),
  Cmd: z.array(z.string()).nullable(),
  Image: z.string(),
  Volumes: z.null(),
  WorkingDir: z.string(),
  Entrypoint: z.array(z.string()).nullable(),
  OnBuild: z.null(),
  Labels: z.record(z.string(), z.string()),
  StopSignal: z.string().optional(),
  StopTimeout: z.number().int().optional(),
}) satisfies z.ZodType<ContainerConfig>;

const StatusSchema = z.enum(["created", "running", "removing", "exited"]) satisfies z.ZodType<ContainerStatus>;

const RecordStateSchema = z.object({
  status: StatusSchema,
  /** Host pid of the container's pid 1, and its start time (to recognise it after a daemon restart). */
  pid: z.number().int().nonnegative(),
  pidStart: z.number().int().nonnegative().optional(),
  exitCode: z.number().int(),
  error: z.string(),
  startedAt: z.string(),
  finishedAt: z.string(),
  /** Running, its processes frozen (docker pause). */
  paused: z.boolean().optional(),
});
export type RecordState = z.infer<typeof RecordStateSchema>;

const BindSchema = z.object({ source: z.string(), destination: z.string(), readonly: z.boolean() });

export const RestartPolicySchema = z.object({
  name: z.enum(["no", "always", "on-failure", "unless-stopped"]),
  maximumRetryCount: z.number().int().nonnegative(),
});
export type RestartPolicy = z.infer<typeof RestartPolicySchema>;

/** What the container runs with beyond its config: mounts, limits, what happens when it exits. */
const HostConfigSchema = z.object({
  binds: z.array(BindSchema).default([]),
  memoryBytes: z.number().int().nonnegative().default(0),
  nanoCpus: z.number().int().nonnegative().default(0),
  restartPolicy: RestartPolicySchema.default({ name: "no", maximumRetryCount: 0 }),
});
export type HostConfig = z.infer<typeof HostConfigSchema>;

/** The image a container was made from: its id, and whether its root file system is a snapshot or the host's. */
const ImageRefSchema = z.object({
  id: z.string(),
  rootfs: z.enum(["host", "snapshot"]),
});

/** What state.json holds. */
export const ContainerRecordSchema = z.object({
  id: z.string().regex(/^[0-9a-f]{64}$/, "must be 64 hex digits"),
  /** Without the leading "/". */
  name: z.string().min(1),
  created: z.string(),
  path: z.string(),
  args: z.array(z.string()),
  config: ContainerConfigSchema,
  networkMode: z.string(),
  autoRemove: z.boolean(),
  networks: z.array(NetworkAttachmentSchema),
  state: RecordStateSchema,
  image: ImageRefSchema.default({ id: "", rootfs: "host" }),
  hostConfig: HostConfigSchema.default({
    binds: [],
    memoryBytes: 0,
    nanoCpus: 0,
    restartPolicy: { name: "no", maximumRetryCount: 0 },
  }),
  /** How often the restart policy has started it again since it was last started by hand. */
  restartCount: z.number().int().nonnegative().default(0),
  /** Stopped by `docker stop` (unless-stopped does not bring it back after a restart). */
  stoppedByUser: z.boolean().default(false),
});
export type ContainerRecord = z.infer<typeof ContainerRecordSchema>;

/** A running container's process, as the launcher started it. */
export interface Running {
  /** The host pid of the container's init process. */
  initPid: number;
  /** shoald's end of the init process's stdin FIFO (OpenStdin containers). */
  stdin: Socket | undefined;
  /** Ends the init process's input (what was written is delivered first); never rejects. */
  closeStdin(): Promise<void>;
  /** Resolves once the exit has been handled (networks detached, state saved). */
  handled: Promise<void>;
}

/** The contents of the files bind-mounted into a container's /etc (networks.ts writeFiles). */
export interface ContainerFiles {
  resolv: string;
  hosts: string;
  hostname: string;
}

/** A container's task made but not started (Launcher.prepare), with the FIFOs of its stdio. */
export interface Prepared {
  fifos: OpenFifos;
  /** The spec it was made with (JSON): a start with another spec makes the task again. */
  spec: string;
  /** The host pid of its process (the same once started). */
  pid: number;
}

export class Container {
  proc: Running | undefined;
  readonly chain = new Serial();
  removed = false;
  /** Exited, and its restart policy starts it again after the back-off. */
  restarting = false;
  readonly outputListeners = new Set<(r: LogRecord) => void>();
  readonly exitListeners = new Set<(code: number) => void>();
  readonly removeListeners = new Set<(code: number) => void>();
  readonly execIds = new Set<string>();
  /** Input written by attached clients before the process was there (and whether it ended). */
  pendingStdin: Buffer[] = [];
  pendingStdinEnd = false;
  /** Its network namespace, being made ahead of its first start (networks.ts prepare): true once made. */
  netnsAhead: Promise<boolean> | undefined;
  /**
   * Its task, being made ahead of its first start (lifecycle.ts makeAhead): the task made, or undefined
   * when it could not be (the start makes it). Deleted when no start takes it in time.
   */
  taskAhead: Promise<Prepared | undefined> | undefined;
  taskAheadTimer: NodeJS.Timeout | undefined;
  /**
   * Its resolv.conf, hosts and hostname being written ahead of its first start (networks.ts
   * writeFilesAhead): what they were written with (undefined: the write failed). Taken by that start, which
   * does not write them again when they would not change.
   */
  filesAhead: Promise<ContainerFiles | undefined> | undefined;
  constructor(
    public rec: ContainerRecord,
    readonly dir: string,
  ) {}
  get id(): string {
    return this.rec.id;
  }
  get running(): boolean {
    return this.rec.state.status === "running";
  }
  get paused(): boolean {
    return this.running && this.rec.state.paused === true;
  }
  get hostNetwork(): boolean {
    return this.rec.networkMode === "host";
  }
  /** Runs f after every earlier operation on this container has finished. */
  locked<T>(f: () => Promise<T>): Promise<T> {
    return this.chain.run(f);
  }
  get logPath(): string {
    return join(this.dir, `${this.id}-json.log`);
  }
}

/** A container's attributes in its events, as dockerd gives them: its labels, image and name. */
export function eventAttributes(c: Container, extra: Record<string, string> = {}): Record<string, string> {
  return { ...c.rec.config.Labels, image: c.rec.config.Image, name: c.rec.name, ...extra };
}

export const noSuchContainer = (ref: string): ApiError => new ApiError(404, `No such container: ${ref}`);

/** A random 64-hex id whose 12-character short form is not all digits (Docker's rule). */
export function newId(): string {
  for (;;) {
    const id = randomBytes(32).toString("hex");
    if (!/^[0-9]+$/.test(id.slice(0, 12))) return id;
  }
}

export function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
