// The cluster's own objects — nodes, the cluster, networks, endpoints, Raft members, the overlay keyring —
// as schemas, with their types derived from them. The store keeps exactly these; every value that enters
// it (a command from the log, a snapshot, a node's report about itself) is parsed against them first.
//
// Nodes and the cluster keep Docker's JSON shapes (PascalCase), which the Engine API shows unchanged.

import { z } from "zod";
import {
  MAX_ADDR_POOLS,
  MAX_ALIASES,
  MAX_MESSAGE_LENGTH,
  MAX_NAME_LENGTH,
  MAX_OPTIONS,
  MAX_PEM_BYTES,
  MAX_PLUGINS,
  MAX_SHORT_STRING,
} from "./limits.js";
import { Count, HostName, HostPort, IpAddress, IsoTime, Labels, ObjectName, shortText, stringMap } from "./schema.js";

/** Node and cluster ids (swarmkit's identity.NewID): 25 lower-case base36 characters. */
export const ObjectId = z.string().regex(/^[0-9a-z]{25}$/, "must be a 25-character id");
/** Endpoint ids: 64 hex digits. */
export const EndpointId = z.string().regex(/^[0-9a-f]{64}$/, "must be 64 hex digits");
/** Container ids: 64 hex digits, as docker's. */
export const ContainerId = z.string().regex(/^[0-9a-f]{64}$/, "must be 64 hex digits");
/** Network ids: the same format as node ids. */
export const NetworkId = ObjectId;

export const Pem = z.string().max(MAX_PEM_BYTES, `must be at most ${MAX_PEM_BYTES} bytes`);

const VersionSchema = z.object({ Index: Count });
export type Version = z.infer<typeof VersionSchema>;

// ------------------------------------------------------------------ nodes

export const NodeRoleSchema = z.enum(["worker", "manager"]);
export type NodeRole = z.infer<typeof NodeRoleSchema>;
export const NodeAvailabilitySchema = z.enum(["active", "pause", "drain"]);
export type NodeAvailability = z.infer<typeof NodeAvailabilitySchema>;
export const NodeStateSchema = z.enum(["unknown", "down", "ready", "disconnected"]);
export type NodeState = z.infer<typeof NodeStateSchema>;
export type Reachability = "unknown" | "unreachable" | "reachable";
export type LocalNodeState = "inactive" | "pending" | "active" | "error" | "locked";

export const NodeSpecSchema = z.object({
  Name: shortText(MAX_NAME_LENGTH).optional(),
  Labels: Labels,
  Role: NodeRoleSchema,
  Availability: NodeAvailabilitySchema,
});
export type NodeSpec = z.infer<typeof NodeSpecSchema>;

export const TLSInfoSchema = z.object({
  TrustRoot: Pem,
  CertIssuerSubject: z.string().max(MAX_PEM_BYTES),
  CertIssuerPublicKey: z.string().max(MAX_PEM_BYTES),
});
export type TLSInfo = z.infer<typeof TLSInfoSchema>;

const Short = shortText(MAX_SHORT_STRING);

/** What a node reports about itself (its session's description): every field bounded. */
export const NodeDescriptionSchema = z.object({
  Hostname: HostName,
  Platform: z.object({ Architecture: Short, OS: Short }),
  Resources: z.object({ NanoCPUs: Count, MemoryBytes: Count }),
  Engine: z.object({
    EngineVersion: Short,
    Labels: Labels.optional(),
    Plugins: z.array(z.object({ Type: Short, Name: Short })).max(MAX_PLUGINS),
  }),
  TLSInfo: TLSInfoSchema.optional(),
});
export type NodeDescription = z.infer<typeof NodeDescriptionSchema>;

const ManagerStatusSchema = z.object({
  Leader: z.boolean().optional(),
  Reachability: z.enum(["unknown", "unreachable", "reachable"]),
  /** host:port of the manager's cluster listener. */
  Addr: z.string(),
});
export type ManagerStatus = z.infer<typeof ManagerStatusSchema>;

/** A node's address as managers record it: an IP, or empty while unknown. */
export const NodeAddr = z.union([z.literal(""), IpAddress]);

const NodeStatusSchema = z.object({
  State: NodeStateSchema,
  Message: shortText(MAX_MESSAGE_LENGTH).optional(),
  Addr: NodeAddr,
});

export const NodeSchema = z.object({
  ID: ObjectId,
  Version: VersionSchema,
  CreatedAt: IsoTime,
  UpdatedAt: IsoTime,
  Spec: NodeSpecSchema,
  Description: NodeDescriptionSchema,
  Status: NodeStatusSchema,
  /** Presentation only (computed from live Raft state); never stored. */
  ManagerStatus: ManagerStatusSchema.optional(),
});
export type Node = z.infer<typeof NodeSchema>;

