// gRPC TLS for :2377 (the client's credentials are in tls-client.ts). Client certificates are optional at the TLS level so that a node without one can
// fetch the root CA and ask for a certificate with a join token; authorisation is decided per RPC from
// peerRole(call). Servers are addressed by IP, so clients check the chain against the swarm root and
// that the server's OU is swarm-manager, instead of matching a host name.
//
// grpc-js facts this file relies on (1.14):
// - ServerCredentials.createSsl(root, pairs, true) sets requestCert and leaves Node's
//   rejectUnauthorized default (true): a client WITHOUT a certificate is refused. With `false` no client
//   certificate is requested at all. Neither is "optional". experimental.
//   createCertificateProviderServerCredentials(..., requireClientCertificate=false) gives requestCert:true
//   + rejectUnauthorized:false: a client may present a certificate or not. (Its first two parameters are
//   passed swapped to the constructor in 1.14.7; we give one provider that serves both, so it does not
//   matter.) A CertificateProvider must deliver its first update asynchronously: grpc-js reads the
//   context before it registers its watcher, so a synchronous first update is lost and every
//   connection is dropped ("due to unloaded credentials").
// - call.getAuthContext().sslPeerCertificate is set only if the TLS socket is `authorized` (chain verified
//   against the server's CA); a client without a certificate and a client with a certificate from
//   another CA look the same to a handler ({}). Node has no "verify the client certificate if given"
//   mode (Go's tls.VerifyClientCertIfGiven): with rejectUnauthorized:false a bad certificate still
//   completes the handshake. listenTLS() below closes such connections itself.
// - ChannelCredentials.createSsl(..., { rejectUnauthorized: false }) really skips verification (grpc-js
//   checks `authorized` only when rejectUnauthorized is not false); checkServerIdentity replaces Node's
//   host-name check and runs only after the chain verified.
// - A channel makes every connection through its credentials' `_createSecureConnector(...).connect(socket)`
//   (abstract in the public ChannelCredentials, so a subclass may implement it), and two channels share a
//   connection only if their credentials are `_equals`. The client credentials (tls-client.ts) rely on both.

import { createHash, hkdfSync, randomBytes } from "node:crypto";
import { createServer as createNetServer, isIPv4, isIPv6 } from "node:net";
import * as tls from "node:tls";
import { type ChannelOptions, experimental, type Server, ServerCredentials } from "@grpc/grpc-js";
import { MANAGER_OU, type NodeRole, ouToRole, parseNodeCert } from "./certs.js";
import { withIssuerChain } from "./chain.js";
import { HandshakeGate } from "./handshake-gate.js";
import { plainNodeSubject } from "./leaf.js";

/** The identity of an authenticated peer. */
export interface PeerIdentity {
  nodeId: string;
  role: NodeRole;
  clusterId: string;
}

/** TLS material of a node: the swarm root CA bundle and the node's own certificate and key (PEM). */
export interface TLSMaterial {
  rootPem: string;
  certPem: string;
  keyPem: string;
}

/**
 * Channel options to use with clientCredentials: grpc-js otherwise sends the target IP as TLS SNI,
 * which Node warns about (DEP0123, RFC 6066 forbids IP server names). Host-name checking is ours anyway.
 */
export const CLIENT_CHANNEL_OPTIONS: ChannelOptions = { "grpc.ssl_target_name_override": MANAGER_OU };

/**
 * The gRPC target for a manager's host:port. An IP address goes to grpc-js's IP resolver ("ipv4:" or
 * "ipv6:"): its DNS resolver, which grpc-js uses for a target without a scheme, builds a c-ares channel for
 * every new channel, IP or not (about as much CPU as the agent's TLS handshake, in the scale bench's
 * failover). A DNS name is left to the DNS resolver.
 */
export function channelTarget(addr: string): string {
  const colon = addr.lastIndexOf(":");
  if (colon <= 0) return addr;
  const host = addr.slice(0, colon);
  if (isIPv4(host)) return `ipv4:${addr}`;
  if (host.startsWith("[") && host.endsWith("]") && isIPv6(host.slice(1, -1))) return `ipv6:${addr}`;
  return addr;
}

