// Engine API flood: what 2,000 connections at once do to a manager's memory, and whether it comes back.
//
//   npm run bench:engine-flood
//   npm run bench:engine-flood -- --connections 2000 --rounds 3 --settle 40
//   npm run bench:engine-flood -- --shoald /path/to/dist/src/daemon/main.js   # another build, to compare
//   npm run bench:engine-flood -- --env MALLOC_MMAP_THRESHOLD_=131072        # shoald's environment
//
// One real shoald (a single-manager swarm: swarm init on 127.0.0.1, its own data root and socket in a temp
// dir). Its resident memory (VmRSS of /proc/PID/status) is read before, during and after each round:
//   - baseline: after a warm-up of 500 ordinary requests and 10 s of quiet;
//   - a round: `--connections` connections opened at once, a quarter of each kind: slowloris (the head is
//     never finished), a half-sent 512 KiB body (the rest never sent), a complete 900 KiB body of junk,
//     and ordinary requests (GET /nodes, GET /networks, a refused network create). The client never closes
//     the slow ones; the server has to.
//   - peak: the highest RSS sampled (every 100 ms) during the round;
//   - after: RSS once every connection is gone and `--settle` seconds have passed.
// shoald runs with --trace-gc, so the live JavaScript heap after its last full collection is known too: RSS
// is what the allocator still holds from the OS, the heap what the program still holds (a leak shows there).
// Answers are counted by status (503: refused at the connection limit; 408: timed out; 413: body too
// large; 400: refused by a schema).
//
// Everything started here is killed and removed on success, failure and SIGINT.

import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync, rmSync } from "node:fs";
import { mkdtemp } from "node:fs/promises";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const HERE = dirname(fileURLToPath(import.meta.url));
/** dist/test/bench/engine-flood.js → dist/src/daemon/main.js */
const DEFAULT_SHOALD = join(HERE, "../../src/daemon/main.js");

interface Options {
  connections: number;
  rounds: number;
  settleS: number;
  shoald: string;
  env: Record<string, string>;
}

function options(argv: string[]): Options {
  const o: Options = { connections: 2000, rounds: 3, settleS: 40, shoald: DEFAULT_SHOALD, env: {} };
  for (let i = 0; i < argv.length; i++) {
    const next = (): string => argv[++i] ?? "";
    if (argv[i] === "--connections") o.connections = Number(next());
    else if (argv[i] === "--rounds") o.rounds = Number(next());
    else if (argv[i] === "--settle") o.settleS = Number(next());
    else if (argv[i] === "--shoald") o.shoald = next();
    else if (argv[i] === "--env") {
      const [k, ...v] = next().split("=");
      o.env[k!] = v.join("=");
    } else throw new Error(`unknown argument ${argv[i]}`);
  }
  return o;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The heap (used, committed; MB) after the daemon's last full collection, from its --trace-gc lines. */
class GcTrace {
  lastFull: { used: number; committed: number } | undefined;
  feed(text: string): void {
    for (const m of text.matchAll(/Mark-Compact[^\n]*?(\d+\.\d+) \((\d+\.\d+)\) -> (\d+\.\d+) \((\d+\.\d+)\) MB/g)) {
      this.lastFull = { used: Number(m[3]), committed: Number(m[4]) };
    }
  }
  text(): string {
    return this.lastFull
      ? `heap ${this.lastFull.used.toFixed(1)} MB used of ${this.lastFull.committed.toFixed(1)} MB after the last full GC`
      : "no full GC yet";
  }
}

function rssMiB(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) / 1024 : Number.NaN;
}

/** An answer's status, or what ended the connection without one ("EPIPE", "closed"). */
type Outcome = number | string;

function call(sock: string, method: string, path: string, body?: string): Promise<Outcome> {
  return new Promise((resolve) => {
    const req = http.request({ socketPath: sock, method, path, agent: false, timeout: 120_000 }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode ?? 0));
    });
    req.on("error", (e: NodeJS.ErrnoException) => resolve(e.code ?? "error"));
    req.on("timeout", () => req.destroy());
    if (body !== undefined) {
      req.setHeader("Content-Type", "application/json");
      req.end(body);
    } else req.end();
  });
}

/** A raw connection that writes `data` and then waits for the server to answer and close it. */
function rawConnection(sock: string, data: string): Promise<Outcome> {
  return new Promise((resolve) => {
    const s = net.connect(sock);
    let text = "";
    let error = "";
    s.on("data", (d: Buffer) => {
      if (text.length < 64) text += d.toString("latin1");
    });
    s.on("error", (e: NodeJS.ErrnoException) => {
      error ||= e.code ?? "error";
    });
    s.on("close", () => {
      const m = /^HTTP\/1\.1 (\d{3})/.exec(text);
      resolve(m ? Number(m[1]) : error || "closed");
    });
    s.on("connect", () => s.write(data));
    setTimeout(() => s.destroy(), 300_000).unref();
  });
}

