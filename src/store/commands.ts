// The store's commands as a schema: what a committed entry may say. Every entry is parsed against it when
// it is applied (on every manager, so a malformed entry is refused identically everywhere and never reaches
// the code that mutates state), and every write is parsed against it before it is proposed (so nothing
// malformed reaches the log in the first place).

import { z } from "zod";
import { MAX_CONTAINER_ENDPOINTS, MAX_MESSAGE_LENGTH } from "../api/limits.js";
import {
  Aliases,
  ClusterInfoSchema,
  ClusterSecretsSchema,
  ContainerId,
  EndpointId,
  KeyringSchema,
  NetworkId,
  NetworkKeySchema,
  NetworkSpecSchema,
  NodeAddr,
  NodeDescriptionSchema,
  NodeRoleSchema,
  NodeSchema,
  NodeSpecSchema,
  NodeStateSchema,
  ObjectId,
  RaftId,
  RaftMemberSchema,
  RootRotationSchema,
  SwarmSpecSchema,
  TLSInfoSchema,
  UnlockKeySchema,
} from "../api/objects.js";
import { Count, IpAddress, IsoTime, ObjectName, shortText } from "../api/schema.js";

const Token = z.string().max(256);
/** sha256 of a root CA PEM (rootDigest): which rotation a command concerns. */
const RootDigest = z.string().regex(/^[0-9a-f]{64}$/, "must be a sha256 digest");
/** An issuer's public key (base64 DER), as TLSInfo.CertIssuerPublicKey. */
const IssuerKey = z.string().max(1024);
/** Nodes told to renew in one entry (the reconciler's batches are of 30). */
const MAX_RENEW_BATCH = 64;
/** Node status changes in one entry (the dispatcher's batches). */
export const MAX_STATUS_BATCH = 256;

export const CommandSchema = z.discriminatedUnion("op", [
  z.strictObject({ op: z.literal("cluster.create"), info: ClusterInfoSchema, secrets: ClusterSecretsSchema }),
  z.strictObject({
    op: z.literal("cluster.update"),
    version: Count,
    spec: SwarmSpecSchema,
    workerToken: Token.optional(),
    managerToken: Token.optional(),
    /** A new unlock key (autolock turned on, or its key rotated); autolock off removes the key. */
    unlockKey: UnlockKeySchema.optional(),
    /** A root CA rotation started (or, null, aborted) by this update, and the cluster's TLSInfo after it. */
    rootRotation: RootRotationSchema.nullable().optional(),
    tlsInfo: TLSInfoSchema.optional(),
  }),
  /** The rotation whose new root has digest `target` is over: its root becomes the root; new tokens. */
  z.strictObject({
    op: z.literal("cluster.rootRotation.finish"),
    target: RootDigest,
    workerToken: Token,
    managerToken: Token,
    tlsInfo: TLSInfoSchema,
  }),
  /** Every node has moved on: the root with digest `retired` is no longer accepted for recovery. */
  z.strictObject({ op: z.literal("cluster.rootRotation.retire"), retired: RootDigest }),
  /** Root rotation: these nodes are told (through their sessions) to renew to the issuer `issuer`. */
  z.strictObject({
    op: z.literal("node.certRenew"),
    ids: z.array(ObjectId).max(MAX_RENEW_BATCH),
    issuer: IssuerKey,
  }),
  z.strictObject({ op: z.literal("node.create"), node: NodeSchema, role: NodeRoleSchema }),
  z.strictObject({ op: z.literal("node.update"), id: ObjectId, version: Count, spec: NodeSpecSchema }),
  z.strictObject({
    op: z.literal("node.status"),
    id: ObjectId,
    state: NodeStateSchema,
    addr: NodeAddr.optional(),
    message: shortText(MAX_MESSAGE_LENGTH).optional(),
  }),
  z.strictObject({ op: z.literal("node.describe"), id: ObjectId, description: NodeDescriptionSchema }),
  /** The dispatcher's batch: many nodes' status (and what their sessions reported) in one entry. */
  z.strictObject({
    op: z.literal("node.statusBatch"),
    updates: z
      .array(
        z.strictObject({
          id: ObjectId,
          state: NodeStateSchema,
          addr: NodeAddr.optional(),
          message: shortText(MAX_MESSAGE_LENGTH).optional(),
          description: NodeDescriptionSchema.optional(),
        }),
      )
      .min(1)
      .max(MAX_STATUS_BATCH),
  }),
  z.strictObject({ op: z.literal("node.role"), id: ObjectId, role: NodeRoleSchema }),
  z.strictObject({ op: z.literal("node.remove"), id: ObjectId }),
  z.strictObject({ op: z.literal("network.create"), id: NetworkId, spec: NetworkSpecSchema }),
  z.strictObject({ op: z.literal("network.remove"), id: NetworkId }),
  z.strictObject({
    op: z.literal("endpoint.create"),
    id: EndpointId,
    networkId: NetworkId,
    nodeId: ObjectId,
    containerId: ContainerId,
    containerName: ObjectName,
    aliases: Aliases,
    /** --ip */
    ip: IpAddress.optional(),
    /** A container outside a service: the network must be attachable. */
    standalone: z.boolean(),
  }),
  z.strictObject({ op: z.literal("endpoint.remove"), id: EndpointId }),
  /** docker rename of a running container: its endpoints on `nodeId` take the new name, all or none. */
  z.strictObject({
    op: z.literal("endpoint.rename"),
    ids: z.array(EndpointId).min(1).max(MAX_CONTAINER_ENDPOINTS),
    nodeId: ObjectId,
    containerName: ObjectName,
  }),
  z.strictObject({ op: z.literal("member.add"), member: RaftMemberSchema }),
  z.strictObject({ op: z.literal("member.remove"), raftId: RaftId }),
  /** Create the keyring (the first leader, once). Refused if one exists. */
  z.strictObject({ op: z.literal("keys.init"), ring: KeyringSchema }),
  /**
   * Rotate: append `key`, drop the oldest, lastRotation = rotatedAt. Refused unless the ring's newest tag is
   * still `expectTag`. (The rotation time is `rotatedAt`, not `at`: every entry is stamped with its own `at`.)
   */
  z.strictObject({
    op: z.literal("keys.rotate"),
    expectTag: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
    key: NetworkKeySchema,
    rotatedAt: IsoTime,
  }),
  /** Change the rotation interval (--encryption-key-rotation). */
  z.strictObject({
    op: z.literal("keys.interval"),
    intervalMs: z.number().int().positive().max(Number.MAX_SAFE_INTEGER),
  }),
]);
export type Command = z.infer<typeof CommandSchema>;

/** The proposer's wall clock when it proposed, stamped on every entry beside the command. */
export const EntryTime = IsoTime;
