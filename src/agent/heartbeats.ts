// A session's heartbeats. They go on one Heartbeats stream for the session's life (one message each way
// per beat); a manager that does not serve that method (UNIMPLEMENTED) gets a Heartbeat call per beat
// instead. Either way a beat means the same: it carries the session id, its answer carries the period, and a
// beat not answered within the period (at least 1 s) or refused (an unknown session, a manager that is no
// longer the leader) ends the session.

import { type ClientDuplexStream, Metadata, type ServiceError, status } from "@grpc/grpc-js";
import type { DispatcherClient, HeartbeatRequest, HeartbeatResponse } from "../gen/cluster.js";
import { withoutCallerStack } from "../manager/grpc-util.js";

export interface HeartbeatOptions {
  client: InstanceType<typeof DispatcherClient>;
  sessionId: string;
  /** The period the managers asked for last (the session's messages may change it meanwhile). */
  periodMs: () => number;
  /** The delay before the next beat, for a period (heartbeatDelayMs). */
  delayMs: (periodMs: number) => number;
  /** A beat was answered with this period (0: the manager did not say). */
  onPeriod: (periodMs: number) => void;
  /** Every beat's round trip, and whether it was answered. */
  onBeat: (latencyMs: number, ok: boolean) => void;
  /** A beat failed: the session is over. Called at most once. */
  onFailure: (err: Error) => void;
}

export class Heartbeats {
  private timer: NodeJS.Timeout | undefined;
  private stream: ClientDuplexStream<HeartbeatRequest, HeartbeatResponse> | undefined;
  /** The manager does not serve the stream: one Heartbeat call per beat. */
  private unary = false;
  /** performance.now() of the beat waiting for its answer (0: none). */
  private sentMs = 0;
  private stopped = false;

  constructor(private readonly o: HeartbeatOptions) {}

  /** The first beat goes out after the delay for the current period. */
  start(): void {
    this.schedule();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const s = this.stream;
    this.stream = undefined;
    s?.cancel();
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => this.beat(), this.o.delayMs(this.o.periodMs()));
  }

  private deadlineMs(): number {
    return Math.max(1000, this.o.periodMs());
  }

  private beat(): void {
    if (this.stopped) return;
    if (this.unary) {
      this.unaryBeat();
      return;
    }
    const stream = this.stream ?? this.open();
    this.sentMs = performance.now();
    stream.write({ sessionId: this.o.sessionId });
    this.timer = setTimeout(
      () => this.fail(Object.assign(new Error("heartbeat timed out"), { code: status.DEADLINE_EXCEEDED })),
      this.deadlineMs(),
    );
  }

  private open(): ClientDuplexStream<HeartbeatRequest, HeartbeatResponse> {
    const stream = withoutCallerStack(() => this.o.client.heartbeats(new Metadata()));
    this.stream = stream;
    stream.on("data", (res: HeartbeatResponse) => {
      if (this.stream !== stream || this.sentMs === 0) return;
      if (this.timer) clearTimeout(this.timer);
      this.o.onBeat(performance.now() - this.sentMs, true);
      this.sentMs = 0;
      this.o.onPeriod(res.periodMs);
      this.schedule();
    });
    stream.on("error", (e: ServiceError) => {
      if (this.stream !== stream) return;
      this.stream = undefined;
      if (e.code === status.UNIMPLEMENTED) {
        // A manager without the stream: the beat it refused goes again as a call, and so do the next ones.
        if (this.timer) clearTimeout(this.timer);
        this.unary = true;
        this.sentMs = 0;
        this.unaryBeat();
        return;
      }
      this.fail(e);
    });
    stream.on("end", () => {
      if (this.stream === stream) this.fail(new Error("the manager ended the heartbeat stream"));
    });
    return stream;
  }

  private unaryBeat(): void {
    if (this.stopped) return;
    const sentMs = performance.now();
    const deadline = new Date(Date.now() + this.deadlineMs());
    withoutCallerStack(() =>
      this.o.client.heartbeat({ sessionId: this.o.sessionId }, new Metadata(), { deadline }, (err, res) => {
        if (this.stopped) return;
        if (err) return this.fail(err, sentMs);
        this.o.onBeat(performance.now() - sentMs, true);
        this.o.onPeriod(res?.periodMs ?? 0);
        this.schedule();
      }),
    );
  }

  /** `sentMs`: when the failed beat went out (0: no beat was waiting, the stream broke between beats). */
  private fail(err: Error, sentMs = this.sentMs): void {
    if (this.stopped) return;
    if (sentMs > 0) this.o.onBeat(performance.now() - sentMs, false);
    this.stop();
    this.o.onFailure(err);
  }
}