// ------------------------------------------------------------------ the cluster

/** Nanoseconds. */
const Nanos = Count;

export const SwarmSpecSchema = z.object({
  Name: shortText(MAX_NAME_LENGTH),
  Labels: Labels,
  Orchestration: z.object({ TaskHistoryRetentionLimit: Count }),
  Raft: z.object({
    SnapshotInterval: Count,
    KeepOldSnapshots: Count,
    LogEntriesForSlowFollowers: Count,
    ElectionTick: Count,
    HeartbeatTick: Count,
  }),
  Dispatcher: z.object({ HeartbeatPeriod: Nanos }),
  CAConfig: z.object({
    NodeCertExpiry: Nanos,
    /** swarm ca --rotate: a change starts a rotation to a new root the managers make. */
    ForceRotate: Count.optional(),
    /** swarm ca --rotate --ca-cert/--ca-key: the root to rotate to. Never stored, never shown. */
    SigningCACert: Pem.optional(),
    SigningCAKey: Pem.optional(),
    /** Refused when not empty: shoal signs with its own CA key only. */
    ExternalCAs: z.array(z.unknown()).max(8).nullable().optional(),
  }),
  TaskDefaults: z.object({
    LogDriver: z.object({ Name: Short, Options: stringMap(MAX_OPTIONS).optional() }).optional(),
  }),
  EncryptionConfig: z.object({ AutoLockManagers: z.boolean() }),
});
export type SwarmSpec = z.infer<typeof SwarmSpecSchema>;

/** What a swarm's spec is when nothing else was asked for (SwarmKit's defaults). */
export const DEFAULT_SWARM_SPEC: SwarmSpec = {
  Name: "default",
  Labels: {},
  Orchestration: { TaskHistoryRetentionLimit: 5 },
  Raft: {
    SnapshotInterval: 10000,
    KeepOldSnapshots: 0,
    LogEntriesForSlowFollowers: 500,
    ElectionTick: 10,
    HeartbeatTick: 1,
  },
  Dispatcher: { HeartbeatPeriod: 5_000_000_000 },
  CAConfig: { NodeCertExpiry: 90 * 24 * 3600 * 1e9 },
  TaskDefaults: {},
  EncryptionConfig: { AutoLockManagers: false },
};

export const Cidr = z
  .string()
  .max(43)
  .regex(/^[0-9.]+\/[0-9]{1,2}$/, "must be an IPv4 CIDR (a.b.c.d/n)");

export const ClusterInfoSchema = z.object({
  ID: ObjectId,
  Version: VersionSchema,
  CreatedAt: IsoTime,
  UpdatedAt: IsoTime,
  Spec: SwarmSpecSchema,
  TLSInfo: TLSInfoSchema,
  RootRotationInProgress: z.boolean(),
  DefaultAddrPool: z.array(Cidr).max(MAX_ADDR_POOLS),
  SubnetSize: z.number().int().min(0).max(32),
  DataPathPort: z.number().int().min(0).max(65535),
});
export type ClusterInfo = z.infer<typeof ClusterInfoSchema>;

/** An autolock unlock key: SWMKEY-1- and 32 bytes in unpadded base64 (src/ca/unlockkey.ts). */
export const UnlockKeySchema = z.string().regex(/^SWMKEY-1-[A-Za-z0-9+/]{43}$/, "must be an unlock key (SWMKEY-1-...)");

/** A root CA rotation in progress: the new root, its key, and the new root signed by the current one. */
export const RootRotationSchema = z.object({
  caCertPem: Pem,
  caKeyPem: Pem,
  /** The new root's certificate issued by the current root: appended to what the new key signs. */
  crossSignedPem: Pem,
});
export type RootRotation = z.infer<typeof RootRotationSchema>;

/**
 * The root a finished rotation replaced, kept while nodes that were down during it have not come back:
 * its cross-signed intermediate stays appended to new certificates, so such a node (trusting the old root
 * only) can still verify the managers, and its old certificate still proves who it is to recover a new one.
 */
const RetiredRootSchema = z.object({ caCertPem: Pem, crossSignedPem: Pem });

/** What only managers hold: the CA key, the join tokens, and the unlock key while autolock is on. */
export const ClusterSecretsSchema = z.object({
  rootCACertPem: Pem,
  rootCAKeyPem: Pem,
  workerToken: z.string().max(256),
  managerToken: z.string().max(256),
  /** The key-encryption key every manager seals its raft key under (autolock on); absent when off. */
  unlockKey: UnlockKeySchema.optional(),
  rootRotation: RootRotationSchema.optional(),
  retiredRoot: RetiredRootSchema.optional(),
  /** The CAConfig.ForceRotate the last rotation was started for. */
  lastForcedRotation: Count.optional(),
});
export type ClusterSecrets = z.infer<typeof ClusterSecretsSchema>;

