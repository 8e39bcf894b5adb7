// Who may call which RPC, and with what. Every method of every service declares the roles allowed to call
// it and the schema its request must match. The caller's certificate says who it is (node id, cluster,
// role); what it may do comes from the cluster's state now: its node must exist and not be removed, and it
// acts as a manager only if both its certificate and its node's role in the store say manager. So a
// demoted or removed node's old manager certificate, valid for months, opens nothing managerial. Methods
// open to "anyone" are the two a joining node needs before it has a certificate.

import {
  type ServerDuplexStream,
  type ServerUnaryCall,
  type ServerWritableStream,
  status,
  type UntypedServiceImplementation,
} from "@grpc/grpc-js";
import type { Logger } from "pino";
import type { z } from "zod";
import type { NodeRole } from "../api/objects.js";
import { describeIssues } from "../api/schema.js";
import { checkPeer } from "../ca/peer.js";
import { type PeerIdentity, peerRole } from "../ca/tls.js";
import { failStream, GrpcError } from "./grpc-util.js";

export type Allowed = "anyone" | NodeRole[];

export interface Rule {
  allowed: Allowed;
  request: z.ZodType;
  /**
   * The method takes a stream of requests: the caller is checked once, when the stream opens, and the handler
   * parses each message against `request` itself (there is no one request to parse here).
   */
  stream?: boolean;
}

/** What the ACL needs from the manager: the cluster's identity and the nodes' current state. */
export interface AclContext {
  clusterId: () => string;
  isRemoved: (nodeId: string) => boolean;
  /** The node's role in the store now (the one it actually has), or undefined if the store has no such node. */
  roleOf: (nodeId: string) => NodeRole | undefined;
  /** Wait until this manager has applied every finished write (a node that just joined may be that new). */
  readBarrier: () => Promise<void>;
  logger?: Logger;
}

/** A caller as the ACL admitted it: its certificate's identity and the role it acts with now. */
export interface Caller extends PeerIdentity {
  /** manager only if both the certificate and the store say so. */
  effectiveRole: NodeRole;
}

type AnyCall =
  | ServerUnaryCall<unknown, unknown>
  | ServerWritableStream<unknown, unknown>
  | ServerDuplexStream<unknown, unknown>;

const deny = (why: string) => new GrpcError(status.PERMISSION_DENIED, `Permission denied: ${why}`);

/** The caller's identity checked against `allowed` and the store; throws PERMISSION_DENIED otherwise. */
export async function authorize(call: AnyCall, allowed: Allowed, ctx: AclContext): Promise<Caller | null> {
  if (allowed === "anyone") {
    const peer = peerRole(call);
    return peer ? { ...peer, effectiveRole: "worker" } : null;
  }
  const checked = checkPeer(call, ctx, false);
  if (checked.problem === "no-certificate") throw deny("this call needs a node certificate");
  const peer = checked.peer;
  if (checked.problem === "other-cluster") throw deny("the certificate belongs to another swarm");
  if (checked.problem !== undefined) throw deny(`node ${peer.nodeId} was removed from the swarm`);
  let stored = ctx.roleOf(peer.nodeId);
  if (stored === undefined) {
    await ctx.readBarrier().catch(() => undefined);
    if (ctx.isRemoved(peer.nodeId)) throw deny(`node ${peer.nodeId} was removed from the swarm`);
    stored = ctx.roleOf(peer.nodeId);
    if (stored === undefined) throw deny(`node ${peer.nodeId} is not part of this swarm`);
  }
  const effectiveRole: NodeRole = peer.role === "manager" && stored === "manager" ? "manager" : "worker";
  if (!allowed.includes(effectiveRole)) {
    const why =
      peer.role === "manager" && stored !== "manager"
        ? `node ${peer.nodeId} is no longer a manager (its certificate is from before its demotion)`
        : `unauthorized peer role: ${effectiveRole} (this call needs ${allowed.join(" or ")})`;
    throw deny(why);
  }
  return { ...peer, effectiveRole };
}

/**
 * Wraps a service implementation so that every method checks its ACL and parses its request first: the
 * handler sees `call.request` as the schema's value. A method missing from `rules` is refused, so a new RPC
 * cannot be reachable by accident.
 */
export function withAcl(
  impl: UntypedServiceImplementation,
  rules: Record<string, Rule>,
  ctx: AclContext,
): UntypedServiceImplementation {
  const out: UntypedServiceImplementation = {};
  for (const [name, handler] of Object.entries(impl)) {
    const rule = rules[name];
    out[name] = ((call: AnyCall, callback?: (err: unknown, res?: unknown) => void) => {
      const refuse = (e: unknown) => {
        if (callback) callback(e);
        else failStream(call as ServerWritableStream<unknown, unknown>, e as Error);
      };
      if (rule === undefined) return refuse(deny(`${name} has no ACL`));
      void admit(call, name, rule, ctx).then(
        () => (handler as (c: AnyCall, cb?: (err: unknown, res?: unknown) => void) => void)(call, callback),
        refuse,
      );
    }) as UntypedServiceImplementation[string];
  }
  return out;
}

const callers = new WeakMap<object, Caller>();

/** The caller the ACL admitted for this call (undefined for an anonymous one). */
export function callerOf(call: object): Caller | undefined {
  return callers.get(call);
}

async function admit(call: AnyCall, name: string, rule: Rule, ctx: AclContext): Promise<void> {
  const caller = await authorize(call, rule.allowed, ctx);
  if (rule.stream) {
    if (caller) callers.set(call, caller);
    return;
  }
  const parsed = rule.request.safeParse((call as { request?: unknown }).request);
  if (!parsed.success) {
    const problem = describeIssues(parsed.error);
    ctx.logger?.warn({ rpc: name, node: caller?.nodeId, peer: call.getPeer(), problem }, "refused a malformed request");
    throw new GrpcError(status.INVALID_ARGUMENT, `invalid ${name} request: ${problem}`);
  }
  (call as { request: unknown }).request = parsed.data;
  if (caller) callers.set(call, caller);
}
