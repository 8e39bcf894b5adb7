// Guessing join tokens is slowed and seen: every failed attempt is counted per source address, an address
// with too many recent failures is refused at once (before any work) until its window passes, and the
// failures are logged, one line per address per interval rather than one per attempt.

import type { Logger } from "pino";

export interface JoinLimiterOptions {
  now?: () => number;
  /** Failures from one address within `windowMs` before it is refused (default 10). */
  maxFailures?: number;
  windowMs?: number;
  /** At most one log line per address per this long (default 10 s). */
  logEveryMs?: number;
  /** Addresses tracked at once; the oldest is forgotten beyond (default 10,000). */
  maxTracked?: number;
  logger?: Logger;
}

interface Entry {
  failures: number[];
  lastLogMs: number;
  unlogged: number;
}

export class JoinLimiter {
  private readonly byAddr = new Map<string, Entry>();
  private readonly now: () => number;
  private readonly maxFailures: number;
  private readonly windowMs: number;
  private readonly logEveryMs: number;
  private readonly maxTracked: number;
  private readonly log: Logger | undefined;

  constructor(opts: JoinLimiterOptions = {}) {
    this.now = opts.now ?? Date.now;
    this.maxFailures = opts.maxFailures ?? 10;
    this.windowMs = opts.windowMs ?? 60_000;
    this.logEveryMs = opts.logEveryMs ?? 10_000;
    this.maxTracked = opts.maxTracked ?? 10_000;
    this.log = opts.logger;
  }

  /** Milliseconds until `addr` may try again, or 0 if it may now. */
  retryAfterMs(addr: string): number {
    const e = this.byAddr.get(addr);
    if (!e) return 0;
    const now = this.now();
    e.failures = e.failures.filter((t) => now - t < this.windowMs);
    if (e.failures.length < this.maxFailures) return 0;
    return this.windowMs - (now - e.failures[0]!);
  }

  /** Count a failed attempt (a wrong token) from `addr`. */
  failed(addr: string, why: string): void {
    const now = this.now();
    let e = this.byAddr.get(addr);
    if (!e) {
      if (this.byAddr.size >= this.maxTracked) this.byAddr.delete(this.byAddr.keys().next().value!);
      e = { failures: [], lastLogMs: -Infinity, unlogged: 0 };
      this.byAddr.set(addr, e);
    }
    e.failures = e.failures.filter((t) => now - t < this.windowMs);
    e.failures.push(now);
    e.unlogged++;
    if (now - e.lastLogMs >= this.logEveryMs) {
      this.log?.warn(
        { addr, attempts: e.unlogged, recent: e.failures.length, why },
        "refused a join: not a valid join token for this swarm",
      );
      e.lastLogMs = now;
      e.unlogged = 0;
    }
  }

  /** A successful join clears the address's record. */
  succeeded(addr: string): void {
    this.byAddr.delete(addr);
  }
}
