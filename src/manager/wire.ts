// The cluster protocol's requests as schemas: every RPC's request is parsed against its schema before a
// handler sees it (src/manager/acl.ts does it with the ACL check), so handlers get typed, bounded values.
// Protobuf already gives each field its type; these add what protobuf cannot say: lengths, formats, ranges,
// and the JSON inside string fields.

import { isIP } from "node:net";
import { z } from "zod";
import {
  MAX_CONTAINER_ENDPOINTS,
  MAX_CSR_BYTES,
  MAX_MESSAGE_LENGTH,
  MAX_NAME_LENGTH,
  MAX_PEM_BYTES,
  MAX_TOKEN_LENGTH,
} from "../api/limits.js";
import { Aliases, ContainerId, EndpointId, NodeAvailabilitySchema, ObjectId } from "../api/objects.js";
import { HostName, HostPort, IpAddress, Ipv4Address, ObjectName, shortText } from "../api/schema.js";

const Csr = z.string().min(1, "is required").max(MAX_CSR_BYTES, `must be at most ${MAX_CSR_BYTES} bytes`);
const empty = z.literal("");

/** A node's description as JSON in a session request: bounded before it is parsed. */
export const MAX_DESCRIPTION_JSON_BYTES = 64 * 1024;

export const requestSchemas = {
  getRootCaCertificate: z.object({}),
  issueNodeCertificate: z.object({
    csrPem: Csr,
    token: z.string().max(MAX_TOKEN_LENGTH, "is not a join token"),
    availability: z.union([empty, NodeAvailabilitySchema]),
    hostname: HostName,
    advertiseAddr: z.union([empty, HostPort]),
    /** Why the joiner could not open its listen address (a manager token is then refused). */
    listenAddrError: shortText(MAX_MESSAGE_LENGTH),
  }),
  renewNodeCertificate: z.object({ csrPem: Csr }),
  /** A node's certificate chain from the retired root, and a CSR signed with that certificate's key. */
  recoverNodeCertificate: z.object({
    csrPem: Csr,
    certificatePem: z.string().min(1, "is required").max(MAX_PEM_BYTES, `must be at most ${MAX_PEM_BYTES} bytes`),
  }),
  join: z.object({ addr: HostPort }),
  leave: z.object({ nodeId: z.union([empty, ObjectId]) }),
  session: z.object({
    descriptionJson: z.string().max(MAX_DESCRIPTION_JSON_BYTES, `must be at most ${MAX_DESCRIPTION_JSON_BYTES} bytes`),
    addr: z.union([empty, IpAddress]),
    // An older agent's request decodes with false (the field's default).
    acceptsDeltas: z.boolean().default(false),
  }),
  heartbeat: z.object({ sessionId: z.string().regex(/^[0-9a-f]{24}$/, "is not a session id") }),
  attach: z.object({
    network: z.string().min(1, "is required").max(MAX_NAME_LENGTH),
    containerId: ContainerId,
    containerName: ObjectName,
    aliases: Aliases,
    ip: z.union([empty, Ipv4Address]),
  }),
  detach: z.object({ endpointId: EndpointId }),
  rename: z.object({
    endpointIds: z.array(EndpointId).min(1, "names no endpoint").max(MAX_CONTAINER_ENDPOINTS),
    containerName: ObjectName,
  }),
} as const;

export type RpcName = keyof typeof requestSchemas;
export type RpcRequest<N extends RpcName> = z.infer<(typeof requestSchemas)[N]>;

/**
 * Whether `addr` may be recorded as a node's address: a unicast IP, and a loopback one only when the node
 * itself connects from loopback (several daemons on one machine), so a node cannot name the managers' own
 * loopback, a multicast group or the unspecified address as where its containers are.
 */
export function acceptableNodeAddr(addr: string, observedPeerIp: string): boolean {
  const v = isIP(addr);
  if (v === 0) return false;
  if (v === 4) {
    const first = Number(addr.split(".")[0]);
    if (addr === "0.0.0.0" || addr === "255.255.255.255" || (first >= 224 && first <= 239)) return false;
    if (first === 127) return isIP(observedPeerIp) === 4 && observedPeerIp.startsWith("127.");
    return true;
  }
  const lower = addr.toLowerCase();
  if (lower === "::" || lower.startsWith("ff")) return false;
  if (lower === "::1") return observedPeerIp === "::1";
  return true;
}
