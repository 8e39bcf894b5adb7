// Root CA rotation on the managers: what a swarm update's CAConfig starts (or refuses), the store's
// commands, the leader's reconciler moving nodes in batches and finishing without the nodes that are down,
// the recovery of a node that missed it, and the node side's decisions (src/daemon/rotation.ts).

import { createPrivateKey, createPublicKey } from "node:crypto";
import pino from "pino";
import { describe, expect, it } from "vitest";
import { DEFAULT_SWARM_SPEC, type Node, type SwarmSpec, type TLSInfo } from "../../src/api/objects.js";
import { csrForKey, generateNodeKeyAndCSR, signNodeCSR } from "../../src/ca/certs.js";
import { chainsToRoot, clusterTLSInfo, issuerInfoOf, nodeTLSInfo } from "../../src/ca/chain.js";
import { createRootCA, RootCA, type RootCAMaterial } from "../../src/ca/rootca.js";
import { generateJoinToken, parseJoinToken, rootDigest } from "../../src/ca/token.js";
import { EC_KEY_PARAMS, EC_SIGN_PARAMS, subtle, x509 } from "../../src/ca/x509.js";
import { RootFollower } from "../../src/daemon/rotation.js";
import type { Certificates } from "../../src/daemon/state.js";
import {
  listenerTrust,
  nodeCertDays,
  planRootRotation,
  ROTATE_BATCH_SIZE,
  RootRotationReconciler,
  recoverCertificate,
  signingCA,
} from "../../src/manager/ca-rotation.js";
import { type ClusterRecord, type Command, encodeCommand, type Outcome, Store } from "../../src/store/store.js";

const CLUSTER_ID = "c1uster000000000000000000";
const silent = pino({ level: "silent" });

function nodeId(n: number): string {
  return `node${String(n).padStart(21, "0")}`;
}

class Log {
  readonly store = new Store();
  private index = 0;
  apply(c: Command): Outcome {
    return this.store.apply(encodeCommand(c, new Date()), ++this.index);
  }
  must(c: Command): void {
    const o = this.apply(c);
    if (!o.ok) throw new Error(`${c.op}: ${o.message}`);
  }
  cluster(): ClusterRecord {
    return this.store.cluster()!;
  }
}

function spec(forceRotate = 0, extra: Partial<SwarmSpec["CAConfig"]> = {}): SwarmSpec {
  const s = structuredClone(DEFAULT_SWARM_SPEC);
  s.CAConfig = { ...s.CAConfig, ForceRotate: forceRotate, ...extra };
  return s;
}

async function newCluster(root: RootCAMaterial, nodes: { id: string; state: "ready" | "down" }[]): Promise<Log> {
  const log = new Log();
  log.must({
    op: "cluster.create",
    info: {
      ID: CLUSTER_ID,
      Version: { Index: 0 },
      CreatedAt: "2026-11-22T00:00:00.000Z",
      UpdatedAt: "2026-11-22T00:00:00.000Z",
      Spec: spec(),
      TLSInfo: clusterTLSInfo(root.certPem),
      RootRotationInProgress: false,
      DefaultAddrPool: ["10.0.0.0/8"],
      SubnetSize: 24,
      DataPathPort: 4789,
    },
    secrets: {
      rootCACertPem: root.certPem,
      rootCAKeyPem: root.keyPem,
      workerToken: generateJoinToken(root.certPem),
      managerToken: generateJoinToken(root.certPem),
    },
  });
  for (const n of nodes) {
    const node: Node = {
      ID: n.id,
      Version: { Index: 0 },
      CreatedAt: "2026-11-22T00:00:00.000Z",
      UpdatedAt: "2026-11-22T00:00:00.000Z",
      Spec: { Labels: {}, Role: "worker", Availability: "active" },
      Description: {
        Hostname: n.id,
        Platform: { Architecture: "x86_64", OS: "linux" },
        Resources: { NanoCPUs: 0, MemoryBytes: 0 },
        Engine: { EngineVersion: "t", Plugins: [] },
        TLSInfo: clusterTLSInfo(root.certPem),
      },
      Status: { State: n.state, Addr: "" },
    };
    log.must({ op: "node.create", node, role: "worker" });
  }
  return log;
}

/** Start a rotation as a swarm update does (plan, then cluster.update with the change). */
async function rotate(log: Log, s: SwarmSpec): Promise<void> {
  const c = log.cluster();
  const change = await planRootRotation(c, s);
  log.must({ op: "cluster.update", version: c.info.Version.Index, spec: s, ...change });
}

