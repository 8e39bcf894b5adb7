// A real shoald process for the benchmarks (scale.ts, failover.ts, bigjoin.ts), and the small helpers
// they share: the Engine API over the daemon's unix socket, waiting, free ports, Prometheus text.
// Every process started here is registered in cleanup.ts, so none outlives its benchmark.

import { type ChildProcess, spawn } from "node:child_process";
import { closeSync, mkdirSync, openSync, readdirSync, readFileSync, statSync } from "node:fs";
import { readFile } from "node:fs/promises";
import http from "node:http";
import net from "node:net";
import { dirname, join } from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { children } from "./cleanup.js";

const HERE = dirname(fileURLToPath(import.meta.url));
/** dist/test/bench/shoald.js → dist/src/daemon/main.js */
export const SHOALD = join(HERE, "..", "..", "src", "daemon", "main.js");
export const API = "/v1.50";

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Calls `f` every `everyMs` until it returns a value; throws after `ms` with the last error seen. */
export async function waitUntil<T>(
  what: string,
  ms: number,
  f: () => Promise<T | undefined>,
  everyMs: number,
): Promise<T> {
  const deadline = performance.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      const v = await f();
      if (v !== undefined) return v;
    } catch (e) {
      last = e;
    }
    if (performance.now() > deadline) {
      const why = last instanceof Error ? ` (last error: ${last.message})` : "";
      throw new Error(`timed out after ${ms} ms waiting for ${what}${why}`);
    }
    await sleep(everyMs);
  }
}

export function freePort(host: string, port = 0): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(port, host, () => {
      const a = s.address() as net.AddressInfo;
      s.close(() => resolve(a.port));
    });
  });
}

/** A TCP port free on every one of `hosts`. */
export async function commonFreePort(hosts: string[]): Promise<number> {
  for (let i = 0; i < 50; i++) {
    const p = await freePort(hosts[0]!);
    try {
      for (const h of hosts.slice(1)) await freePort(h, p);
      return p;
    } catch {
      /* taken on another address: try another */
    }
  }
  throw new Error(`no TCP port free on all of ${hosts.join(", ")}`);
}

// ---------------------------------------------------------------------------------------------------
// Engine API over a unix socket

export interface Resp {
  status: number;
  body: unknown;
  text: string;
}

export class TimeoutError extends Error {}

/** One Engine API request; rejects with a TimeoutError when no whole answer came within `timeoutMs`. */
export function call(sock: string, method: string, path: string, body: unknown, timeoutMs: number): Promise<Resp> {
  return new Promise<Resp>((resolve, reject) => {
    const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    let settled = false;
    const done = (f: () => void) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      f();
    };
    const req = http.request(
      {
        socketPath: sock,
        path: `${API}${path}`,
        method,
        agent: false,
        headers: data ? { "content-type": "application/json", "content-length": data.length } : {},
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("error", (e) => done(() => reject(e)));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          let parsed: unknown;
          try {
            parsed = text.length > 0 ? JSON.parse(text) : undefined;
          } catch {
            parsed = undefined;
          }
          done(() => resolve({ status: res.statusCode ?? 0, body: parsed, text }));
        });
      },
    );
    const timer = setTimeout(() => {
      done(() => reject(new TimeoutError(`${method} ${path}: no answer within ${timeoutMs} ms`)));
      req.destroy();
    }, timeoutMs);
    req.on("error", (e) => done(() => reject(e)));
    if (data) req.write(data);
    req.end();
  });
}

/** The error message of an Engine API answer, or the start of its text. */
export function apiMessage(r: Resp): string {
  const m = (r.body as { message?: unknown } | undefined)?.message;
  return typeof m === "string" ? m : r.text.trim().slice(0, 300);
}

// ---------------------------------------------------------------------------------------------------
// Metrics and /proc

