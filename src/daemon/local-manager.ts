// This node's manager, while the node is one: its start (init, join, restart, promotion) and stop, the
// control API over it, and what happens when its listen address cannot be bound: the daemon stays up,
// says why (a log line, Swarm.Error in `docker info`) and tries again every LISTEN_RETRY_MS.

import type { Logger } from "pino";
import { Control } from "../manager/control.js";
import { ListenError } from "../manager/listener.js";
import { Manager } from "../manager/manager.js";
import type { RaftPeer } from "./bootstrap.js";
import { LISTEN_RETRY_MS, restartBlocked } from "./listen.js";
import type { Certificates, DataRoot, LocalState } from "./state.js";

export interface LocalManagerOptions {
  root: DataRoot;
  logger: Logger;
  /** The node's swarm state (a manager starts only with one). */
  state: () => LocalState | undefined;
  certs: () => Certificates;
  /** The daemon has stopped: no retry runs any more. */
  stopped: () => boolean;
  /** The daemon's lock around init/join/leave and role changes (a retry takes it too). */
  serial: (f: () => Promise<void>) => Promise<void>;
  /** A manager started on a retry: the agent reconnects so that its session can use it. */
  onLateStart: () => void;
  tickMs?: number;
  electionTick?: number;
  encryptionKeyRotationMs?: number;
}

export class LocalManager {
  manager: Manager | undefined;
  control: Control | undefined;
  /** Why this node, which should be a manager, is not running as one (Swarm.Error in `docker info`). */
  error: string | undefined;
  /** The next try to become a manager (a promotion, a restart) while the listen address cannot be bound. */
  private retryTimer: NodeJS.Timeout | undefined;

  constructor(private readonly opts: LocalManagerOptions) {}

  async start(bootstrap: boolean, peers?: RaftPeer[]): Promise<void> {
    const o = this.opts;
    const root = o.root;
    this.manager = await Manager.start({
      openRaftStorage: () => root.openRaftStorage(),
      keysAtRest: { currentKek: () => root.currentKek(), seal: (kek) => root.sealSecrets(kek) },
      state: o.state()!,
      certs: o.certs(),
      logger: o.logger,
      bootstrap,
      ...(peers ? { peers } : {}),
      ...(o.tickMs !== undefined ? { tickMs: o.tickMs } : {}),
      ...(o.electionTick !== undefined ? { electionTick: o.electionTick } : {}),
      ...(o.encryptionKeyRotationMs ? { encryptionKeyRotationMs: o.encryptionKeyRotationMs } : {}),
    });
    this.control = new Control(this.manager);
  }

  /**
   * Start the manager of a node whose state says manager (a restart, a promotion that joined Raft). If its
   * listen address cannot be bound, the daemon stays up: it says why (log, Swarm.Error) and retries.
   */
  async startOrRetry(peers?: RaftPeer[]): Promise<void> {
    try {
      await this.start(false, peers);
    } catch (e) {
      if (!(e instanceof ListenError)) throw e;
      this.reportError(restartBlocked(e), e.addr);
      this.retry(() =>
        this.opts.serial(async () => {
          const s = this.opts.state();
          if (this.opts.stopped() || !s || s.role !== "manager" || this.manager) return;
          await this.startOrRetry(peers);
          if (this.manager) this.opts.onLateStart();
        }),
      );
      return;
    }
    if (this.error)
      this.opts.logger.info(
        { addr: this.opts.state()?.listenAddr },
        "the manager started: its listen address is free now",
      );
    this.clearError();
  }

  /** Log why this node is not a manager yet: at error level once, then at debug level on each retry. */
  reportError(message: string, addr: string): void {
    if (message !== this.error) this.opts.logger.error({ addr }, message);
    else this.opts.logger.debug({ addr }, message);
    this.error = message;
  }

  /** Run f after LISTEN_RETRY_MS (replacing a retry already planned), unless the daemon has stopped. */
  retry(f: () => Promise<void>): void {
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      if (!this.opts.stopped())
        void f().catch((e: unknown) => this.opts.logger.warn({ err: e }, "could not start the manager"));
    }, LISTEN_RETRY_MS);
    this.retryTimer.unref();
  }

  clearError(): void {
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    this.error = undefined;
  }

  async stop(): Promise<void> {
    const m = this.manager;
    this.manager = undefined;
    this.control = undefined;
    await m?.stop();
  }
}
