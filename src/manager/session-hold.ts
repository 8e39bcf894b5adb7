// A manager that is not the leader answers a session request with the leader's address, and the agent goes
// there. While the swarm has no leader, or while this manager still takes for leader the one the agent has
// just lost and has not heard from it lately (after a leader's death the survivors name it until their
// election timeout, 3-6 s), it has nothing useful to answer: the request is held until a leader the agent can use is known, and answered then
// (served, if this manager is that leader), at most `holdMs`. Without it, each node that came back before the
// election asked again and again, each time with a TLS handshake on a manager busy electing, and its backoff
// grew past the election.
//
// Only a request from a node (the ACL admitted it, so it has a node certificate) is held, at most MAX_HELD at
// once; the agent says which manager it lost in the request's metadata (LOST_MANAGER_KEY), checked as a
// host:port before it is compared with anything.

import type { Metadata } from "@grpc/grpc-js";
import { HostPort } from "../api/schema.js";
import { callerOf } from "./acl.js";
import { HOLD_MS, LOST_MANAGER_KEY } from "./grpc-util.js";
import type { SessionCall } from "./push-parts.js";

// The longest a request is held is HOLD_MS (grpc-util.ts: the agent derives its wait for a first message
// from it). Each is held a random 75-100 % of it, so that while the swarm stays without a leader the nodes
// told so do not all come back at the same moment.

/** Requests held at once, at most (beyond, they are answered at once, as before). */
export const MAX_HELD = 20_000;
/** Held requests answered per event-loop turn once a leader is known. */
export const RELEASE_BATCH = 250;

interface Held {
  call: SessionCall;
  /** The manager the agent lost, if it said. */
  lost: string | undefined;
  timer: NodeJS.Timeout;
}

export interface SessionHoldOptions {
  /** host:port of the leader as this manager knows it; undefined while there is none. */
  leaderAddr: () => string | undefined;
  /** Whether the leader this manager knows has not been heard from lately. */
  leaderSilent: () => boolean;
  /** Whether this manager leads (its dispatcher serves sessions). */
  leading: () => boolean;
  /** Answer a held request now (a redirect, NO_LEADER, or the session itself on the leader). */
  answer: (call: SessionCall) => void;
  holdMs?: number;
  /** Randomness for the hold time (tests); Math.random by default. */
  random?: () => number;
}

export class SessionHold {
  private readonly held = new Set<Held>();
  private readonly holdMs: number;
  private readonly random: () => number;
  private releasing = false;

  constructor(private readonly opts: SessionHoldOptions) {
    this.holdMs = opts.holdMs ?? HOLD_MS;
    this.random = opts.random ?? Math.random;
  }

  /** Requests held now. */
  get size(): number {
    return this.held.size;
  }

  /** Holds the request of a manager that is not the leader if it has nothing useful to answer yet. */
  hold(call: SessionCall): boolean {
    const leader = this.opts.leaderAddr();
    const lost = leader === undefined ? undefined : lostManager(call.metadata);
    // A leader other than the lost one is the answer; so is the lost one if it is still heard from (the
    // node's session broke on its side, or on the way).
    if (leader !== undefined && (leader !== lost || !this.opts.leaderSilent())) return false;
    if (this.held.size >= MAX_HELD || !callerOf(call)) return false;
    const ms = Math.floor(this.holdMs * (0.75 + 0.25 * this.random()));
    const h: Held = { call, lost, timer: setTimeout(() => this.release(h), ms) };
    h.timer.unref();
    this.held.add(h);
    call.on("cancelled", () => {
      if (this.held.delete(h)) clearTimeout(h.timer);
    });
    return true;
  }

  /** The leader changed: every request that now has a useful answer gets it, RELEASE_BATCH per event-loop turn. */
  leaderChanged(): void {
    if (this.held.size === 0 || this.releasing) return;
    const leading = this.opts.leading();
    const leader = this.opts.leaderAddr();
    const ready = [...this.held].filter((h) => leading || (leader !== undefined && leader !== h.lost));
    if (ready.length === 0) return;
    this.releasing = true;
    const next = (from: number) => {
      for (const h of ready.slice(from, from + RELEASE_BATCH)) this.release(h);
      if (from + RELEASE_BATCH < ready.length) setImmediate(() => next(from + RELEASE_BATCH));
      else {
        this.releasing = false;
        // Held while these went out: answered by the next change, or their time.
        if (this.held.size > 0) this.leaderChanged();
      }
    };
    next(0);
  }

  private release(h: Held): void {
    if (!this.held.delete(h)) return;
    clearTimeout(h.timer);
    this.opts.answer(h.call);
  }
}

/** The manager the agent lost, as it said in the request's metadata (a host:port), or undefined. */
function lostManager(md: Metadata | undefined): string | undefined {
  const v = md?.get(LOST_MANAGER_KEY)[0];
  if (typeof v !== "string") return undefined;
  const parsed = HostPort.safeParse(v);
  return parsed.success ? parsed.data : undefined;
}
