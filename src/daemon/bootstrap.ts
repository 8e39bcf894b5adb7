// Becoming a swarm member: what `swarm init` checks and makes (a root CA, the cluster's first records),
// what `swarm join` asks a manager for (its root, checked against the token, then a certificate), and
// joining or leaving the Raft group over the cluster protocol. The Daemon sequences these and keeps the
// result (src/daemon/daemon.ts); nothing here holds state.

import type { ChannelCredentials } from "@grpc/grpc-js";
import { CHANNEL_OPTIONS } from "../agent/agent.js";
import { type ApiError, badRequest, unavailable } from "../api/errors.js";
import type { ClusterInfo, NodeRole } from "../api/objects.js";
import { DEFAULT_DATA_PATH_PORT } from "../api/ports.js";
import { generateNodeKeyAndCSR, signNodeCSR } from "../ca/certs.js";
import { clusterTLSInfo } from "../ca/chain.js";
import { newClusterId, newNodeId } from "../ca/ids.js";
import { createRootCA, RootCA } from "../ca/rootca.js";
import { channelTarget } from "../ca/tls.js";
import { joinCredentials } from "../ca/tls-client.js";
import { generateJoinToken, type ParsedJoinToken, parseJoinToken, rootDigest, tokenMatchesRoot } from "../ca/token.js";
import { formatUnlockKey, generateKek } from "../ca/unlockkey.js";
import type { SwarmInit, SwarmJoin } from "../engine/types.js";
import {
  CAClient,
  type IssueNodeCertificateRequest,
  type IssueNodeCertificateResponse,
  RaftMembershipClient,
} from "../gen/cluster.js";
import { leaderHint, toApiError, unary } from "../manager/grpc-util.js";
import type { Manager } from "../manager/manager.js";
import { newRaftId } from "../manager/membership.js";
import type { NodeId } from "../raft/types.js";
import { DEFAULT_POOL, DEFAULT_SUBNET_SIZE } from "../store/allocator/ipam.js";
import type { Command, NetworkSpec } from "../store/store.js";
import { DEFAULT_LISTEN_PORT, type ListenAddr, parseListenAddr, resolveAdvertiseAddr, withPort } from "./addresses.js";
import { listenAddrError } from "./listen.js";
import type { Certificates, LocalState } from "./state.js";

export type RaftPeer = { raftId: NodeId; nodeId: string; addr: string };

/** What `swarm init` was asked for, checked (Docker's words for each refusal). */
export interface InitPlan {
  listen: ListenAddr;
  advertise: { ip: string; port: number };
  dataPathAddr: string;
  spec: SwarmInit["spec"];
  pool: string[];
  subnetSize: number;
  dataPathPort: number;
}

export function planInit(req: SwarmInit): InitPlan {
  const listen = parseListenAddr(req.listenAddr);
  const advertise = resolveAdvertiseAddr(req.advertiseAddr, listen);
  const dataPathAddr = req.dataPathAddr ? resolveAdvertiseAddr(req.dataPathAddr, listen).ip : advertise.ip;
  const spec = req.spec;
  if (spec.CAConfig.SigningCACert || spec.CAConfig.SigningCAKey || spec.CAConfig.ForceRotate) {
    throw badRequest("a root CA is rotated after init, with docker swarm ca --rotate");
  }
  const pool = req.defaultAddrPool.length > 0 ? req.defaultAddrPool : [DEFAULT_POOL];
  const subnetSize = req.subnetSize || DEFAULT_SUBNET_SIZE;
  if (subnetSize < 1 || subnetSize > 29)
    throw badRequest(`invalid default address pool mask length ${subnetSize}: it must be between 1 and 29`);
  for (const p of pool)
    if (!/^\d{1,3}(\.\d{1,3}){3}\/\d{1,2}$/.test(p)) throw badRequest(`invalid default address pool ${p}`);
  const dataPathPort = req.dataPathPort || DEFAULT_DATA_PATH_PORT;
  if (dataPathPort < 1024 || dataPathPort > 49151)
    throw badRequest(`invalid data path port ${dataPathPort}: it must be within 1024-49151`);
  if (spec.CAConfig.NodeCertExpiry > 0 && spec.CAConfig.NodeCertExpiry < 3600e9) {
    throw badRequest("minimum certificate expiry time is: 1h0m0s");
  }
  return { listen, advertise, dataPathAddr, spec, pool, subnetSize, dataPathPort };
}