export const TLS_MIN_VERSION = "TLSv1.2";

// ---------------------------------------------------------------------------------------------------
// Server

/** A grpc-js CertificateProvider holding fixed PEMs that can be replaced (certificate renewal). */
class StaticCertificateProvider implements experimental.CertificateProvider {
  private ca: experimental.CaCertificateUpdate;
  private identity: experimental.IdentityCertificateUpdate;
  private readonly caListeners = new Set<experimental.CaCertificateUpdateListener>();
  private readonly identityListeners = new Set<experimental.IdentityCertificateUpdateListener>();

  constructor(m: TLSMaterial) {
    this.ca = { caCertificate: Buffer.from(m.rootPem) };
    this.identity = { certificate: Buffer.from(m.certPem), privateKey: Buffer.from(m.keyPem) };
  }

  update(m: TLSMaterial): void {
    this.ca = { caCertificate: Buffer.from(m.rootPem) };
    this.identity = { certificate: Buffer.from(m.certPem), privateKey: Buffer.from(m.keyPem) };
    for (const l of this.caListeners) l(this.ca);
    for (const l of this.identityListeners) l(this.identity);
  }

  /**
   * grpc-js registers its context watcher only after adding these listeners and reads the context
   * before that: an update delivered synchronously would be lost and every connection dropped.
   */
  private deliverLater(f: () => void): void {
    queueMicrotask(f);
  }

  addCaCertificateListener(l: experimental.CaCertificateUpdateListener): void {
    this.caListeners.add(l);
    this.deliverLater(() => this.caListeners.has(l) && l(this.ca));
  }
  removeCaCertificateListener(l: experimental.CaCertificateUpdateListener): void {
    this.caListeners.delete(l);
  }
  addIdentityCertificateListener(l: experimental.IdentityCertificateUpdateListener): void {
    this.identityListeners.add(l);
    this.deliverLater(() => this.identityListeners.has(l) && l(this.identity));
  }
  removeIdentityCertificateListener(l: experimental.IdentityCertificateUpdateListener): void {
    this.identityListeners.delete(l);
  }
}

/** Server credentials whose certificates can be replaced without rebinding (after renewal). */
export interface ReloadableServerCredentials {
  credentials: ServerCredentials;
  update(m: TLSMaterial): void;
}

export function reloadableServerCredentials(m: TLSMaterial): ReloadableServerCredentials {
  checkMaterial(m);
  const provider = new StaticCertificateProvider(m);
  return {
    credentials: experimental.createCertificateProviderServerCredentials(provider, provider, false),
    update: (next) => {
      checkMaterial(next);
      provider.update(next);
    },
  };
}

/**
 * Credentials for `server.bindAsync`. Client certificates are requested but optional: callers with a
 * certificate from `rootPem` are identified by peerRole(); callers without one, AND callers with a
 * certificate from another CA, are anonymous (peerRole → null) and can still reach RPCs that allow it.
 * To refuse foreign certificates at the TLS level, use listenTLS() instead.
 */
export function serverCredentials(rootPem: string, certPem: string, keyPem: string): ServerCredentials {
  return reloadableServerCredentials({ rootPem, certPem, keyPem }).credentials;
}

export interface TLSListener {
  readonly host: string;
  /** The bound port (useful when listening on port 0). */
  readonly port: number;
  /** Replaces the root bundle and/or server certificate for new connections (after renewal). */
  update(m: TLSMaterial): void;
  /** Replaces the session tickets' keys (ticketKeysOf): tickets made under the old ones are refused. */
  setTicketKeys(keys: Buffer): void;
  /**
   * Connections accepted and not yet handed to TLS (handshake-gate.ts): those whose first bytes came, waiting
   * for their turn, and those that have sent nothing yet.
   */
  handshakes(): { waiting: number; silent: number };
  /** Stops accepting, closes this listener's HTTP/2 sessions, and waits for its connections to end. */
  close(): Promise<void>;
}

