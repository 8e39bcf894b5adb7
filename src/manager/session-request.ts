// What the dispatcher reads from a session request, and the ids it gives sessions (dispatcher.ts).

import { randomBytes } from "node:crypto";
import { status } from "@grpc/grpc-js";
import { type NodeDescription, NodeDescriptionSchema } from "../api/objects.js";
import { parse, parseJsonText } from "../api/schema.js";
import type { ClusterRecord, NodeRecord, View } from "../store/store.js";
import { GrpcError } from "./grpc-util.js";
import { MAX_DESCRIPTION_JSON_BYTES } from "./wire.js";

/**
 * During a root rotation, the issuer this node should renew its certificate to once the reconciler has
 * told it to (node.certRenew); empty otherwise.
 */
export function renewFor(c: View<ClusterRecord> | undefined, rec: View<NodeRecord>): string {
  const want = c?.info.TLSInfo.CertIssuerPublicKey;
  const renew = c?.secrets.rootRotation !== undefined && rec.certRenew !== undefined && rec.certRenew === want;
  return renew ? rec.certRenew! : "";
}

/**
 * A session's id: 12 random bytes (hex), from a pool filled for 256 ids at a time. A new leader starts a
 * session for every node of the swarm within seconds, and randomBytes costs a call into OpenSSL (with a job
 * object) per id: 1.5 % of a new leader's CPU in a failover, for 12 bytes each.
 */
export function newSessionId(): string {
  if (idPoolAt + SESSION_ID_BYTES > idPool.length) {
    idPool = randomBytes(SESSION_ID_BYTES * 256);
    idPoolAt = 0;
  }
  const id = idPool.toString("hex", idPoolAt, idPoolAt + SESSION_ID_BYTES);
  idPoolAt += SESSION_ID_BYTES;
  return id;
}
const SESSION_ID_BYTES = 12;
let idPool = Buffer.alloc(0);
let idPoolAt = 0;

/**
 * The JSON of a node's description as the store holds it, made once per description (a node's view is frozen,
 * and a changed description is a new object): a new leader compares every node's session request with it.
 */
export function descriptionJsonOf(rec: View<NodeRecord>): string {
  const d = rec.node.Description;
  let json = descriptionJson.get(d);
  if (json === undefined) descriptionJson.set(d, (json = JSON.stringify(d)));
  return json;
}
const descriptionJson = new WeakMap<object, string>();

/** A session's description: absent, or a NodeDescription (anything else is refused, naming the field). */
export function parseDescription(text: string): NodeDescription | undefined {
  if (!text) return undefined;
  try {
    return parse(NodeDescriptionSchema, parseJsonText(text, "description", MAX_DESCRIPTION_JSON_BYTES), "description");
  } catch (e) {
    throw new GrpcError(
      status.INVALID_ARGUMENT,
      `invalid session request: ${e instanceof Error ? e.message : String(e)}`,
    );
  }
}
