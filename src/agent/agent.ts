// The agent: every node's session with the managers. It opens a Session stream with the leader (a
// manager that is not the leader names it, and the agent goes there), sends heartbeats at the period the
// dispatcher asks for, and when the session breaks fails over to another manager (the others first, the
// lost one last: attemptOrder) with backoff (100 ms doubling to 8 s); an attempt whose first message does not
// come within FIRST_MESSAGE_TIMEOUT_MS fails as any other. What the managers push (the node's desired role, the manager list) reaches
// the daemon through onMessage. The agent takes deltas: after its session's first message (the whole state)
// each message carries only what changed, applied to the session's state (messages.ts); onMessage is handed
// the whole state every time. A delta that cannot be applied starts a new session.

import { type ChannelCredentials, type ClientReadableStream, Metadata, status } from "@grpc/grpc-js";
import type { Logger } from "pino";
import type { NodeDescription } from "../api/objects.js";
import { CLIENT_CHANNEL_OPTIONS, channelTarget } from "../ca/tls.js";
import { DispatcherClient, type SessionMessage } from "../gen/cluster.js";
import { HOLD_MS, LOST_MANAGER_KEY, leaderHint, withoutCallerStack } from "../manager/grpc-util.js";
import { observe } from "../metrics/metrics.js";
import { Heartbeats } from "./heartbeats.js";
import { type DecodedSession, decodeSessionMessage, type SessionDecodeMemo } from "./messages.js";

export interface AgentOptions {
  nodeId: string;
  /** The managers to try, in order (the daemon keeps this list current). */
  managers: () => string[];
  credentials: () => ChannelCredentials;
  description: () => NodeDescription;
  /** The address this node wants the managers to record (its data-path/advertise IP); may be empty. */
  addr: string;
  logger: Logger;
  /** Every message of the session, decoded and checked (a malformed one is logged and dropped). */
  onMessage: (msg: DecodedSession) => void;
  /**
   * A session attempt failed before it was established (or an established one broke); `consecutive`
   * counts the attempts since the last established session. The daemon uses it to notice a root CA
   * rotation it missed while it was down.
   */
  onSessionFailure?: (addr: string, err: unknown, consecutive: number) => void;
  /** Every heartbeat's round trip (ms) and whether it was answered (metrics, the scale bench). */
  onHeartbeat?: (latencyMs: number, ok: boolean) => void;
  /** Randomness for the reconnect spread (tests); Math.random by default. */
  random?: () => number;
  /** Every step the agent takes to hold its session (the scale bench's failover timeline). */
  onEvent?: (e: AgentEvent) => void;
  /** False: ask for the whole state in every message, as an agent before deltas did (the scale bench's A/B). */
  acceptsDeltas?: boolean;
  /** The bound on the wait for a session's first message (tests); FIRST_MESSAGE_TIMEOUT_MS by default. */
  firstMessageTimeoutMs?: number;
}

/** One step of the agent's: a session attempt, its failure, a wait before the next, a session established. */
export type AgentEvent =
  | { kind: "attempt"; addr: string }
  | { kind: "failed"; addr: string; code: number | undefined; hint: string | undefined; established: boolean }
  | { kind: "wait"; ms: number; why: "spread" | "backoff" }
  | { kind: "up"; addr: string };

/** The longest a node waits before reconnecting after its session broke (a random part of the period). */
export const MAX_RECONNECT_SPREAD_MS = 10_000;

/**
 * The longest an agent waits for its session's first message, from the attempt's start (connecting, the TLS
 * handshake, the request), before it cancels the attempt and tries the next manager as after any failed
 * attempt. Until that message nothing of the session has a deadline (its heartbeats start with it) and
 * keepalive is rare (CHANNEL_OPTIONS): a manager whose host died at that moment (no RST: a half-open
 * connection, or a connect never answered, which grpc-js does not time out) would hold the node for minutes.
 * A live manager may take a while, and must not be cut short: a follower holds the request up to HOLD_MS
 * while it knows no leader the node can use (src/manager/session-hold.ts); and a new leader of a large swarm
 * takes thousands of sessions back at once (handshakes queued at its listener, a status write before a node
 * it had marked down is answered). So: the hold's bound, and 20 s more for those.
 */
