// The cluster the fuzzer attacks: real shoald daemons from the integration harness (test/integration/
// harness.ts), three managers (1-3), a worker (4) and a manager demoted during setup (5), whose old
// manager certificate the fuzzer keeps. Between batches it refreshes what the generated cases refer to,
// undoes what valid cases built (networks, endpoints, joined nodes, swarm settings), and checks the
// invariants: every daemon alive and its log free of bug lines, one leader that every manager names,
// `docker node ls`, `docker network ls` and `docker info` answering on every manager, a normal write
// (network create and remove), and the managers agreeing on nodes, networks and the swarm after a read
// barrier.

import { closeSync, openSync, readFileSync, readSync, statSync } from "node:fs";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { generateNodeKeyAndCSR } from "../../src/ca/certs.js";
import { CLIENT_CHANNEL_OPTIONS } from "../../src/ca/tls.js";
import { clientCredentials } from "../../src/ca/tls-client.js";
import { DataRoot } from "../../src/daemon/state.js";
import { Lab, type NodeRow, sleep } from "../integration/harness.js";
import { encode } from "./protobuf.js";
import { DAEMONS, EX_MANAGER, type FuzzContext, MANAGERS, WORKER } from "./refs.js";
import { type Credentials, GrpcPool } from "./send.js";

interface NodeJson {
  ID: string;
  Version: { Index: number };
  Spec: { Role: string; Availability: string; Labels?: Record<string, string> };
  Description: { Hostname: string };
  ManagerStatus?: { Leader?: boolean; Reachability?: string; Addr?: string };
}

interface NetworkJson {
  Id: string;
  Name: string;
  Driver: string;
  Scope: string;
  [k: string]: unknown;
}

interface SwarmJson {
  Version: { Index: number };
  Spec: unknown;
  JoinTokens: { Worker: string; Manager: string };
}

/** Log lines that show a bug, whatever the request was. */
export const BUG_LINE_RE =
  /BUG|raft loop failed|request failed|refused a malformed entry|a watcher failed|dropped a stored record|repaired a stored record|could not step a message|uncaught|unhandled/i;

export interface CheckResult {
  /** The cluster is not serving (a daemon died, no leader, the CLI fails, the managers disagree). */
  failures: string[];
  /** Log lines that show a bug (the cluster may still serve). */
  logFindings: string[];
  leader?: string;
  ms: number;
  rssMb: number[];
}

function readCertFiles(dataRoot: string): { rootPem: string; certPem: string; keyPem: string } {
  const dir = join(dataRoot, "certificates");
  return {
    rootPem: readFileSync(join(dir, "swarm-root-ca.crt"), "utf8"),
    certPem: readFileSync(join(dir, "swarm-node.crt"), "utf8"),
    keyPem: readFileSync(join(dir, "swarm-node.key"), "utf8"),
  };
}

function rssMb(pid: number | undefined): number {
  if (pid === undefined) return 0;
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Math.round(Number(m[1]) / 1024) : 0;
  } catch {
    return 0;
  }
}

export class FuzzCluster {
  readonly ids = new Map<number, string>();
  private raftIds: bigint[] = [];
  private csrs: string[] = [];
  private baselineNetworks = new Set<string>();
  private baselineSpec = "";
  private readonly logOffsets = new Map<number, number>();
  private readonly pids = new Map<number, number | undefined>();
  creds!: Credentials;
  clients!: GrpcPool;

  private constructor(readonly lab: Lab) {}

  /** Form the cluster (about 20-40 s). */
  static async start(name: string, log: (s: string) => void): Promise<FuzzCluster> {
    const lab = await Lab.create(name, DAEMONS.length);
    const fc = new FuzzCluster(lab);
    try {
      await fc.form(log);
    } catch (e) {
      lab.dumpRelevant(40);
      await lab.close();
      throw e;
    }
    return fc;
  }

