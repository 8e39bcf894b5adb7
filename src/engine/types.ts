// The Docker Engine API objects shoald serves, in Docker's own JSON shapes (PascalCase), so that the
// docker CLI and SDKs read them unchanged. The replicated store keeps nodes and the cluster in these
// shapes too; what only managers may see (the CA key, raft members) lives elsewhere.

export interface Version {
  Index: number;
}

export type NodeRole = "worker" | "manager";
export type NodeAvailability = "active" | "pause" | "drain";
export type NodeState = "unknown" | "down" | "ready" | "disconnected";
export type Reachability = "unknown" | "unreachable" | "reachable";
export type LocalNodeState = "inactive" | "pending" | "active" | "error" | "locked";

export interface NodeSpec {
  Name?: string;
  Labels: Record<string, string>;
  Role: NodeRole;
  Availability: NodeAvailability;
}

export interface TLSInfo {
  TrustRoot: string;
  CertIssuerSubject: string;
  CertIssuerPublicKey: string;
}

export interface NodeDescription {
  Hostname: string;
  Platform: { Architecture: string; OS: string };
  Resources: { NanoCPUs: number; MemoryBytes: number };
  Engine: { EngineVersion: string; Labels?: Record<string, string>; Plugins: { Type: string; Name: string }[] };
  TLSInfo?: TLSInfo;
}

export interface ManagerStatus {
  Leader?: boolean;
  Reachability: Reachability;
  /** host:port of the manager's cluster listener. */
  Addr: string;
}

export interface Node {
  ID: string;
  Version: Version;
  CreatedAt: string;
  UpdatedAt: string;
  Spec: NodeSpec;
  Description: NodeDescription;
  Status: { State: NodeState; Message?: string; Addr: string };
  ManagerStatus?: ManagerStatus;
}

export interface SwarmSpec {
  Name: string;
  Labels: Record<string, string>;
  Orchestration: { TaskHistoryRetentionLimit: number };
  Raft: {
    SnapshotInterval: number;
    KeepOldSnapshots: number;
    LogEntriesForSlowFollowers: number;
    ElectionTick: number;
    HeartbeatTick: number;
  };
  /** Nanoseconds. */
  Dispatcher: { HeartbeatPeriod: number };
  /** Nanoseconds. */
  CAConfig: { NodeCertExpiry: number };
  TaskDefaults: Record<string, unknown>;
  EncryptionConfig: { AutoLockManagers: boolean };
}

export interface ClusterInfo {
  ID: string;
  Version: Version;
  CreatedAt: string;
  UpdatedAt: string;
  Spec: SwarmSpec;
  TLSInfo: TLSInfo;
  RootRotationInProgress: boolean;
  DefaultAddrPool: string[];
  SubnetSize: number;
  DataPathPort: number;
}

/** GET /swarm: the cluster plus its join tokens (managers only). */
export interface Swarm extends ClusterInfo {
  JoinTokens: { Worker: string; Manager: string };
}

export interface SwarmInitRequest {
  ListenAddr?: string;
  AdvertiseAddr?: string;
  DataPathAddr?: string;
  DataPathPort?: number;
  ForceNewCluster?: boolean;
  Spec?: Partial<SwarmSpec>;
  DefaultAddrPool?: string[];
  SubnetSize?: number;
  Availability?: NodeAvailability;
}

export interface SwarmJoinRequest {
  ListenAddr?: string;
  AdvertiseAddr?: string;
  DataPathAddr?: string;
  RemoteAddrs: string[];
  JoinToken: string;
  Availability?: NodeAvailability;
}

export interface SwarmUpdateOptions {
  version: number;
  rotateWorkerToken: boolean;
  rotateManagerToken: boolean;
  rotateManagerUnlockKey: boolean;
}

/** The Swarm section of GET /info. */
export interface SwarmInfo {
  NodeID: string;
  NodeAddr: string;
  LocalNodeState: LocalNodeState;
  ControlAvailable: boolean;
  Error: string;
  RemoteManagers: { NodeID: string; Addr: string }[] | null;
  Nodes?: number;
  Managers?: number;
  Cluster?: ClusterInfo;
}

