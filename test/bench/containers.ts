// Container benchmark: what shoal adds on top of containerd, on a lab.
//
//   npm run bench:containers
//   npm run bench:containers -- --containers 50 --pull-mb 50
//   npm run bench:containers -- --only run --log-level debug --keep-log /tmp/h1.log   (runs only; h1's log kept)
//
// Needs root, containerd, runc, docker-registry, skopeo and the docker CLI (/usr/local/bin/docker). Lab
// "bcont": 2 hosts (deploy/lab.ts); h1 runs shoald (with its own containerd), h2 a registry holding the
// images, built here from busybox-static. Everything made here is removed at the end, also on failure.
//
// 1. Run latency. N times `docker run -d --network none busybox sleep 3600` against h1 (the image is
//    present): the CLI's wall time, and the Engine API's (POST /containers/create + /start, in process).
//    The floor: the same containerd (h1's, through its API from here, in shoal's namespace) doing the same
//    with no networking: prepare the root file system snapshot, create the container and its task (FIFOs
//    for stdio), start it. Rounds interleave the three; p50 and p99 of each, and the ratios to the floor.
// 2. Pull. An image of ~M MB (busybox and two layers of random bytes) from h2's registry: `docker pull`
//    against h1 (download, verify, unpack) against `skopeo copy` of the same image from the same registry
//    into an OCI directory (download and verify; no unpack), both run in h1's network namespace. Rounds
//    alternate; the figure is the median, each round's values beside it, and the CPU each process spent
//    (shoald, containerd, the registry, the client). Beside them, containerd's own client (`ctr images
//    pull`: download, verify, unpack, in a containerd namespace of its own on h1's containerd): what
//    containerd costs for that work. Each pull starts with the image in neither namespace: containerd
//    shares blobs across namespaces, and ctr takes one another namespace holds without downloading it.
//
// Output: a table on stdout and bench-results/containers.json (all samples).

import { execFile } from "node:child_process";
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import http from "node:http";
import { dirname, join } from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { buildImage, ociArchive, randomLayer } from "../../deploy/busybox-image.js";
import { Lab, type LabHost } from "../../deploy/lab.js";
import { Containerd } from "../../src/runtime/containerd/client.js";
import { fifoPaths, mkfifos, openFifos, TaskClient } from "../../src/runtime/containerd/tasks.js";
import { containerSpec } from "../../src/runtime/spec.js";

const execFileP = promisify(execFile);
const HERE = dirname(fileURLToPath(import.meta.url));
const DOCKER = "/usr/local/bin/docker";
const API = "/v1.50";

function option(name: string, def: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : def;
}

function stringOption(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)] ?? Number.NaN;
}

function api(h: LabHost, method: string, path: string, body?: unknown): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: h.socket, method, path: `${API}${path}`, agent: false }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => {
        text += d;
      });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, text }));
    });
    req.on("error", reject);
    if (body !== undefined) {
      req.setHeader("Content-Type", "application/json");
      req.end(JSON.stringify(body));
    } else req.end();
  });
}

async function timed(f: () => Promise<unknown>): Promise<number> {
  const t = performance.now();
  await f();
  return performance.now() - t;
}

/**
 * One create+start through containerd's API, as shoal's runtime does it but with no networking; resolves to
 * its duration. Its FIFOs are made before the clock starts: a Go client of containerd makes one with a
 * system call (mkfifo(2)), Node only with a process (mkfifo(1), ~10 ms each), and the floor is what
 * containerd costs, not what a process costs.
 */
async function floorRun(tasks: TaskClient, dir: string, id: string, topChain: string): Promise<number> {
  const cdir = join(dir, id);
  mkdirSync(cdir, { recursive: true });
  const paths = fifoPaths(cdir, "init", { stdin: false, tty: false });
  await mkfifos([paths.stdout, paths.stderr]);
  const t = performance.now();
  await tasks.prepareRootfs(id, topChain);
  // Opened as a start opens new FIFOs (shoald holding a writer until the shim has its ends), made already.
  const fifos = await openFifos(paths, true, async () => undefined);
  const spec = containerSpec({
    id,
    dir: cdir,
    hostname: id.slice(0, 12),
    args: ["sleep", "3600"],
    env: ["PATH=/bin"],
    cwd: "/",
    user: { uid: 0, gid: 0 },
    terminal: false,
    netnsPath: null,
    binds: [],
    memoryBytes: 0,
    nanoCpus: 0,
    readonlyRootfs: false,
  });
  try {
    await tasks.start(id, spec, "snapshot", paths, false, {});
    const ms = performance.now() - t;
    fifos.release();
    return ms;
  } finally {
    // Closed also when the start failed: open FIFOs would keep this process (and the lock) for good.
    fifos.close();
  }
}