  private async form(log: (s: string) => void): Promise<void> {
    const lab = this.lab;
    const started = Date.now();
    const f = await lab.form(3, 1, "docker");
    await lab.startDaemon(EX_MANAGER);
    await lab.must("docker", EX_MANAGER, ...lab.joinArgs(EX_MANAGER, f.managerToken));
    for (const d of DAEMONS) this.ids.set(d, (await lab.info(d)).NodeID);
    for (const d of [...MANAGERS, EX_MANAGER]) {
      const state = await new DataRoot(lab.dataRoot(d)).loadState();
      if (state?.raftId === undefined) throw new Error(`node${d} has no raft id after joining as a manager`);
      this.raftIds.push(BigInt(state.raftId));
    }
    const exManager = readCertFiles(lab.dataRoot(EX_MANAGER));
    await lab.must("docker", 1, "node", "demote", `node${EX_MANAGER}`);
    await lab.waitFor(async () => (await lab.info(1)).Managers === MANAGERS.length, 30_000, "node5 demoted");
    await lab.waitFor(async () => !(await lab.info(EX_MANAGER)).ControlAvailable, 30_000, "node5 running as a worker");
    await lab.waitFor(async () => (await lab.nodeLs(1)).every((r) => r.Status === "Ready"), 30_000, "every node Ready");
    const worker = readCertFiles(lab.dataRoot(WORKER));
    this.creds = {
      rootPem: worker.rootPem,
      worker,
      exManager,
      make: clientCredentials,
      channelOptions: CLIENT_CHANNEL_OPTIONS,
    };
    this.clients = new GrpcPool(this.creds, (d) => lab.addr(d));
    this.csrs = [
      (await generateNodeKeyAndCSR()).csrPem,
      (await generateNodeKeyAndCSR(this.ids.get(WORKER))).csrPem,
      (await generateNodeKeyAndCSR(this.ids.get(EX_MANAGER))).csrPem,
    ];
    const nets = (await lab.api(1, "GET", "/v1.50/networks")).json as NetworkJson[];
    this.baselineNetworks = new Set(nets.map((n) => n.Id));
    this.baselineSpec = JSON.stringify(((await lab.api(1, "GET", "/v1.50/swarm")).json as SwarmJson).Spec);
    for (const d of DAEMONS) {
      this.pids.set(d, lab.pid(d));
      this.logOffsets.set(d, this.logSize(d));
    }
    log(`cluster ${lab.dir}: 3 managers, a worker and a demoted manager, formed in ${Date.now() - started} ms`);
  }

  private logSize(d: number): number {
    try {
      return statSync(this.lab.logFile(d)).size;
    } catch {
      return 0;
    }
  }

  /** A manager that answers the Engine API (the first that does). */
  private async anyManager(): Promise<number> {
    for (const m of MANAGERS) {
      try {
        if ((await this.lab.api(m, "GET", "/v1.50/nodes")).status === 200) return m;
      } catch {
        // next
      }
    }
    throw new Error("no manager answers GET /nodes");
  }

  private async getJson<T>(d: number, path: string): Promise<T> {
    const r = await this.lab.api(d, "GET", path);
    if (r.status !== 200) throw new Error(`GET ${path} on node${d}: ${r.status} ${JSON.stringify(r.json)}`);
    return r.json as T;
  }

  /** What the generated cases refer to, now. */
  async refresh(): Promise<FuzzContext> {
    const m = await this.anyManager();
    const nodes = await this.getJson<NodeJson[]>(m, "/v1.50/nodes");
    const byId = new Map(nodes.map((n) => [n.ID, n]));
    const own = DAEMONS.map((d) => byId.get(this.ids.get(d)!));
    const others = nodes.filter((n) => ![...this.ids.values()].includes(n.ID)).sort((a, b) => a.ID.localeCompare(b.ID));
    const ctxNodes = [...own, ...others].map((n, i) =>
      n
        ? { id: n.ID, hostname: n.Description.Hostname, version: n.Version.Index, role: n.Spec.Role }
        : { id: this.ids.get(DAEMONS[i]!)!, hostname: `node${i + 1}`, version: 0, role: "worker" },
    );
    const networks = (await this.getJson<NetworkJson[]>(m, "/v1.50/networks"))
      .map((n) => ({ id: n.Id, name: n.Name }))
      .sort((a, b) => a.name.localeCompare(b.name) || a.id.localeCompare(b.id));
    const swarm = await this.getJson<SwarmJson>(m, "/v1.50/swarm");
    const unlock = await this.lab.api(m, "GET", "/v1.50/swarm/unlockkey");
    const unlockKey = unlock.status === 200 ? String((unlock.json as { UnlockKey?: string }).UnlockKey ?? "") : "";
    return {
      nodes: ctxNodes,
      networks,
      swarmVersion: swarm.Version.Index,
      tokens: { worker: swarm.JoinTokens.Worker, manager: swarm.JoinTokens.Manager },
      raftIds: this.raftIds,
      sessions: [],
      endpoints: [],
      csrs: this.csrs,
      clusterAddrs: new Map(DAEMONS.map((d) => [d, this.lab.addr(d)])),
      rootPem: this.creds.rootPem,
      certPems: { worker: this.creds.worker.certPem, exManager: this.creds.exManager.certPem },
      unlockKey,
    };
  }

