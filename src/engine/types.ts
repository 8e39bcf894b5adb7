// The Docker Engine API objects shoald serves, in Docker's own JSON shapes (PascalCase), so that the
// docker CLI and SDKs read them unchanged. The replicated store keeps nodes and the cluster in these
// shapes too; what only managers may see (the CA key, raft members) lives elsewhere.

export type {
  ClusterInfo,
  LocalNodeState,
  ManagerStatus,
  Node,
  NodeAvailability,
  NodeDescription,
  NodeRole,
  NodeSpec,
  NodeState,
  Reachability,
  SwarmSpec,
  TLSInfo,
  Version,
} from "../api/objects.js";

import type { NetworkSpec, Node, NodeSpec, SwarmSpec } from "../api/objects.js";
import type { NetworkResource, NodeListFilters, Swarm, SwarmInfo, SwarmUpdateOptions } from "../api/views.js";
import type { EndpointSettingsRequest } from "../runtime/types.js";
import type { SwarmInit, SwarmJoin } from "./schemas/swarm.js";

export type {
  IPAMConfigEntry,
  NetworkContainer,
  NetworkResource,
  NodeListFilters,
  Swarm,
  SwarmInfo,
  SwarmUpdateOptions,
} from "../api/views.js";
export type { SwarmInit, SwarmJoin } from "./schemas/swarm.js";

/**
 * What the Engine API server needs from the daemon. Every method throws an ApiError (src/engine/errors.ts)
 * for anything a user did wrong or that cannot be done now; the server turns it into the HTTP status and
 * JSON message docker users know.
 */
export interface SwarmBackend {
  /** The Swarm section of /info, and of the Swarm header of /_ping. */
  swarmInfo(): Promise<SwarmInfo>;
  /** The hostname this daemon reports (GET /info Name). */
  hostname(): string;
  /** GET /info FirewallBackend (docker info's "Firewall Backend"): the packet filter this host uses. */
  firewallInfo?(): Promise<{ Driver: string; Info: [string, string][] }>;
  swarmInspect(): Promise<Swarm>;
  /** Returns the new node's id. */
  swarmInit(req: SwarmInit): Promise<string>;
  swarmJoin(req: SwarmJoin): Promise<void>;
  swarmLeave(force: boolean): Promise<void>;
  swarmUpdate(spec: SwarmSpec, opts: SwarmUpdateOptions): Promise<void>;
  /** GET /swarm/unlockkey: the unlock key while autolock is on, "" while it is off. */
  swarmUnlockKey(): Promise<string>;
  /** POST /swarm/unlock: open a locked manager with its unlock key. */
  swarmUnlock(unlockKey: string): Promise<void>;
  /**
   * The nodes: the bytes of GET /nodes' body, JSON text (a list of 5,000 nodes is served from bytes kept
   * between changes, not serialised per call).
   */
  nodeList(filters: NodeListFilters): Promise<Uint8Array>;
  /** ref: a full id, a unique id prefix, a hostname, or "self". */
  nodeInspect(ref: string): Promise<Node>;
  nodeUpdate(ref: string, version: number, spec: NodeSpec): Promise<void>;
  nodeRemove(ref: string, force: boolean): Promise<void>;
}

// ------------------------------------------------------------------ networks

export interface NetworkBackend {
  /** The spec was decoded and checked by the Engine API; the backend checks what needs the cluster. */
  networkCreate(spec: NetworkSpec): Promise<{ Id: string; Warning: string }>;
  networkList(filters: Record<string, string[]>): Promise<NetworkResource[]>;
  /** ref: full id, unique id prefix, or name. */
  networkInspect(ref: string): Promise<NetworkResource>;
  networkRemove(ref: string): Promise<void>;
  networkConnect(ref: string, container: string, cfg: EndpointSettingsRequest): Promise<void>;
  networkDisconnect(ref: string, container: string, force: boolean): Promise<void>;
}

// The container runtime's shapes (containers, exec, logs, network attachments) are its own.
export type {
  AttachedEndpoint,
  AttachOptions,
  AttachSession,
  ContainerBackend,
  ContainerConfig,
  ContainerCreateRequest,
  ContainerJSON,
  ContainerListOptions,
  ContainerState,
  ContainerStatus,
  ContainerSummary,
  EndpointSettings,
  EndpointSettingsRequest,
  ExecCreateRequest,
  ExecInspect,
  ExecSession,
  LogsOptions,
  NetworkAttacher,
  OutputChunk,
  OutputStream,
  PendingWait,
  StdStream,
  WaitCondition,
  WaitResponse,
} from "../runtime/types.js";