/** A node reports a new description TLSInfo (as its session does after renewing). */
function report(log: Log, id: string, tls: TLSInfo): void {
  const rec = log.store.node(id)!;
  log.must({ op: "node.describe", id, description: { ...rec.node.Description, TLSInfo: tls } });
}

async function until(pred: () => boolean, what: string, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

function reconciler(log: Log): RootRotationReconciler {
  return new RootRotationReconciler({
    cluster: () => log.store.clusterView(),
    nodes: () => log.store.nodeViews(),
    onEvent: (f) => {
      log.store.events.on("event", f);
      return () => log.store.events.off("event", f);
    },
    write: async (c) => log.must(c),
    logger: silent,
    pollMs: 50,
  });
}

/** A self-signed CA certificate for an existing key (to try "a new cert with the same key"). */
async function selfSignedWithKey(keyPem: string): Promise<string> {
  const priv = createPrivateKey(keyPem);
  const privateKey = await subtle.importKey(
    "pkcs8",
    priv.export({ type: "pkcs8", format: "der" }),
    EC_KEY_PARAMS,
    false,
    ["sign"],
  );
  const publicKey = await subtle.importKey(
    "spki",
    createPublicKey(priv).export({ type: "spki", format: "der" }),
    EC_KEY_PARAMS,
    true,
    ["verify"],
  );
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: "0badc0de",
    name: "CN=other-ca",
    notBefore: new Date(Date.now() - 3600_000),
    notAfter: new Date(Date.now() + 5 * 365 * 24 * 3600_000),
    keys: { privateKey, publicKey },
    signingAlgorithm: EC_SIGN_PARAMS,
    extensions: [new x509.BasicConstraintsExtension(true, undefined, true)],
  });
  return `${cert.toString("pem")}\n`;
}

describe("planning a rotation (swarm update's CAConfig)", () => {
  it("ForceRotate changed: a new root made by the managers, cross-signed by the current one", async () => {
    const r1 = await createRootCA();
    const log = await newCluster(r1, []);
    expect(await planRootRotation(log.cluster(), spec(0))).toEqual({});
    const change = await planRootRotation(log.cluster(), spec(1));
    const rot = change.rootRotation!;
    expect(rot.caCertPem).not.toBe(r1.certPem);
    expect(chainsToRoot(rot.crossSignedPem, r1.certPem)).toBe(true);
    expect(issuerInfoOf(rot.crossSignedPem)).toEqual(issuerInfoOf(rot.caCertPem));
    expect(change.tlsInfo).toEqual(clusterTLSInfo(r1.certPem, rot.caCertPem));

    await rotate(log, spec(1));
    const c = log.cluster();
    expect(c.info.RootRotationInProgress).toBe(true);
    expect(c.info.TLSInfo.TrustRoot).toBe(r1.certPem);
    expect(c.info.TLSInfo.CertIssuerPublicKey).toBe(issuerInfoOf(c.secrets.rootRotation!.caCertPem).publicKey);
    expect(c.info.Spec.CAConfig.ForceRotate).toBe(1);
    // The same spec again (a later swarm update) changes nothing.
    expect(await planRootRotation(c, spec(1))).toEqual({});
  });

  it("--ca-cert/--ca-key: that root; never kept in the spec; the current root again aborts", async () => {
    const r1 = await createRootCA();
    const mine = await createRootCA();
    const log = await newCluster(r1, []);
    await rotate(log, spec(0, { SigningCACert: mine.certPem, SigningCAKey: mine.keyPem }));
    let c = log.cluster();
    expect(c.secrets.rootRotation?.caCertPem).toBe(mine.certPem);
    expect(c.info.Spec.CAConfig.SigningCACert).toBeUndefined();
    expect(c.info.Spec.CAConfig.SigningCAKey).toBeUndefined();
    expect(JSON.stringify(c.info)).not.toContain(mine.keyPem.split("\n")[1]);
    // The same target again: nothing to do. The current root again: the rotation is aborted.
    expect(await planRootRotation(c, spec(0, { SigningCACert: mine.certPem, SigningCAKey: mine.keyPem }))).toEqual({});
    await rotate(log, spec(0, { SigningCACert: r1.certPem, SigningCAKey: r1.keyPem }));
    c = log.cluster();
    expect(c.secrets.rootRotation).toBeUndefined();
    expect(c.info.RootRotationInProgress).toBe(false);
    expect(c.info.TLSInfo).toEqual(clusterTLSInfo(r1.certPem));
  });

  it("refuses, with a reason, what it cannot carry out", async () => {
    const r1 = await createRootCA();
    const mine = await createRootCA();
    const log = await newCluster(r1, []);
    const c = log.cluster();
    const refused = (cfg: Partial<SwarmSpec["CAConfig"]>) => planRootRotation(c, spec(0, cfg));
    await expect(refused({ ExternalCAs: [{ Protocol: "cfssl", URL: "https://ca" }] })).rejects.toThrow(
      "external CAs are not supported",
    );
    await expect(refused({ SigningCAKey: mine.keyPem })).rejects.toThrow(
      "if a signing CA key is provided, the signing CA cert must also be provided",
    );
    await expect(refused({ SigningCACert: mine.certPem })).rejects.toThrow("needs its key (--ca-key)");
    await expect(refused({ SigningCACert: mine.certPem + r1.certPem, SigningCAKey: mine.keyPem })).rejects.toThrow(
      "cannot contain multiple certificates",
    );
    await expect(refused({ SigningCACert: mine.certPem, SigningCAKey: r1.keyPem })).rejects.toThrow(
      "invalid CA certificate or key: the root CA key does not match",
    );
    await expect(
      refused({ SigningCACert: await selfSignedWithKey(r1.keyPem), SigningCAKey: r1.keyPem }),
    ).rejects.toThrow("Cannot update to a cert with an identical key");
    await expect(refused({ NodeCertExpiry: 59 * 60e9 })).rejects.toThrow("minimum certificate expiry time is: 1h0m0s");
    const soon = await createRootCA({ now: () => new Date(Date.now() - 30 * 24 * 3600_000), years: 1 });
    await expect(refused({ SigningCACert: soon.certPem, SigningCAKey: soon.keyPem })).rejects.toThrow(
      "CA certificate expires too soon",
    );
    expect(log.cluster()).toEqual(c);
  });
});