  /** Undo what the batch's valid requests built. Returns what could not be undone (not a failure). */
  async cleanup(ctx: FuzzContext): Promise<string[]> {
    const left: string[] = [];
    for (const ep of ctx.endpoints) {
      const identity = ep.identity === "exManager" ? "exManager" : "worker";
      const ok = await new Promise<boolean>((resolve) =>
        this.clients.client(identity, ep.daemon).makeUnaryRequest(
          "/shoal.cluster.Dispatcher/Detach",
          (b: Buffer) => b,
          (b: Buffer) => b,
          encode([{ f: 1, t: "text", v: { s: ep.id } }], { string: String, bigint: () => 0n, json: () => null }),
          new grpc.Metadata(),
          { deadline: new Date(Date.now() + 10_000) },
          (err) => resolve(!err),
        ),
      );
      if (!ok) left.push(`endpoint ${ep.id}`);
    }
    const m = await this.anyManager();
    await this.removeJoinedNodes(m, left);
    await this.restoreOwnNodes(m, left);
    for (const n of await this.getJson<NetworkJson[]>(m, "/v1.50/networks")) {
      if (this.baselineNetworks.has(n.Id)) continue;
      const r = await this.lab.api(m, "DELETE", `/v1.50/networks/${n.Id}`);
      if (r.status >= 300 && r.status !== 404) left.push(`network ${n.Name}: ${r.status} ${JSON.stringify(r.json)}`);
    }
    const swarm = await this.getJson<SwarmJson>(m, "/v1.50/swarm");
    if (JSON.stringify(swarm.Spec) !== this.baselineSpec) {
      const r = await this.lab.api(
        m,
        "POST",
        `/v1.50/swarm/update?version=${swarm.Version.Index}`,
        JSON.parse(this.baselineSpec),
      );
      if (r.status !== 200) left.push(`swarm spec not restored: ${r.status} ${JSON.stringify(r.json)}`);
    }
    return left;
  }

  /** Nodes the fuzzer joined with a valid token (they never connect): demoted if need be, then removed. */
  private async removeJoinedNodes(m: number, left: string[]): Promise<void> {
    const own = new Set(this.ids.values());
    for (const n of await this.getJson<NodeJson[]>(m, "/v1.50/nodes")) {
      if (own.has(n.ID)) continue;
      if (n.Spec.Role === "manager") {
        await this.lab.api(m, "POST", `/v1.50/nodes/${n.ID}/update?version=${n.Version.Index}`, {
          ...n.Spec,
          Role: "worker",
        });
        await sleep(200);
      }
      const r = await this.lab.api(m, "DELETE", `/v1.50/nodes/${n.ID}?force=1`);
      if (r.status >= 300 && r.status !== 404) left.push(`node ${n.ID}: ${r.status} ${JSON.stringify(r.json)}`);
    }
  }

  /** The cluster's own nodes back to active, without labels (the fuzzer may drain them). */
  private async restoreOwnNodes(m: number, left: string[]): Promise<void> {
    for (const n of await this.getJson<NodeJson[]>(m, "/v1.50/nodes")) {
      if (![...this.ids.values()].includes(n.ID)) continue;
      const labels = n.Spec.Labels ?? {};
      if (n.Spec.Availability === "active" && Object.keys(labels).length === 0) continue;
      const r = await this.lab.api(m, "POST", `/v1.50/nodes/${n.ID}/update?version=${n.Version.Index}`, {
        Role: n.Spec.Role,
        Availability: "active",
        Labels: {},
      });
      if (r.status !== 200) left.push(`node ${n.Description.Hostname} not restored: ${r.status}`);
    }
  }

  // ---- invariants ---------------------------------------------------------------------------------

  /** Every invariant, after a batch. `tag` names the write. */
  async check(tag: string): Promise<CheckResult> {
    const started = Date.now();
    const failures: string[] = [];
    const logFindings: string[] = [];
    const rss = DAEMONS.map((d) => rssMb(this.lab.pid(d)));
    this.checkAlive(failures);
    this.checkLogs(logFindings);
    if (failures.length > 0) return { failures, logFindings, ms: Date.now() - started, rssMb: rss };
    let leader: string | undefined;
    try {
      leader = await this.checkLeader();
      await this.checkCli(failures);
      await this.checkWriteAndAgreement(tag, failures);
    } catch (e) {
      failures.push(e instanceof Error ? e.message : String(e));
    }
    this.checkAlive(failures);
    this.checkLogs(logFindings);
    return { failures, logFindings, ms: Date.now() - started, rssMb: rss, ...(leader ? { leader } : {}) };
  }