export interface NodeListFilters {
  id?: string[];
  label?: string[];
  "node.label"?: string[];
  membership?: string[];
  name?: string[];
  role?: string[];
}

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
  swarmInspect(): Promise<Swarm>;
  /** Returns the new node's id. */
  swarmInit(req: SwarmInitRequest): Promise<string>;
  swarmJoin(req: SwarmJoinRequest): Promise<void>;
  swarmLeave(force: boolean): Promise<void>;
  swarmUpdate(spec: SwarmSpec, opts: SwarmUpdateOptions): Promise<void>;
  nodeList(filters: NodeListFilters): Promise<Node[]>;
  /** ref: a full id, a unique id prefix, a hostname, or "self". */
  nodeInspect(ref: string): Promise<Node>;
  nodeUpdate(ref: string, version: number, spec: NodeSpec): Promise<void>;
  nodeRemove(ref: string, force: boolean): Promise<void>;
}

// ------------------------------------------------------------------ networks

export interface IPAMConfigEntry {
  Subnet?: string;
  Gateway?: string;
  IPRange?: string;
}

export interface NetworkCreateRequest {
  Name: string;
  Driver?: string;
  Scope?: string;
  Internal?: boolean;
  Attachable?: boolean;
  Ingress?: boolean;
  IPAM?: { Driver?: string; Options?: Record<string, string> | null; Config?: IPAMConfigEntry[] | null };
  Options?: Record<string, string> | null;
  Labels?: Record<string, string> | null;
  CheckDuplicate?: boolean;
  EnableIPv6?: boolean;
}

export interface NetworkContainer {
  Name: string;
  EndpointID: string;
  MacAddress: string;
  IPv4Address: string;
  IPv6Address: string;
}

/** GET /networks/{id}: Docker's NetworkResource. */
export interface NetworkResource {
  Name: string;
  Id: string;
  Created: string;
  Scope: "swarm" | "local";
  Driver: string;
  EnableIPv4: boolean;
  EnableIPv6: boolean;
  IPAM: { Driver: string; Options: Record<string, string> | null; Config: IPAMConfigEntry[] };
  Internal: boolean;
  Attachable: boolean;
  Ingress: boolean;
  ConfigFrom: { Network: string };
  ConfigOnly: boolean;
  /** This host's containers on the network. */
  Containers: Record<string, NetworkContainer>;
  Options: Record<string, string>;
  Labels: Record<string, string>;
  /** The nodes that hold the network now (overlay only). */
  Peers?: { Name: string; IP: string }[];
  /** shoal: for encrypted networks, what this host has installed (never keys). */
  Encryption?: unknown;
}

export interface EndpointSettingsRequest {
  IPAMConfig?: { IPv4Address?: string } | null;
  Aliases?: string[] | null;
}

export interface NetworkBackend {
  networkCreate(req: NetworkCreateRequest): Promise<{ Id: string; Warning: string }>;
  networkList(filters: Record<string, string[]>): Promise<NetworkResource[]>;
  /** ref: full id, unique id prefix, or name. */
  networkInspect(ref: string): Promise<NetworkResource>;
  networkRemove(ref: string): Promise<void>;
  networkConnect(ref: string, container: string, cfg: EndpointSettingsRequest): Promise<void>;
  networkDisconnect(ref: string, container: string, force: boolean): Promise<void>;
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
}

export interface NetworkAttacher {
  attach(
    container: { id: string; name: string; netnsPath: string; ifname: string },
    networkRef: string,
    cfg: EndpointSettingsRequest,
  ): Promise<AttachedEndpoint>;
  detach(container: { id: string; name: string; netnsPath: string }, endpoint: AttachedEndpoint): Promise<void>;
  /** The resolv.conf a container on these networks gets (the embedded DNS server's address). */
  resolvConf(networks: AttachedEndpoint[]): string;
}
