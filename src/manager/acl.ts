// Who may call which RPC. Every method of every service declares the roles allowed to call it; the
// caller's role comes from its verified certificate (OU), which must also belong to this cluster (O) and
// not to a node removed from the swarm. Methods open to "anyone" are the two a joining node needs before
// it has a certificate.

import {
  type ServerUnaryCall,
  type ServerWritableStream,
  status,
  type UntypedServiceImplementation,
} from "@grpc/grpc-js";
import { type PeerIdentity, peerRole } from "../ca/tls.js";
import type { NodeRole } from "../engine/types.js";
import { failStream, GrpcError } from "./grpc-util.js";

export type Allowed = "anyone" | NodeRole[];

export interface AclContext {
  clusterId: () => string;
  isRemoved: (nodeId: string) => boolean;
}

type AnyCall = ServerUnaryCall<unknown, unknown> | ServerWritableStream<unknown, unknown>;

/** The caller's identity, checked against `allowed`; throws a GrpcError (PERMISSION_DENIED) otherwise. */
export function authorize(call: AnyCall, allowed: Allowed, ctx: AclContext): PeerIdentity | null {
  const peer = peerRole(call);
  if (allowed === "anyone") return peer;
  if (!peer) throw new GrpcError(status.PERMISSION_DENIED, "Permission denied: this call needs a node certificate");
  if (peer.clusterId !== ctx.clusterId()) {
    throw new GrpcError(status.PERMISSION_DENIED, "Permission denied: the certificate belongs to another swarm");
  }
  if (ctx.isRemoved(peer.nodeId)) {
    throw new GrpcError(status.PERMISSION_DENIED, `Permission denied: node ${peer.nodeId} was removed from the swarm`);
  }
  if (!allowed.includes(peer.role)) {
    throw new GrpcError(
      status.PERMISSION_DENIED,
      `Permission denied: unauthorized peer role: ${peer.role} (this call needs ${allowed.join(" or ")})`,
    );
  }
  return peer;
}

/**
 * Wraps a service implementation so that every method checks its ACL first. A method missing from
 * `rules` is refused: a new RPC cannot be reachable by accident.
 */
export function withAcl(
  impl: UntypedServiceImplementation,
  rules: Record<string, Allowed>,
  ctx: AclContext,
): UntypedServiceImplementation {
  const out: UntypedServiceImplementation = {};
  for (const [name, handler] of Object.entries(impl)) {
    const allowed = rules[name];
    out[name] = ((call: AnyCall, callback?: (err: unknown, res?: unknown) => void) => {
      try {
        if (allowed === undefined)
          throw new GrpcError(status.PERMISSION_DENIED, `Permission denied: ${name} has no ACL`);
        authorize(call, allowed, ctx);
      } catch (e) {
        if (callback) callback(e);
        else failStream(call as ServerWritableStream<unknown, unknown>, e as Error);
        return;
      }
      (handler as (c: AnyCall, cb?: (err: unknown, res?: unknown) => void) => void)(call, callback);
    }) as UntypedServiceImplementation[string];
  }
  return out;
}
