// The key manager (leader only): the keyring of the encrypted overlays' data plane (AES-128-GCM, a
// 16-byte key and a 4-byte salt per key) lives in the replicated store, three keys ascending by tag.
// Every rotation interval (12 h by default) the leader appends a fresh key and drops the oldest.
//
// The schedule is part of the stored keyring (lastRotation, intervalMs), so a new leader picks it up
// where the old one left it: a failover neither skips nor doubles a rotation, and a cluster that was
// down across several intervals rotates once when it comes back (the next due time counts from that
// rotation, with no catching up). Two leaders racing across a failover cannot both rotate: a rotation
// names the newest tag its proposer saw, and the apply refuses it if the ring has moved on.
//
// The keyring's pure functions, which the store's apply uses, are in src/store/keyring.ts (the new key's
// bytes and the rotation time are chosen here, by the proposer, so the apply stays deterministic).

import type { Logger } from "pino";
import {
  checkInterval,
  cryptoRandomBytes,
  DEFAULT_KEY_ROTATION_MS,
  DEFAULT_MAX_POLL_MS,
  initialKeyring,
  KEYRING_SIZE,
  type Keyring,
  type KeysCommand,
  nextRotationAt,
  type RandomBytes,
  redact,
  rotateCommand,
  rotationDue,
} from "../store/keyring.js";

export * from "../store/keyring.js";

// ------------------------------------------------------------------ the leader loop

export interface TimerHandle {
  cancel(): void;
}

export type SetTimer = (fn: () => void, ms: number) => TimerHandle;

const realSetTimer: SetTimer = (fn, ms) => {
  const t = setTimeout(fn, ms);
  t.unref();
  return { cancel: () => clearTimeout(t) };
};

export type KeyLogger = Pick<Logger, "info" | "warn" | "debug">;

export interface KeyManagerOptions {
  /** The clock: every time the key manager uses comes from here. */
  now: () => Date;
  /** Propose a store command; resolves once applied, rejects if refused (or not leader). */
  propose: (cmd: KeysCommand) => Promise<void>;
  /** The stored keyring as this manager has applied it. */
  read: () => Keyring | undefined;
  /**
   * --encryption-key-rotation: the interval of a keyring this leader creates. If given and the stored
   * interval differs, the leader stores this one (the schedule still counts from lastRotation).
   * Leave undefined to keep whatever interval is stored (DEFAULT_KEY_ROTATION_MS for a new ring).
   */
  intervalMs?: number;
  setTimer?: SetTimer;
  randomBytes?: RandomBytes;
  logger?: KeyLogger;
  /** Re-check at least this often (default 60 s). */
  maxPollMs?: number;
  /** Wait this long before retrying after a failed check (default min(1 s, maxPollMs)). */
  retryMs?: number;
}

/** Runs on the leader: start() on becoming leader, stop() on losing it. */
export class KeyManager {
  private readonly now: () => Date;
  private readonly propose: (cmd: KeysCommand) => Promise<void>;
  private readonly read: () => Keyring | undefined;
  private readonly intervalMs: number | undefined;
  private readonly setTimer: SetTimer;
  private readonly randomBytes: RandomBytes;
  private readonly log: KeyLogger | undefined;
  private readonly maxPollMs: number;
  private readonly retryMs: number;
  private running = false;
  /** Bumped by start/stop so a check in flight from an earlier term does not reschedule. */
  private generation = 0;
  private timer: TimerHandle | undefined;
  private inFlight: Promise<boolean> | undefined;

  constructor(opts: KeyManagerOptions) {
    this.now = opts.now;
    this.propose = opts.propose;
    this.read = opts.read;
    if (opts.intervalMs !== undefined) checkInterval(opts.intervalMs);
    this.intervalMs = opts.intervalMs;
    this.setTimer = opts.setTimer ?? realSetTimer;
    this.randomBytes = opts.randomBytes ?? cryptoRandomBytes;
    this.log = opts.logger;
    this.maxPollMs = opts.maxPollMs ?? DEFAULT_MAX_POLL_MS;
    this.retryMs = opts.retryMs ?? Math.min(1000, this.maxPollMs);
  }

