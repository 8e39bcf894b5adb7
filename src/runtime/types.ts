// What the container runtime takes and returns, in the Docker Engine API's JSON shapes (PascalCase), so
// the Engine API (src/engine) serves them unchanged; and what it asks of the node's networking (the
// NetworkAttacher, which the agent implements). The runtime owns these shapes: it imports nothing above it
// (but the cluster's own records, src/api).

import type { NetworkRecord } from "../api/objects.js";
import type { EventLog } from "./events.js";

/** What a container prune keeps: created after `untilMs` (ms since the epoch), or labels that fail the test. */
export interface ContainerPruneFilter {
  untilMs?: number;
  labels(labels: Record<string, string>): boolean;
}

export interface EndpointSettingsRequest {
  IPAMConfig?: { IPv4Address?: string } | null;
  Aliases?: string[] | null;
}

/**
 * What the container runtime asks of the daemon when a container joins or leaves a network: the
 * managers allocate the endpoint, the data plane wires `netnsPath` into the overlay, and the names
 * become resolvable.
 */
export interface AttachedEndpoint {
  networkId: string;
  networkName: string;
  endpointId: string;
  ip: string;
  prefixLen: number;
  mac: string;
  gateway: string;
  aliases: string[];
  /** What the next daemon needs to take the endpoint over while its container runs on (kept in state.json). */
  wiring?: EndpointWiring;
}

/**
 * An endpoint's wiring as the node made it: enough for a restarted daemon to adopt the overlay namespace,
 * veth, names and gateway of a container that kept running, before the managers say anything.
 */
export interface EndpointWiring {
  /** The node the managers allocated the endpoint to (a node that left and joined again has another id). */
  nodeId: string;
  /** The endpoint's interface in the container's namespace (eth0, eth1, ...). */
  ifname: string;
  /** The network as the managers answered the attach: its VNI, subnet, gateway, MTU and encryption. */
  network: NetworkRecord;
}

export interface NetworkAttacher {
  attach(
    container: { id: string; name: string; netnsPath: string; ifname: string },
    networkRef: string,
    cfg: EndpointSettingsRequest,
  ): Promise<AttachedEndpoint>;
  detach(container: { id: string; name: string; netnsPath: string }, endpoint: AttachedEndpoint): Promise<void>;
  /**
   * docker rename of a running container: the managers give its endpoints the new name, the one every host's
   * DNS answers (all or none; refused in docker's words when another container has it on one of them).
   */
  rename?(container: { id: string; name: string }, endpoints: AttachedEndpoint[], newName: string): Promise<void>;
  /**
   * Whether the node's networking can take this endpoint over after a daemon restart (its wiring is saved
   * and it belongs to this node); a running container with an endpoint it cannot is stopped instead.
   */
  adoptable?(endpoint: AttachedEndpoint): boolean;
  /** The resolv.conf a container on these networks gets (the embedded DNS server's address). */
  resolvConf(networks: AttachedEndpoint[]): string;
}

// ------------------------------------------------------------------ containers

/** POST /containers/create: Docker's container.Config with HostConfig and NetworkingConfig (what shoal uses). */
export interface ContainerCreateRequest {
  Hostname?: string;
  Domainname?: string;
  User?: string;
  AttachStdin?: boolean;
  AttachStdout?: boolean;
  AttachStderr?: boolean;
  Tty?: boolean;
  OpenStdin?: boolean;
  StdinOnce?: boolean;
  Env?: string[] | null;
  Cmd?: string[] | null;
  Image?: string;
  WorkingDir?: string;
  Entrypoint?: string[] | null;
  Labels?: Record<string, string> | null;
  StopSignal?: string;
  StopTimeout?: number | null;
  HostConfig?: {
    NetworkMode?: string;
    AutoRemove?: boolean;
    /** -v HOST:CTR[:ro] */
    Binds?: string[] | null;
    /** --memory, in bytes. */
    Memory?: number;
    /** --cpus, in billionths of a CPU. */
    NanoCpus?: number;
    RestartPolicy?: { Name?: string; MaximumRetryCount?: number } | null;
    [key: string]: unknown;
  } | null;
  NetworkingConfig?: { EndpointsConfig?: Record<string, EndpointSettingsRequest | null> | null } | null;
}