  private checkAlive(failures: string[]): void {
    for (const d of DAEMONS) {
      if (!this.lab.alive(d)) failures.push(`node${d} is not running: ${this.lab.crashes(d).join("; ")}`);
      else if (this.lab.pid(d) !== this.pids.get(d)) failures.push(`node${d} restarted`);
    }
  }

  /** New log lines since the last check: fatal lines, bug lines, and anything that is not pino JSON. */
  private checkLogs(findings: string[]): void {
    for (const d of DAEMONS) {
      const from = this.logOffsets.get(d) ?? 0;
      const size = this.logSize(d);
      if (size <= from) continue;
      const text = readRange(this.lab.logFile(d), from, size - from).toString("utf8");
      const lastNl = text.lastIndexOf("\n");
      this.logOffsets.set(d, from + Buffer.byteLength(text.slice(0, lastNl + 1)));
      for (const line of text.slice(0, lastNl + 1).split("\n")) {
        const bad = badLogLine(line);
        if (bad) findings.push(`node${d} log: ${bad}`);
      }
    }
  }

  /** One leader, the same on every manager; returns its hostname. */
  private async checkLeader(): Promise<string> {
    let last = "";
    const deadline = Date.now() + 30_000;
    for (;;) {
      const seen: string[] = [];
      for (const m of MANAGERS) {
        try {
          const rows = await this.nodeRows(m);
          const leaders = rows.filter((r) => r.ManagerStatus === "Leader").map((r) => r.Hostname);
          seen.push(leaders.length === 1 ? leaders[0]! : `(${leaders.length} leaders: ${leaders.join(",")})`);
        } catch (e) {
          seen.push(`(${e instanceof Error ? e.message : String(e)})`);
        }
      }
      if (seen.every((s) => s === seen[0]) && !seen[0]!.startsWith("(")) return seen[0]!;
      last = seen.map((s, i) => `node${i + 1} sees ${s}`).join("; ");
      if (Date.now() > deadline) throw new Error(`no single leader on every manager after 30 s: ${last}`);
      await sleep(500);
    }
  }

  /** `docker node ls --format json` on manager m: exit 0, every line parses. */
  private async nodeRows(m: number): Promise<NodeRow[]> {
    const r = await this.lab.docker(m, "node", "ls", "--format", "json");
    if (r.code !== 0) throw new Error(`docker node ls on node${m} exited ${r.code}: ${r.stderr.trim()}`);
    return parseJsonLines<NodeRow>(r.stdout, `docker node ls on node${m}`);
  }

  private async checkCli(failures: string[]): Promise<void> {
    for (const m of MANAGERS) {
      const nets = await this.lab.docker(m, "network", "ls", "--format", "json");
      if (nets.code !== 0) failures.push(`docker network ls on node${m} exited ${nets.code}: ${nets.stderr.trim()}`);
      else parseJsonLines(nets.stdout, `docker network ls on node${m}`);
      const info = await this.lab.docker(m, "info", "--format", "{{json .Swarm}}");
      if (info.code !== 0) failures.push(`docker info on node${m} exited ${info.code}: ${info.stderr.trim()}`);
      else {
        const swarm = JSON.parse(info.stdout) as { LocalNodeState?: string; ControlAvailable?: boolean };
        if (swarm.LocalNodeState !== "active" || swarm.ControlAvailable !== true) {
          failures.push(`docker info on node${m}: not an active manager: ${info.stdout.trim().slice(0, 300)}`);
        }
      }
    }
  }

  /** Create a network through one manager, wait until every manager has it, compare, remove it. */
  private async checkWriteAndAgreement(tag: string, failures: string[]): Promise<void> {
    const name = `fzchk-${tag}`;
    const via = MANAGERS[Number.parseInt(tag.replace(/\D/g, "") || "0", 10) % MANAGERS.length]!;
    const create = await this.lab.docker(via, "network", "create", "-d", "overlay", name);
    if (create.code !== 0) {
      failures.push(`docker network create ${name} on node${via} exited ${create.code}: ${create.stderr.trim()}`);
      return;
    }
    await this.barrier(name, true);
    const diff = await this.agreement();
    if (diff) failures.push(diff);
    const rm = await this.lab.docker(via, "network", "rm", name);
    if (rm.code !== 0) failures.push(`docker network rm ${name} on node${via} exited ${rm.code}: ${rm.stderr.trim()}`);
    else await this.barrier(name, false);
  }