describe("what a manager's listener trusts", () => {
  it("its own root before it knows the cluster; then the swarm's root, and the new root during a rotation", async () => {
    const r1 = await createRootCA();
    const stale = await createRootCA();
    const log = await newCluster(r1, []);
    expect(listenerTrust(stale.certPem, undefined)).toBe(stale.certPem);
    expect(listenerTrust(stale.certPem, log.cluster())).toBe(r1.certPem);
    await rotate(log, spec(1));
    const newRoot = log.cluster().secrets.rootRotation!.caCertPem;
    expect(listenerTrust(r1.certPem, log.cluster())).toBe(r1.certPem + newRoot);
  });
});

describe("node certificate lifetime (--cert-expiry)", () => {
  it("is the spec's NodeCertExpiry, 90 days when unset", async () => {
    const log = await newCluster(await createRootCA(), []);
    expect(nodeCertDays(log.cluster())).toBe(90);
    const c = log.cluster();
    log.must({ op: "cluster.update", version: c.info.Version.Index, spec: spec(0, { NodeCertExpiry: 48 * 3600e9 }) });
    expect(nodeCertDays(log.cluster())).toBe(2);
  });
});

describe("the reconciler (leader)", () => {
  it("tells nodes to renew 30 at a time, finishes without the down ones, then retires the old root", async () => {
    const r1 = await createRootCA();
    const ids = Array.from({ length: ROTATE_BATCH_SIZE + 5 }, (_, i) => nodeId(i));
    const down = nodeId(99);
    const log = await newCluster(r1, [
      ...ids.map((id) => ({ id, state: "ready" as const })),
      { id: down, state: "down" },
    ]);
    const rec = reconciler(log);
    rec.start();
    try {
      await rotate(log, spec(1));
      const want = log.cluster().info.TLSInfo;
      const told = () =>
        log.store
          .nodes()
          .filter((n) => n.certRenew === want.CertIssuerPublicKey)
          .map((n) => n.node.ID);
      await until(() => told().length === ROTATE_BATCH_SIZE, "the first batch");
      expect(told()).not.toContain(down);
      // Five nodes renew: five more are told.
      for (const id of told().slice(0, 5)) report(log, id, { ...want, TrustRoot: r1.certPem });
      await until(() => told().length === ROTATE_BATCH_SIZE + 5, "the next five");
      const before = log.cluster();
      for (const id of ids) report(log, id, { ...want, TrustRoot: r1.certPem });

      await until(() => !log.cluster().info.RootRotationInProgress, "the rotation to finish");
      const after = log.cluster();
      const newRoot = before.secrets.rootRotation!.caCertPem;
      expect(after.secrets.rootCACertPem).toBe(newRoot);
      expect(after.info.TLSInfo).toEqual(clusterTLSInfo(newRoot));
      expect(after.secrets.retiredRoot?.caCertPem).toBe(r1.certPem);
      for (const t of [after.secrets.workerToken, after.secrets.managerToken]) {
        expect(parseJoinToken(t).digest).toBe(rootDigest(newRoot));
      }
      expect(after.secrets.workerToken).not.toBe(before.secrets.workerToken);
      // New certificates still carry the intermediate while a node may come back on the old root.
      expect((await signingCA(after)).chainPem).toBe(before.secrets.rootRotation!.crossSignedPem);

      // The down node is removed: every node has moved, the old root is dropped.
      log.must({ op: "node.remove", id: down });
      await until(() => log.cluster().secrets.retiredRoot === undefined, "the old root to be retired");
      expect((await signingCA(log.cluster())).chainPem).toBe("");
    } finally {
      rec.stop();
    }
  });

  it("the store refuses a finish or retire for another rotation", async () => {
    const r1 = await createRootCA();
    const log = await newCluster(r1, []);
    const tlsInfo = clusterTLSInfo(r1.certPem);
    expect(
      log.apply({
        op: "cluster.rootRotation.finish",
        target: "0".repeat(64),
        workerToken: "w",
        managerToken: "m",
        tlsInfo,
      }),
    ).toEqual({ ok: false, status: 409, message: "no root CA rotation is in progress" });
    await rotate(log, spec(1));
    expect(
      log.apply({
        op: "cluster.rootRotation.finish",
        target: "0".repeat(64),
        workerToken: "w",
        managerToken: "m",
        tlsInfo,
      }),
    ).toEqual({ ok: false, status: 409, message: "the root CA rotation has changed" });
    expect(log.apply({ op: "cluster.rootRotation.retire", retired: rootDigest(r1.certPem) })).toMatchObject({
      ok: false,
      status: 409,
    });
    // Not a digest at all: the command schema refuses it before any table sees it.
    expect(
      log.apply({ op: "cluster.rootRotation.finish", target: "x", workerToken: "w", managerToken: "m", tlsInfo }),
    ).toMatchObject({ ok: false, status: 400 });
    expect(log.cluster().info.RootRotationInProgress).toBe(true);
  });
});