  get isRunning(): boolean {
    return this.running;
  }

  /** Begin (on becoming leader): check at once, then at the next due time. */
  start(): void {
    if (this.running) return;
    this.running = true;
    this.generation++;
    void this.run(this.generation);
  }

  /** Stop (on losing leadership). A proposal already sent may still apply; the stored ring decides. */
  stop(): void {
    if (!this.running) return;
    this.running = false;
    this.generation++;
    this.timer?.cancel();
    this.timer = undefined;
  }

  /** Resolves once any check in flight has finished (for tests and orderly shutdown). */
  async settled(): Promise<void> {
    while (this.inFlight) await this.inFlight;
  }

  /** Check the keyring and create or rotate it if due. Never throws: failures are logged. */
  async tick(): Promise<void> {
    await this.check();
  }

  /** One check; concurrent callers share it. Resolves true if it completed without error. */
  private check(): Promise<boolean> {
    if (this.inFlight) return this.inFlight;
    const p = this.doCheck().finally(() => {
      if (this.inFlight === p) this.inFlight = undefined;
    });
    this.inFlight = p;
    return p;
  }

  private async doCheck(): Promise<boolean> {
    try {
      let ring = this.read();
      if (!ring) {
        const fresh = initialKeyring(this.now(), this.intervalMs ?? DEFAULT_KEY_ROTATION_MS, this.randomBytes);
        await this.propose({ op: "keys.init", ring: fresh });
        this.log?.info({ keyring: redact(fresh) }, "network encryption keyring created");
        return true;
      }
      if (this.intervalMs !== undefined && ring.intervalMs !== this.intervalMs) {
        await this.propose({ op: "keys.interval", intervalMs: this.intervalMs });
        this.log?.info({ from: ring.intervalMs, to: this.intervalMs }, "network key rotation interval changed");
        ring = this.read();
        if (!ring) return true;
      }
      const now = this.now();
      if (!rotationDue(ring, now)) {
        this.lastNotDue = true;
        return true;
      }
      this.lastNotDue = false;
      const cmd = rotateCommand(ring, now, this.randomBytes);
      await this.propose(cmd);
      this.log?.info(
        {
          tag: cmd.key.tag,
          dropped: ring.keys.length >= KEYRING_SIZE ? ring.keys[0]?.tag : undefined,
          previousRotation: ring.lastRotation,
          rotatedAt: cmd.rotatedAt,
        },
        "network encryption key rotated",
      );
      return true;
    } catch (e) {
      // Refusals carry tags only (see applyKeys); never log the command itself.
      this.log?.warn({ err: e instanceof Error ? e.message : String(e) }, "network key check failed; will retry");
      return false;
    }
  }

  /** The last check found no rotation due (at its own reading of the clock). */
  private lastNotDue = false;

  private async run(gen: number): Promise<void> {
    this.lastNotDue = false;
    const ok = await this.check();
    if (!this.running || gen !== this.generation) return;
    this.schedule(gen, ok ? this.delayToNext() : this.retryMs);
  }

  /** Milliseconds until the next rotation is due, within [0, maxPollMs]; retryMs if still due now. */
  private delayToNext(): number {
    const ring = this.read();
    if (!ring) return this.retryMs;
    const ms = nextRotationAt(ring).getTime() - this.now().getTime();
    if (Number.isNaN(ms)) return this.maxPollMs;
    // Due now, but the check just before found it not due: a timer that fired a little early and a clock
    // that moved on between the two readings. Check again at once, not a whole retry period late.
    if (ms <= 0 && this.lastNotDue) return 1;
    // Still due after a check that rotated: the store has not caught up; do not spin.
    if (ms <= 0) return this.retryMs;
    return Math.min(ms, this.maxPollMs);
  }

  private schedule(gen: number, ms: number): void {
    this.timer?.cancel();
    this.timer = this.setTimer(() => {
      this.timer = undefined;
      if (this.running && gen === this.generation) void this.run(gen);
    }, ms);
  }
}
