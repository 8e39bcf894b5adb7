// The cluster listener (:2377): one gRPC server behind mutual TLS carrying the cluster protocol's services
// (services.ts), the roots it trusts (the local root; once the store has the cluster, its root and during a
// root rotation the new one too: ca-rotation.ts's listenerTrust), and the error a node gets when its listen
// address cannot be bound.

import { Server } from "@grpc/grpc-js";
import type { Logger } from "pino";
import { ApiError } from "../api/errors.js";
import type { ClusterRecord } from "../api/objects.js";
import { CLUSTER_PORT } from "../api/ports.js";
import { listenTLS, type TLSListener, type TLSMaterial, ticketKeysOf } from "../ca/tls.js";
import { observe } from "../metrics/metrics.js";
import { listenerTrust } from "./ca-rotation.js";
import { addClusterServices, type ClusterServices } from "./services.js";

/**
 * The cluster listener could not be opened: its address is taken by another program, or is not one of
 * this host's. Only a manager listens, so this is checked when a node becomes one (init, join as manager,
 * promotion, restart as manager).
 */
export class ListenError extends ApiError {
  /** What is wrong, without the advice: "listen address 127.0.0.1:2377 is already in use". */
  readonly reason: string;

  constructor(
    readonly addr: string,
    readonly code: "EADDRINUSE" | "EADDRNOTAVAIL",
  ) {
    const reason =
      code === "EADDRINUSE"
        ? `listen address ${addr} is already in use`
        : `listen address ${addr} is not an address of this host`;
    super(400, `${reason}: choose another with --listen-addr`);
    this.name = "ListenError";
    this.reason = reason;
  }
}

/**
 * The cluster listener's HTTP/2 keepalive period (see ClusterListener.open): a client that vanished without
 * closing its connection (its host died) has the connection closed within this and the 10 s answer timeout.
 * Its session is dropped earlier, after three missed heartbeats; only the connection lingers.
 */
export const LISTENER_KEEPALIVE_MS = 60_000;

export function splitHostPort(addr: string): [string, string] {
  const i = addr.lastIndexOf(":");
  if (i < 0) return [addr, String(CLUSTER_PORT)];
  let host = addr.slice(0, i);
  if (host.startsWith("[") && host.endsWith("]")) host = host.slice(1, -1);
  return [host, addr.slice(i + 1)];
}

export interface ClusterListenerOptions {
  /** host:port to listen on. */
  listenAddr: string;
  services: ClusterServices;
  certs: TLSMaterial;
  logger: Logger;
}

export class ClusterListener {
  private constructor(
    private readonly server: Server,
    private readonly listener: TLSListener,
    private certs: TLSMaterial,
    /** The root bundle the listener trusts now (listenerTrust). */
    private trusted: string,
    private readonly log: Logger,
  ) {}

  /** Listen on opts.listenAddr; a busy or foreign address is a ListenError. */
  static async open(opts: ClusterListenerOptions): Promise<ClusterListener> {
    const server = new Server({
      "grpc.max_receive_message_length": 8 << 20,
      "grpc.max_send_message_length": 8 << 20,
      // Only to clean up the connections of clients that vanished: sessions and Raft have their own liveness
      // (heartbeats, Raft's own), and a busy client must not be cut off for answering a ping late. Rarely
      // (LISTENER_KEEPALIVE_MS): grpc-js pings every connection at this period whatever goes over it, and a
      // ping costs the leader ~0.1 ms of CPU and its agent ~0.04 ms (bench:wire-push's idle figures): at
      // 10 s, 5,000 agents' connections took ~5 % of the leader's core, in every fan-out's CPU too.
      "grpc.keepalive_time_ms": LISTENER_KEEPALIVE_MS,
      "grpc.keepalive_timeout_ms": 10_000,
      "grpc.keepalive_permit_without_calls": 1,
      "grpc.http2.min_ping_interval_without_data_ms": 500,
      // A node needs a handful of streams (a session, raft, a call or two); a flood of them is refused.
      "grpc.max_concurrent_streams": 64,
      // No channelz (nothing here reads it): with it, grpc-js registers every connection in a global
      // registry, keeps a tracker and trace lines per connection and counts every call, which is memory
      // and work per node (one connection each) on the leader of a large swarm.
      "grpc.enable_channelz": 0,
    });
    addClusterServices(server, opts.services);
    const [host, portText] = splitHostPort(opts.listenAddr);
    const trusted = listenerTrust(opts.certs.rootPem, undefined);
    let listener: TLSListener;
    try {
      listener = await listenTLS(server, {
        host,
        port: Number(portText),
        rootPem: trusted,
        certPem: opts.certs.certPem,
        keyPem: opts.certs.keyPem,
        onHandshake: observe.tlsHandshake,
      });
    } catch (e) {
      server.forceShutdown();
      const code = (e as NodeJS.ErrnoException).code;
      if (code === "EADDRINUSE" || code === "EADDRNOTAVAIL") throw new ListenError(opts.listenAddr, code);
      throw e;
    }
    opts.logger.info({ addr: `${host}:${listener.port}` }, "cluster listener started");
    return new ClusterListener(server, listener, opts.certs, trusted, opts.logger);
  }

  /** The bound port. */
  get port(): number {
    return this.listener.port;
  }

  /** After a certificate renewal, or a new root adopted. */
  updateCertificates(c: TLSMaterial, cluster: ClusterRecord | undefined): void {
    this.certs = c;
    this.trusted = listenerTrust(c.rootPem, cluster);
    this.listener.update({ rootPem: this.trusted, certPem: c.certPem, keyPem: c.keyPem });
    this.refreshTicketKeys(cluster);
  }

  /**
   * The session tickets' keys, the same on every manager (src/ca/tls.ts, "Session resumption"): from the
   * cluster's root CA key and the roots it trusts once the store has them (random until then). Any change of
   * either (a root rotation started, replaced or ended) makes new keys: a session made under the old trust
   * is never resumed under the new one, where its certificate might no longer verify.
   */
  private refreshTicketKeys(cluster: ClusterRecord | undefined): void {
    if (!cluster) return;
    const key = cluster.secrets.rootCAKeyPem;
    const trust = listenerTrust(this.certs.rootPem, cluster);
    const from = `${key}\n${trust}`;
    if (from === this.ticketKeysFrom) return;
    this.ticketKeysFrom = from;
    this.listener.setTicketKeys(ticketKeysOf(key, cluster.info.ID, trust));
  }
  private ticketKeysFrom: string | undefined;

  /**
   * The cluster object changed: trust the roots it names now (a root rotation started or ended), and take
   * the session tickets' keys of its root.
   */
  refreshTrust(cluster: ClusterRecord | undefined): void {
    this.refreshTicketKeys(cluster);
    const next = listenerTrust(this.certs.rootPem, cluster);
    if (next === this.trusted) return;
    this.trusted = next;
    this.listener.update({ rootPem: next, certPem: this.certs.certPem, keyPem: this.certs.keyPem });
    this.log.info(
      { roots: next.split("-----BEGIN CERTIFICATE-----").length - 1 },
      "the cluster listener's trusted roots changed",
    );
  }

  async close(): Promise<void> {
    this.server.forceShutdown();
    await this.listener.close();
  }
}
