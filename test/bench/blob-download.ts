// Micro-benchmark of a pull's download path alone, in one process: two layers of random bytes (25 MB each by
// default) served over loopback HTTP by a child process (its CPU is not counted), fetched as a pull fetches
// them (registry.ts's client, headfirst.ts's order) and put in place by blobfile.ts into a temporary root
// (on the disk, fsyncs and all). Per round: wall time, the main thread's CPU time (its schedstat: what the
// download costs the one thread everything else in shoald needs; the event loop's busy time beside it, which
// counts time waiting for a CPU too) and the process's whole CPU (main thread, thread pool, workers).
//
//   node dist/test/bench/blob-download.js [--rounds 10] [--mb 25] [--dist DIR]
//
// --dist: another build's dist/ (for instance the main branch's) to measure its blobfile.ts the same way.

import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";

const HERE = dirname(fileURLToPath(import.meta.url));

function option(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1]! : def;
}

const SERVER = `
const http = require("node:http");
const { createHash } = require("node:crypto");
const mb = Number(process.argv[1]);
const blobs = new Map();
for (let i = 0; i < 2; i++) {
  const b = require("node:crypto").randomBytes(mb * 1e6);
  blobs.set("sha256:" + createHash("sha256").update(b).digest("hex"), b);
}
const s = http.createServer((req, res) => {
  const d = req.url.split("/").pop();
  const b = blobs.get(d);
  if (!b) { res.writeHead(404); return res.end(); }
  res.writeHead(200, { "content-length": b.length, "content-type": "application/octet-stream" });
  res.end(b);
});
s.listen(0, "127.0.0.1", () => process.stdout.write(JSON.stringify({ port: s.address().port, digests: [...blobs.keys()] }) + "\\n"));
`;

/** The main thread's time on a CPU so far (ms), from the scheduler: what it ran, not what it waited for a CPU. */
function mainCpu(): number {
  return Number(readFileSync(`/proc/self/task/${process.pid}/schedstat`, "utf8").split(" ")[0]) / 1e6;
}

/** Each thread's CPU time so far (ms), by its name. */
function threadsCpu(): Map<string, number> {
  const out = new Map<string, number>();
  for (const t of readdirSync("/proc/self/task")) {
    try {
      const name = `${readFileSync(`/proc/self/task/${t}/comm`, "utf8").trim()}:${t}`;
      const ms = Number(readFileSync(`/proc/self/task/${t}/schedstat`, "utf8").split(" ")[0]) / 1e6;
      out.set(name, (out.get(name) ?? 0) + ms);
    } catch {
      // The thread ended.
    }
  }
  return out;
}

async function main(): Promise<void> {
  const rounds = Number(option("rounds", "10"));
  const mb = Number(option("mb", "25"));
  const dist = resolve(option("dist", join(HERE, "..", "..")));
  const { placeBlob } = (await import(
    join(dist, "src/runtime/containerd/blobfile.js")
  )) as typeof import("../../src/runtime/containerd/blobfile.js");
  const { Registry } = (await import(
    join(dist, "src/runtime/images/registry.js")
  )) as typeof import("../../src/runtime/images/registry.js");
  const { HeadFirst } = (await import(
    join(dist, "src/runtime/images/headfirst.js")
  )) as typeof import("../../src/runtime/images/headfirst.js");
  const releaseChunk =
    (
      (await import(join(dist, "src/runtime/images/rawget.js")).catch(() => ({}))) as {
        releaseChunk?: (c: Buffer) => void;
      }
    ).releaseChunk ?? (() => undefined);
  const server = spawn(process.execPath, ["-e", SERVER, String(mb)], { stdio: ["ignore", "pipe", "inherit"] });
  const info = await new Promise<{ port: number; digests: string[] }>((res, rej) => {
    server.stdout.once("data", (d: Buffer) => res(JSON.parse(d.toString())));
    server.once("exit", () => rej(new Error("server exited")));
  });
  const root = mkdtempSync(join(tmpdir(), "shoal-blobdl-"));
  try {
    const ref = { domain: `127.0.0.1:${info.port}`, path: "bench/big", tag: "latest" } as never;
    const rows: { ms: number; elu: number; main: number; cpu: number }[] = [];
    for (let r = 0; r < rounds + 1; r++) {
      rmSync(join(root, "io.containerd.content.v1.content"), { recursive: true, force: true });
      execFileSync("sync");
      const reg = new Registry(ref, [], undefined);
      const order = new HeadFirst();
      const threads0 = threadsCpu();
      const main0 = mainCpu();
      const elu0 = performance.eventLoopUtilization();
      const cpu0 = process.cpuUsage();
      const t0 = performance.now();
      await Promise.all(
        info.digests.map(async (digest, index) => {
          const body = order.read(index, await reg.blob(digest));
          let told = 0;
          const onProgress = (bytes: number): void => {
            if (bytes - told >= 512 * 1024) told = bytes;
          };
          // An older placeBlob takes onProgress itself as its fourth parameter (no default: length 4).
          await placeBlob(
            root,
            { digest, size: mb * 1e6 },
            body,
            (placeBlob.length === 4 ? onProgress : { onProgress, onWritten: releaseChunk }) as never,
          );
        }),
      );
      const ms = performance.now() - t0;
      const elu = performance.eventLoopUtilization(elu0);
      const cpu = process.cpuUsage(cpu0);
      const mainMs = mainCpu() - main0;
      if (process.env.THREADS)
        process.stdout.write(
          `${[...threadsCpu()].map(([k, v]) => `${k} ${(v - (threads0.get(k) ?? 0)).toFixed(0)}`).join(", ")}\n`,
        );
      // The first round warms up (the worker, the JIT): not counted.
      if (r > 0) rows.push({ ms, elu: elu.active, main: mainMs, cpu: (cpu.user + cpu.system) / 1000 });
    }
    const med = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    process.stdout.write(
      `${dist}: 2 x ${mb} MB, median of ${rounds}: wall ${med(rows.map((x) => x.ms)).toFixed(0)} ms, main thread CPU ${med(rows.map((x) => x.main)).toFixed(0)} ms (event loop busy ${med(rows.map((x) => x.elu)).toFixed(0)} ms), process CPU ${med(rows.map((x) => x.cpu)).toFixed(0)} ms\n`,
    );
  } finally {
    server.kill();
    rmSync(root, { recursive: true, force: true });
  }
}

void main();