export type ContainerStatus = "created" | "running" | "paused" | "restarting" | "removing" | "exited";

export interface ContainerState {
  Status: ContainerStatus;
  Running: boolean;
  Paused: boolean;
  Restarting: boolean;
  OOMKilled: boolean;
  Dead: boolean;
  /** The host pid of the container's first process (0 when not running). */
  Pid: number;
  ExitCode: number;
  Error: string;
  StartedAt: string;
  FinishedAt: string;
}

/** Docker's EndpointSettings, as container inspect and list show a network attachment. */
export interface EndpointSettings {
  IPAMConfig: { IPv4Address?: string } | null;
  Links: string[] | null;
  Aliases: string[] | null;
  MacAddress: string;
  DriverOpts: Record<string, string> | null;
  GwPriority: number;
  NetworkID: string;
  EndpointID: string;
  Gateway: string;
  IPAddress: string;
  IPPrefixLen: number;
  IPv6Gateway: string;
  GlobalIPv6Address: string;
  GlobalIPv6PrefixLen: number;
  DNSNames: string[] | null;
}

export interface ContainerConfig {
  Hostname: string;
  Domainname: string;
  User: string;
  AttachStdin: boolean;
  AttachStdout: boolean;
  AttachStderr: boolean;
  Tty: boolean;
  OpenStdin: boolean;
  StdinOnce: boolean;
  Env: string[];
  Cmd: string[] | null;
  Image: string;
  Volumes: null;
  WorkingDir: string;
  Entrypoint: string[] | null;
  OnBuild: null;
  Labels: Record<string, string>;
  StopSignal?: string;
  StopTimeout?: number;
}

/** GET /containers/{id}/json: Docker's ContainerJSON (the parts a host-file-system container has). */
export interface ContainerJSON {
  Id: string;
  Created: string;
  Path: string;
  Args: string[];
  State: ContainerState;
  Image: string;
  ResolvConfPath: string;
  HostnamePath: string;
  HostsPath: string;
  LogPath: string;
  Name: string;
  RestartCount: number;
  Driver: string;
  Platform: string;
  MountLabel: string;
  ProcessLabel: string;
  AppArmorProfile: string;
  ExecIDs: string[] | null;
  HostConfig: {
    NetworkMode: string;
    AutoRemove: boolean;
    LogConfig: { Type: string; Config: Record<string, string> };
    Binds: string[] | null;
    Memory: number;
    NanoCpus: number;
    RestartPolicy: { Name: string; MaximumRetryCount: number };
  };
  GraphDriver: { Data: null; Name: string };
  /** With ?size=1 (docker inspect --size): the bytes the container wrote, and those with its image's. */
  SizeRw?: number;
  SizeRootFs?: number;
  Mounts: unknown[];
  Config: ContainerConfig;
  NetworkSettings: {
    SandboxID: string;
    SandboxKey: string;
    Ports: Record<string, unknown>;
    Networks: Record<string, EndpointSettings>;
  };
}

/** GET /containers/json: Docker's container.Summary. */
export interface ContainerSummary {
  Id: string;
  Names: string[];
  Image: string;
  ImageID: string;
  Command: string;
  /** Unix seconds. */
  Created: number;
  Ports: unknown[];
  Labels: Record<string, string>;
  State: ContainerStatus;
  /** "Up 5 seconds", "Exited (0) 2 minutes ago", "Created". */
  Status: string;
  HostConfig: { NetworkMode: string };
  NetworkSettings: { Networks: Record<string, EndpointSettings> };
  Mounts: unknown[];
  /** With ?size=1 (docker ps -s): the bytes the container wrote, and those with its image's. */
  SizeRw?: number;
  SizeRootFs?: number;
}

