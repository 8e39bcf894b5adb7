// A node's side of a root CA rotation. The session says (src/manager/dispatcher.ts): renew your
// certificate now (it is this node's turn; the managers sign with the new root's key), and which root
// every node should trust (the new one, once the rotation is over). The node renews, adopts the new root
// once its own certificate chains to it, and reconnects its session, whose description then reports its
// certificate's issuer and its trust root (what `docker swarm ca --rotate` watches).
//
// A node that was down during a rotation comes back holding the old root and a certificate from it. The
// managers present the cross-signed intermediate, so it can still verify them, but they no longer accept
// its certificate: its sessions fail. After two failures in a row it asks a manager (anonymously, the
// manager verified) for the root; if it is one its certificate does not chain to, it recovers a
// certificate with its old one (CA.RecoverNodeCertificate) and adopts the new root.

import type { ChannelCredentials } from "@grpc/grpc-js";
import type { Logger } from "pino";
import { z } from "zod";
import { CHANNEL_OPTIONS } from "../agent/agent.js";
import { NodeRoleSchema, Pem } from "../api/objects.js";
import { parse } from "../api/schema.js";
import { csrForKey } from "../ca/certs.js";
import { chainIssuer, chainsToRoot } from "../ca/chain.js";
import { clientCredentials } from "../ca/tls-client.js";
import { CAClient, type SessionMessage } from "../gen/cluster.js";
import { unary } from "../manager/grpc-util.js";
import type { Certificates } from "./state.js";

/** Failed session attempts in a row before a node checks whether it missed a root rotation. */
const FAILURES_BEFORE_ROOT_CHECK = 2;
/** At most one such check per this period. */
const ROOT_CHECK_INTERVAL_MS = 5000;

export interface RootFollowerDeps {
  nodeId: () => string;
  certs: () => Certificates | undefined;
  /** Save and use new certificates (listener, channels, renewal schedule). */
  useCertificates: (c: Certificates) => Promise<void>;
  /** Renew this node's certificate with a manager (its current certificate authenticates it). */
  renew: () => Promise<void>;
  /** Drop the session and open a new one (its description carries the new TLSInfo). */
  reconnect: () => void;
  /** Run a step one at a time with the daemon's other certificate and role changes. */
  serial: (f: () => Promise<void>) => Promise<void>;
  logger: Logger;
}

const PemCerts = Pem.regex(/-----BEGIN CERTIFICATE-----/, "must be PEM certificates");
/** What a manager answers to CA.GetRootCACertificate and CA.RecoverNodeCertificate, checked before use. */
const RootAnswer = z.object({ certificatePem: PemCerts });
const RecoverAnswer = z.object({ certificatePem: PemCerts, role: NodeRoleSchema, rootCaPem: PemCerts });

/** A failed step is tried again after this long (a push that changes nothing will not come again). */
const RETRY_MS = 2000;

type RootMessage = Pick<SessionMessage, "rootCaPem" | "renewCertificateIssuer">;

export class RootFollower {
  private busy = false;
  /** The newest session message: what the node should do is always decided from it. */
  private latest: RootMessage | undefined;
  /** The issuer the last rotation renewal was for: a node renews once per rotation it is told about. */
  private renewedFor = "";
  private lastRootCheck = Number.NEGATIVE_INFINITY;
  private retry: NodeJS.Timeout | undefined;

  constructor(private readonly deps: RootFollowerDeps) {}

  /** What a session message says about the root CA. */
  onSessionMessage(msg: RootMessage): void {
    this.latest = { rootCaPem: msg.rootCaPem, renewCertificateIssuer: msg.renewCertificateIssuer };
    this.evaluate();
  }

  /** A session attempt failed: maybe this node missed a rotation while it was down. */
  onSessionFailure(addr: string, consecutive: number, now = Date.now()): void {
    if (consecutive < FAILURES_BEFORE_ROOT_CHECK || this.busy) return;
    if (now - this.lastRootCheck < ROOT_CHECK_INTERVAL_MS) return;
    this.lastRootCheck = now;
    this.step("checking for a root CA rotation missed while down", () => this.recoverIfLeftBehind(addr), false);
  }

  stop(): void {
    if (this.retry) clearTimeout(this.retry);
  }

  private evaluate(): void {
    const c = this.deps.certs();
    const msg = this.latest;
    if (!c || !msg || this.busy) return;
    const issuer = msg.renewCertificateIssuer;
    if (issuer && issuer !== this.renewedFor && chainIssuer(c.certPem, c.rootPem)?.publicKey !== issuer) {
      this.step("renewing the node certificate for the root CA rotation", async () => {
        await this.deps.renew();
        this.renewedFor = issuer;
        this.deps.reconnect();
      });
    } else if (msg.rootCaPem && msg.rootCaPem !== c.rootPem) {
      this.step("adopting the swarm's new root CA", () => this.adoptRoot(msg.rootCaPem));
    }
  }

  private step(what: string, f: () => Promise<void>, retry = true): void {
    this.busy = true;
    void this.deps.serial(f).then(
      () => {
        this.busy = false;
        this.evaluate();
      },
      (e: unknown) => {
        this.busy = false;
        this.deps.logger.warn({ err: e instanceof Error ? e.message : e }, `${what} failed`);
        if (!retry) return;
        if (this.retry) clearTimeout(this.retry);
        this.retry = setTimeout(() => this.evaluate(), RETRY_MS);
        this.retry.unref();
      },
    );
  }

  private async adoptRoot(rootPem: string): Promise<void> {
    let c = this.deps.certs();
    if (!c || c.rootPem === rootPem) return;
    if (!chainsToRoot(c.certPem, rootPem)) {
      // A certificate from before the rotation: renew it (the managers still accept it while they still
      // trust the root it is from), then check again.
      await this.deps.renew();
      c = this.deps.certs()!;
      if (!chainsToRoot(c.certPem, rootPem)) {
        throw new Error("the renewed certificate does not chain to the swarm's new root CA");
      }
    }
    await this.deps.useCertificates({ ...c, rootPem });
    this.deps.logger.info({}, "adopted the swarm's new root CA");
    this.deps.reconnect();
  }

  private async recoverIfLeftBehind(addr: string): Promise<void> {
    const c = this.deps.certs();
    if (!c) return;
    // Anonymous, but the manager is verified against the root this node has (through the intermediate).
    const client = new CAClient(addr, anonymous(c.rootPem), CHANNEL_OPTIONS);
    try {
      const root = parse(
        RootAnswer,
        await unary(client.getRootCaCertificate.bind(client), {}, 5000),
        "root CA answer",
      ).certificatePem;
      if (root === c.rootPem || chainsToRoot(c.certPem, root)) return;
      this.deps.logger.warn(
        { manager: addr },
        "the swarm's root CA was rotated while this node was away: recovering a certificate under the new root",
      );
      const res = parse(
        RecoverAnswer,
        await unary(
          client.recoverNodeCertificate.bind(client),
          { csrPem: await csrForKey(c.keyPem, this.deps.nodeId()), certificatePem: c.certPem },
          10_000,
        ),
        "certificate recovery answer",
      );
      if (!chainsToRoot(res.certificatePem, res.rootCaPem)) {
        throw new Error("the recovered certificate does not chain to the root the manager named");
      }
      await this.deps.useCertificates({ rootPem: res.rootCaPem, certPem: res.certificatePem, keyPem: c.keyPem });
      this.deps.logger.info({}, "recovered a certificate under the swarm's new root CA");
      this.deps.reconnect();
    } finally {
      client.close();
    }
  }
}

function anonymous(rootPem: string): ChannelCredentials {
  return clientCredentials(rootPem);
}
