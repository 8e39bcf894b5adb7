// What a node receives from the managers, decoded and checked before anything uses it: the session's
// messages and the answers to Attach. The cluster protocol carries the store's objects as JSON inside
// protobuf strings; each is parsed against its schema here, once, so the rest of the node works with typed
// values, and a malformed message is refused as a whole (a manager bug or a forged stream changes nothing).

import { z } from "zod";
import {
  type EndpointRecord,
  EndpointRecordSchema,
  KeyringSchema,
  NetworkId,
  type NetworkRecord,
  NetworkRecordSchema,
  type Node,
  NodeAddr,
  type NodeRole,
  NodeRoleSchema,
  NodeSchema,
  ObjectId,
  Pem,
} from "../api/objects.js";
import { describeIssues, HostName, HostPort, IpAddress, ObjectName } from "../api/schema.js";
import type { AttachResponse, NetworkState, PeerEndpoint, SessionMessage } from "../gen/cluster.js";
import type { AgentKeys } from "../store/keyring.js";

/** One JSON-in-a-string field: bounded, parsed, checked. */
function jsonOf<S extends z.ZodType>(schema: S, maxBytes: number) {
  return z
    .string()
    .max(maxBytes)
    .transform((text, ctx) => {
      try {
        return JSON.parse(text) as unknown;
      } catch {
        ctx.addIssue({ code: "custom", message: "is not JSON" });
        return z.NEVER;
      }
    })
    .pipe(schema);
}

const PeerEndpointSchema = z.object({
  endpointId: z.string().regex(/^[0-9a-f]{64}$/),
  nodeId: ObjectId,
  nodeAddr: NodeAddr,
  ip: IpAddress,
  mac: z.string().regex(/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/),
  containerName: ObjectName,
  aliases: EndpointRecordSchema.shape.aliases,
  hostname: z.union([z.literal(""), HostName]),
});

const NetworkStateSchema = z.object({
  networkJson: jsonOf(NetworkRecordSchema, 1 << 20),
  endpoints: z.array(PeerEndpointSchema).max(1 << 16),
});

const AgentKeysSchema = z.object({
  algorithm: z.literal("AES_128_GCM"),
  primaryTag: z.number().int().positive(),
  keys: z
    .array(KeyringSchema.shape.keys.element.extend({ primary: z.boolean() }))
    .min(1)
    .max(8),
  lastRotation: KeyringSchema.shape.lastRotation,
  intervalMs: KeyringSchema.shape.intervalMs,
});

const SessionMessageSchema = z.object({
  sessionId: z.string().max(64),
  nodeJson: z.union([z.literal(""), jsonOf(NodeSchema, 256 << 10)]),
  managers: z.array(z.object({ nodeId: ObjectId, addr: HostPort })).max(64),
  heartbeatPeriodMs: z
    .number()
    .int()
    .nonnegative()
    .max(24 * 3600 * 1000),
  role: NodeRoleSchema,
  networks: z.array(NetworkStateSchema).max(4096),
  networkKeysJson: z.union([z.literal(""), jsonOf(AgentKeysSchema, 16 << 10)]),
  rootCaPem: z.union([z.literal(""), Pem.regex(/-----BEGIN CERTIFICATE-----/, "must be a PEM certificate")]),
  /** An issuer's public key (base64 DER), as TLSInfo.CertIssuerPublicKey. */
  renewCertificateIssuer: z.union([
    z.literal(""),
    z
      .string()
      .max(1024)
      .regex(/^[A-Za-z0-9+/]+=*$/),
  ]),
});

/** The fields a delta may clear (SessionMessage.cleared): managers, keys, root CA, renewal issuer. */
const CLEARABLE = [3, 7, 8, 9] as const;

/** A delta: the same fields, any of them empty (unchanged), with what it clears and the networks that went. */
const SessionDeltaSchema = SessionMessageSchema.extend({
  role: z.union([z.literal(""), NodeRoleSchema]),
  cleared: z
    .array(
      z.union(
        CLEARABLE.map((n) => z.literal(n)) as [z.ZodLiteral<3>, z.ZodLiteral<7>, z.ZodLiteral<8>, z.ZodLiteral<9>],
      ),
    )
    .max(CLEARABLE.length),
  removedNetworks: z.array(NetworkId).max(4096),
});

const AttachResponseSchema = z.object({
  endpointJson: jsonOf(EndpointRecordSchema, 64 << 10),
  network: NetworkStateSchema,
  networkKeysJson: z.union([z.literal(""), jsonOf(AgentKeysSchema, 16 << 10)]),
});

/** A network this node holds, as the managers sent it, with its record decoded. */
export interface HeldNetwork extends NetworkState {
  network: NetworkRecord;
  endpoints: PeerEndpoint[];
}

export interface DecodedSession {
  sessionId: string;
  node: Node | undefined;
  managers: { nodeId: string; addr: string }[];
  heartbeatPeriodMs: number;
  role: NodeRole;
  networks: HeldNetwork[];
  /** The keyring for this node's encrypted networks; undefined when the managers sent none. */
  keys: AgentKeys | undefined;
  /** The keys' JSON as it came (for the key push's comparisons). */
  networkKeysJson: string;
  /** The swarm's root CA now ("" if the manager did not say). */
  rootCaPem: string;
  /** During a root rotation, when it is this node's turn: the issuer to renew its certificate to. */
  renewCertificateIssuer: string;
}