export interface ListenTLSOptions extends TLSMaterial {
  host: string;
  port: number;
  /** The keys of the TLS session tickets it issues and takes (ticketKeysOf); random until given. */
  ticketKeys?: Buffer;
  /** Each handshake completed and kept: whether it resumed a session (metrics). */
  onHandshake?: (resumed: boolean) => void;
  /** Connections held at once; more are refused at accept (default 16,384: a 5,000-node swarm and room). */
  maxConnections?: number;
  /** A client that has not finished its TLS handshake by then is cut off (default 10 s). */
  handshakeTimeoutMs?: number;
  /** Connections handed to TLS per event-loop turn (handshake-gate.ts); more wait, in order. */
  handshakesPerTurn?: number;
  /**
   * Connections the kernel holds for accept (default LISTEN_BACKLOG; the kernel caps it at somaxconn).
   */
  backlog?: number;
}

/**
 * After a leader change every node of the swarm connects to the new leader within a few seconds. Node's
 * default backlog (511) overflowed whenever the event loop paused for a moment in that storm, and the kernel
 * drops a connection that finds the queue full: its client only tries again after TCP's retransmission
 * backoff (1, 2, 4, 8, 16 s), which made the last nodes of a large swarm take tens of seconds to come back.
 */
export const LISTEN_BACKLOG = 8192;

/**
 * Serves `server` on host:port with TLS done by shoal, then hands the connection to grpc-js
 * (server.createConnectionInjector). Like Go's tls.VerifyClientCertIfGiven: a client without a
 * certificate is accepted (anonymous); a client whose certificate does not verify against the root
 * bundle (another swarm, expired, self-signed) is disconnected right after the handshake, before any
 * RPC. Use this for :2377; do not also bindAsync the same server unless you want both behaviours.
 */
export async function listenTLS(server: Server, opts: ListenTLSOptions): Promise<TLSListener> {
  checkMaterial(opts);
  const injector = server.createConnectionInjector(ServerCredentials.createInsecure());
  const sockets = new Set<tls.TLSSocket>();
  let ticketKeys = opts.ticketKeys ?? randomBytes(TICKET_KEYS_BYTES);
  const tlsServer = tls.createServer({
    ...serverContextOptions(opts, ticketKeys),
    requestCert: true,
    rejectUnauthorized: false,
    ALPNProtocols: ["h2"],
    minVersion: TLS_MIN_VERSION,
    handshakeTimeout: opts.handshakeTimeoutMs ?? 10_000,
  });
  // The TLS server does not listen itself: the gate accepts, and hands it a few connections per turn.
  const gate = new HandshakeGate(tlsServer, opts.handshakesPerTurn, opts.handshakeTimeoutMs ?? 10_000);
  const netServer = createNetServer((raw) => gate.admit(raw));
  netServer.maxConnections = opts.maxConnections ?? 16_384;
  tlsServer.on("secureConnection", (socket: tls.TLSSocket) => {
    socket.on("error", () => {
      // Surfaced through the HTTP/2 session; without a listener a reset would be an uncaught error.
    });
    // A connection's peer certificate cannot change (no renegotiation): read it once, and hand out that one
    // object, so that peerRole reads the identity once per connection, not once per call. Only its DER is
    // read (peerRole, grpc-js's auth context), and its expiry. From getPeerCertificate() (the leaf's fields),
    // not getPeerX509Certificate(): with Node 20 and OpenSSL 3.0 that takes about twice as long on a server
    // (~200 against ~100 us a connection, measured side by side), on every connection a manager accepts.
    const presented = tls.TLSSocket.prototype.getPeerCertificate.call(socket, false) as tls.PeerCertificate | null;
    const peer = (presentedCertificate(presented) ? { raw: presented.raw } : {}) as tls.PeerCertificate;
    if (!socket.authorized && presentedCertificate(peer)) {
      socket.destroy();
      return;
    }
    // A resumed session was not verified now: the certificate is the one its first handshake verified (the
    // ticket carries it). It must not have expired since (the ticket may outlive it).
    if (
      presentedCertificate(presented) &&
      socket.isSessionReused() &&
      !(Date.now() <= Date.parse(presented.valid_to))
    ) {
      socket.destroy();
      return;
    }
    if (socket.alpnProtocol !== "h2") {
      socket.destroy();
      return;
    }
    socket.disableRenegotiation();
    opts.onHandshake?.(socket.isSessionReused());
    socket.getPeerCertificate = ((detailed?: boolean) =>
      detailed
        ? tls.TLSSocket.prototype.getPeerCertificate.call(socket, true)
        : peer) as typeof socket.getPeerCertificate;
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
    injector.injectConnection(socket);
  });
  tlsServer.on("tlsClientError", () => {
    // A failed handshake concerns only that client.
  });

  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error): void => reject(err);
    netServer.once("error", onError);
    netServer.listen({ port: opts.port, host: opts.host, backlog: opts.backlog ?? LISTEN_BACKLOG }, () => {
      netServer.off("error", onError);
      resolve();
    });
  });
  const addr = netServer.address();
  const port = typeof addr === "object" && addr !== null ? addr.port : opts.port;

  let closed: Promise<void> | null = null;
  return {
    host: opts.host,
    port,
    update(m: TLSMaterial): void {
      checkMaterial(m);
      tlsServer.setSecureContext(serverContextOptions(m, ticketKeys));
    },
    handshakes: () => gate.counts(),
    setTicketKeys(keys: Buffer): void {
      if (keys.length !== TICKET_KEYS_BYTES) throw new TypeError(`ticket keys must be ${TICKET_KEYS_BYTES} bytes`);
      if (keys.equals(ticketKeys)) return;
      ticketKeys = keys;
      tlsServer.setTicketKeys(keys);
    },
    close(): Promise<void> {
      if (closed === null) {
        closed = new Promise<void>((resolve) => {
          netServer.close(() => resolve());
          gate.close();
          injector.destroy();
          // Sessions get a graceful GOAWAY from injector.destroy(); do not let a stuck peer hold close().
          const timer = setTimeout(() => {
            for (const s of sockets) s.destroy();
          }, 1000);
          timer.unref();
        });
      }
      return closed;
    },
  };
}

