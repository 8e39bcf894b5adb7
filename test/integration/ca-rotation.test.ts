// Issue 9, item 6: root CA rotation, with real shoald processes on loopback (3 managers + 1 worker,
// --dispatcher-heartbeat 1s) driven by the real docker CLI: `docker swarm ca --rotate` completes and prints
// what docker prints, the join tokens change, every node's certificate chains to the new root; a rotation
// to a given certificate and key; nodes (a worker and a manager) that were down during a rotation get the
// new root when they come back; `node rm` of a down node lets the CLI's wait finish.
//
//   flock /tmp/shoal-heavy.lock npx vitest run test/integration/ca-rotation.test.ts

import { createHash, X509Certificate } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { chainIssuer, chainsToRoot, issuerInfoOf } from "../../src/ca/chain.js";
import { createRootCA } from "../../src/ca/rootca.js";
import { parseJoinToken, rootDigest } from "../../src/ca/token.js";
import { buildOnce, Lab, type Result } from "./harness.js";

interface SwarmView {
  Version: { Index: number };
  TLSInfo: { TrustRoot: string; CertIssuerSubject: string; CertIssuerPublicKey: string };
  RootRotationInProgress: boolean;
  JoinTokens: { Worker: string; Manager: string };
}

interface NodeView {
  ID: string;
  Description: { Hostname: string; TLSInfo?: SwarmView["TLSInfo"] };
  Status: { State: string };
}

let lab: Lab;

beforeAll(async () => {
  await buildOnce();
  lab = await Lab.create("ca-rotation", 5);
  await lab.form(3, 1, "docker");
}, 240_000);

afterAll(async () => {
  await lab?.close();
});

async function swarm(i = 1): Promise<SwarmView> {
  const r = await lab.api(i, "GET", "/v1.50/swarm");
  if (r.status !== 200) throw new Error(`GET /swarm: ${r.status} ${JSON.stringify(r.json)}`);
  return r.json as SwarmView;
}

async function nodes(i = 1): Promise<NodeView[]> {
  const r = await lab.api(i, "GET", "/v1.50/nodes");
  if (r.status !== 200) throw new Error(`GET /nodes: ${r.status} ${JSON.stringify(r.json)}`);
  return r.json as NodeView[];
}

/** Daemon i's certificate files. */
function certsOf(i: number): { root: string; cert: string } {
  const dir = join(lab.dataRoot(i), "certificates");
  return {
    root: readFileSync(join(dir, "swarm-root-ca.crt"), "utf8"),
    cert: readFileSync(join(dir, "swarm-node.crt"), "utf8"),
  };
}

/** Has daemon i moved to `root`: it trusts it, and its certificate chains to it and was signed by its key? */
function movedTo(i: number, root: string): boolean {
  const c = certsOf(i);
  return (
    c.root === root &&
    chainsToRoot(c.cert, root) &&
    chainIssuer(c.cert, root)?.publicKey === issuerInfoOf(root).publicKey
  );
}

/** Every node in GET /nodes reports the cluster's issuer and trust root (what the CLI waits for). */
async function converged(): Promise<boolean> {
  const s = await swarm();
  const ns = await nodes();
  return (
    !s.RootRotationInProgress &&
    ns.every(
      (n) =>
        n.Description.TLSInfo?.TrustRoot === s.TLSInfo.TrustRoot &&
        n.Description.TLSInfo.CertIssuerPublicKey === s.TLSInfo.CertIssuerPublicKey &&
        n.Description.TLSInfo.CertIssuerSubject === s.TLSInfo.CertIssuerSubject,
    )
  );
}

/** What `docker swarm ca --rotate` prints when its output is not a terminal, up to the root it ends with. */
function checkRotateOutput(r: Result, newRoot: string): void {
  expect(r.code, r.stderr).toBe(0);
  const lines = r.stdout.split("\n");
  expect(lines.slice(0, 3)).toEqual([
    "desired root digest: ",
    "  rotated TLS certificates: ",
    "  rotated CA certificates:  ",
  ]);
  const digests = lines.filter((l) => l.startsWith("desired root digest: sha256:"));
  expect(digests.length).toBeGreaterThan(0);
  for (const d of digests) expect(d).toMatch(/^desired root digest: sha256:[0-9a-f]{64}$/);
  const want = `desired root digest: sha256:${createHash("sha256").update(newRoot).digest("hex")}`;
  expect(digests.at(-1)).toBe(want);
  expect(r.stdout.endsWith(`${want}\n${newRoot.trim()}\n`)).toBe(true);
}