/** Kills and removes the floor's tasks, containers and snapshots (also those a failed run left half made). */
async function removeFloor(tasks: TaskClient, ids: string[]): Promise<void> {
  for (const id of ids) {
    const killed = await tasks.kill(id, 9).then(
      () => true,
      () => false,
    );
    if (killed) await tasks.wait(id).catch(() => undefined);
    await tasks.cleanup(id).catch(() => undefined);
    await tasks.removeRootfs(id).catch(() => undefined);
  }
}

/** The registry answers h1 (where shoald pulls from): else the figures would measure a timeout. */
async function reachable(lab: Lab, h: LabHost, reg: string): Promise<void> {
  const r = await lab
    .exec(h, ["curl", "-sS", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}", `http://${reg}/v2/`])
    .then(
      (x) => x.stdout,
      (e: { stderr?: string; message: string }) => `${e.stderr ?? ""}${e.message}`,
    );
  if (r !== "200") throw new Error(`the lab registry ${reg} does not answer ${h.name}: ${r.trim()}`);
}

function line(name: string, xs: number[], base?: number[]): string {
  const ratios = base
    ? `   ${(percentile(xs, 50) / percentile(base, 50)).toFixed(2)}x / ${(percentile(xs, 99) / percentile(base, 99)).toFixed(2)}x floor`
    : "";
  return `${name.padEnd(38)} p50 ${percentile(xs, 50).toFixed(1).padStart(7)} ms   p99 ${percentile(xs, 99).toFixed(1).padStart(7)} ms${ratios}`;
}

function writeResults(results: Record<string, unknown>): void {
  const outDir = join(HERE, "..", "..", "..", "bench-results");
  mkdirSync(outDir, { recursive: true });
  writeFileSync(join(outDir, "containers.json"), `${JSON.stringify(results, null, 2)}\n`);
}

type Docker = (...args: string[]) => Promise<unknown>;

/**
 * N rounds of: `docker run -d`, the Engine API's create+start, the floor (containerd alone), and the CLI doing
 * no request (`docker --version`: what the CLI's process costs). Interleaved, so that a load that comes and
 * goes on the machine weighs on each the same (the floor measured after the rest once came out 20% lower
 * than the runs it was compared with).
 */
async function runLatency(lab: Lab, h1: LabHost, docker: Docker, n: number) {
  const cli: number[] = [];
  const cliAlone: number[] = [];
  const engine: number[] = [];
  const engineCreate: number[] = [];
  const engineStart: number[] = [];
  // CPU (ms) shoald and containerd (with its shims and runc: its children) spent on each docker run.
  const shoaldPid = lab.pid(h1);
  const containerdPid = pidIn(join(h1.execRoot, "containerd", "containerd.pid"));
  const cpu = { shoald: 0, containerd: 0 };
  const cd = new Containerd(join(h1.execRoot, "containerd", "containerd.sock"));
  // runc keeps its state where shoald has it keep it (under h1's exec root).
  const tasks = new TaskClient(
    cd,
    (await import("pino")).default({ level: "silent" }),
    join(h1.execRoot, "runtime-runc"),
  );
  const inspect = JSON.parse((await api(h1, "GET", "/images/busybox/json")).text) as { RootFS: { Layers: string[] } };
  const topChain = inspect.RootFS.Layers[0]!;
  const floorDir = join(lab.root, "floor");
  const floor: number[] = [];
  const floorIds: string[] = [];
  try {
    for (let i = 0; i < n; i++) {
      // The first docker run unpacks the image (the floor's snapshots are made on it).
      const before = { shoald: cpuMs(shoaldPid), containerd: cpuMs(containerdPid, true) };
      cli.push(await timed(() => docker("run", "-d", "--network", "none", "busybox", "sleep", "3600")));
      cpu.shoald += cpuMs(shoaldPid) - before.shoald;
      cpu.containerd += cpuMs(containerdPid, true) - before.containerd;
      let id = "";
      const create = await timed(async () => {
        const c = await api(h1, "POST", "/containers/create", {
          Image: "busybox",
          Cmd: ["sleep", "3600"],
          HostConfig: { NetworkMode: "none" },
        });
        id = (JSON.parse(c.text) as { Id: string }).Id;
      });
      const start = await timed(async () => {
        const s = await api(h1, "POST", `/containers/${id}/start`);
        if (s.status !== 204) throw new Error(`start: ${s.status} ${s.text}`);
      });
      engineCreate.push(create);
      engineStart.push(start);
      engine.push(create + start);
      const floorId = `floor-${String(i).padStart(58, "0")}`;
      floorIds.push(floorId);
      floor.push(await floorRun(tasks, floorDir, floorId, topChain));
      cliAlone.push(await timed(() => docker("--version")));
    }
  } finally {
    // The lab's cleanup knows shoal's containers only: the floor's go here, whatever happened.
    await removeFloor(tasks, floorIds);
    cd.close();
  }
  await lab.removeContainers(h1);
  return {
    cli,
    cliAlone,
    engine,
    engineCreate,
    engineStart,
    floor,
    cpuPerRun: { shoald: cpu.shoald / n, containerd: cpu.containerd / n },
  };
}

/**
 * CPU time (user+system, ms) a process has used so far (`children`: with that of its children that have
 * exited and been waited for); 0 when it is gone.
 */
function cpuMs(pid: number | undefined, children = false): number {
  if (!pid) return 0;
  try {
    // The fields after the command's parenthesis: utime and stime are the 12th and 13th, cutime and cstime
    // the 14th and 15th (clock ticks, 100 Hz).
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const own = Number(f[11]) + Number(f[12]);
    return (own + (children ? Number(f[13]) + Number(f[14]) : 0)) * 10;
  } catch {
    return 0;
  }
}

function pidIn(path: string): number | undefined {
  try {
    return Number(readFileSync(path, "utf8").trim()) || undefined;
  } catch {
    return undefined;
  }
}

/** A pull's wall time and the CPU each process spent on it (ms). */
interface PullSample {
  ms: number;
  cpu: Record<string, number>;
}

/** Runs `f`, measuring its wall time and the CPU the `pids` used meanwhile (plus `own`, the client's CPU). */
async function sampled(
  pids: Record<string, number | undefined>,
  f: () => Promise<number | undefined>,
): Promise<PullSample> {
  const before = Object.fromEntries(Object.entries(pids).map(([k, p]) => [k, cpuMs(p)]));
  const t = performance.now();
  const own = await f();
  const ms = performance.now() - t;
  const cpu = Object.fromEntries(Object.entries(pids).map(([k, p]) => [k, cpuMs(p) - before[k]!]));
  if (own !== undefined) cpu.client = own;
  return { ms, cpu };
}

/** The client's CPU (ms) from GNU time's "-f %U %S" line, the last of its stderr. */
function clientCpu(stderr: string): number {
  const [u, sys] = stderr.trim().split("\n").at(-1)!.split(" ").map(Number);
  return Math.round(((u ?? 0) + (sys ?? 0)) * 1000);
}

/**
 * `docker pull` against h1, `skopeo copy` and `ctr images pull` of the same ~M MB image from h2's registry,
 * rounds interleaved. Before each pull the image is gone from both of h1's containerd namespaces (shoal's and
 * ctr's): containerd shares blobs between namespaces, and a client that asks first (ctr does) takes a blob
 * another namespace holds without downloading it.
 */
async function pullBench(
  lab: Lab,
  h1: LabHost,
  h2: LabHost,
  reg: string,
  docker: Docker,
  rounds: number,
  pullMb: number,
): Promise<Record<string, unknown>> {
  const big = join(lab.root, "big.tar");
  writeFileSync(
    big,
    ociArchive(
      buildImage({ extraLayers: [randomLayer("a", (pullMb * 1e6) / 2), randomLayer("b", (pullMb * 1e6) / 2)] }),
    ),
  );
  const image = `${reg}/bench/big:latest`;
  await lab.pushImage(h2, big, image);
  const sock = join(h1.execRoot, "containerd", "containerd.sock");
  // containerd's own client in a namespace of its own (what containerd costs for the same work as shoal's).
  const ctr = (...args: string[]) =>
    lab.exec(h1, ["/usr/bin/time", "-f", "%U %S", "ctr", "-a", sock, "-n", "bench-ctr", ...args], {
      timeoutMs: 300_000,
    });
  const pids = {
    shoald: lab.pid(h1),
    containerd: pidIn(join(h1.execRoot, "containerd", "containerd.pid")),
    registry: pidIn(join(h2.dir, "registry.pid")),
  };
  const gone = async (): Promise<void> => {
    await docker("rmi", "-f", image).catch(() => undefined);
    await ctr("images", "rm", "--sync", image).catch(() => undefined);
  };
  const samples: Record<"docker" | "skopeo" | "ctr", PullSample[]> = { docker: [], skopeo: [], ctr: [] };
  for (let r = 0; r < rounds; r++) {
    await gone();
    samples.docker.push(await sampled(pids, async () => void (await docker("pull", image))));
    await gone();
    samples.ctr.push(
      await sampled(pids, async () => clientCpu((await ctr("images", "pull", "--plain-http", image)).stderr)),
    );
    await gone();
    const out = join(lab.root, `skopeo-${r}`);
    const copy = ["skopeo", "copy", "--src-tls-verify=false", `docker://${image}`, `oci:${out}`];
    samples.skopeo.push(
      await sampled({ registry: pids.registry }, async () =>
        clientCpu((await lab.exec(h1, ["/usr/bin/time", "-f", "%U %S", ...copy], { timeoutMs: 300_000 })).stderr),
      ),
    );
  }
  await gone();
  const show = (name: string, xs: PullSample[]): void => {
    const ms = xs.map((x) => x.ms);
    const cpu = Object.keys(xs[0]?.cpu ?? {})
      .map(
        (k) =>
          `${k} ${percentile(
            xs.map((x) => x.cpu[k]!),
            50,
          ).toFixed(0)}`,
      )
      .join(", ");
    process.stdout.write(
      `${name.padEnd(42)} ${percentile(ms, 50).toFixed(0).padStart(6)} ms   [${ms.map((x) => x.toFixed(0)).join(" ")}]   CPU ms: ${cpu}\n`,
    );
  };
  process.stdout.write(
    `\npull of a ${pullMb} MB image from the lab registry (median of ${rounds}; each round's values)\n`,
  );
  show("docker pull (download+verify+unpack)", samples.docker);
  show("ctr images pull (download+verify+unpack)", samples.ctr);
  show("skopeo copy (download+verify, no unpack)", samples.skopeo);
  const med = (xs: PullSample[]): number =>
    percentile(
      xs.map((x) => x.ms),
      50,
    );
  process.stdout.write(
    `ratio docker pull / skopeo: ${(med(samples.docker) / med(samples.skopeo)).toFixed(2)}, / ctr: ${(med(samples.docker) / med(samples.ctr)).toFixed(2)}\n`,
  );
  return { ...samples, mb: pullMb };
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error("the benchmark builds network namespaces: run it as root");
  const n = option("containers", 50);
  const pullMb = option("pull-mb", 50);
  const rounds = option("rounds", 3);
  // "run" or "pull": only that part; a log level of "debug" logs every request with its duration.
  const only = stringOption("only");
  const keepLog = stringOption("keep-log");
  // shoald --max-concurrent-downloads (0: shoald's default).
  const downloads = option("max-concurrent-downloads", 0);
  const lab = new Lab({
    name: "bcont",
    daemonArgs: [
      "--insecure-registry",
      "192.0.2.2:5000",
      ...(downloads > 0 ? ["--max-concurrent-downloads", String(downloads)] : []),
    ],
    logLevel: stringOption("log-level") ?? "warn",
  });
  await lab.down();
  const stop = (): void => {
    void lab.down().finally(() => process.exit(1));
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
  const results: Record<string, unknown> = {};
  try {
    const [h1, h2] = (await lab.up(2)) as [LabHost, LabHost];
    const reg = await lab.startRegistry(h2);
    const small = join(lab.root, "busybox.tar");
    writeFileSync(small, ociArchive(buildImage()));
    await lab.pushImage(h2, small, `${reg}/bench/busybox:latest`);
    await reachable(lab, h1, reg);
    const dockerEnv = { ...process.env, DOCKER_HOST: `unix://${h1.socket}`, DOCKER_CONFIG: join(lab.root, "docker") };
    const docker = (...args: string[]) => execFileP(DOCKER, args, { env: dockerEnv, timeout: 300_000 });
    await docker("pull", `${reg}/bench/busybox:latest`);
    await docker("tag", `${reg}/bench/busybox:latest`, "busybox");

    // 1. run latency
    if (only !== "pull") {
      const run = await runLatency(lab, h1, docker, n);
      results.run = run;
      process.stdout.write(`\ncontainers: ${n} runs each, image present, --network none\n`);
      process.stdout.write(`${line("containerd create+start (floor)", run.floor)}\n`);
      process.stdout.write(`${line("Engine API create+start", run.engine, run.floor)}\n`);
      process.stdout.write(`${line("  of which create", run.engineCreate)}\n`);
      process.stdout.write(`${line("  of which start", run.engineStart)}\n`);
      process.stdout.write(`${line("docker run -d (CLI wall time)", run.cli, run.floor)}\n`);
      process.stdout.write(`${line("docker --version (the CLI, no request)", run.cliAlone)}\n`);
      process.stdout.write(
        `CPU per docker run: shoald ${run.cpuPerRun.shoald.toFixed(1)} ms, containerd (and what it ran and waited for) ${run.cpuPerRun.containerd.toFixed(1)} ms\n`,
      );
    }
    if (only === "run") {
      writeResults(results);
      return;
    }
    // 2. pull
    results.pull = await pullBench(lab, h1, h2, reg, docker, rounds, pullMb);
    writeResults(results);
  } finally {
    if (keepLog) {
      const h1 = lab.hosts()[0];
      if (h1) copyFileSync(h1.log, keepLog);
    }
    await lab.down();
  }
}

main().catch((e: unknown) => {
  process.stdout.write(`\nBENCHMARK FAILED: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exitCode = 1;
});