export class MalformedMessage extends Error {}

function held(raw: NetworkState, parsed: z.infer<typeof NetworkStateSchema>): HeldNetwork {
  return { networkJson: raw.networkJson, network: parsed.networkJson, endpoints: parsed.endpoints };
}

/**
 * What decoding the previous message leaves for the next: the node's JSON as it came and the node parsed
 * from it. Every message carries the node; most (a swarm-wide change, a network's, a new session's first
 * after a failover) carry it unchanged, and parsing it against its schema was most of an agent's work per
 * message.
 */
export interface SessionDecodeMemo {
  nodeJson: string;
  node: Node | undefined;
}

/**
 * A session message, checked; throws MalformedMessage naming the field (never quoting key material). With
 * `memo` (the agent's, updated here), a node whose JSON is the very text of the previous message's is the
 * node parsed then (treat it as read-only). A delta (SessionMessage.delta) is applied to `prev`, the
 * session's state as the previous message left it: the result is the whole state, as a full message says it.
 */
export function decodeSessionMessage(
  msg: SessionMessage,
  memo?: SessionDecodeMemo,
  prev?: DecodedSession,
): DecodedSession {
  if (msg.delta) return applyDelta(msg, memo, prev);
  const reuse = memo !== undefined && msg.nodeJson !== "" && msg.nodeJson === memo.nodeJson;
  const r = SessionMessageSchema.safeParse(reuse ? { ...msg, nodeJson: "" } : msg);
  if (!r.success) throw new MalformedMessage(`malformed session message: ${describeIssues(r.error)}`);
  const d = r.data;
  const node = reuse ? memo.node : d.nodeJson === "" ? undefined : d.nodeJson;
  if (memo) {
    memo.nodeJson = msg.nodeJson;
    memo.node = node;
  }
  return {
    sessionId: d.sessionId,
    node,
    managers: d.managers,
    heartbeatPeriodMs: d.heartbeatPeriodMs,
    role: d.role,
    networks: d.networks.map((n, i) => held(msg.networks[i]!, n)),
    keys: d.networkKeysJson === "" ? undefined : (d.networkKeysJson as AgentKeys),
    networkKeysJson: msg.networkKeysJson,
    rootCaPem: d.rootCaPem,
    renewCertificateIssuer: d.renewCertificateIssuer,
  };
}

/** A delta applied to the session's state: what it carries replaces, what it clears or removes goes. */
function applyDelta(msg: SessionMessage, memo: SessionDecodeMemo | undefined, prev: DecodedSession | undefined) {
  if (!prev) throw new MalformedMessage("malformed session message: a delta before the session's whole state");
  const reuse = memo !== undefined && msg.nodeJson !== "" && msg.nodeJson === memo.nodeJson;
  const r = SessionDeltaSchema.safeParse(reuse ? { ...msg, nodeJson: "" } : msg);
  if (!r.success) throw new MalformedMessage(`malformed session message: ${describeIssues(r.error)}`);
  const d = r.data;
  if (d.sessionId !== "" && d.sessionId !== prev.sessionId) {
    throw new MalformedMessage("malformed session message: sessionId: a delta of another session");
  }
  const cleared = new Set<number>(d.cleared);
  let node = prev.node;
  if (msg.nodeJson !== "") {
    node = reuse ? memo.node : d.nodeJson === "" ? undefined : d.nodeJson;
    if (memo) {
      memo.nodeJson = msg.nodeJson;
      memo.node = node;
    }
  }
  const networks = new Map(prev.networks.map((n) => [n.network.id, n]));
  for (const id of d.removedNetworks) networks.delete(id);
  for (const [i, n] of d.networks.entries()) networks.set(n.networkJson.id, held(msg.networks[i]!, n));
  const keysJson = cleared.has(7) ? "" : msg.networkKeysJson !== "" ? msg.networkKeysJson : prev.networkKeysJson;
  const keys = cleared.has(7) ? undefined : d.networkKeysJson !== "" ? (d.networkKeysJson as AgentKeys) : prev.keys;
  return {
    sessionId: prev.sessionId,
    node,
    managers: cleared.has(3) ? [] : d.managers.length > 0 ? d.managers : prev.managers,
    heartbeatPeriodMs: d.heartbeatPeriodMs || prev.heartbeatPeriodMs,
    role: d.role || prev.role,
    networks: [...networks.values()].sort((a, b) =>
      a.network.id < b.network.id ? -1 : a.network.id > b.network.id ? 1 : 0,
    ),
    keys,
    networkKeysJson: keysJson,
    rootCaPem: cleared.has(8) ? "" : d.rootCaPem || prev.rootCaPem,
    renewCertificateIssuer: cleared.has(9) ? "" : d.renewCertificateIssuer || prev.renewCertificateIssuer,
  };
}

/** An Attach answer, checked. */
export function decodeAttachResponse(res: AttachResponse): {
  endpoint: EndpointRecord;
  network: HeldNetwork;
  networkKeysJson: string;
} {
  const r = AttachResponseSchema.safeParse(res);
  if (!r.success || !res.network) {
    throw new MalformedMessage(`malformed attach answer: ${r.success ? "no network" : describeIssues(r.error)}`);
  }
  return {
    endpoint: r.data.endpointJson,
    network: held(res.network, r.data.network),
    networkKeysJson: res.networkKeysJson,
  };
}
