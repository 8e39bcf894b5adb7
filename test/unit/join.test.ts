// `swarm join`'s certificate half (src/daemon/bootstrap.ts requestMembership -> requestCertificate) against
// a real CA service: the manager's CA (src/manager/ca-server.ts) behind its ACL on a real mutual-TLS
// listener (listenTLS) with a real store, reached through a TCP relay that counts the connections. The
// root CA and the certificate come over one connection; a wrong token or a foreign root is refused in the
// same words as before; and a server that relays the swarm's public root but holds no manager certificate
// of it never sees the token.

import * as grpc from "@grpc/grpc-js";
import pino from "pino";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { ApiError } from "../../src/api/errors.js";
import { generateNodeKeyAndCSR, parseNodeCert, signNodeCSR } from "../../src/ca/certs.js";
import { chainsToRoot, clusterTLSInfo } from "../../src/ca/chain.js";
import { createRootCA, RootCA, type RootCAMaterial } from "../../src/ca/rootca.js";
import { listenTLS, type TLSListener } from "../../src/ca/tls.js";
import { generateJoinToken } from "../../src/ca/token.js";
import { requestMembership } from "../../src/daemon/bootstrap.js";
import { CAService } from "../../src/gen/cluster.js";
import { withAcl } from "../../src/manager/acl.js";
import { caService, INVALID_TOKEN_MESSAGE } from "../../src/manager/ca-server.js";
import { JoinLimiter } from "../../src/manager/join-limiter.js";
import { requestSchemas } from "../../src/manager/wire.js";
import { type Command, encodeCommand, Store } from "../../src/store/store.js";
import { startRelay } from "./raft-fixtures.js";
import { clusterCreate } from "./store-fixtures.js";

const CLUSTER_ID = "c1uster000000000000000000";
const silent = pino({ level: "silent" });

let root: RootCAMaterial;
let workerToken: string;
let managerCert: { certPem: string; keyPem: string };
let workerCert: { certPem: string; keyPem: string };
let foreignManagerCert: { certPem: string; keyPem: string };

async function nodeCert(ca: RootCA, nodeId: string, role: "manager" | "worker") {
  const { keyPem, csrPem } = await generateNodeKeyAndCSR(nodeId);
  return { keyPem, certPem: await signNodeCSR(ca, csrPem, { nodeId, role, clusterId: CLUSTER_ID }) };
}

beforeAll(async () => {
  root = await createRootCA();
  workerToken = generateJoinToken(root.certPem);
  const ca = await RootCA.fromPem(root.certPem, root.keyPem);
  managerCert = await nodeCert(ca, "manager000000000000000001", "manager");
  workerCert = await nodeCert(ca, "worker0000000000000000001", "worker");
  const other = await createRootCA();
  foreignManagerCert = await nodeCert(
    await RootCA.fromPem(other.certPem, other.keyPem),
    "impostor00000000000000001",
    "manager",
  );
});

interface Running {
  addr: string;
  /** TCP connections the relay accepted (each one a TLS handshake and an HTTP/2 session at the server). */
  connections: () => number;
  /** Calls of IssueNodeCertificate the server received. */
  issueCalls: () => number;
  store: Store;
}

const closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of closers.splice(0)) await c();
});

/** A store holding the swarm's cluster record (root CA, tokens), commands applied as Raft would. */
function clusterStore(): { store: Store; write: (c: Command) => Promise<number> } {
  const store = new Store();
  let index = 0;
  const write = async (c: Command): Promise<number> => {
    const out = store.apply(encodeCommand(c, new Date()), ++index);
    if (!out.ok) throw new Error(out.message);
    return out.version;
  };
  // The swarm's real root and tokens, for a join against it.
  const create = clusterCreate(new Date("2026-12-01T00:00:00.000Z"), CLUSTER_ID);
  void write({
    ...create,
    info: { ...create.info, TLSInfo: clusterTLSInfo(root.certPem) },
    secrets: {
      rootCACertPem: root.certPem,
      rootCAKeyPem: root.keyPem,
      workerToken,
      managerToken: generateJoinToken(root.certPem),
    },
  });
  return { store, write };
}

/**
 * A manager's CA service (the real one, behind the real ACL) on a real listener presenting `serverCert`,
 * behind a counting relay. The root it serves is the swarm's, whatever certificate it presents.
 */