/** A new swarm's root CA, ids, and this first manager's certificate and local state. */
export async function newSwarm(plan: InitPlan): Promise<{
  ca: { certPem: string; keyPem: string };
  certs: Certificates;
  state: LocalState;
}> {
  const ca = await createRootCA();
  const clusterId = newClusterId();
  const nodeId = newNodeId();
  const rootCA = await RootCA.fromPem(ca.certPem, ca.keyPem);
  const { keyPem, csrPem } = await generateNodeKeyAndCSR(nodeId);
  const days = plan.spec.CAConfig.NodeCertExpiry / 86_400e9;
  const certPem = await signNodeCSR(rootCA, csrPem, { nodeId, role: "manager", clusterId, days });
  const state: LocalState = {
    version: 1,
    nodeId,
    clusterId,
    role: "manager",
    raftId: newRaftId(),
    listenAddr: `${plan.listen.host}:${plan.listen.port}`,
    advertiseAddr: `${plan.advertise.ip}:${plan.advertise.port}`,
    dataPathAddr: plan.dataPathAddr,
    dataPathPort: plan.dataPathPort,
    managers: [],
  };
  return { ca, certs: { rootPem: ca.certPem, certPem, keyPem }, state };
}

/** The new swarm's cluster record: its spec, root CA, join tokens and (with autolock) unlock key. */
export function clusterCreate(plan: InitPlan, clusterId: string, ca: { certPem: string; keyPem: string }): Command {
  const now = new Date().toISOString();
  const info: ClusterInfo = {
    ID: clusterId,
    Version: { Index: 0 },
    CreatedAt: now,
    UpdatedAt: now,
    Spec: plan.spec,
    TLSInfo: clusterTLSInfo(ca.certPem),
    RootRotationInProgress: false,
    DefaultAddrPool: plan.pool,
    SubnetSize: plan.subnetSize,
    DataPathPort: plan.dataPathPort,
  };
  return {
    op: "cluster.create",
    info,
    secrets: {
      rootCACertPem: ca.certPem,
      rootCAKeyPem: ca.keyPem,
      workerToken: generateJoinToken(ca.certPem),
      managerToken: generateJoinToken(ca.certPem),
      ...(plan.spec.EncryptionConfig.AutoLockManagers ? { unlockKey: formatUnlockKey(generateKek()) } : {}),
    },
  };
}

/** The ingress network every swarm has from its start. */
export const INGRESS_SPEC: NetworkSpec = {
  name: "ingress",
  driver: "overlay",
  internal: false,
  attachable: false,
  ingress: true,
  options: {},
  labels: {},
};

/**
 * `swarm join`, before anything is kept: the manager's root CA (fetched unverified, checked against the
 * token's digest), then a certificate for the token. Returns the node's certificates and local state.
 */
export async function requestMembership(
  req: SwarmJoin,
  hostname: string,
): Promise<{ certs: Certificates; state: LocalState; role: NodeRole; remote: string }> {
  if (!req.joinToken) throw badRequest("invalid join token");
  let parsed: ParsedJoinToken;
  try {
    parsed = parseJoinToken(req.joinToken);
  } catch {
    throw badRequest("invalid join token");
  }
  const remotes = req.remoteAddrs;
  if (remotes.length === 0) throw badRequest("at least 1 RemoteAddr is required to join");
  const remote = withPort(remotes[0]!, DEFAULT_LISTEN_PORT);
  const listen = parseListenAddr(req.listenAddr);
  // Only a manager listens; a worker keeps the address for a later promotion. Whether it can be bound
  // goes with the certificate request: the managers refuse a manager token then, creating nothing.
  const listenError = await listenAddrError(`${listen.host}:${listen.port}`);
  const advertise = resolveAdvertiseAddr(req.advertiseAddr, listen, remote);
  const { rootPem, keyPem, issued } = await requestCertificate(remote, parsed, {
    token: req.joinToken,
    availability: req.availability,
    hostname,
    advertiseAddr: `${advertise.ip}:${advertise.port}`,
    listenAddrError: listenError?.message ?? "",
  });
  const role = issued.role as NodeRole;
  const state: LocalState = {
    version: 1,
    nodeId: issued.nodeId,
    clusterId: issued.clusterId,
    role,
    listenAddr: `${listen.host}:${listen.port}`,
    advertiseAddr: `${advertise.ip}:${advertise.port}`,
    dataPathAddr: req.dataPathAddr || advertise.ip,
    ...(issued.dataPathPort ? { dataPathPort: issued.dataPathPort } : {}),
    managers: [{ nodeId: "", addr: remote }],
  };
  return { certs: { rootPem, certPem: issued.certificatePem, keyPem }, state, role, remote };
}

/** A join's stages, as they end (the scale bench times them). */
export type JoinStage = "root" | "key" | "certificate";

/**
 * The certificate half of a join, on one connection to `remote`: its root CA (fetched unverified, checked
 * against the token's digest), then, once the connection is known to be to a manager of that root
 * (joinCredentials), a new key's CSR sent with the token. The key is made while the root is fetched.
 */