describe("recovery of a node that missed a rotation", () => {
  it("its old certificate and a CSR for the same key get a certificate under the new root", async () => {
    const r1 = await createRootCA();
    const id = nodeId(1);
    const log = await newCluster(r1, [{ id, state: "down" }]);
    const ca1 = await RootCA.fromPem(r1.certPem, r1.keyPem);
    const { keyPem, csrPem } = await generateNodeKeyAndCSR(id);
    const oldCert = await signNodeCSR(ca1, csrPem, { nodeId: id, role: "worker", clusterId: CLUSTER_ID });
    const deps = () => ({
      cluster: log.cluster(),
      clusterId: CLUSTER_ID,
      node: (n: string) => log.store.node(n),
      isRemoved: (n: string) => log.store.isRemoved(n),
    });
    // No rotation yet: nothing to recover from.
    await expect(
      recoverCertificate(deps(), { csrPem: await csrForKey(keyPem, id), certificatePem: oldCert }),
    ).rejects.toThrow("not issued by a root CA this swarm rotated away from");
    await rotate(log, spec(1));
    const r = log.cluster().secrets.rootRotation!;
    log.must({
      op: "cluster.rootRotation.finish",
      target: rootDigest(r.caCertPem),
      workerToken: generateJoinToken(r.caCertPem),
      managerToken: generateJoinToken(r.caCertPem),
      tlsInfo: clusterTLSInfo(r.caCertPem),
    });

    const out = await recoverCertificate(deps(), { csrPem: await csrForKey(keyPem, id), certificatePem: oldCert });
    expect(out.role).toBe("worker");
    expect(out.rootCaPem).toBe(r.caCertPem);
    expect(chainsToRoot(out.certificatePem, r.caCertPem)).toBe(true);
    expect(chainsToRoot(out.certificatePem, r1.certPem)).toBe(true);

    // Another key than the certificate's: refused. Another swarm's certificate: refused. Removed: refused.
    const other = await generateNodeKeyAndCSR(id);
    await expect(recoverCertificate(deps(), { csrPem: other.csrPem, certificatePem: oldCert })).rejects.toThrow(
      "the CSR is not for the certificate's key",
    );
    const stranger = await createRootCA();
    const strangerCert = await signNodeCSR(await RootCA.fromPem(stranger.certPem, stranger.keyPem), csrPem, {
      nodeId: id,
      role: "manager",
      clusterId: CLUSTER_ID,
    });
    await expect(
      recoverCertificate(deps(), { csrPem: await csrForKey(keyPem, id), certificatePem: strangerCert }),
    ).rejects.toThrow("not issued by a root CA this swarm rotated away from");
    log.must({ op: "node.remove", id });
    await expect(
      recoverCertificate(deps(), { csrPem: await csrForKey(keyPem, id), certificatePem: oldCert }),
    ).rejects.toThrow("was removed from the swarm");
  });
});