function secureContextOptions(m: TLSMaterial): tls.SecureContextOptions {
  return { ca: m.rootPem, cert: withIssuerChain(m.certPem, m.rootPem), key: m.keyPem };
}

// ---------------------------------------------------------------------------------------------------
// Session resumption
//
// After a leader's death every node of the swarm reconnects within seconds, and a full handshake (the
// server signs, each side verifies the other's certificate chain) was the largest cost of that storm on both
// sides. Every manager issues TLS 1.3 session tickets under the same keys (ticketKeysOf), so a node resumes,
// at whichever manager, the session it had with any of them: an ECDHE exchange (psk_dhe_ke: the traffic
// keeps forward secrecy), no signature, no chain to verify, about half the CPU of a full handshake.
//
// Why it is safe:
// - The keys derive from the root CA's private key (the cluster's secret that only managers hold, in the Raft
//   store): whoever can make or open a ticket can sign a manager certificate anyway. A root rotation changes
//   them; a ticket they no longer open means a full handshake, checked as always.
// - The server side: the ticket carries the client certificate its first handshake verified; the identity
//   is read from it as from a fresh one (peerRole), its expiry is checked again (listenTLS), and what the node may
//   do is still decided per call from the store (a removed node is refused: src/ca/peer.ts).
// - The client side: a resumed session proves the server holds the ticket keys, so a manager of this root;
//   the node's tickets are its credentials' own (tls-client.ts), never another node's.
// - Session ids are bound to one context for all managers (sessionIdContext), not Node's default (a hash of
//   the process's command line, which differs from manager to manager and would refuse every resumption).

/** Node's ticket key size: 16 bytes of name, 16 of HMAC key, 16 of AES key. */
export const TICKET_KEYS_BYTES = 48;
/** A ticket's lifetime: TLS 1.3's longest (a session lasts days; it is resumed when its manager goes). */
export const TICKET_LIFETIME_S = 7 * 24 * 3600;
const SESSION_ID_CONTEXT = "shoal-2377";