async function waitDown(hostname: string): Promise<void> {
  await lab.waitFor(
    async () => (await nodes()).find((n) => n.Description.Hostname === hostname)?.Status.State === "down",
    20_000,
    `${hostname} down`,
  );
}

describe("docker swarm ca --rotate", () => {
  it("3 managers + 1 worker: completes, tokens change, every node chains to the new root", async () => {
    try {
      const before = await swarm();
      const r = await lab.docker(1, "swarm", "ca", "--rotate");
      const after = await swarm();
      expect(after.TLSInfo.TrustRoot).not.toBe(before.TLSInfo.TrustRoot);
      expect(after.RootRotationInProgress).toBe(false);
      checkRotateOutput(r, after.TLSInfo.TrustRoot);
      expect((await lab.must("docker", 2, "swarm", "ca")).trim()).toBe(after.TLSInfo.TrustRoot.trim());

      // Both tokens are new, and name the new root.
      for (const role of ["worker", "manager"] as const) {
        const t = (await lab.must("docker", 1, "swarm", "join-token", "-q", role)).trim();
        expect(t).not.toBe(role === "worker" ? before.JoinTokens.Worker : before.JoinTokens.Manager);
        expect(parseJoinToken(t).digest).toBe(rootDigest(after.TLSInfo.TrustRoot));
      }
      // Every node: trusts the new root, its certificate chains to it; what they report agrees.
      await lab.waitFor(() => [1, 2, 3, 4].every((i) => movedTo(i, after.TLSInfo.TrustRoot)), 10_000, "all moved");
      expect(await converged()).toBe(true);
      // Through the intermediate: each node renewed when told, then adopted the new root.
      for (const i of [1, 2, 3, 4]) {
        const msgs = lab.logRecords(i).map((x) => x.msg);
        expect(msgs, `node${i}`).toContain("adopted the swarm's new root CA");
      }
      expect([1, 2, 3].some((i) => lab.logRecords(i).some((x) => x.msg === "root CA rotation finished"))).toBe(true);
      expect((await lab.nodeLs(1)).map((n) => n.Status)).toEqual(["Ready", "Ready", "Ready", "Ready"]);
      // The swarm works: a write, and a new node joins with the new token (the old one names the old root).
      await lab.must("docker", 2, "network", "create", "-d", "overlay", "after-rotation");
      await lab.startDaemon(5);
      const old = await lab.docker(5, ...lab.joinArgs(5, before.JoinTokens.Worker));
      expect(old.code).toBe(1);
      expect(old.stderr).toContain("remote CA does not match fingerprint");
      const ok = await lab.docker(5, ...lab.joinArgs(5, after.JoinTokens.Worker));
      expect(ok.code, ok.stderr).toBe(0);
      expect(movedTo(5, after.TLSInfo.TrustRoot)).toBe(true);
      await lab.must("docker", 5, "swarm", "leave");
      await lab.waitFor(
        async () => (await nodes()).find((n) => n.Description.Hostname === "node5")?.Status.State === "down",
        20_000,
        "node5 gone",
      );
      await lab.must("docker", 1, "node", "rm", "node5");
    } catch (e) {
      lab.dumpRelevant();
      throw e;
    }
  }, 180_000);

  it("--ca-cert/--ca-key: rotates to the given root (and certificates follow --cert-expiry)", async () => {
    try {
      await lab.must("docker", 1, "swarm", "update", "--cert-expiry", "48h");
      const tooShort = await lab.docker(1, "swarm", "update", "--cert-expiry", "30m");
      expect(tooShort.stderr.trim()).toBe("Error response from daemon: minimum certificate expiry time is: 1h0m0s");
      const mine = await createRootCA();
      const certFile = join(lab.dir, "my-ca.crt");
      const keyFile = join(lab.dir, "my-ca.key");
      writeFileSync(certFile, mine.certPem);
      writeFileSync(keyFile, mine.keyPem);
      const r = await lab.docker(1, "swarm", "ca", "--rotate", "--ca-cert", certFile, "--ca-key", keyFile);
      checkRotateOutput(r, mine.certPem);
      const s = await swarm();
      expect(s.TLSInfo.TrustRoot).toBe(mine.certPem);
      // The key never shows.
      expect(JSON.stringify(s)).not.toContain(mine.keyPem.split("\n")[1]);
      await lab.waitFor(() => [1, 2, 3, 4].every((i) => movedTo(i, mine.certPem)), 10_000, "all moved");
      for (const i of [1, 2, 3, 4]) {
        const leaf = new X509Certificate(certsOf(i).cert);
        const validityH = (Date.parse(leaf.validTo) - Date.parse(leaf.validFrom)) / 3600_000;
        expect(validityH, `node${i}`).toBeCloseTo(49, 0);
      }

      // What shoal cannot do is refused, and changes nothing.
      const ext = await lab.docker(
        1,
        "swarm",
        "ca",
        "--rotate",
        "--ca-cert",
        certFile,
        "--external-ca",
        "protocol=cfssl,url=https://ca.example",
      );
      expect(ext.code).toBe(1);
      expect(ext.stderr).toContain("CAConfig.ExternalCAs (--external-ca) is not supported by shoal");
      const same = await lab.docker(
        1,
        "swarm",
        "ca",
        "--rotate",
        "--ca-cert",
        certFile,
        "--ca-key",
        join(lab.dataRoot(1), "certificates", "swarm-node.key"),
      );
      expect(same.code).toBe(1);
      expect(same.stderr).toContain("invalid CA certificate or key");
      expect((await swarm()).TLSInfo.TrustRoot).toBe(mine.certPem);
    } catch (e) {
      lab.dumpRelevant();
      throw e;
    }
  }, 120_000);

  it("a worker and a manager down during a rotation: it finishes without them; they get the new root when back", async () => {
    try {
      await lab.kill(4);
      await lab.kill(3);
      await waitDown("node4");
      await waitDown("node3");
      const before = await swarm();
      const r = await lab.docker(1, "swarm", "ca", "--rotate", "--detach");
      expect(r.code, r.stderr).toBe(0);
      const after = await lab.waitFor(
        async () => {
          const s = await swarm();
          return !s.RootRotationInProgress && s.TLSInfo.TrustRoot !== before.TLSInfo.TrustRoot ? s : undefined;
        },
        20_000,
        "the rotation to finish without the nodes that are down",
      );
      expect(await converged()).toBe(false);

      await lab.startDaemon(4);
      await lab.startDaemon(3);
      await lab.waitFor(() => movedTo(4, after.TLSInfo.TrustRoot), 30_000, "node4 recovered");
      await lab.waitFor(() => movedTo(3, after.TLSInfo.TrustRoot), 30_000, "node3 recovered");
      await lab.waitFor(converged, 20_000, "every node reporting the new root");
      await lab.waitFor(
        async () => {
          const m = await lab.nodeMap(1);
          return m.get("node3")?.ManagerStatus === "Reachable" && m.get("node4")?.Status === "Ready";
        },
        20_000,
        "node3 reachable and node4 ready",
      );
      // They came back through recovery with their old certificates (the managers no longer accept them).
      for (const i of [3, 4]) {
        expect(
          lab.logRecords(i).some((r) => r.msg === "recovered a certificate under the swarm's new root CA"),
          `node${i} recovered`,
        ).toBe(true);
      }
      // The recovered manager serves: a write through it.
      await lab.must("docker", 3, "network", "create", "-d", "overlay", "after-recovery");
    } catch (e) {
      lab.dumpRelevant();
      throw e;
    }
  }, 180_000);

  it("shoal swarm ca --rotate does the same", async () => {
    try {
      const before = await swarm();
      const r = await lab.shoal(2, "swarm", "ca", "--rotate");
      const after = await swarm();
      expect(after.TLSInfo.TrustRoot).not.toBe(before.TLSInfo.TrustRoot);
      checkRotateOutput(r, after.TLSInfo.TrustRoot);
      expect((await lab.must("shoal", 1, "swarm", "ca")).trim()).toBe(after.TLSInfo.TrustRoot.trim());
    } catch (e) {
      lab.dumpRelevant();
      throw e;
    }
  }, 120_000);

  it("node rm of a down node lets docker swarm ca --rotate finish", async () => {
    try {
      await lab.kill(4);
      await waitDown("node4");
      const before = await swarm();
      const cli = lab.docker(1, "swarm", "ca", "--rotate");
      let settled = false;
      void cli.then(() => {
        settled = true;
      });
      await lab.waitFor(
        async () => {
          const s = await swarm();
          return !s.RootRotationInProgress && s.TLSInfo.TrustRoot !== before.TLSInfo.TrustRoot;
        },
        20_000,
        "the rotation to finish on the managers",
      );
      await new Promise((r) => setTimeout(r, 2000));
      // The CLI still waits: node4 has not moved.
      expect(settled).toBe(false);
      await lab.must("docker", 1, "node", "rm", "node4");
      const r = await cli;
      checkRotateOutput(r, (await swarm()).TLSInfo.TrustRoot);
    } catch (e) {
      lab.dumpRelevant();
      throw e;
    }
  }, 120_000);
});
