// The dispatcher's two heartbeat methods. Heartbeat is a unary call per beat (SwarmKit's); Heartbeats carries
// a session's beats on one stream for its life, one message in and one out per beat instead of an HTTP/2
// stream with headers and trailers each time (at 5,000 nodes those calls were most of the leader's CPU).
// Both mean the same: the session's time kept, the period answered; an unknown session is NOT_FOUND, and a
// manager that does not lead names the leader.

import type { ServerUnaryCall, sendUnaryData } from "@grpc/grpc-js";
import { status } from "@grpc/grpc-js";
import { describeIssues } from "../api/schema.js";
import type { HeartbeatRequest, HeartbeatResponse } from "../gen/cluster.js";
import { observe } from "../metrics/metrics.js";
import { callerOf } from "./acl.js";
import { failStream, GrpcError, notLeader } from "./grpc-util.js";
import { encodedHeartbeatResponse, type HeartbeatStream } from "./push-parts.js";
import { requestSchemas } from "./wire.js";

/** What the heartbeat methods need of the dispatcher. */
export interface HeartbeatTarget {
  /** Whether this manager serves sessions (it leads). */
  active(): boolean;
  leaderAddr(): string | undefined;
  /** Keeps the session's time; false when there is no such session, or (`nodeId` given) it is another node's. */
  beat(sessionId: string, nodeId?: string): boolean;
  heartbeatPeriodMs(): number;
}

export function heartbeatHandlers(t: HeartbeatTarget) {
  return {
    heartbeat: (call: ServerUnaryCall<HeartbeatRequest, HeartbeatResponse>, cb: sendUnaryData<HeartbeatResponse>) => {
      if (!t.active()) return cb(notLeader(t.leaderAddr()));
      if (!t.beat(call.request.sessionId)) return cb(new GrpcError(status.NOT_FOUND, "session invalid"));
      observe.heartbeatReceived();
      cb(null, { periodMs: t.heartbeatPeriodMs() });
    },
    heartbeats: (call: HeartbeatStream) => heartbeatStream(t, call),
  };
}

/**
 * The caller was checked when the stream opened; a beat for a session that is gone or not the caller's own
 * ends the stream with NOT_FOUND, as Heartbeat answers it.
 */
function heartbeatStream(t: HeartbeatTarget, call: HeartbeatStream): void {
  const caller = callerOf(call);
  let ended = false;
  const fail = (e: GrpcError) => {
    ended = true;
    failStream(call, e);
  };
  call.on("data", (raw: unknown) => {
    if (ended) return;
    const req = requestSchemas.heartbeat.safeParse(raw);
    if (!req.success) {
      return fail(new GrpcError(status.INVALID_ARGUMENT, `invalid heartbeats request: ${describeIssues(req.error)}`));
    }
    if (!t.active()) return fail(notLeader(t.leaderAddr()));
    if (!caller || !t.beat(req.data.sessionId, caller.nodeId)) {
      return fail(new GrpcError(status.NOT_FOUND, "session invalid"));
    }
    observe.heartbeatReceived();
    call.write(encodedHeartbeatResponse(t.heartbeatPeriodMs()));
  });
  call.on("end", () => {
    if (!ended) call.end();
  });
  call.on("error", () => {
    ended = true;
  });
}