export interface ContainerListOptions {
  all: boolean;
  /** docker ps -s: each container's SizeRw and SizeRootFs. */
  size?: boolean;
  /** Docker's filters: id, name, status, label, network, exited. */
  filters: Record<string, string[]>;
}

export type WaitCondition = "not-running" | "next-exit" | "removed";

export interface WaitResponse {
  StatusCode: number;
  Error?: { Message: string };
}

/** A wait that has been accepted (the container exists): the response can start before it ends. */
export interface PendingWait {
  result: Promise<WaitResponse>;
  /** The client went away: stop waiting. */
  cancel(): void;
}

/** 1: stdout, 2: stderr (the stream byte of Docker's multiplexed framing); 0: stdin. */
export type StdStream = 0 | 1 | 2;

export interface OutputChunk {
  stream: 1 | 2;
  data: Buffer;
  /** RFC 3339 with nanoseconds, when the line was logged. */
  time?: string;
}

export interface LogsOptions {
  stdout: boolean;
  stderr: boolean;
  follow: boolean;
  timestamps: boolean;
  /** "all" or a number of lines. */
  tail: string;
  /** Unix seconds (fractions allowed); 0: no bound. */
  since: number;
  until: number;
}

/** An output stream that has been accepted (the container exists). */
export interface OutputStream {
  /** The container was created with a TTY: the stream is raw, not multiplexed. */
  tty: boolean;
  chunks: AsyncIterable<OutputChunk>;
  /** The client went away. */
  cancel(): void;
}

export interface AttachOptions {
  stream: boolean;
  logs: boolean;
  stdin: boolean;
  stdout: boolean;
  stderr: boolean;
}

export interface AttachSession {
  tty: boolean;
  /** The container's output (and, with logs, what it printed before), until it exits. */
  chunks: AsyncIterable<OutputChunk>;
  /** Where the client's input goes, when stdin was asked for and the container keeps stdin open. */
  stdin: NodeJS.WritableStream | undefined;
  cancel(): void;
}

export interface ExecCreateRequest {
  User?: string;
  Privileged?: boolean;
  Tty?: boolean;
  AttachStdin?: boolean;
  AttachStdout?: boolean;
  AttachStderr?: boolean;
  Detach?: boolean;
  DetachKeys?: string;
  Env?: string[] | null;
  WorkingDir?: string;
  Cmd?: string[] | null;
}

/** GET /exec/{id}/json */
export interface ExecInspect {
  ID: string;
  Running: boolean;
  ExitCode: number | null;
  ProcessConfig: { tty: boolean; entrypoint: string; arguments: string[]; privileged: boolean; user?: string };
  OpenStdin: boolean;
  OpenStderr: boolean;
  OpenStdout: boolean;
  CanRemove: boolean;
  ContainerID: string;
  DetachKeys: string;
  Pid: number;
}

/** An exec that has been accepted for starting (it exists, was not started, its container runs). */
export interface ExecSession {
  tty: boolean;
  attachStdin: boolean;
  /**
   * Runs the process: its output goes to `output`, `stdin` (when the exec attaches stdin) feeds it.
   * Resolves to the exit code once the process has exited and its output was delivered.
   */
  run(io: { output(chunk: OutputChunk): undefined | Promise<unknown>; stdin?: NodeJS.ReadableStream }): Promise<number>;
}

// ------------------------------------------------------------------ stats

export interface CpuStats {
  cpu_usage: {
    total_usage: number;
    percpu_usage?: number[];
    usage_in_kernelmode: number;
    usage_in_usermode: number;
  };
  system_cpu_usage: number;
  online_cpus: number;
  throttling_data: { periods: number; throttled_periods: number; throttled_time: number };
}

export interface BlkioEntry {
  major: number;
  minor: number;
  op: string;
  value: number;
}