  /** Every manager shows (or no longer shows) network `name`: it has applied every entry before it. */
  private async barrier(name: string, present: boolean): Promise<void> {
    for (const m of MANAGERS) {
      await this.lab.waitFor(
        async () => ((await this.lab.api(m, "GET", `/v1.50/networks/${name}`)).status === 200) === present,
        20_000,
        `node${m} to ${present ? "see" : "forget"} network ${name}`,
      );
    }
  }

  /** The managers' nodes, networks and swarm, compared (retried: heartbeats may land in between). */
  private async agreement(): Promise<string | undefined> {
    let diff = "";
    for (let attempt = 0; attempt < 10; attempt++) {
      const views = await Promise.all(MANAGERS.map((m) => this.view(m)));
      const mismatch = views.findIndex((v) => v !== views[0]);
      if (mismatch < 0) return undefined;
      diff = firstDifference(views[0]!, views[mismatch]!, `node1`, `node${mismatch + 1}`);
      await sleep(1000);
    }
    return `the managers disagree after a read barrier: ${diff}`;
  }

  private async view(m: number): Promise<string> {
    const nodes = (await this.getJson<NodeJson[]>(m, "/v1.50/nodes"))
      .map((n) => ({ ...n, ManagerStatus: n.ManagerStatus ? { Addr: n.ManagerStatus.Addr } : undefined }))
      .sort((a, b) => a.ID.localeCompare(b.ID));
    const networks = (await this.getJson<NetworkJson[]>(m, "/v1.50/networks"))
      .map((n) => ({
        Id: n.Id,
        Name: n.Name,
        Driver: n.Driver,
        Scope: n.Scope,
        Created: n.Created,
        Internal: n.Internal,
        Attachable: n.Attachable,
        Ingress: n.Ingress,
        IPAM: n.IPAM,
        Options: n.Options,
        Labels: n.Labels,
      }))
      .sort((a, b) => a.Id.localeCompare(b.Id));
    const swarm = await this.getJson<SwarmJson>(m, "/v1.50/swarm");
    return JSON.stringify({ nodes, networks, swarm }, null, 1);
  }

  async close(keep = false): Promise<void> {
    this.clients?.close();
    await this.lab.close(keep);
  }
}

function parseJsonLines<T>(out: string, what: string): T[] {
  return out
    .split("\n")
    .filter((l) => l.trim().length > 0)
    .map((l) => {
      try {
        return JSON.parse(l) as T;
      } catch {
        throw new Error(`${what}: a line is not JSON: ${l.slice(0, 200)}`);
      }
    });
}

function firstDifference(a: string, b: string, an: string, bn: string): string {
  const la = a.split("\n");
  const lb = b.split("\n");
  for (let i = 0; i < Math.max(la.length, lb.length); i++) {
    if (la[i] !== lb[i]) {
      const ctx = (ls: string[]) => ls.slice(Math.max(0, i - 3), i + 2).join("\n");
      return `first difference at line ${i}:\n${an}:\n${ctx(la)}\n${bn}:\n${ctx(lb)}`;
    }
  }
  return "(none)";
}

/** Why a daemon's log line shows a bug, or undefined. */
export function badLogLine(line: string): string | undefined {
  if (line.length === 0 || line.startsWith("=== harness:")) return undefined;
  if (!line.startsWith("{")) return `not a log record: ${line.slice(0, 300)}`;
  let rec: { level?: number; msg?: string };
  try {
    rec = JSON.parse(line) as { level?: number; msg?: string };
  } catch {
    return `not a log record: ${line.slice(0, 300)}`;
  }
  const level = rec.level ?? 0;
  if (level >= 60) return `fatal: ${line.slice(0, 600)}`;
  if (level >= 40 && BUG_LINE_RE.test(rec.msg ?? "")) return line.slice(0, 600);
  return undefined;
}

/** `len` bytes of the file at `path` from offset `from`. */
function readRange(path: string, from: number, len: number): Buffer {
  const buf = Buffer.alloc(len);
  const fd = openSync(path, "r");
  try {
    let at = 0;
    while (at < len) {
      const n = readSync(fd, buf, at, len - at, from + at);
      if (n <= 0) break;
      at += n;
    }
  } finally {
    closeSync(fd);
  }
  return buf;
}
