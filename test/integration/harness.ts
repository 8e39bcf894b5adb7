// A lab of real shoald processes on loopback, for the integration tests. Daemon i has its own data root,
// Engine API socket, log file (its stderr: pino JSON) and cluster address 127.0.0.i:(base+i); hostname
// node<i>. Both CLIs (the real docker CLI and our shoal) are run as child processes against the sockets.
// Every daemon started is tracked and SIGKILLed by close(), and, as a last resort, when the test process
// exits; temp dirs are removed by close().

import { type ChildProcess, execFile, spawn } from "node:child_process";
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from "node:fs";
import { request } from "node:http";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { mountsUnder } from "../e2e/dataplane-lab.js";

const execFileP = promisify(execFile);
const UP2 = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
/** The repository, whether this file runs from test/integration (vitest) or dist/test/integration (node). */
export const REPO = basename(UP2) === "dist" && existsSync(join(UP2, "../package.json")) ? resolve(UP2, "..") : UP2;
export const SHOALD = join(REPO, "dist/src/daemon/main.js");
export const SHOAL = join(REPO, "dist/cli/main.js");
export const DOCKER = process.env.DOCKER_CLI ?? "/usr/local/bin/docker";

export type Cli = "docker" | "shoal";

export interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

/** One row of `node ls --format json` (the same fields for docker and shoal). */
export interface NodeRow {
  ID: string;
  Hostname: string;
  Status: string;
  Availability: string;
  ManagerStatus: string;
  EngineVersion: string;
  Self: boolean;
  TLSStatus?: string;
}

/** GET /info's Swarm part (what the tests look at). */
export interface SwarmInfo {
  NodeID: string;
  NodeAddr: string;
  LocalNodeState: string;
  ControlAvailable: boolean;
  Error: string;
  RemoteManagers: { NodeID: string; Addr: string }[] | null;
  Nodes?: number;
  Managers?: number;
  Cluster?: { ID: string };
}

export interface Formed {
  /** Node id of daemon i. */
  ids: Map<number, string>;
  workerToken: string;
  managerToken: string;
}

// ---------------------------------------------------------------------------------------------------
// Process bookkeeping: whatever happens to the test, no daemon outlives the test process.

