// gRPC helpers shared by the manager's services and the clients that call them.

import { Metadata, type ServerUnaryCall, type ServiceError, type sendUnaryData, status } from "@grpc/grpc-js";
import { ApiError } from "../api/errors.js";

/** An error with a gRPC status code, for service handlers. */
export class GrpcError extends Error {
  readonly code: status;
  readonly metadata: Metadata;

  constructor(code: status, details: string, metadata?: Metadata) {
    super(details);
    this.code = code;
    this.metadata = metadata ?? new Metadata();
  }

  /** What grpc-js expects a handler to hand to its callback. */
  get details(): string {
    return this.message;
  }
}

export const LEADER_ADDR_KEY = "leader-addr";
/** Session request metadata: the manager whose session the agent has just lost (session-hold.ts). */
export const LOST_MANAGER_KEY = "lost-manager";
/**
 * The longest a manager holds a session request (session-hold.ts): a few election timeouts. Here, beside
 * LOST_MANAGER_KEY, because the agent's own bound on the wait for a session's first message is derived from it.
 */
export const HOLD_MS = 10_000;

/** UNAVAILABLE, naming the leader (if known) so the caller can go there. */
export function notLeader(leaderAddr: string | undefined): GrpcError {
  const md = new Metadata();
  if (leaderAddr) md.set(LEADER_ADDR_KEY, leaderAddr);
  return new GrpcError(
    status.UNAVAILABLE,
    leaderAddr ? `this manager is not the leader; the leader is at ${leaderAddr}` : NO_LEADER_MESSAGE,
    md,
  );
}

export const NO_LEADER_MESSAGE =
  "The swarm does not have a leader. It's possible that too few managers are online. Make sure more than half of the managers are online.";

export function isServiceError(e: unknown): e is ServiceError {
  return typeof e === "object" && e !== null && "code" in e && "details" in e && "metadata" in e;
}

/** The leader address a manager named in an UNAVAILABLE answer. */
export function leaderHint(e: unknown): string | undefined {
  if (!isServiceError(e)) return undefined;
  const v = e.metadata?.get(LEADER_ADDR_KEY)[0];
  return typeof v === "string" && v.length > 0 ? v : undefined;
}

/**
 * Starts a client call without the caller's stack: grpc-js captures one (an Error) for every call it starts,
 * and when the call ends with a status other than OK formats it into the error it emits, with two Errors more.
 * An agent's session and heartbeat calls end so every time the node fails over (the manager died, a
 * redirect, the agent's own cancel): thousands at once in a large swarm, none of them a bug whose stack would
 * tell anything. The status, details and metadata of the error are unchanged.
 */
export function withoutCallerStack<T>(start: () => T): T {
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  try {
    return start();
  } finally {
    Error.stackTraceLimit = limit;
  }
}

/** Turn an error from a manager into what the Engine API tells the user. */
export function toApiError(e: unknown, context?: string): ApiError {
  if (e instanceof ApiError) return e;
  if (isServiceError(e)) {
    const prefix = context ? `${context}: ` : "";
    switch (e.code) {
      case status.INVALID_ARGUMENT:
        return new ApiError(400, `${prefix}${e.details}`);
      case status.NOT_FOUND:
        return new ApiError(404, `${prefix}${e.details}`);
      case status.PERMISSION_DENIED:
        return new ApiError(403, `${prefix}${e.details}`);
      case status.ALREADY_EXISTS:
        return new ApiError(409, `${prefix}${e.details}`);
      case status.RESOURCE_EXHAUSTED:
        return new ApiError(429, `${prefix}${e.details}`);
      case status.FAILED_PRECONDITION:
        return new ApiError(400, `${prefix}${e.details}`);
      case status.UNAVAILABLE:
      case status.DEADLINE_EXCEEDED:
        return new ApiError(503, `${prefix}${e.details}`);
      default:
        return new ApiError(500, `${prefix}${e.details}`);
    }
  }
  return new ApiError(500, e instanceof Error ? e.message : String(e));
}

/** A promise for a unary client call. */
export function unary<Req, Res>(
  fn: (req: Req, md: Metadata, opts: { deadline: Date }, cb: (err: ServiceError | null, res?: Res) => void) => unknown,
  req: Req,
  timeoutMs = 5000,
): Promise<Res> {
  return new Promise<Res>((resolve, reject) => {
    fn(req, new Metadata(), { deadline: new Date(Date.now() + timeoutMs) }, (err, res) => {
      if (err) reject(err);
      else resolve(res as Res);
    });
  });
}

/**
 * End a server stream with an error status. (grpc-js sends the status from the stream's `_final`, which a
 * destroyed stream never runs: `destroy(err)` would leave the client waiting forever. Its own 'error'
 * handler records the status and ends the stream.)
 */
export function failStream(call: { emit(event: "error", err: Error): boolean }, err: Error): void {
  call.emit("error", err);
}

/** An error as a gRPC status: an ApiError keeps its meaning (404 NOT_FOUND, 400 INVALID_ARGUMENT...). */
export function asGrpc(e: unknown): GrpcError {
  if (e instanceof GrpcError) return e;
  if (e instanceof ApiError) {
    const code =
      e.status === 404
        ? status.NOT_FOUND
        : e.status === 400
          ? status.INVALID_ARGUMENT
          : e.status === 403
            ? status.PERMISSION_DENIED
            : e.status === 409
              ? status.ALREADY_EXISTS
              : e.status === 429
                ? status.RESOURCE_EXHAUSTED
                : e.status === 503
                  ? status.UNAVAILABLE
                  : status.UNKNOWN;
    return new GrpcError(code, e.message);
  }
  return new GrpcError(status.INTERNAL, e instanceof Error ? e.message : String(e));
}

/** A unary handler from an async function: its result is the answer, what it throws the gRPC status. */
export function unaryHandler<Req, Res>(fn: (call: ServerUnaryCall<Req, Res>) => Promise<Res>) {
  return (call: ServerUnaryCall<Req, Res>, cb: sendUnaryData<Res>): void => {
    fn(call).then(
      (res) => cb(null, res),
      (e: unknown) => cb(asGrpc(e)),
    );
  };
}

/** "ipv4:127.0.0.2:41234" or "127.0.0.2:41234" or "[::1]:41234" -> the IP. */
export function peerIp(peer: string): string {
  let p = peer.replace(/^ipv[46]:/, "");
  const i = p.lastIndexOf(":");
  if (i > 0) p = p.slice(0, i);
  return p.replace(/^\[|\]$/g, "");
}
