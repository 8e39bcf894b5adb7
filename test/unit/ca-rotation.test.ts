// Root CA rotation's PKI: the new root cross-signed by the old one, chains through it, the issuer a node
// reports, and mutual TLS between nodes that hold either root while the rotation moves them over.

import { X509Certificate } from "node:crypto";
import * as grpc from "@grpc/grpc-js";
import { afterEach, beforeAll, describe, expect, test } from "vitest";
import { generateNodeKeyAndCSR, type NodeRole, signNodeCSR } from "../../src/ca/certs.js";
import {
  chainIssuer,
  chainsToRoot,
  clusterTLSInfo,
  issuerInfoOf,
  nodeTLSInfo,
  splitPemCerts,
  withIssuerChain,
} from "../../src/ca/chain.js";
import { createRootCA, RootCA, type RootCAMaterial } from "../../src/ca/rootca.js";
import { CLIENT_CHANNEL_OPTIONS, listenTLS, peerRole, type TLSListener } from "../../src/ca/tls.js";
import { clientCredentials } from "../../src/ca/tls-client.js";
import { x509 } from "../../src/ca/x509.js";

const CLUSTER = "clusterid0000000000000001";

let r1: RootCAMaterial;
let r2: RootCAMaterial;
let other: RootCAMaterial;
let crossPem: string;
let ca1: RootCA;
let ca2: RootCA;

interface NodeMaterial {
  certPem: string;
  keyPem: string;
}

async function issue(ca: RootCA, nodeId: string, role: NodeRole, chain = ""): Promise<NodeMaterial> {
  const { keyPem, csrPem } = await generateNodeKeyAndCSR(nodeId);
  return { keyPem, certPem: (await signNodeCSR(ca, csrPem, { nodeId, role, clusterId: CLUSTER })) + chain };
}

beforeAll(async () => {
  r1 = await createRootCA();
  r2 = await createRootCA();
  other = await createRootCA();
  ca1 = await RootCA.fromPem(r1.certPem, r1.keyPem);
  ca2 = await RootCA.fromPem(r2.certPem, r2.keyPem);
  crossPem = await ca1.crossSign(r2.certPem);
});

describe("the cross-signed intermediate", () => {
  test("is the new root's subject, key, key id and validity, issued and signed by the old root", () => {
    const x = new x509.X509Certificate(crossPem);
    const n = new x509.X509Certificate(r2.certPem);
    expect(Buffer.from(x.subjectName.toArrayBuffer())).toEqual(Buffer.from(n.subjectName.toArrayBuffer()));
    expect(Buffer.from(x.publicKey.rawData)).toEqual(Buffer.from(n.publicKey.rawData));
    expect(x.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId).toBe(
      n.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId,
    );
    expect(x.notBefore).toEqual(n.notBefore);
    expect(x.notAfter).toEqual(n.notAfter);
    expect(x.getExtension(x509.BasicConstraintsExtension)?.ca).toBe(true);

    const nx = new X509Certificate(crossPem);
    expect(nx.checkIssued(new X509Certificate(r1.certPem))).toBe(true);
    expect(nx.verify(new X509Certificate(r1.certPem).publicKey)).toBe(true);
    expect(nx.verify(new X509Certificate(r2.certPem).publicKey)).toBe(false);
    // Not mistaken for a self-signed root (its authority key id is the old root's).
    expect(nx.checkIssued(nx)).toBe(false);
    // The issuer docker compares is the new root's.
    expect(issuerInfoOf(crossPem)).toEqual(issuerInfoOf(r2.certPem));
  });

  test("needs the old root's key and a CA certificate to sign", async () => {
    const noKey = await RootCA.fromPem(r1.certPem);
    await expect(noKey.crossSign(r2.certPem)).rejects.toThrow("does not hold the cluster CA key");
    const leaf = await issue(ca2, "node00000000000000000000a", "worker");
    await expect(ca1.crossSign(leaf.certPem)).rejects.toThrow("not a CA certificate");
    await expect(ca1.crossSign("garbage")).rejects.toThrow("not a readable certificate");
  });
});