export interface NetworkStats {
  rx_bytes: number;
  rx_packets: number;
  rx_errors: number;
  rx_dropped: number;
  tx_bytes: number;
  tx_packets: number;
  tx_errors: number;
  tx_dropped: number;
}

/** GET /containers/{id}/stats: docker's container.StatsResponse (snake_case, as dockerd sends it). */
export interface ContainerStatsJSON {
  read: string;
  preread: string;
  pids_stats: { current?: number; limit?: number };
  blkio_stats: { io_service_bytes_recursive: BlkioEntry[] | null };
  num_procs: number;
  storage_stats: Record<string, never>;
  cpu_stats: CpuStats;
  precpu_stats: CpuStats;
  memory_stats: {
    usage?: number;
    max_usage?: number;
    stats?: Record<string, number>;
    failcnt?: number;
    limit?: number;
  };
  name: string;
  id: string;
  networks?: Record<string, NetworkStats>;
}

/** The samples of a stats request: one (no stream), or one a second until the client goes or the container stops. */
export interface StatsStream {
  samples: AsyncIterable<ContainerStatsJSON>;
  cancel(): void;
}

/**
 * What the Engine API server needs from the container runtime. Container refs are a full id, a unique id
 * prefix, or a name (with or without the leading "/"). Errors are ApiErrors: 404 `No such container: X`,
 * 409 for conflicts, 400 for bad requests.
 */
export interface ContainerBackend {
  containerCreate(name: string | undefined, req: ContainerCreateRequest): Promise<{ Id: string; Warnings: string[] }>;
  /** false: the container was already running (HTTP 304). */
  containerStart(ref: string): Promise<boolean>;
  /** false: the container was not running (HTTP 304). */
  containerStop(ref: string, opts: { timeout?: number; signal?: string }): Promise<boolean>;
  containerKill(ref: string, signal: string): Promise<void>;
  containerWait(ref: string, condition: WaitCondition): Promise<PendingWait>;
  containerRemove(ref: string, opts: { force: boolean }): Promise<void>;
  containerList(opts: ContainerListOptions): Promise<ContainerSummary[]>;
  containerInspect(ref: string, opts?: { size?: boolean }): Promise<ContainerJSON>;
  containerLogs(ref: string, opts: LogsOptions): Promise<OutputStream>;
  containerAttach(ref: string, opts: AttachOptions): Promise<AttachSession>;
  execCreate(ref: string, req: ExecCreateRequest): Promise<string>;
  execStart(execId: string): Promise<ExecSession>;
  execInspect(execId: string): Promise<ExecInspect>;
  /** The size of a TTY container's terminal (docker run -t sends it, and on every change). */
  containerResize?(ref: string, height: number, width: number): Promise<void>;
  /** The size of a TTY exec's terminal. */
  execResize?(execId: string, height: number, width: number): Promise<void>;
  /** `docker top`: the container's processes as the host's `ps` shows them. */
  containerTop(ref: string, psArgs: string): Promise<{ Titles: string[]; Processes: string[][] }>;
  /** `docker rename`. */
  containerRename(ref: string, newName: string): Promise<void>;
  containerPause(ref: string): Promise<void>;
  containerUnpause(ref: string): Promise<void>;
  /** `docker container prune`: the ids of the containers removed. */
  /** The containers removed, and the bytes their root file systems held of their own. */
  containerPrune(filter: ContainerPruneFilter): Promise<{ deleted: string[]; reclaimedBytes: number }>;
  /** `docker stats`: `stream` a sample a second; else one (after a first, for the CPU delta, unless oneShot). */
  containerStats(ref: string, opts: { stream: boolean; oneShot: boolean }): Promise<StatsStream>;
  /** `docker events`: what happened here (the engine adds the networks it changes). */
  readonly events?: EventLog;
  /** Counts for GET /info. */
  containerCounts(): { total: number; running: number; paused: number; stopped: number };
}
