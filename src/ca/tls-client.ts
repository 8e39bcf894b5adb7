// gRPC TLS for :2377, the client's side (tls.ts has the server's, the identity of a peer and the grpc-js
// facts both rely on): credentials that check the server is a manager of this swarm's root
// (clientCredentials, nodeCredentials), the unverified ones that only fetch the root CA
// (insecureClientCredentials), and a join's, which check the connection once the root is trusted
// (joinCredentials).

import { X509Certificate as NodeX509Certificate } from "node:crypto";
import type { Socket } from "node:net";
import * as tls from "node:tls";
import { CallCredentials, ChannelCredentials } from "@grpc/grpc-js";
import { type NodeRole, parseNodeCert } from "./certs.js";
import { chainLeadsTo, withIssuerChain } from "./chain.js";
import { identityOfDer, TLS_MIN_VERSION, type TLSMaterial } from "./tls.js";

/**
 * Credentials for talking to a manager: the server's certificate must chain to `rootPem` and carry
 * OU=swarm-manager (no host-name check: managers are addressed by IP). With certPem/keyPem the client
 * authenticates as that node; without, it is anonymous (e.g. to request a certificate with a token).
 * Pass CLIENT_CHANNEL_OPTIONS to the client constructor.
 */
export function clientCredentials(rootPem: string, certPem?: string, keyPem?: string): ChannelCredentials {
  if ((certPem === undefined) !== (keyPem === undefined)) {
    throw new TypeError("clientCredentials: certPem and keyPem must be given together");
  }
  return new ManagerCredentials(rootPem, certPem, keyPem);
}

/**
 * clientCredentials for a node's TLS material, one per material object (a renewal brings a new object): every
 * connection a node makes with the same certificates shares one TLS context instead of parsing the key and
 * certificates again (the agent's attempts, the Raft transport's probes of a dead peer every second).
 */
export function nodeCredentials(m: TLSMaterial): ChannelCredentials {
  let c = credentialsByMaterial.get(m);
  if (!c) credentialsByMaterial.set(m, (c = clientCredentials(m.rootPem, m.certPem, m.keyPem)));
  return c;
}
const credentialsByMaterial = new WeakMap<TLSMaterial, ChannelCredentials>();

/**
 * clientCredentials' connections, made as grpc-js's own (the same TLS context, ALPN h2, the name override as
 * SNI, OpenSSL verifying the chain against the roots and refusing a bad one), but the server's certificate is
 * checked from `getPeerX509Certificate()` (~15 us) instead of the object Node builds for
 * `checkServerIdentity` with `getPeerCertificate(true)` (~200 us: the whole chain as JS objects, looked up
 * in the context's store). That was a quarter of the scale bench's simulators' CPU in a failover, where
 * thousands of nodes reconnect at once. The checks are checkManagerX509's (issuer, OU).
 *
 * Node 20 fact: on a client, getPeerX509Certificate() takes the leaf out of the connection's peer chain
 * (a second call returns undefined, and getPeerCertificate() then shows the next certificate of the chain,
 * or nothing). It is called once, here; nothing in shoal reads a client connection's peer certificate after
 * the handshake (grpc-js copies it into the client's auth context, which nothing reads).
 */
class ManagerCredentials extends ChannelCredentials {
  private readonly context: tls.SecureContext;
  private readonly roots: NodeX509Certificate[];
  /**
   * The latest TLS session ticket a manager gave these credentials' connections: the next connection, to
   * any manager, resumes it (tls.ts, "Session resumption": the managers share their ticket keys). Only a
   * node's own credentials have them (one object per node's material): never another node's session.
   */
  private session: Buffer | undefined;

  constructor(rootPem: string, certPem?: string, keyPem?: string) {
    super();
    this.roots = parseTrustedRoots(rootPem);
    this.context = tls.createSecureContext({
      ca: rootPem,
      ...(certPem !== undefined && keyPem !== undefined
        ? { cert: withIssuerChain(certPem, rootPem), key: keyPem }
        : {}),
      minVersion: TLS_MIN_VERSION,
    });
  }