describe("chains", () => {
  test("an issuer's subject and key are the certificate's own bytes, as the ASN.1 library reads them", async () => {
    const byLibrary = (pem: string) => {
      const c = new x509.X509Certificate(pem);
      return {
        subject: Buffer.from(c.subjectName.toArrayBuffer()).toString("base64"),
        publicKey: Buffer.from(c.publicKey.rawData).toString("base64"),
      };
    };
    const leaf = await issue(ca2, "node00000000000000000000a", "worker", crossPem);
    for (const pem of [r1.certPem, r2.certPem, other.certPem, crossPem, splitPemCerts(leaf.certPem)[0]!]) {
      expect(issuerInfoOf(pem)).toEqual(byLibrary(pem));
    }
    // A bundle: its first certificate's.
    expect(issuerInfoOf(leaf.certPem)).toEqual(byLibrary(splitPemCerts(leaf.certPem)[0]!));
    expect(issuerInfoOf(r1.certPem.replaceAll("\n", "\r\n"))).toEqual(byLibrary(r1.certPem));
    // Not a certificate: refused, as before.
    expect(() => issuerInfoOf("garbage")).toThrow();
    expect(() => issuerInfoOf("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")).toThrow();
  });

  test("a leaf the new key signed chains to the new root directly and to the old one through the intermediate", async () => {
    const leaf = await issue(ca2, "node00000000000000000000a", "worker", crossPem);
    expect(splitPemCerts(leaf.certPem)).toHaveLength(2);
    expect(chainsToRoot(leaf.certPem, r1.certPem)).toBe(true);
    expect(chainsToRoot(leaf.certPem, r2.certPem)).toBe(true);
    expect(chainsToRoot(leaf.certPem, r1.certPem + r2.certPem)).toBe(true);
    expect(chainsToRoot(splitPemCerts(leaf.certPem)[0]!, r1.certPem)).toBe(false);
    expect(chainsToRoot(leaf.certPem, other.certPem)).toBe(false);
    const old = await issue(ca1, "node00000000000000000000b", "worker");
    expect(chainsToRoot(old.certPem, r1.certPem)).toBe(true);
    expect(chainsToRoot(old.certPem, r2.certPem)).toBe(false);
    // Validity counts: not yet valid, expired.
    expect(chainsToRoot(leaf.certPem, r1.certPem, new Date(Date.now() - 2 * 3600_000))).toBe(false);
    expect(chainsToRoot(leaf.certPem, r1.certPem, new Date(Date.now() + 91 * 24 * 3600_000))).toBe(false);
  });

  test("a node's issuer is the key that signed its leaf, whichever root it holds", async () => {
    const moved = await issue(ca2, "node00000000000000000000a", "worker", crossPem);
    const old = await issue(ca1, "node00000000000000000000b", "worker");
    expect(chainIssuer(moved.certPem, r1.certPem)).toEqual(issuerInfoOf(r2.certPem));
    expect(chainIssuer(moved.certPem, r2.certPem)).toEqual(issuerInfoOf(r2.certPem));
    expect(chainIssuer(old.certPem, r1.certPem)).toEqual(issuerInfoOf(r1.certPem));
    expect(chainIssuer(old.certPem, r2.certPem)).toBeUndefined();

    // What docker compares: the cluster's desired issuer during the rotation, and each node's.
    const desired = clusterTLSInfo(r1.certPem, r2.certPem);
    const movedInfo = nodeTLSInfo(r1.certPem, moved.certPem);
    expect(movedInfo.CertIssuerSubject).toBe(desired.CertIssuerSubject);
    expect(movedInfo.CertIssuerPublicKey).toBe(desired.CertIssuerPublicKey);
    expect(movedInfo.TrustRoot).toBe(desired.TrustRoot);
    expect(nodeTLSInfo(r1.certPem, old.certPem).CertIssuerPublicKey).not.toBe(desired.CertIssuerPublicKey);
    // Go marshals []byte as base64: the subject is CN=swarm-ca in DER.
    expect(Buffer.from(desired.CertIssuerSubject, "base64").toString("latin1")).toContain("swarm-ca");
  });
});

test("withIssuerChain: a lone leaf gets the root that signed it (of the trusted ones); a chain stays as it is", async () => {
  const old = await issue(ca1, "node00000000000000000000c", "worker");
  const moved = await issue(ca2, "node00000000000000000000d", "worker", crossPem);
  // Both roots are CN=swarm-ca: the one whose key signed the leaf is chosen.
  expect(withIssuerChain(old.certPem, r2.certPem + r1.certPem)).toBe(old.certPem + r1.certPem);
  expect(withIssuerChain(old.certPem, r2.certPem)).toBe(old.certPem);
  expect(withIssuerChain(moved.certPem, r1.certPem)).toBe(moved.certPem);
  expect(withIssuerChain(r1.certPem, r1.certPem)).toBe(r1.certPem);
});