async function manager(serverCert = managerCert): Promise<Running> {
  const { store, write } = clusterStore();
  let issueCalls = 0;
  const impl = caService({
    store,
    clusterId: CLUSTER_ID,
    log: silent,
    tls: { rootPem: root.certPem },
    joinLimiter: new JoinLimiter(),
    readBarrier: async () => {},
    write,
  });
  const counted: grpc.UntypedServiceImplementation = {
    ...impl,
    issueNodeCertificate: (call: unknown, cb: unknown) => {
      issueCalls++;
      (impl.issueNodeCertificate as (c: unknown, cb: unknown) => void)(call, cb);
    },
  };
  const server = new grpc.Server();
  const rules = {
    getRootCaCertificate: { allowed: "anyone" as const, request: requestSchemas.getRootCaCertificate },
    issueNodeCertificate: { allowed: "anyone" as const, request: requestSchemas.issueNodeCertificate },
  };
  const { renewNodeCertificate: _r, recoverNodeCertificate: _v, ...joinOnly } = counted;
  server.addService(
    CAService,
    withAcl(joinOnly, rules, {
      clusterId: () => CLUSTER_ID,
      isRemoved: () => false,
      roleOf: (id) => store.node(id)?.role,
      readBarrier: async () => {},
    }),
  );
  const listener: TLSListener = await listenTLS(server, {
    host: "127.0.0.1",
    port: 0,
    rootPem: root.certPem,
    ...serverCert,
  });
  closers.push(async () => {
    server.forceShutdown();
    await listener.close();
  });
  const r = await startRelay(listener.port, closers);
  return { addr: `127.0.0.1:${r.port}`, connections: r.connections, issueCalls: () => issueCalls, store };
}

function join(addr: string, joinToken: string) {
  return requestMembership(
    {
      listenAddr: "127.0.0.1:2377",
      advertiseAddr: "127.0.0.1",
      dataPathAddr: "",
      remoteAddrs: [addr],
      joinToken,
      availability: "active",
    },
    "joiner",
  );
}

async function refusal(p: Promise<unknown>): Promise<ApiError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(ApiError);
  return e as ApiError;
}

describe("swarm join's certificate request", () => {
  it("fetches the root CA and gets its certificate over one connection to the manager", async () => {
    const m = await manager();
    const { certs, role, state } = await join(m.addr, workerToken);
    expect(role).toBe("worker");
    expect(certs.rootPem).toBe(root.certPem);
    expect(chainsToRoot(certs.certPem, root.certPem)).toBe(true);
    expect(parseNodeCert(certs.certPem).nodeId).toBe(state.nodeId);
    expect(m.store.node(state.nodeId)?.role).toBe("worker");
    expect(m.connections()).toBe(1);
  });

  it("a token with a wrong secret is refused in Docker's words, and no node is created", async () => {
    const m = await manager();
    const digest = workerToken.split("-")[2]!;
    const other = generateJoinToken(root.certPem).split("-")[3]!;
    const e = await refusal(join(m.addr, `SWMTKN-1-${digest}-${other}`));
    expect(e.status).toBe(400);
    expect(e.message).toBe(INVALID_TOKEN_MESSAGE);
    expect(m.store.nodes()).toHaveLength(0);
  });

  it("a token of another swarm is refused on its root's digest, before the token is sent", async () => {
    const m = await manager();
    const foreign = generateJoinToken((await createRootCA()).certPem);
    const e = await refusal(join(m.addr, foreign));
    expect(e.status).toBe(400);
    expect(e.message).toMatch(/^remote CA does not match fingerprint\. Expected: [0-9a-f]{64}, got [0-9a-f]{64}\./);
    expect(m.issueCalls()).toBe(0);
  });

  for (const [what, cert] of [
    ["a manager certificate of another root CA", () => foreignManagerCert],
    ["a worker certificate of the swarm's root CA", () => workerCert],
  ] as const) {
    it(`a server that relays the swarm's root but presents ${what} never gets the token`, async () => {
      const m = await manager(cert());
      const e = await refusal(join(m.addr, workerToken));
      expect(e.status).toBe(503);
      expect(e.message).toContain("is not a manager of the swarm the token is for");
      expect(m.issueCalls()).toBe(0);
      expect(m.store.nodes()).toHaveLength(0);
    });
  }
});