  override _isSecure(): boolean {
    return true;
  }

  override _equals(other: ChannelCredentials): boolean {
    return other === this;
  }

  override _createSecureConnector(
    ...[, options, callCredentials]: Parameters<ChannelCredentials["_createSecureConnector"]>
  ): ReturnType<ChannelCredentials["_createSecureConnector"]> {
    const override = options["grpc.ssl_target_name_override"];
    const servername = typeof override === "string" ? override : undefined;
    const calls = callCredentials ?? CallCredentials.createEmpty();
    return {
      connect: (socket) => this.connect(socket, servername),
      waitForReady: () => Promise.resolve(),
      getCallCredentials: () => calls,
      destroy: () => {},
    };
  }

  private connect(socket: Socket, servername: string | undefined): Promise<{ socket: Socket; secure: boolean }> {
    return new Promise((resolve, reject) => {
      const tlsSocket: tls.TLSSocket = tls.connect(
        {
          socket,
          secureContext: this.context,
          ALPNProtocols: ["h2"],
          ...(servername !== undefined ? { servername } : {}),
          // A resumed session: Node does not call checkServerIdentity (nothing was presented); that the
          // server could open the ticket proves it holds the managers' ticket keys.
          ...(this.session !== undefined ? { session: this.session } : {}),
          // Node calls this only once OpenSSL has verified the chain against the roots.
          checkServerIdentity: (): Error | undefined => {
            delete (tlsSocket as { getPeerCertificate?: unknown }).getPeerCertificate;
            return checkManagerX509(this.roots, tlsSocket.getPeerX509Certificate());
          },
        },
        () => {
          delete (tlsSocket as { getPeerCertificate?: unknown }).getPeerCertificate;
          if (!tlsSocket.authorized) {
            tlsSocket.destroy();
            reject(tlsSocket.authorizationError);
            return;
          }
          resolve({ socket: tlsSocket, secure: true });
        },
      );
      // What Node would build for checkServerIdentity, never read: checkServerIdentity above reads the
      // certificate itself (and puts the real method back first).
      tlsSocket.getPeerCertificate = (() => ({})) as unknown as typeof tlsSocket.getPeerCertificate;
      // Only from a server that passed the checks above (a ticket comes after the handshake completed).
      tlsSocket.on("session", (ticket: Buffer) => {
        if (tlsSocket.authorized) this.session = ticket;
      });
      tlsSocket.on("error", reject);
    });
  }
}

/**
 * Node 20's tls.connect hands a session to resume to OpenSSL twice: the TLSSocket it makes sets
 * `options.session` (TLSSocket's _init), and connect then sets the same Buffer again (tlssock.setSession).
 * Each time OpenSSL decodes the whole session, the manager's certificate in it included (~0.5 ms with
 * OpenSSL 3.0: about a tenth of the scale bench's simulators' CPU in a failover, where every node
 * resumes). The second is skipped: a socket asked to set, before its handshake is done, the very Buffer
 * it was made with already has that session. Any other call (another session, or after the handshake)
 * goes through unchanged.
 */
function setSessionOnce(): void {
  type Proto = {
    setSession(this: tls.TLSSocket, session: string | Buffer): void;
    [SET_SESSION_ONCE]?: true;
  };
  const proto = tls.TLSSocket.prototype as unknown as Proto;
  if (proto[SET_SESSION_ONCE]) return;
  const setSession = proto.setSession;
  proto.setSession = function (this: tls.TLSSocket, session: string | Buffer): void {
    const own = this as unknown as { _tlsOptions?: { session?: unknown }; _secureEstablished?: boolean };
    if (typeof session !== "string" && own._tlsOptions?.session === session && own._secureEstablished === false) {
      return;
    }
    setSession.call(this, session);
  };
  proto[SET_SESSION_ONCE] = true;
}
const SET_SESSION_ONCE = Symbol.for("shoal.tls.setSessionOnce");
setSessionOnce();