export async function requestCertificate(
  remote: string,
  token: ParsedJoinToken,
  request: Omit<IssueNodeCertificateRequest, "csrPem">,
  onStage?: (stage: JoinStage) => void,
): Promise<{ rootPem: string; keyPem: string; issued: IssueNodeCertificateResponse }> {
  const creds = joinCredentials();
  // An IP address goes to grpc-js's IP resolver (as the agent's channels do): its DNS resolver makes a c-ares
  // channel for every channel, IP or not, and a join makes one channel.
  const client = new CAClient(channelTarget(remote), creds.credentials, CHANNEL_OPTIONS);
  const key = generateNodeKeyAndCSR();
  // Not awaited until the root is checked: a refused join must not leave it unhandled.
  key.catch(() => undefined);
  try {
    let rootPem: string;
    try {
      rootPem = (await unary(client.getRootCaCertificate.bind(client), {}, 5000)).certificatePem;
    } catch (e) {
      throw unavailable(`could not reach the manager at ${remote}: ${toApiError(e).message}`);
    }
    if (!tokenMatchesRoot(token, rootPem)) {
      throw badRequest(
        `remote CA does not match fingerprint. Expected: ${token.digest}, got ${rootDigest(rootPem)}. Check the join token and the manager address.`,
      );
    }
    try {
      creds.trust(rootPem);
    } catch (e) {
      throw unavailable(
        `the manager at ${remote} is not a manager of the swarm the token is for: ${(e as Error).message}`,
      );
    }
    onStage?.("root");
    const { keyPem, csrPem } = await key;
    onStage?.("key");
    let issued: IssueNodeCertificateResponse;
    try {
      issued = await unary(client.issueNodeCertificate.bind(client), { ...request, csrPem }, 15_000);
    } catch (e) {
      throw toApiError(e);
    }
    onStage?.("certificate");
    return { rootPem, keyPem, issued };
  } finally {
    client.close();
  }
}

/** Ask the leader (following hints) to add this node to the Raft group. */
export async function joinRaft(
  addr: string,
  advertiseAddr: string,
  credentials: ChannelCredentials,
): Promise<{ raftId: NodeId; members: RaftPeer[] }> {
  let target = addr;
  for (let attempt = 0; attempt < 20; attempt++) {
    const client = new RaftMembershipClient(target, credentials, CHANNEL_OPTIONS);
    try {
      const res = await unary(client.join.bind(client), { addr: advertiseAddr }, 15_000);
      return {
        raftId: res.raftId,
        members: res.members.map((m) => ({ raftId: m.raftId, nodeId: m.nodeId, addr: m.addr })),
      };
    } catch (e) {
      const hint = leaderHint(e);
      if (hint) target = hint;
      else if (attempt >= 5) throw e;
      else await new Promise((r) => setTimeout(r, 300));
    } finally {
      client.close();
    }
  }
  throw unavailable("could not reach the swarm leader to join the raft group");
}

/** Hand leadership away if this manager has it, then ask the leader to remove it from the Raft group. */
export async function leaveRaft(m: Manager, nodeId: string, credentials: () => ChannelCredentials): Promise<void> {
  if (m.isLeader) {
    m.transferLeadershipAway();
    await waitFor(() => !m.isLeader && m.leaderAddr() !== undefined, 5000, "leadership to move to another manager");
  }
  let target = m.leaderAddr();
  for (let attempt = 0; attempt < 10 && target; attempt++) {
    const client = new RaftMembershipClient(target, credentials(), CHANNEL_OPTIONS);
    try {
      await unary(client.leave.bind(client), { nodeId }, 10_000);
      return;
    } catch (e) {
      target = leaderHint(e) ?? target;
      await new Promise((r) => setTimeout(r, 200));
    } finally {
      client.close();
    }
  }
}

/** Like dockerd: a manager never leaves without --force; the words depend on what it would cost. */
export function leaveRefusal(m: Manager): ApiError {
  const { voters, reachable } = m.quorumView();
  let msg = "You are attempting to leave the swarm on a node that is participating as a manager. ";
  if (voters.length <= 1) {
    return unavailable(
      `${msg}Removing the last manager erases all current state of the swarm. Use \`--force\` to ignore this message.`,
    );
  }
  if (m.removalLosesQuorum(m.raftId)) {
    msg += `Removing this node leaves ${reachable.length - 1} managers out of ${voters.length}. Without a Raft quorum your swarm will be inaccessible. `;
  }
  return unavailable(
    `${msg}The only way to restore a swarm that has lost consensus is to reinitialize it with \`--force-new-cluster\`. Use \`--force\` to suppress this message.`,
  );
}

export async function waitFor(pred: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw unavailable(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