export const FIRST_MESSAGE_TIMEOUT_MS = HOLD_MS + 20_000;

/**
 * A dead manager is noticed by the agent's own bounds, never by keepalive alone: the wait for a session's
 * first message (FIRST_MESSAGE_TIMEOUT_MS), the session's heartbeats (each beat has a deadline), the deadline
 * of every unary call over these channels (attach, detach, rename; the CA's and Raft membership's calls); and
 * by the connection closing. Keepalive is a backstop only, and rare: grpc-js pings every connection at this
 * period whatever goes over it, and both sides pay for each ping (bench:wire-push --idle-ms 60000, 2,000 idle
 * sessions, 10 s -> 60 s: the agents' side 29.0 -> 20.7 ms of CPU a second, the manager's 18.4 -> 13.4;
 * bench:scale, 2,500 nodes: the leader's steady CPU ~1.5 points of a core less). The answer to a
 * ping is an HTTP/2 frame sent back in the event-loop turn that reads the ping: 10 s to answer (as the
 * listener's) only cuts off a peer stalled that long, whose session's heartbeats have failed by then anyway.
 * Pings without calls stay permitted: the listener allows them (keepalive_permit_without_calls, pings 500 ms
 * apart at the least), grpc-js servers never send GOAWAY too_many_pings, and these channels carry a call all
 * their life anyway (a session; a CA or membership call, closed after it).
 *
 * Each channel has a subchannel pool of its own: grpc-js's global one shares a connection only between
 * channels of the same credentials object, which a node's channels never are (each has its own
 * credentials), and it looks for one by comparing with every connection it holds to that address (a scan
 * per new channel, growing with the connections a process holds: the scale bench's simulators hold
 * thousands). No channelz either (nothing reads it; it registers and traces every channel and connection).
 */
export const CHANNEL_OPTIONS = {
  ...CLIENT_CHANNEL_OPTIONS,
  "grpc.use_local_subchannel_pool": 1,
  "grpc.enable_channelz": 0,
  "grpc.keepalive_time_ms": 60_000,
  "grpc.keepalive_timeout_ms": 10_000,
  "grpc.keepalive_permit_without_calls": 1,
  "grpc.initial_reconnect_backoff_ms": 100,
  "grpc.max_reconnect_backoff_ms": 1000,
};

export class Agent {
  private stopped = false;
  private hint: string | undefined;
  /** The managers still to try in this round (see attemptOrder). */
  private round: string[] = [];
  /** The manager whose session broke last, until a session is established again: tried last. */
  private lost: string | undefined;
  private current:
    | { client: InstanceType<typeof DispatcherClient>; stream: ClientReadableStream<SessionMessage> }
    | undefined;
  private heartbeats: Heartbeats | undefined;
  /** The manager the session is with, once established. */
  connectedTo: string | undefined;
  /** Whether the current attempt got as far as an established session. */
  private established = false;
  private loop: Promise<void> | undefined;
  private readonly log: Logger;
  /** The heartbeat period the managers asked for last. */
  private periodMs = 5000;
  private readonly random: () => number;
  /**
   * The node as the last message carried it, kept across sessions: a new session's first message (the whole
   * state) carries the node unchanged after a failover (the same record, encoded by the new leader), and
   * parsing it against its schema was most of the decoding of that message (2.5 % of the scale bench's
   * simulators' CPU in a failover).
   */
  private readonly memo: SessionDecodeMemo = { nodeJson: "", node: undefined };

  constructor(private readonly opts: AgentOptions) {
    this.log = opts.logger.child({ component: "agent" });
    this.random = opts.random ?? Math.random;
  }

  start(): void {
    if (!this.loop) this.loop = this.run();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.teardown();
    await this.loop;
  }

  /** Drop the current session and reconnect (after a certificate change, say), to the same manager first. */
  reconnect(): void {
    if (this.connectedTo) this.hint = this.connectedTo;
    this.teardown();
  }

