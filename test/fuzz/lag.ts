// Evidence for a case that took too long: how late the fuzzer's own timers ran while it was in flight (a
// starved fuzzer cannot tell a silent daemon from its own delay) and the machine's load. A hang finding
// carries both, so a load-only timing can be told from a request the daemon left unanswered.

import { loadavg } from "node:os";

/** How often the probe's timer is meant to fire. */
const TICK_MS = 100;
/** Samples kept: longer than any case may take. */
const KEEP_MS = 120_000;

export class LagProbe {
  /** [when the tick ran, how late it was (ms)] */
  private samples: [number, number][] = [];
  private last = Date.now();
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly now: () => number = Date.now) {
    this.last = this.now();
    this.timer = setInterval(() => this.tick(), TICK_MS);
    this.timer.unref();
  }

  private tick(): void {
    const t = this.now();
    this.samples.push([t, Math.max(0, t - this.last - TICK_MS)]);
    this.last = t;
    const old = t - KEEP_MS;
    if (this.samples.length > 0 && this.samples[0]![0] < old) this.samples = this.samples.filter(([w]) => w >= old);
  }

  /** The longest delay of the fuzzer's event loop seen since `since` (ms), counting a tick still overdue. */
  maxLagSince(since: number): number {
    let max = Math.max(0, this.now() - this.last - TICK_MS);
    for (const [w, lag] of this.samples) if (w >= since && lag > max) max = lag;
    return max;
  }

  /** How long the fuzzer's event loop was late in all since `since` (ms): time it could not listen. */
  lostSince(since: number): number {
    let lost = Math.max(0, this.now() - this.last - TICK_MS);
    for (const [w, lag] of this.samples) if (w >= since) lost += lag;
    return lost;
  }

  /**
   * Resolves once `ms` have passed since `since` while the fuzzer was awake: the time its own event loop
   * was late does not count (at most `ms` more), and I/O that arrived meanwhile is read first. A daemon
   * is given the whole wait to answer even when the fuzzer was starved of CPU.
   */
  async waitAwake(since: number, ms: number): Promise<void> {
    for (;;) {
      const elapsed = this.now() - since;
      const remaining = ms + Math.min(ms, this.lostSince(since)) - elapsed;
      if (remaining <= 0) break;
      await new Promise((r) => setTimeout(r, remaining));
    }
    // Timers run before the poll phase: an answer that came while the loop was late is read first.
    await new Promise((r) => setImmediate(r));
  }

  /** One line of evidence for a case that started at `since`. */
  describe(since: number): string {
    const [l1] = loadavg();
    return `fuzzer event loop late by up to ${this.maxLagSince(since)} ms meanwhile; load average ${l1!.toFixed(1)}`;
  }

  stop(): void {
    clearInterval(this.timer);
  }
}
