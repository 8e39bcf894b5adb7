// The node's identity: its certificates (root, node certificate, key), the credentials made from them,
// and their renewal: at a random 50-80 % of the certificate's life, when the managers change the node's
// role, and when a root CA rotation says so (rotation.ts). A renewed certificate is saved, then handed to
// the manager's listener (onCertificates).

import type { ChannelCredentials } from "@grpc/grpc-js";
import type { Logger } from "pino";
import { CHANNEL_OPTIONS } from "../agent/agent.js";
import type { NodeRole } from "../api/objects.js";
import { generateNodeKeyAndCSR, parseNodeCert, renewalTime } from "../ca/certs.js";
import { nodeCredentials } from "../ca/tls-client.js";
import { CAClient } from "../gen/cluster.js";
import { unary } from "../manager/grpc-util.js";
import type { Certificates, DataRoot } from "./state.js";

const RENEW_TIMEOUT_MS = 10_000;
const RENEW_RETRY_MS = 60_000;

export interface IdentityOptions {
  root: DataRoot;
  nodeId: () => string | undefined;
  /** The manager to renew with (the session's, else the first one known); undefined: none yet. */
  managerAddr: () => string | undefined;
  /** New certificates are in use (saved): the manager's listener follows them. */
  onCertificates: (c: Certificates) => void;
  /** Renewals run one at a time with the daemon's other changes. */
  serial: <T>(f: () => Promise<T>) => Promise<T>;
  log: Logger;
}

export class NodeIdentity {
  /** The certificates in use; undefined outside a swarm. */
  certs: Certificates | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly opts: IdentityOptions) {}

  credentials(): ChannelCredentials {
    const c = this.certs;
    if (!c) throw new Error("this node has no certificate: it is not in a swarm");
    return nodeCredentials(c);
  }

  /** Use (and save) new certificates, and schedule their renewal. */
  async use(c: Certificates): Promise<void> {
    this.certs = c;
    await this.opts.root.saveCertificates(c);
    this.opts.onCertificates(c);
    this.schedule();
  }

  /** A new certificate for this node's key pair, from `addr` (default: the usual manager); the role in it. */
  async renew(addr = this.opts.managerAddr()): Promise<{ role: NodeRole }> {
    if (!addr) throw new Error("no manager to renew the certificate with");
    const current = this.certs;
    if (!current) throw new Error("this node has no certificate to renew: it is not in a swarm");
    const { keyPem, csrPem } = await generateNodeKeyAndCSR(this.opts.nodeId());
    const client = new CAClient(addr, this.credentials(), CHANNEL_OPTIONS);
    try {
      const res = await unary(client.renewNodeCertificate.bind(client), { csrPem }, RENEW_TIMEOUT_MS);
      await this.use({ rootPem: current.rootPem, certPem: res.certificatePem, keyPem });
      return { role: res.role as NodeRole };
    } finally {
      client.close();
    }
  }

  /** Renew the node certificate at a random 50-80 % of its life (retried a minute after a failure). */
  schedule(): void {
    this.stop();
    if (!this.certs) return;
    const info = parseNodeCert(this.certs.certPem);
    const at = renewalTime(info.notBefore, info.notAfter).getTime();
    const waitMs = Math.max(1000, Math.min(at - Date.now(), 2 ** 31 - 1));
    this.timer = setTimeout(() => {
      if (Date.now() < at) return this.schedule();
      const addr = this.opts.managerAddr();
      if (!addr) return this.schedule();
      void this.opts
        .serial(() => this.renew(addr))
        .catch((e: unknown) => {
          this.opts.log.warn({ err: e }, "certificate renewal failed; retrying in a minute");
          this.timer = setTimeout(() => this.schedule(), RENEW_RETRY_MS);
        });
    }, waitMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** Leaving the swarm: no certificates, no renewal. */
  forget(): void {
    this.stop();
    this.certs = undefined;
  }
}