/**
 * Credentials that do not verify the server at all: only for fetching the root CA before joining, after
 * which the joiner must compare the fetched bundle's digest with the join token (tokenMatchesRoot); the
 * join's connection (joinCredentials) is made with these. One for the process, on one TLS context with no
 * roots (the default store is not loaded: that was a third of a joining simulator's CPU in bench:scale); it
 * holds no secret.
 */
export function insecureClientCredentials(): ChannelCredentials {
  insecureCredentials ??= ChannelCredentials.createFromSecureContext(
    tls.createSecureContext({ minVersion: TLS_MIN_VERSION }),
    { rejectUnauthorized: false, checkServerIdentity: () => undefined },
  );
  return insecureCredentials;
}
let insecureCredentials: ChannelCredentials | undefined;

/**
 * Credentials for a join: one connection for the root CA and the certificate request. The connection is
 * made unverified (the root is not known yet); once the joiner has checked the fetched root against the
 * token's digest it calls `trust(rootPem)`, which checks the certificate every connection made so far
 * presented as clientCredentials(rootPem) would have (it chains to that root, OU=swarm-manager) and from
 * then on checks each new connection before it is used. Only then may the token go out: a server that
 * merely relays the public root cannot present a manager certificate of that root.
 *
 * Without it a join is three TLS handshakes (root, certificate, session): this saves one on both sides.
 * One for each join (the connections it made are its own); pass CLIENT_CHANNEL_OPTIONS (or the agent's).
 */
export interface JoinCredentials {
  readonly credentials: ChannelCredentials;
  /** Throws (the reason) if a connection made so far was not to a manager of this root. */
  trust(rootPem: string): void;
}

export function joinCredentials(): JoinCredentials {
  const creds = new TrustOnCheckCredentials();
  return { credentials: creds, trust: (rootPem) => creds.trust(rootPem) };
}

/** See joinCredentials. grpc-js makes each connection through `_createSecureConnector(...).connect`. */
class TrustOnCheckCredentials extends ChannelCredentials {
  /** The roots, once trusted; until then the certificates presented on the connections made. */
  private roots: NodeX509Certificate[] | undefined;
  private presented: (NodeX509Certificate | undefined)[] = [];

  trust(rootPem: string): void {
    const roots = parseTrustedRoots(rootPem);
    for (const leaf of this.presented) {
      const err = checkManagerX509(roots, leaf);
      if (err) throw err;
    }
    this.presented = [];
    this.roots = roots;
  }

  /**
   * The server's certificate as getPeerX509Certificate gives it (its issuers linked, as the server sent them),
   * not getPeerCertificate(true) (~200 us a join: the whole chain as JS objects). The connection is unverified
   * (no roots in its context): grpc-js reads no peer certificate of it (it is not `authorized`).
   */
  private check(socket: tls.TLSSocket): void {
    const leaf = socket.getPeerX509Certificate();
    if (this.roots === undefined) {
      this.presented.push(leaf);
      return;
    }
    const err = checkManagerX509(this.roots, leaf);
    if (err) throw err;
  }

  override _isSecure(): boolean {
    return true;
  }

  override _equals(other: ChannelCredentials): boolean {
    // Never shared with another channel: what was checked is this join's.
    return other === this;
  }

  override _createSecureConnector(
    ...args: Parameters<ChannelCredentials["_createSecureConnector"]>
  ): ReturnType<ChannelCredentials["_createSecureConnector"]> {
    const inner = insecureClientCredentials()._createSecureConnector(...args);
    return {
      connect: async (socket) => {
        const out = await inner.connect(socket);
        try {
          this.check(out.socket as tls.TLSSocket);
        } catch (e) {
          out.socket.destroy();
          throw e;
        }
        return out;
      },
      waitForReady: () => inner.waitForReady(),
      getCallCredentials: () => inner.getCallCredentials(),
      destroy: () => inner.destroy(),
    };
  }
}