// ---------------------------------------------------------------------------------------------------
// Mutual TLS across the rotation

const identity = (b: Buffer): Buffer => b;
const Who: grpc.ServiceDefinition = {
  WhoAmI: {
    path: "/shoal.test.Who/WhoAmI",
    requestStream: false,
    responseStream: false,
    requestSerialize: identity,
    requestDeserialize: identity,
    responseSerialize: identity,
    responseDeserialize: identity,
    originalName: "whoAmI",
  },
};
const WhoClient = grpc.makeGenericClientConstructor(Who, "Who");

let listeners: TLSListener[] = [];
let servers: grpc.Server[] = [];

afterEach(async () => {
  await Promise.all(listeners.map((l) => l.close()));
  for (const s of servers) s.forceShutdown();
  listeners = [];
  servers = [];
});

async function serve(trust: string, node: NodeMaterial): Promise<number> {
  const server = new grpc.Server();
  server.addService(Who, {
    WhoAmI: ((call, cb) => cb(null, Buffer.from(JSON.stringify(peerRole(call))))) as grpc.handleUnaryCall<
      Buffer,
      Buffer
    >,
  });
  servers.push(server);
  const l = await listenTLS(server, { host: "127.0.0.1", port: 0, rootPem: trust, ...node });
  listeners.push(l);
  return l.port;
}

function whoAmI(port: number, creds: grpc.ChannelCredentials): Promise<unknown> {
  const client = new WhoClient(`127.0.0.1:${port}`, creds, CLIENT_CHANNEL_OPTIONS);
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest<Buffer, Buffer>(
      "/shoal.test.Who/WhoAmI",
      identity,
      identity,
      Buffer.alloc(0),
      { deadline: Date.now() + 5000 },
      (err, res) => {
        client.close();
        if (err) reject(err);
        else resolve(JSON.parse((res ?? Buffer.from("null")).toString()));
      },
    );
  });
}

describe("mutual TLS while nodes move from the old root to the new", () => {
  test("a node still on the old root and a manager already moved talk both ways (through the intermediate)", async () => {
    const manager = await issue(ca2, "manager00000000000000000a", "manager", crossPem);
    const worker = await issue(ca1, "worker000000000000000000a", "worker");
    // The manager's listener trusts both roots during the rotation; the worker trusts only the old root.
    const port = await serve(r1.certPem + r2.certPem, manager);
    expect(await whoAmI(port, clientCredentials(r1.certPem, worker.certPem, worker.keyPem))).toMatchObject({
      nodeId: "worker000000000000000000a",
      role: "worker",
    });
  });

  test("a moved node is accepted by a listener that trusts only the old root, and trusts only the new", async () => {
    const oldManager = await issue(ca1, "manager00000000000000000b", "manager");
    const moved = await issue(ca2, "worker000000000000000000b", "worker", crossPem);
    let port = await serve(r1.certPem, oldManager);
    expect(await whoAmI(port, clientCredentials(r1.certPem, moved.certPem, moved.keyPem))).toMatchObject({
      role: "worker",
    });
    // After the rotation: both on the new root.
    const newManager = await issue(ca2, "manager00000000000000000c", "manager", crossPem);
    port = await serve(r2.certPem, newManager);
    expect(await whoAmI(port, clientCredentials(r2.certPem, moved.certPem, moved.keyPem))).toMatchObject({
      role: "worker",
    });
    // A node that missed it entirely (old root, old certificate) still verifies the manager through the
    // intermediate, but its own certificate is refused by a listener that trusts only the new root.
    const missed = await issue(ca1, "worker000000000000000000c", "worker");
    expect(await whoAmI(port, clientCredentials(r1.certPem))).toBeNull();
    await expect(whoAmI(port, clientCredentials(r1.certPem, missed.certPem, missed.keyPem))).rejects.toMatchObject({
      code: grpc.status.UNAVAILABLE,
    });
  });

  test("without the intermediate, a leaf from the new key is refused by a node on the old root", async () => {
    const bare = await issue(ca2, "manager00000000000000000d", "manager");
    const port = await serve(r2.certPem, bare);
    await expect(whoAmI(port, clientCredentials(r1.certPem))).rejects.toMatchObject({
      code: grpc.status.UNAVAILABLE,
    });
  });
});
