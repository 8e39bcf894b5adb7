// The store's commands as a schema: what a committed entry may say. Every entry is parsed against it when
// it is applied (on every manager, so a malformed entry is refused identically everywhere and never reaches
// the code that mutates state), and every write is parsed against it before it is proposed (so nothing
// malformed reaches the log in the first place).

import { z } from "zod";
import { MAX_MESSAGE_LENGTH } from "../api/limits.js";
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
  SwarmSpecSchema,
} from "../api/objects.js";
import { Count, IpAddress, IsoTime, ObjectName, shortText } from "../api/schema.js";

const Token = z.string().max(256);

export const CommandSchema = z.discriminatedUnion("op", [
  z.strictObject({ op: z.literal("cluster.create"), info: ClusterInfoSchema, secrets: ClusterSecretsSchema }),
  z.strictObject({
    op: z.literal("cluster.update"),
    version: Count,
    spec: SwarmSpecSchema,
    workerToken: Token.optional(),
    managerToken: Token.optional(),
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