const JUNK = `{"Name":"flood","Labels":{"x":"${"j".repeat(900 * 1024)}"}}`;

function flood(sock: string, n: number): Promise<Outcome>[] {
  const out: Promise<Outcome>[] = [];
  for (let i = 0; i < n; i++) {
    switch (i % 4) {
      case 0:
        out.push(rawConnection(sock, "GET /v1.50/nodes HTTP/1.1\r\nHost: flood\r\nX-Slow: 1\r\n"));
        break;
      case 1:
        out.push(
          rawConnection(
            sock,
            `POST /v1.50/networks/create HTTP/1.1\r\nHost: flood\r\nContent-Type: application/json\r\nContent-Length: ${1024 * 1024}\r\n\r\n{"Name":"x","Labels":{"a":"${"h".repeat(512 * 1024)}`,
          ),
        );
        break;
      case 2:
        out.push(call(sock, "POST", "/v1.50/networks/create", JUNK));
        break;
      default:
        out.push(
          [
            () => call(sock, "GET", "/v1.50/nodes"),
            () => call(sock, "GET", "/v1.50/networks"),
            () => call(sock, "POST", "/v1.50/networks/create", '{"Name":"t3","Labels":{"a":1}}'),
          ][i % 3]!(),
        );
    }
  }
  return out;
}

async function main(): Promise<void> {
  const o = options(process.argv.slice(2));
  const dir = await mkdtemp(join(tmpdir(), "shoal-bench-flood-"));
  const sock = join(dir, "shoald.sock");
  let daemon: ChildProcess | undefined;
  const cleanup = (): void => {
    daemon?.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  };
  process.on("SIGINT", () => {
    cleanup();
    process.exit(130);
  });
  try {
    const gc = new GcTrace();
    daemon = spawn(
      process.execPath,
      [
        "--trace-gc",
        o.shoald,
        "--data-root",
        join(dir, "data"),
        "--exec-root",
        join(dir, "exec"),
        "-H",
        `unix://${sock}`,
        "--log-level",
        "error",
      ],
      { stdio: ["ignore", "pipe", "ignore"], env: { ...process.env, ...o.env } },
    );
    daemon.stdout!.on("data", (d: Buffer) => gc.feed(d.toString("utf8")));
    const pid = daemon.pid!;
    for (let i = 0; i < 100 && (await call(sock, "GET", "/_ping")) !== 200; i++) await sleep(100);
    const init = await call(
      sock,
      "POST",
      "/v1.50/swarm/init",
      JSON.stringify({ ListenAddr: "127.0.0.1:23770", AdvertiseAddr: "127.0.0.1:23770" }),
    );
    if (init !== 200) throw new Error(`swarm init answered ${init}`);
    for (let i = 0; i < 500; i++) await call(sock, "GET", i % 2 ? "/v1.50/nodes" : "/v1.50/networks");
    await sleep(10_000);
    const baseline = rssMiB(pid);
    const envText = Object.entries(o.env)
      .map(([k, v]) => `${k}=${v} `)
      .join("");
    process.stdout.write(
      `${envText}shoald ${o.shoald}\nbaseline RSS after warm-up: ${baseline.toFixed(1)} MiB (${gc.text()})\n`,
    );
    for (let round = 1; round <= o.rounds; round++) {
      let peak = rssMiB(pid);
      const sampler = setInterval(() => {
        peak = Math.max(peak, rssMiB(pid));
      }, 100);
      const t0 = Date.now();
      const statuses = await Promise.all(flood(sock, o.connections));
      const flooded = (Date.now() - t0) / 1000;
      clearInterval(sampler);
      const counts = new Map<Outcome, number>();
      for (const s of statuses) counts.set(s, (counts.get(s) ?? 0) + 1);
      const answered = [...counts.entries()]
        .sort((a, b) => String(a[0]).localeCompare(String(b[0])))
        .map(([s, n]) => `${s}: ${n}`)
        .join(", ");
      await sleep(o.settleS * 1000);
      const after = rssMiB(pid);
      const alive = (await call(sock, "GET", "/v1.50/nodes")) === 200;
      process.stdout.write(
        `round ${round}: ${o.connections} connections, all answered or closed in ${flooded.toFixed(1)} s ` +
          `(${answered}); peak RSS ${peak.toFixed(1)} MiB; ${o.settleS} s later ${after.toFixed(1)} MiB ` +
          `(${gc.text()}); serving afterwards: ${alive}\n`,
      );
    }
  } finally {
    cleanup();
  }
}

await main();
