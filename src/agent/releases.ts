// Endpoints given back to the managers. A release the managers have not acknowledged is never dropped: an
// endpoint left in the store keeps its address allocated. One that fails (no session yet after a restart,
// the leader changing) is logged and retried in the background, with backoff, until they take it back.

import type { Logger } from "pino";

const RETRY_MIN_MS = 250;
const RETRY_MAX_MS = 2000;

export class EndpointReleases {
  /** Endpoints whose release the managers have not acknowledged yet. */
  private readonly pending = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  private backoffMs = RETRY_MIN_MS;
  private closed = false;

  constructor(
    /** Detach over the node's session; rejects if there is none, or the managers did not acknowledge. */
    private readonly send: (endpointId: string) => Promise<void>,
    private readonly log: Logger,
  ) {}

  /** Give an endpoint back now, or (logged) as soon as the managers can take it. Never rejects. */
  async release(endpointId: string): Promise<void> {
    try {
      await this.send(endpointId);
    } catch (e) {
      // A daemon restarting after a crash releases its dead containers' endpoints before it has a session
      // (or before its own manager has a leader): keep trying until the managers take them back.
      this.log.warn(
        { err: (e as Error).message, endpoint: endpointId },
        "could not release the endpoint yet; retrying in the background",
      );
      this.pending.add(endpointId);
      this.schedule(RETRY_MIN_MS);
    }
  }

  /** Whether an endpoint's release is waiting to be acknowledged. */
  isPending(endpointId: string): boolean {
    return this.pending.has(endpointId);
  }

  /** Endpoints still to be given back (for diagnostics and tests). */
  waiting(): string[] {
    return [...this.pending];
  }

  /** Stop retrying (daemon shutdown): what is pending stays in the store until the node releases it again. */
  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.pending.size > 0) {
      this.log.warn({ endpoints: [...this.pending] }, "shutting down with endpoint releases not acknowledged yet");
    }
  }

  private schedule(ms: number): void {
    if (this.timer || this.closed) return;
    this.timer = setTimeout(() => void this.flush(), ms);
    this.timer.unref();
  }

  private async flush(): Promise<void> {
    this.timer = undefined;
    for (const id of [...this.pending]) {
      try {
        await this.send(id);
        this.pending.delete(id);
        this.backoffMs = RETRY_MIN_MS;
        this.log.info({ endpoint: id }, "released the endpoint");
      } catch (e) {
        this.log.debug({ err: (e as Error).message, endpoint: id }, "endpoint release failed again; will retry");
        this.backoffMs = Math.min(RETRY_MAX_MS, this.backoffMs * 2);
        this.schedule(this.backoffMs);
        return;
      }
    }
  }
}