export const ClusterRecordSchema = z.object({ info: ClusterInfoSchema, secrets: ClusterSecretsSchema });
export type ClusterRecord = z.infer<typeof ClusterRecordSchema>;

export const NodeRecordSchema = z.object({
  node: NodeSchema,
  /** The role the node actually has (its certificate's), as opposed to Spec.Role, the desired one. */
  role: NodeRoleSchema,
  /**
   * Root rotation: the issuer (public key, TLSInfo.CertIssuerPublicKey) this node was told to renew its
   * certificate to; set for a batch of nodes at a time.
   */
  certRenew: z.string().max(MAX_PEM_BYTES).optional(),
});
export type NodeRecord = z.infer<typeof NodeRecordSchema>;

/** Raft ids: positive integers below 2^53 (the core's NodeId). */
export const RaftId = z.number().int().positive().max(Number.MAX_SAFE_INTEGER);

export const RaftMemberSchema = z.object({
  raftId: RaftId,
  nodeId: ObjectId,
  /** host:port of its cluster listener. */
  addr: HostPort,
});
export type RaftMember = z.infer<typeof RaftMemberSchema>;

// ------------------------------------------------------------------ networks and endpoints

export const NetworkSpecSchema = z.object({
  name: ObjectName,
  driver: z.literal("overlay"),
  internal: z.boolean(),
  attachable: z.boolean(),
  ingress: z.boolean(),
  /** Docker's driver options (encrypted, com.docker.network.driver.mtu, vxlanid_list...). */
  options: stringMap(MAX_OPTIONS),
  labels: Labels,
  /** --subnet / --gateway, if given. */
  subnet: Cidr.optional(),
  gateway: IpAddress.optional(),
});
export type NetworkSpec = z.infer<typeof NetworkSpecSchema>;

const NetworkAllocSchema = z.object({
  /** Canonical CIDR, e.g. "10.0.1.0/24". */
  subnet: Cidr,
  /** The gateway address; never given to an endpoint. */
  gateway: IpAddress,
  vni: z.number().int().min(1).max(16777215),
  /** Serial pointer: the host offset at which the next search for a free address starts. */
  nextHost: Count,
  /** Addresses held by endpoints: ip -> endpoint id. */
  used: z.record(z.string(), z.string()),
});
export type NetworkAlloc = z.infer<typeof NetworkAllocSchema>;

export const NetworkRecordSchema = z.object({
  id: NetworkId,
  spec: NetworkSpecSchema,
  /** Subnet, gateway, VNI and the serial address pointer: allocated when the entry was applied. */
  alloc: NetworkAllocSchema,
  createdAt: IsoTime,
  version: Count,
});
export type NetworkRecord = z.infer<typeof NetworkRecordSchema>;

/** An alias or container name as DNS answers it. */
export const DnsName = z
  .string()
  .min(1)
  .max(MAX_NAME_LENGTH)
  .regex(/^[a-zA-Z0-9_][a-zA-Z0-9_.-]*$/, "must be a DNS name ([a-zA-Z0-9_][a-zA-Z0-9_.-]*)");

export const Aliases = z.array(DnsName).max(MAX_ALIASES, `at most ${MAX_ALIASES} aliases`);

/** A container's attachment to a network, wherever it runs. */
export const EndpointRecordSchema = z.object({
  id: EndpointId,
  networkId: NetworkId,
  /** The node the container runs on. */
  nodeId: ObjectId,
  containerId: ContainerId,
  containerName: ObjectName,
  aliases: Aliases,
  ip: IpAddress,
  mac: z.string().regex(/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/),
  version: Count,
});
export type EndpointRecord = z.infer<typeof EndpointRecordSchema>;

// ------------------------------------------------------------------ the overlay keyring

export const NetworkKeySchema = z.object({
  /** Lamport-style: every new key takes the newest tag + 1. */
  tag: z.number().int().positive().max(Number.MAX_SAFE_INTEGER),
  /** base64 of 16 bytes. */
  key: z.string().regex(/^[A-Za-z0-9+/]{22}==$/, "must be base64 of 16 bytes"),
  /** base64 of 4 bytes. */
  salt: z.string().regex(/^[A-Za-z0-9+/]{6}==$/, "must be base64 of 4 bytes"),
});
export type NetworkKey = z.infer<typeof NetworkKeySchema>;

export const KeyringSchema = z.object({
  /** Ascending by tag. */
  keys: z.array(NetworkKeySchema).min(1).max(8),
  /** ISO time of the last rotation (or of the ring's creation). */
  lastRotation: IsoTime,
  /** The rotation interval in milliseconds. */
  intervalMs: z.number().int().positive().max(Number.MAX_SAFE_INTEGER),
});
export type Keyring = z.infer<typeof KeyringSchema>;