  /**
   * The dispatcher client of the established session, for the node's other calls to the managers (Attach,
   * Detach): they go to the manager the session is with. Undefined while there is none.
   */
  sessionClient(): InstanceType<typeof DispatcherClient> | undefined {
    return this.connectedTo ? this.current?.client : undefined;
  }

  private teardown(): void {
    this.heartbeats?.stop();
    this.heartbeats = undefined;
    if (this.current) {
      this.current.stream.cancel();
      this.current.client.close();
      this.current = undefined;
    }
    this.connectedTo = undefined;
  }

  private nextAddr(): string | undefined {
    if (this.hint) {
      const h = this.hint;
      this.hint = undefined;
      return h;
    }
    if (this.round.length === 0) this.round = attemptOrder(this.opts.managers(), this.lost, this.random);
    return this.round.shift();
  }

  private async run(): Promise<void> {
    let backoff = 100;
    let failures = 0;
    while (!this.stopped) {
      const addr = this.nextAddr();
      if (!addr) {
        await sleep(backoff);
        continue;
      }
      this.opts.onEvent?.({ kind: "attempt", addr });
      try {
        await this.session(addr);
        backoff = 100;
        failures = 0;
      } catch (e) {
        // The broken session's client goes at once: a caller (an attach) must wait for the next session,
        // not use one whose manager is gone while this node waits out its reconnect spread.
        this.teardown();
        if (this.stopped) return;
        const broke = this.established;
        if (broke) {
          // The next round starts with the others: the manager just lost is most likely gone (a leader's
          // death), and until the survivors elect a new one they still name it as the leader.
          this.lost = addr;
          this.round = [];
        }
        // A session that was up and broke (or was dropped on purpose) starts over quickly.
        if (broke) backoff = 100;
        failures = this.established ? 1 : failures + 1;
        const hint = leaderHint(e);
        this.opts.onEvent?.({ kind: "failed", addr, code: grpcCode(e), hint, established: broke });
        try {
          this.opts.onSessionFailure?.(addr, e, failures);
        } catch (err) {
          this.log.warn({ err }, "handling a session failure failed");
        }
        // When a leader goes, every node of the swarm loses its session at once: each waits a random part
        // of a heartbeat period first, so that the new leader sees them spread out, not all in one burst
        // (it gives them a grace that covers this before marking anything down).
        if (broke) {
          const ms = Math.floor(this.random() * Math.min(this.periodMs, MAX_RECONNECT_SPREAD_MS));
          this.opts.onEvent?.({ kind: "wait", ms, why: "spread" });
          await sleep(ms);
        }
        if (this.stopped) return;
        // A redirect goes at once, unless it names the manager this node just lost: that one waits its turn
        // at the end of the round (it may be back, or still leading: the session may have broken on our side).
        if (hint && hint !== addr && hint !== this.lost) {
          this.hint = hint;
          continue;
        }
        this.log.debug(
          { manager: addr, err: e instanceof Error ? e.message : String(e) },
          "session failed; trying another manager",
        );
        // A session that broke has just waited out its spread: the next manager is tried at once.
        if (broke) continue;
        const ms = backoff + Math.floor(Math.random() * backoff * 0.2);
        this.opts.onEvent?.({ kind: "wait", ms, why: "backoff" });
        await sleep(ms);
        backoff = Math.min(8000, backoff * 2);
      } finally {
        this.teardown();
      }
    }
  }

