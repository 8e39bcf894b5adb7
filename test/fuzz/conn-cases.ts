// Connection-level cases, in moderation: slow and half-sent HTTP requests on the Engine API socket, bursts
// of connections, and bytes that are not gRPC at all on the cluster port.

import fc from "fast-check";
import { DAEMONS, MANAGERS } from "./refs.js";

export interface SlowCase {
  kind: "slow";
  daemon: number;
  /**
   * partialHead: part of the request head, then nothing. bodyShort: a head announcing more body than is
   * sent. trickle: a whole request, a few bytes at a time. noCrlf: a head that never ends.
   */
  variant: "partialHead" | "bodyShort" | "trickle" | "noCrlf";
  holdMs: number;
  /** After the hold: send the rest (and expect an answer) or hang up. */
  finish: boolean;
}

export interface BurstCase {
  kind: "burst";
  daemon: number;
  /** Engine API socket or the cluster port. */
  target: "engine" | "cluster";
  n: number;
  /** ping: a request on each connection; idle: connect and hold; junk: a few bytes and hold. */
  mode: "ping" | "idle" | "junk";
  holdMs: number;
}

export interface TcpCase {
  kind: "tcp";
  daemon: number;
  payload: "random" | "http1" | "h2preface" | "tlsJunk" | "empty";
  bytes: number[];
  holdMs: number;
}

export type ConnCase = SlowCase | BurstCase | TcpCase;

const arbSlow: fc.Arbitrary<SlowCase> = fc.record({
  kind: fc.constant("slow" as const),
  daemon: fc.constantFrom(...DAEMONS),
  variant: fc.constantFrom("partialHead" as const, "bodyShort" as const, "trickle" as const, "noCrlf" as const),
  holdMs: fc.constantFrom(100, 500, 1500, 3000),
  finish: fc.boolean(),
});

const arbBurst: fc.Arbitrary<BurstCase> = fc.record({
  kind: fc.constant("burst" as const),
  daemon: fc.constantFrom(...MANAGERS),
  target: fc.constantFrom("engine" as const, "cluster" as const),
  n: fc.constantFrom(10, 50, 150),
  mode: fc.constantFrom("ping" as const, "idle" as const, "junk" as const),
  holdMs: fc.constantFrom(100, 1000),
});

const arbTcp: fc.Arbitrary<TcpCase> = fc.record({
  kind: fc.constant("tcp" as const),
  daemon: fc.constantFrom(...MANAGERS),
  payload: fc.constantFrom(
    "random" as const,
    "http1" as const,
    "h2preface" as const,
    "tlsJunk" as const,
    "empty" as const,
  ),
  bytes: fc.uint8Array({ maxLength: 512 }).map((u) => [...u]),
  holdMs: fc.constantFrom(0, 200, 1000),
});

export const arbConnCase: fc.Arbitrary<ConnCase> = fc.oneof(
  { arbitrary: arbSlow, weight: 5 },
  { arbitrary: arbTcp, weight: 4 },
  { arbitrary: arbBurst, weight: 1 },
);