const livePids = new Set<number>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on("exit", () => {
    for (const pid of livePids) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// Build

let built: Promise<void> | undefined;

/**
 * `npm run build --silent`, once per test process (tests spawn the programs in dist/). tsc emits even
 * when it reports type errors; errors only in other engineers' test files (test/, outside
 * test/integration/) do not affect the programs under test, so they are reported and tolerated. Errors in
 * src/, cli/ or test/integration/, or a build that did not produce the programs, fail the tests.
 */
export function buildOnce(): Promise<void> {
  built ??= new Promise<void>((resolvePromise, reject) => {
    execFile(
      "npm",
      ["run", "build", "--silent"],
      { cwd: REPO, timeout: 180_000, maxBuffer: 16 << 20 },
      (err, stdout, stderr) => {
        if (!err) return resolvePromise();
        const output = `${stdout}\n${stderr}`;
        const files = [...output.matchAll(/^(\S+?)\(\d+,\d+\): error TS\d+/gm)].map((m) => m[1]!);
        const foreignOnly =
          files.length > 0 &&
          files.every((f) => f.startsWith("test/") && !f.startsWith("test/integration/")) &&
          existsSync(SHOALD) &&
          existsSync(SHOAL);
        if (foreignOnly) {
          process.stderr.write(
            `[harness] npm run build reported type errors only in other test files (${[...new Set(files)].join(", ")}); dist/ was emitted, continuing\n`,
          );
          return resolvePromise();
        }
        reject(new Error(`npm run build failed: ${err.message}\n${output}`));
      },
    );
  });
  return built;
}

// ---------------------------------------------------------------------------------------------------
// Helpers

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function portFree(host: string, port: number): Promise<boolean> {
  return new Promise((resolvePromise) => {
    const srv = createServer();
    srv.once("error", () => resolvePromise(false));
    srv.listen(port, host, () => srv.close(() => resolvePromise(true)));
  });
}

/** Condense a pino JSON line: "12:34:56.789 INFO  [component] msg {rest}". Other lines as they are. */
function formatLogLine(line: string): string {
  if (!line.startsWith("{")) return line;
  try {
    const o = JSON.parse(line) as Record<string, unknown>;
    const levels: Record<number, string> = {
      10: "TRACE",
      20: "DEBUG",
      30: "INFO",
      40: "WARN",
      50: "ERROR",
      60: "FATAL",
    };
    const t = typeof o.time === "number" ? new Date(o.time).toISOString().slice(11, 23) : "?";
    const lvl = (levels[o.level as number] ?? String(o.level)).padEnd(5);
    const comp = typeof o.component === "string" ? `[${o.component}] ` : "";
    const rest = { ...o };
    for (const k of ["time", "level", "component", "msg", "pid", "hostname"]) delete rest[k];
    const extra = Object.keys(rest).length > 0 ? ` ${JSON.stringify(rest)}` : "";
    const text = `${t} ${lvl} ${comp}${String(o.msg ?? "")}${extra}`;
    return text.length > 500 ? `${text.slice(0, 500)}…` : text;
  } catch {
    return line;
  }
}

// ---------------------------------------------------------------------------------------------------
// The lab

interface DaemonSlot {
  i: number;
  dir: string;
  dataRoot: string;
  sock: string;
  log: string;
  proc: ChildProcess | undefined;
  /** Set while a kill() we asked for is under way (an exit then is expected). */
  killing: boolean;
  /** Exits we did not ask for (crashes), with the exit code/signal. */
  crashes: string[];
  exited: Promise<void> | undefined;
}

export class Lab {
  readonly slots = new Map<number, DaemonSlot>();
  /** Nodes a test touched (CLI calls, kills, restarts), for dumpRelevant(). */
  readonly touched = new Set<number>();
  private closed = false;

  private constructor(
    readonly name: string,
    readonly dir: string,
    readonly basePort: number,
  ) {}

  /**
   * A lab for up to `maxNodes` daemons. The cluster port of daemon i is basePort+i, on 127.0.0.i; the base
   * is random (below the ephemeral range) and checked free on every address, so labs of concurrent test
   * runs do not collide.
   */
  static async create(name: string, maxNodes = 6): Promise<Lab> {
    installExitHook();
    const dir = mkdtempSync(join(tmpdir(), `shoal-it-${name}-`));
    for (let attempt = 0; attempt < 50; attempt++) {
      const base = 10_000 + 10 * Math.floor(Math.random() * 2000);
      let ok = true;
      for (let i = 1; i <= maxNodes && ok; i++) ok = await portFree(`127.0.0.${i}`, base + i);
      if (ok) {
        mkdirSync(join(dir, "docker-config"), { recursive: true });
        return new Lab(name, dir, base);
      }
    }
    throw new Error("could not find free cluster ports on 127.0.0.x");
  }

  ip(i: number): string {
    return `127.0.0.${i}`;
  }

  port(i: number): number {
    return this.basePort + i;
  }

  /** host:port of daemon i's cluster listener (its --listen-addr and --advertise-addr). */
  addr(i: number): string {
    return `${this.ip(i)}:${this.port(i)}`;
  }

  private slot(i: number): DaemonSlot {
    let s = this.slots.get(i);
    if (!s) {
      const dir = join(this.dir, `node${i}`);
      mkdirSync(dir, { recursive: true });
      s = {
        i,
        dir,
        dataRoot: join(dir, "data"),
        sock: join(dir, "shoald.sock"),
        log: join(dir, "shoald.log"),
        proc: undefined,
        killing: false,
        crashes: [],
        exited: undefined,
      };
      this.slots.set(i, s);
    }
    return s;
  }

  dataRoot(i: number): string {
    return this.slot(i).dataRoot;
  }

  sock(i: number): string {
    return this.slot(i).sock;
  }

  host(i: number): string {
    return `unix://${this.slot(i).sock}`;
  }

  logFile(i: number): string {
    return this.slot(i).log;
  }

  alive(i: number): boolean {
    const p = this.slots.get(i)?.proc;
    return p !== undefined && p.exitCode === null && p.signalCode === null;
  }

  pid(i: number): number | undefined {
    return this.slots.get(i)?.proc?.pid;
  }

  /** Exits of daemon i that no kill() asked for. */
  crashes(i: number): string[] {
    return this.slots.get(i)?.crashes ?? [];
  }

  /** Throws (with the log tail) if any of `nodes` is not running. */
  assertAlive(...nodes: number[]): void {
    for (const i of nodes) {
      if (!this.alive(i)) {
        throw new Error(
          `shoald node${i} is not running (${this.crashes(i).join("; ") || "never started or killed"}); log tail:\n${this.tail(i, 40)}`,
        );
      }
    }
  }

  /** Start daemon i (data root, socket, log file, hostname node<i>, --raft-tick-ms 50); waits for /_ping. */
  async startDaemon(i: number, extraArgs: string[] = []): Promise<void> {
    if (this.closed) throw new Error("lab is closed");
    if (this.alive(i)) throw new Error(`node${i} is already running`);
    const s = this.slot(i);
    this.touched.add(i);
    const fd = openSync(s.log, "a");
    writeSync(fd, `=== harness: starting shoald node${i} at ${new Date().toISOString()} ===\n`);
    const args = [
      SHOALD,
      "--data-root",
      s.dataRoot,
      // Each daemon its own run directory (containers, namespaces), not the machine's /run/shoal.
      "--exec-root",
      `${s.dataRoot}-exec`,
      "-H",
      `unix://${s.sock}`,
      "--hostname",
      `node${i}`,
      "--log-level",
      "debug",
      "--raft-tick-ms",
      "50",
      ...extraArgs,
    ];
    let proc: ChildProcess;
    try {
      proc = spawn(process.execPath, args, { cwd: REPO, stdio: ["ignore", fd, fd], env: this.env() });
    } finally {
      closeSync(fd);
    }
    const pid = proc.pid;
    if (pid === undefined) throw new Error(`could not spawn shoald node${i}`);
    livePids.add(pid);
    s.proc = proc;
    s.killing = false;
    s.exited = new Promise<void>((resolvePromise) => {
      proc.once("exit", (code, signal) => {
        livePids.delete(pid);
        if (!s.killing) s.crashes.push(`pid ${pid} exited by itself: code ${code} signal ${signal}`);
        resolvePromise();
      });
    });
    const deadline = Date.now() + 15_000;
    for (;;) {
      if (!this.alive(i)) {
        throw new Error(`shoald node${i} exited during startup; log tail:\n${this.tail(i, 40)}`);
      }
      try {
        const r = await this.api(i, "GET", "/_ping");
        if (r.status === 200) return;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) throw new Error(`shoald node${i} did not answer /_ping within 15 s`);
      await sleep(50);
    }
  }

  /** Send `signal` to daemon i and wait for it to exit (SIGKILL after 10 s for other signals). */
  async kill(i: number, signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    const s = this.slots.get(i);
    this.touched.add(i);
    if (!s?.proc || !this.alive(i)) return;
    s.killing = true;
    s.proc.kill(signal);
    const done = s.exited!;
    if (signal !== "SIGKILL") {
      const timer = setTimeout(() => s.proc?.kill("SIGKILL"), 10_000);
      await done;
      clearTimeout(timer);
    } else {
      await done;
    }
  }

  /** Start daemon i again from its data root (stopping it first with SIGTERM if it runs). */
  async restart(i: number, extraArgs: string[] = []): Promise<void> {
    if (this.alive(i)) await this.kill(i, "SIGTERM");
    await this.startDaemon(i, extraArgs);
  }

  /** Environment for daemons and CLIs: no DOCKER_HOST/SHOAL_HOST leaking in, docker config in the lab. */
  env(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
    const env: NodeJS.ProcessEnv = { ...process.env };
    delete env.DOCKER_HOST;
    delete env.SHOAL_HOST;
    delete env.DOCKER_CONTEXT;
    delete env.NODE_OPTIONS;
    env.DOCKER_CONFIG = join(this.dir, "docker-config");
    env.DOCKER_CLI_HINTS = "false";
    return { ...env, ...extra };
  }

  private exec(file: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs: number): Promise<Result> {
    return new Promise((resolvePromise) => {
      execFile(file, args, { env, timeout: timeoutMs, maxBuffer: 8 << 20 }, (err, stdout, stderr) => {
        let code = 0;
        if (err) {
          const e = err as NodeJS.ErrnoException & { code?: number | string; killed?: boolean };
          code = typeof e.code === "number" ? e.code : -1;
          if (e.killed) stderr += `\n[harness: killed after ${timeoutMs} ms]`;
          else if (typeof e.code === "string") stderr += `\n[harness: ${e.message}]`;
        }
        resolvePromise({ code, stdout: String(stdout), stderr: String(stderr) });
      });
    });
  }

  /** The real docker CLI against daemon i. */
  docker(i: number, ...args: string[]): Promise<Result> {
    this.touched.add(i);
    return this.exec(DOCKER, ["-H", this.host(i), ...args], this.env(), 30_000);
  }

  /** The real docker CLI against daemon i, with `input` on its stdin (e.g. the key for `swarm unlock`). */
  dockerWithInput(i: number, input: string, ...args: string[]): Promise<Result> {
    return this.cliWithInput("docker", i, input, ...args);
  }

  /** A CLI against daemon i with `input` on its stdin. */
  cliWithInput(cli: Cli, i: number, input: string, ...args: string[]): Promise<Result> {
    this.touched.add(i);
    const [file, argv] =
      cli === "docker"
        ? [DOCKER, ["-H", this.host(i), ...args]]
        : [process.execPath, [SHOAL, "-H", this.host(i), ...args]];
    return new Promise((resolvePromise) => {
      const child = execFile(
        file,
        argv,
        { env: this.env(), timeout: 30_000, maxBuffer: 8 << 20 },
        (err, stdout, stderr) => {
          const e = err as (NodeJS.ErrnoException & { code?: number | string }) | null;
          resolvePromise({ code: e ? (typeof e.code === "number" ? e.code : -1) : 0, stdout, stderr });
        },
      );
      child.stdin?.end(input);
    });
  }

  /** Our shoal CLI against daemon i. */
  shoal(i: number, ...args: string[]): Promise<Result> {
    this.touched.add(i);
    return this.exec(process.execPath, [SHOAL, "-H", this.host(i), ...args], this.env(), 30_000);
  }

  /** shoal with SHOAL_HOST instead of -H. */
  shoalEnv(i: number, ...args: string[]): Promise<Result> {
    this.touched.add(i);
    return this.exec(process.execPath, [SHOAL, ...args], this.env({ SHOAL_HOST: this.host(i) }), 30_000);
  }

  cli(cli: Cli, i: number, ...args: string[]): Promise<Result> {
    return cli === "docker" ? this.docker(i, ...args) : this.shoal(i, ...args);
  }

  /** Like cli(), but throws (with stdout/stderr) unless it exits 0; returns stdout. */
  async must(cli: Cli, i: number, ...args: string[]): Promise<string> {
    const r = await this.cli(cli, i, ...args);
    if (r.code !== 0) {
      throw new Error(
        `${cli} ${args.join(" ")} on node${i} exited ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`,
      );
    }
    return r.stdout;
  }

  /** A raw Engine API call on daemon i's socket (fast, for polling). */
  api(i: number, method: string, path: string, body?: unknown): Promise<{ status: number; json: unknown }> {
    const sock = this.slot(i).sock;
    return new Promise((resolvePromise, reject) => {
      const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
      const req = request(
        {
          socketPath: sock,
          method,
          path,
          headers: data ? { "Content-Type": "application/json", "Content-Length": data.length } : {},
          timeout: 10_000,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("end", () => {
            const text = Buffer.concat(chunks).toString("utf8");
            let json: unknown = text;
            try {
              json = text.length > 0 ? JSON.parse(text) : undefined;
            } catch {
              // not JSON (e.g. "OK" from /_ping)
            }
            resolvePromise({ status: res.statusCode ?? 0, json });
          });
        },
      );
      req.on("timeout", () => req.destroy(new Error(`${method} ${path} on node${i}: timeout`)));
      req.on("error", reject);
      if (data) req.write(data);
      req.end();
    });
  }

  /** GET /info .Swarm of daemon i. */
  async info(i: number): Promise<SwarmInfo> {
    const r = await this.api(i, "GET", "/v1.50/info");
    if (r.status !== 200) throw new Error(`GET /info on node${i}: ${r.status} ${JSON.stringify(r.json)}`);
    return (r.json as { Swarm: SwarmInfo }).Swarm;
  }

  /** Poll `pred` (every 200 ms) until it returns something truthy; errors count as "not yet". */
  async waitFor<T>(pred: () => T | Promise<T>, ms: number, what: string): Promise<NonNullable<T>> {
    const start = Date.now();
    let last: unknown;
    for (;;) {
      try {
        const v = await pred();
        if (v) return v as NonNullable<T>;
        last = v;
      } catch (e) {
        last = e instanceof Error ? e.message : e;
      }
      if (Date.now() - start > ms) {
        throw new Error(
          `timed out after ${ms} ms waiting for ${what}; last result: ${typeof last === "string" ? last : JSON.stringify(last)}`,
        );
      }
      await sleep(200);
    }
  }

  /** `node ls --format json` on daemon i, one row per node; throws on a CLI error. */
  async nodeLs(i: number, cli: Cli = "docker"): Promise<NodeRow[]> {
    const out = await this.must(cli, i, "node", "ls", "--format", "json");
    return out
      .split("\n")
      .filter((l) => l.trim().length > 0)
      .map((l) => JSON.parse(l) as NodeRow)
      .sort((a, b) => a.Hostname.localeCompare(b.Hostname));
  }

  /** `node ls` rows keyed by hostname. */
  async nodeMap(i: number, cli: Cli = "docker"): Promise<Map<string, NodeRow>> {
    return new Map((await this.nodeLs(i, cli)).map((r) => [r.Hostname, r]));
  }

  /**
   * Form a swarm: start daemons 1..managers+workers (those not running), `swarm init` on node1 with
   * --dispatcher-heartbeat 1s, then join nodes 2..managers with the manager token and the rest with the
   * worker token, one after another, all with `cli`. `joinExtra(i)` is appended to node i's join (e.g.
   * `--data-path-addr 127.0.0.1`).
   */
  async form(
    managers: number,
    workers: number,
    cli: Cli,
    joinExtra: (i: number) => string[] = () => [],
  ): Promise<Formed> {
    const total = managers + workers;
    for (let i = 1; i <= total; i++) if (!this.alive(i)) await this.startDaemon(i);
    await this.must(
      cli,
      1,
      "swarm",
      "init",
      "--advertise-addr",
      this.addr(1),
      "--listen-addr",
      this.addr(1),
      "--dispatcher-heartbeat",
      "1s",
    );
    const managerToken = (await this.must(cli, 1, "swarm", "join-token", "-q", "manager")).trim();
    const workerToken = (await this.must(cli, 1, "swarm", "join-token", "-q", "worker")).trim();
    for (let i = 2; i <= total; i++) {
      const token = i <= managers ? managerToken : workerToken;
      const out = await this.must(cli, i, ...this.joinArgs(i, token), ...joinExtra(i));
      const want = i <= managers ? "manager" : "worker";
      if (!out.includes(`This node joined a swarm as a ${want}.`)) {
        throw new Error(`node${i} join: unexpected output ${JSON.stringify(out)}`);
      }
    }
    const ids = new Map<number, string>();
    for (let i = 1; i <= total; i++) ids.set(i, (await this.info(i)).NodeID);
    return { ids, workerToken, managerToken };
  }

  /** The arguments of `swarm join` for daemon i (own listen/advertise address, node1 as the remote). */
  joinArgs(i: number, token: string, remote = this.addr(1)): string[] {
    return ["swarm", "join", "--token", token, "--advertise-addr", this.addr(i), "--listen-addr", this.addr(i), remote];
  }

  /** The last `lines` lines of daemon i's log, condensed. */
  tail(i: number, lines = 60): string {
    const s = this.slots.get(i);
    if (!s || !existsSync(s.log)) return "(no log)";
    const all = readFileSync(s.log, "utf8")
      .split("\n")
      .filter((l) => l.length > 0);
    return all.slice(-lines).map(formatLogLine).join("\n");
  }

  /** Daemon i's log records (its pino JSON lines, parsed; other lines skipped), oldest first. */
  logRecords(i: number): Record<string, unknown>[] {
    const s = this.slots.get(i);
    if (!s || !existsSync(s.log)) return [];
    const out: Record<string, unknown>[] = [];
    for (const line of readFileSync(s.log, "utf8").split("\n")) {
      if (!line.startsWith("{")) continue;
      try {
        out.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        // a line being written
      }
    }
    return out;
  }

  /** Print the tail of daemon i's log to stderr. */
  dump(i: number, lines = 60): void {
    process.stderr.write(
      `\n----- [${this.name}] node${i} (${this.alive(i) ? `running, pid ${this.pid(i)}` : "not running"}) ${this.logFile(i)}: last ${lines} lines -----\n${this.tail(i, lines)}\n`,
    );
  }

  /** Dump the logs of the nodes the current test touched (all nodes if none recorded). */
  dumpRelevant(lines = 60): void {
    const nodes = this.touched.size > 0 ? [...this.touched] : [...this.slots.keys()];
    for (const i of nodes.sort((a, b) => a - b)) this.dump(i, lines);
  }

  /**
   * SIGKILL every daemon, wait for them, and remove the lab's directory, with what a killed daemon left
   * mounted in it (the network namespaces its pool made ahead for containers).
   */
  async close(keepDir = false): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all([...this.slots.keys()].map((i) => this.kill(i, "SIGKILL")));
    if (keepDir) return;
    for (const m of (await mountsUnder(this.dir)).sort((a, b) => b.length - a.length)) {
      await execFileP("umount", ["-l", m]).catch(() => undefined);
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Parse a `node ls` table (default format) into rows by the header's column positions. */
export function parseNodeTable(out: string): (Omit<NodeRow, "TLSStatus"> & { line: string })[] {
  const lines = out.split("\n").filter((l) => l.length > 0);
  const header = lines[0] ?? "";
  const cols = ["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS", "ENGINE VERSION"];
  const starts = cols.map((c) => header.indexOf(c));
  if (starts.some((s) => s < 0)) throw new Error(`unexpected node ls header: ${JSON.stringify(header)}`);
  return lines.slice(1).map((line) => {
    const cell = (k: number) => line.slice(starts[k], k + 1 < starts.length ? starts[k + 1] : undefined).trim();
    const id = cell(0);
    return {
      line,
      ID: id.replace(/\s*\*$/, ""),
      Self: id.endsWith("*"),
      Hostname: cell(1),
      Status: cell(2),
      Availability: cell(3),
      ManagerStatus: cell(4),
      EngineVersion: cell(5),
    };
  });
}