describe("the node side (RootFollower)", () => {
  async function setup() {
    const r1 = await createRootCA();
    const r2 = await createRootCA();
    const ca1 = await RootCA.fromPem(r1.certPem, r1.keyPem);
    const ca2 = await RootCA.fromPem(r2.certPem, r2.keyPem);
    const cross = await ca1.crossSign(r2.certPem);
    const id = nodeId(7);
    const { keyPem, csrPem } = await generateNodeKeyAndCSR(id);
    const oldCert = await signNodeCSR(ca1, csrPem, { nodeId: id, role: "worker", clusterId: CLUSTER_ID });
    const newCert = (await signNodeCSR(ca2, csrPem, { nodeId: id, role: "worker", clusterId: CLUSTER_ID })) + cross;
    let certs: Certificates = { rootPem: r1.certPem, certPem: oldCert, keyPem };
    const calls: string[] = [];
    const failures = { renew: 0 };
    const follower = new RootFollower({
      nodeId: () => id,
      certs: () => certs,
      useCertificates: async (c) => {
        calls.push("use");
        certs = c;
      },
      renew: async () => {
        calls.push("renew");
        if (failures.renew > 0) {
          failures.renew--;
          throw new Error("no manager answered");
        }
        certs = { ...certs, certPem: newCert };
      },
      reconnect: () => calls.push("reconnect"),
      serial: (f) => f(),
      logger: silent,
    });
    return { r1, r2, follower, calls, failures, certs: () => certs };
  }
  const settle = () => new Promise((r) => setTimeout(r, 20));

  it("renews once when told, then adopts the new root once the rotation is over", async () => {
    const { r1, r2, follower, calls, certs } = await setup();
    const issuer = issuerInfoOf(r2.certPem).publicKey;
    follower.onSessionMessage({ rootCaPem: r1.certPem, renewCertificateIssuer: issuer });
    await settle();
    expect(calls).toEqual(["renew", "reconnect"]);
    expect(nodeTLSInfo(certs().rootPem, certs().certPem).CertIssuerPublicKey).toBe(issuer);
    // Told again (the same rotation): nothing more.
    follower.onSessionMessage({ rootCaPem: r1.certPem, renewCertificateIssuer: issuer });
    await settle();
    expect(calls).toEqual(["renew", "reconnect"]);
    // The rotation is over: the new root.
    follower.onSessionMessage({ rootCaPem: r2.certPem, renewCertificateIssuer: "" });
    await settle();
    expect(calls).toEqual(["renew", "reconnect", "use", "reconnect"]);
    expect(certs().rootPem).toBe(r2.certPem);
  });

  it("a new root its certificate does not chain to: renews first", async () => {
    const { r2, follower, calls, certs } = await setup();
    follower.onSessionMessage({ rootCaPem: r2.certPem, renewCertificateIssuer: "" });
    await settle();
    expect(calls).toEqual(["renew", "use", "reconnect"]);
    expect(chainsToRoot(certs().certPem, certs().rootPem)).toBe(true);
  });

  it("a step that failed is tried again (the push that asked for it will not come again)", async () => {
    const { r2, follower, calls, failures, certs } = await setup();
    failures.renew = 1;
    follower.onSessionMessage({ rootCaPem: r2.certPem, renewCertificateIssuer: "" });
    await settle();
    expect(calls).toEqual(["renew"]);
    await until(() => certs().rootPem === r2.certPem, "the retry", 4000);
    expect(calls).toEqual(["renew", "renew", "use", "reconnect"]);
    follower.stop();
  });

  it("one failed session attempt is not a reason to check the root", async () => {
    const { follower, calls } = await setup();
    follower.onSessionFailure("127.0.0.1:1", 1);
    await settle();
    expect(calls).toEqual([]);
  });
});