/**
 * The session tickets' keys every manager of a cluster uses: HKDF-SHA256 of the root CA key, bound to the
 * cluster and to the roots its managers trust (`trustedPem`, the same bundle on each).
 */
export function ticketKeysOf(caKeyPem: string, clusterId: string, trustedPem = ""): Buffer {
  const info = `${clusterId}\n${createHash("sha256").update(trustedPem).digest("hex")}`;
  return Buffer.from(hkdfSync("sha256", caKeyPem, "shoal tls session tickets v1", info, TICKET_KEYS_BYTES));
}

function serverContextOptions(m: TLSMaterial, ticketKeys: Buffer): tls.SecureContextOptions {
  return {
    ...secureContextOptions(m),
    minVersion: TLS_MIN_VERSION,
    ticketKeys,
    sessionTimeout: TICKET_LIFETIME_S,
    sessionIdContext: SESSION_ID_CONTEXT,
  };
}

function presentedCertificate(peer: tls.PeerCertificate | null): peer is tls.PeerCertificate {
  return peer !== null && typeof peer === "object" && Buffer.isBuffer(peer.raw);
}

function checkMaterial(m: TLSMaterial): void {
  // Fail here with a clear message rather than later inside a TLS handshake.
  tls.createSecureContext(secureContextOptions(m));
}

/** The part of a grpc-js server call peerRole needs (every server call type has it). */
export interface CallWithAuthContext {
  getAuthContext(): { sslPeerCertificate?: { raw?: Buffer } | undefined } | null;
}

/**
 * The verified identity of the caller, or null if it presented no certificate (or one grpc-js did not
 * accept as verified against the root bundle, or one with an OU shoal does not issue). grpc-js exposes
 * the peer certificate only for `authorized` TLS connections, so a non-null result is chain-verified.
 */
export function peerRole(call: CallWithAuthContext): PeerIdentity | null {
  const cert = call.getAuthContext()?.sslPeerCertificate;
  if (!cert) return null;
  const known = identityOfCert.get(cert);
  if (known !== undefined) return known;
  const raw = cert.raw;
  if (!Buffer.isBuffer(raw)) return null;
  const id = identityOfDer(raw);
  identityOfCert.set(cert, id);
  return id;
}

/**
 * Identities already read, by the certificate object a TLS connection hands out (listenTLS makes that one
 * object per connection, so a connection's certificate is read once) and by the certificate's bytes (the
 * same certificate always says the same thing; bounded, oldest forgotten first).
 */
const identityOfCert = new WeakMap<object, PeerIdentity | null>();
const identityOfBytes = new Map<string, PeerIdentity | null>();
const MAX_CACHED_IDENTITIES = 32_768;

/** The identity a node certificate (DER) states, or null if it is not a node certificate. */
export function identityOfDer(raw: Buffer): PeerIdentity | null {
  const key = raw.toString("base64");
  const known = identityOfBytes.get(key);
  if (known !== undefined) return known;
  const id = readIdentity(raw);
  if (identityOfBytes.size >= MAX_CACHED_IDENTITIES) identityOfBytes.delete(identityOfBytes.keys().next().value!);
  identityOfBytes.set(key, id);
  return id;
}

const PLAIN_VALUE = /^[A-Za-z0-9_.-]+$/;

/**
 * The subject read straight from the DER (src/ca/leaf.ts: about 20 µs, where Node's X509Certificate takes
 * about 170; once per new peer certificate, 5 % of a leader's CPU while nodes join); a subject not in the plain
 * form shoal issues (escaped, repeated or odd values) goes to parseNodeCert, the reference.
 */
function readIdentity(raw: Buffer): PeerIdentity | null {
  const s = plainNodeSubject(raw);
  const role = s === null ? null : ouToRole(s.ou);
  if (s !== null && role !== null && PLAIN_VALUE.test(s.cn) && PLAIN_VALUE.test(s.o)) {
    return { nodeId: s.cn, role, clusterId: s.o };
  }
  try {
    const info = parseNodeCert(raw);
    return { nodeId: info.nodeId, role: info.role, clusterId: info.clusterId };
  } catch {
    return null;
  }
}