/** The value of a metric line `name{labels} value` (the first match), from Prometheus text. */
export function metricValue(text: string | undefined, name: string, labels = ""): number | undefined {
  if (!text) return undefined;
  for (const line of text.split("\n")) {
    if (!line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    if (labels ? !rest.startsWith(`{${labels}`) : !(rest.startsWith(" ") || rest.startsWith("{"))) continue;
    const v = Number(line.slice(line.lastIndexOf(" ") + 1));
    if (Number.isFinite(v)) return v;
  }
  return undefined;
}

/** A process's CPU seconds (user + system) so far, from /proc (0 once it is gone). */
export function cpuSecondsOf(pid: number): number {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = f.slice(f.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return 0; // exited
  }
}

/** One line of a daemon's pino log. */
export interface LogLine {
  time: number;
  msg: string;
  [k: string]: unknown;
}

// ---------------------------------------------------------------------------------------------------
// A shoald process

export interface ShoaldOptions {
  /** The daemon serves /metrics on ip:metricsPort (--metrics-addr). */
  metricsPort?: number;
  /** Each start writes a V8 CPU profile under profileDir/<name> (--cpu-prof). */
  profileDir?: string;
  /** Where a heap snapshot goes (the process's working directory), when one may be asked for. */
  heapDir?: string;
  /** Extra flags for node (e.g. --trace-gc: what they print goes to the log). */
  nodeFlags?: readonly string[];
  /** How long stop() waits after SIGTERM before SIGKILL (ms). */
  stopGraceMs?: number;
}

export class Shoald {
  proc: ChildProcess | undefined;
  nodeId = "";
  raftId = 0;
  /** Wall time (Date.now()) of the last start. */
  startedAtMs = 0;
  private exited: Promise<void> = Promise.resolve();

  constructor(
    readonly name: string,
    readonly ip: string,
    readonly port: number,
    readonly dir: string,
    readonly opts: ShoaldOptions = {},
  ) {}

  get dataRoot(): string {
    return join(this.dir, "data");
  }
  get sock(): string {
    return join(this.dir, "shoald.sock");
  }
  get logPath(): string {
    return join(this.dir, "shoald.log");
  }
  get addr(): string {
    return `${this.ip}:${this.port}`;
  }
  get alive(): boolean {
    return this.proc !== undefined && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  start(): void {
    if (this.alive) throw new Error(`${this.name} is already running`);
    const o = this.opts;
    const fd = openSync(this.logPath, "a");
    const prof = o.profileDir ? ["--cpu-prof", "--cpu-prof-dir", join(o.profileDir, this.name)] : [];
    const heap = o.heapDir ? ["--heapsnapshot-signal=SIGUSR2"] : [];
    const args = [
      ...prof,
      ...heap,
      ...(o.nodeFlags ?? []),
      SHOALD,
      "--data-root",
      this.dataRoot,
      "--exec-root",
      `${this.dataRoot}-exec`,
      "-H",
      `unix://${this.sock}`,
      "--hostname",
      this.name,
      "--log-level",
      "info",
      ...(o.metricsPort !== undefined ? ["--metrics-addr", `${this.ip}:${o.metricsPort}`] : []),
    ];
    try {
      if (o.heapDir) mkdirSync(o.heapDir, { recursive: true });
      // stdout too: what node's own flags print (--trace-gc) goes to the log; the daemon logs to stderr.
      const p = spawn(process.execPath, args, { stdio: ["ignore", fd, fd], cwd: o.heapDir });
      children.add(p);
      this.exited = new Promise((resolve) =>
        p.once("exit", () => {
          children.delete(p);
          resolve();
        }),
      );
      this.proc = p;
      this.startedAtMs = Date.now();
    } finally {
      closeSync(fd);
    }
  }

  /** Waits for the Engine API to answer (the daemon has resumed whatever its data root holds). */
  async ready(ms = 30_000): Promise<void> {
    await waitUntil(
      `${this.name}'s Engine API`,
      ms,
      async () => {
        if (!this.alive) throw new Error(`${this.name} exited: ${this.logTail()}`);
        return (await call(this.sock, "GET", "/_ping", undefined, 1000)).status === 200 ? true : undefined;
      },
      100,
    );
  }

  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    if (!this.alive) return;
    this.proc!.kill(signal);
    await this.exited;
  }

  async stop(): Promise<void> {
    if (!this.alive) return;
    this.proc!.kill("SIGTERM");
    const t = setTimeout(() => this.proc?.kill("SIGKILL"), this.opts.stopGraceMs ?? 15_000);
    await this.exited;
    clearTimeout(t);
  }

  async loadIdentity(): Promise<void> {
    const s = JSON.parse(await readFile(join(this.dataRoot, "swarm", "state.json"), "utf8")) as {
      nodeId: string;
      raftId?: number;
    };
    this.nodeId = s.nodeId;
    this.raftId = s.raftId ?? 0;
  }

  /** CPU seconds (user + system) so far, from /proc. */
  cpuSeconds(): number {
    return cpuSecondsOf(this.proc!.pid!);
  }

  /** VmRSS and VmHWM (peak) in MiB. */
  memMiB(): { rss: number; peak: number } {
    try {
      const st = readFileSync(`/proc/${this.proc!.pid}/status`, "utf8");
      const kb = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+) kB`).exec(st)?.[1] ?? Number.NaN);
      return { rss: kb("VmRSS") / 1024, peak: kb("VmHWM") / 1024 };
    } catch {
      return { rss: Number.NaN, peak: Number.NaN };
    }
  }

  logTail(lines = 15): string {
    try {
      return readFileSync(this.logPath, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
    } catch {
      return "(no log)";
    }
  }

  logSize(): number {
    try {
      return statSync(this.logPath).size;
    } catch {
      return 0;
    }
  }

  /** Parsed pino lines written after byte offset `from`. */
  logSince(from = 0): LogLine[] {
    let text: string;
    try {
      text = readFileSync(this.logPath).subarray(from).toString("utf8");
    } catch {
      return [];
    }
    const out: LogLine[] = [];
    for (const line of text.split("\n")) {
      if (!line.startsWith("{")) continue;
      try {
        out.push(JSON.parse(line) as LogLine);
      } catch {
        /* a torn last line */
      }
    }
    return out;
  }

  /** The first log line with message `msg` at or after wall time `fromMs` that `pred` accepts. */
  logged(msg: string, fromMs: number, pred: (l: LogLine) => boolean = () => true): LogLine | undefined {
    return this.logSince().find((l) => l.msg === msg && l.time >= fromMs && pred(l));
  }

  /** How many times this daemon logged that it became leader at or after wall time `fromMs`. */
  electionsSince(fromMs: number): number {
    return this.logSince().filter((l) => l.msg === "became leader" && l.time >= fromMs).length;
  }

  /**
   * A V8 heap snapshot of this daemon (node --heapsnapshot-signal): the file, once written whole. The
   * process writes it on its main thread, so it answers nothing meanwhile.
   */
  async heapSnapshot(): Promise<string> {
    const dir = this.opts.heapDir;
    if (!dir) throw new Error(`${this.name} was not started to take heap snapshots`);
    const before = new Set(readdirSync(dir));
    const t0 = performance.now();
    this.proc!.kill("SIGUSR2");
    const file = await waitUntil(
      `${this.name}'s heap snapshot`,
      600_000,
      async () => {
        const f = readdirSync(dir).find((x) => x.endsWith(".heapsnapshot") && !before.has(x));
        if (!f) return undefined;
        // Written whole once the daemon answers again.
        return (await call(this.sock, "GET", "/_ping", undefined, 1000)).status === 200 ? join(dir, f) : undefined;
      },
      200,
    );
    const mib = statSync(file).size / 2 ** 20;
    console.log(
      `  heap snapshot of ${this.name}: ${file} (${mib.toFixed(0)} MiB, ${((performance.now() - t0) / 1000).toFixed(1)} s)`,
    );
    return file;
  }

  /** The daemon's Prometheus text, or undefined without a metrics port (or support for one). */
  async metrics(timeoutMs = 5000): Promise<string | undefined> {
    const port = this.opts.metricsPort;
    if (port === undefined) return undefined;
    return new Promise((resolve) => {
      const req = http.get({ host: this.ip, port, path: "/metrics", timeout: timeoutMs }, (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => resolve(res.statusCode === 200 ? Buffer.concat(chunks).toString("utf8") : undefined));
      });
      req.on("error", () => resolve(undefined));
      req.on("timeout", () => req.destroy());
    });
  }
}