function parseTrustedRoots(rootPem: string): NodeX509Certificate[] {
  // The same bundle for every connection a node makes (and every node a simulator runs): read once.
  const known = trustedRoots.get(rootPem);
  if (known) return known;
  const blocks = rootPem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) throw new TypeError("clientCredentials: rootPem contains no PEM certificate");
  const roots = blocks.map((b) => new NodeX509Certificate(b));
  if (trustedRoots.size >= 8) trustedRoots.delete(trustedRoots.keys().next().value!);
  trustedRoots.set(rootPem, roots);
  return roots;
}
const trustedRoots = new Map<string, NodeX509Certificate[]>();

/**
 * Chains already found to be a manager's, per trusted roots: by the fingerprints of the presented
 * certificates, until the first of them (or of the roots) expires. A node connects to the same few managers
 * again and again (the scale bench's simulators, thousands of times): each chain is parsed and its
 * signatures checked once. Only good verdicts are kept; a bad chain is checked again (and refused) each time.
 */
const goodChains = new WeakMap<NodeX509Certificate[], Map<string, number>>();
const MAX_GOOD_CHAINS = 64;

function knownGood(roots: NodeX509Certificate[], key: string): boolean {
  const until = goodChains.get(roots)?.get(key);
  return until !== undefined && Date.now() <= until;
}

function checkAndRemember(
  roots: NodeX509Certificate[],
  key: string,
  chain: NodeX509Certificate[],
  raw: Buffer,
): Error | undefined {
  const err = checkManagerChain(roots, chain, raw);
  if (err === undefined) {
    let known = goodChains.get(roots);
    if (!known) goodChains.set(roots, (known = new Map()));
    if (known.size >= MAX_GOOD_CHAINS) known.delete(known.keys().next().value!);
    known.set(key, Math.min(...[...chain, ...roots].map((c) => Date.parse(c.validTo))));
  }
  return err;
}

/**
 * The checks of a manager's certificate (issuer, OU), on the certificate as getPeerX509Certificate gives it
 * (its issuers linked, as the server sent them). With roots in the context, OpenSSL has verified the chain first.
 */
function checkManagerX509(roots: NodeX509Certificate[], leaf: NodeX509Certificate | undefined): Error | undefined {
  if (leaf === undefined) return new Error("the swarm manager presented no certificate");
  const chain: NodeX509Certificate[] = [];
  for (let c: NodeX509Certificate | undefined = leaf; c !== undefined && chain.length < 4; c = c.issuerCertificate) {
    if (chain.some((x) => x.fingerprint256 === c!.fingerprint256)) break;
    chain.push(c);
  }
  const key = chain.map((c) => c.fingerprint256).join("/");
  return knownGood(roots, key) ? undefined : checkAndRemember(roots, key, chain, leaf.raw);
}

function checkManagerChain(roots: NodeX509Certificate[], chain: NodeX509Certificate[], raw: Buffer): Error | undefined {
  if (!chainLeadsTo(chain, roots)) {
    return new Error("the server's certificate was not issued by this swarm's root CA");
  }
  // The role from the cached, cheap read (every connection to a manager asks); the full parse only to say
  // why a certificate is not a node certificate.
  const role: NodeRole | undefined = identityOfDer(raw)?.role;
  if (role === undefined) {
    try {
      parseNodeCert(raw);
    } catch (err) {
      return new Error(`the server's certificate is not a swarm node certificate: ${(err as Error).message}`);
    }
    return new Error("the server's certificate is not a swarm node certificate");
  }
  if (role !== "manager") return new Error("the server is not a swarm manager (its certificate has OU=swarm-worker)");
  return undefined;
}