  private session(addr: string): Promise<void> {
    this.established = false;
    return new Promise<void>((resolve, reject) => {
      const client = new DispatcherClient(channelTarget(addr), this.opts.credentials(), CHANNEL_OPTIONS);
      // The manager just lost, if any: a manager that still takes it for the leader holds the request until
      // the swarm has elected another (src/manager/session-hold.ts), instead of sending this node back there.
      const md = new Metadata();
      if (this.lost !== undefined) md.set(LOST_MANAGER_KEY, this.lost);
      const request = {
        descriptionJson: JSON.stringify(this.opts.description()),
        addr: this.opts.addr,
        acceptsDeltas: this.opts.acceptsDeltas ?? true,
      };
      const stream = withoutCallerStack(() => client.session(request, md));
      this.current = { client, stream };
      let sessionId = "";
      let period = 5000;
      const memo = this.memo;
      // Cleared by the first message; the attempt fails as any other if none comes in time.
      const firstMs = this.opts.firstMessageTimeoutMs ?? FIRST_MESSAGE_TIMEOUT_MS;
      let first: NodeJS.Timeout | undefined = setTimeout(() => {
        first = undefined;
        const err = new Error(`no session message from manager ${addr} within ${firstMs} ms`);
        reject(Object.assign(err, { code: status.DEADLINE_EXCEEDED }));
        stream.cancel();
      }, firstMs);
      first.unref();
      const settled = () => {
        if (first) clearTimeout(first);
        first = undefined;
      };
      /** The session's state as its messages so far say it (a delta applies to it). */
      let state: DecodedSession | undefined;
      stream.on("data", (msg: SessionMessage) => {
        if (!sessionId) {
          settled();
          sessionId = msg.sessionId;
          this.connectedTo = addr;
          this.established = true;
          this.lost = undefined;
          this.log.info({ manager: addr }, "session established");
          this.opts.onEvent?.({ kind: "up", addr });
        }
        if (msg.heartbeatPeriodMs && msg.heartbeatPeriodMs !== period) period = this.periodMs = msg.heartbeatPeriodMs;
        if (!this.heartbeats) {
          this.heartbeats = new Heartbeats({
            client,
            sessionId,
            periodMs: () => period,
            delayMs: (ms) => heartbeatDelayMs(ms, this.random),
            onPeriod: (ms) => {
              if (ms) period = this.periodMs = ms;
            },
            onBeat: (ms, ok) => {
              observe.heartbeatSent(ms, ok);
              this.opts.onHeartbeat?.(ms, ok);
            },
            onFailure: (err) => {
              if (this.current?.stream !== stream) return;
              this.log.debug({ manager: addr, err: err.message }, "heartbeat failed");
              stream.cancel();
            },
          });
          this.heartbeats.start();
        }
        let decoded: DecodedSession;
        try {
          decoded = decodeSessionMessage(msg, memo, state);
        } catch (e) {
          const problem = e instanceof Error ? e.message : String(e);
          // A delta not applied would leave this node's state behind the manager's idea of it for good: the
          // session starts over, and its first message is the whole state.
          if (msg.delta) {
            this.log.warn({ manager: addr, problem }, "refused a session delta; starting a new session");
            stream.cancel();
          } else this.log.warn({ manager: addr, problem }, "refused a session message");
          return;
        }
        state = decoded;
        try {
          this.opts.onMessage(decoded);
        } catch (e) {
          this.log.warn({ err: e }, "handling a session message failed");
        }
      });
      stream.on("error", (e) => {
        settled();
        reject(e);
      });
      stream.on("end", () => {
        settled();
        resolve();
      });
    });
  }
}

/**
 * The managers to try, in order, for one round of attempts. Normally the daemon's order (a manager node's own
 * manager first). After a session broke (`lost`), the others first, starting from a random one so that the
 * swarm's nodes spread over them (with three managers, half of the nodes reach the new leader at once; the
 * other half are told where it is), and the lost manager last.
 */
export function attemptOrder(managers: readonly string[], lost: string | undefined, random: () => number): string[] {
  const others = managers.filter((a) => a !== lost);
  const start = lost === undefined || others.length === 0 ? 0 : Math.floor(random() * others.length) % others.length;
  const round = [...others.slice(start), ...others.slice(0, start)];
  if (lost !== undefined && managers.includes(lost)) round.push(lost);
  return round;
}

/**
 * Heartbeats go out a little before the period is up, never late (SwarmKit: the period ± 10 %): at 85 to
 * 95 % of it. The leader answers every node's heartbeats (1,100 a second from 5,000 nodes at a 5 s period);
 * at 60 to 80 % it answered 30 % more than that, for nothing: a node is down only after three periods.
 */
export function heartbeatDelayMs(periodMs: number, random: () => number): number {
  return Math.max(50, Math.floor(periodMs * (0.85 + random() * 0.1)));
}

function grpcCode(e: unknown): number | undefined {
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === "number" ? code : undefined;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms).unref());
}
