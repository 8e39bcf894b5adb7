// `docker stats`: a running container's figures read from its cgroups (CPU time, memory, pids, block I/O;
// cgroup v1 or v2, wherever /proc/<pid>/cgroup says its init process is) and from its network namespace's
// interfaces (/proc/<pid>/net/dev), in the JSON shape the docker CLI computes its columns from. Every file
// is parsed as text that may be missing or odd (a figure that cannot be read is 0, as dockerd leaves it).

import { readFile } from "node:fs/promises";
import { cpus, totalmem } from "node:os";
import { join } from "node:path";
import { ZERO_TIME } from "./container.js";
import type { BlkioEntry, ContainerStatsJSON, CpuStats, NetworkStats, StatsStream } from "./types.js";

/** Where the kernel's files are (tests give a directory of their own). */
export interface StatsRoots {
  proc: string;
  cgroup: string;
  /** The kernel's clock ticks per second (USER_HZ: /proc/stat counts in them). */
  ticksPerSecond: number;
}

export const HOST_ROOTS: StatsRoots = { proc: "/proc", cgroup: "/sys/fs/cgroup", ticksPerSecond: 100 };

async function text(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, "utf8");
  } catch {
    return undefined;
  }
}

/** A non-negative integer figure of a file ("max" and anything unreadable: 0). */
function num(s: string | undefined): number {
  const n = Number((s ?? "").trim());
  return Number.isSafeInteger(n) && n >= 0 ? n : 0;
}

/** "key value" lines (memory.stat, cpu.stat) as numbers. */
function keyValues(s: string | undefined): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of (s ?? "").split("\n")) {
    const [k, v] = line.trim().split(/\s+/);
    if (k && v !== undefined && /^[a-z_0-9]+$/.test(k)) out[k] = num(v);
  }
  return out;
}

/** The cgroup directories of a process, by controller ("" for the v2 unified hierarchy). */
async function cgroupsOf(roots: StatsRoots, pid: number): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const line of ((await text(join(roots.proc, String(pid), "cgroup"))) ?? "").split("\n")) {
    const m = /^\d+:([^:]*):(\/.*)$/.exec(line.trim());
    if (!m || m[2]!.includes("..")) continue;
    for (const controller of m[1]!.split(",")) out.set(controller, m[2]!);
  }
  return out;
}

/** The host's CPU time in ns (the first line of /proc/stat: user to softirq, as dockerd sums it). */
async function systemCpuNs(roots: StatsRoots): Promise<number> {
  const line = ((await text(join(roots.proc, "stat"))) ?? "").split("\n").find((l) => l.startsWith("cpu "));
  const ticks = (line ?? "").trim().split(/\s+/).slice(1, 8).map(num);
  return (ticks.reduce((a, b) => a + b, 0) * 1e9) / roots.ticksPerSecond;
}

/** Bytes and packets of each interface but lo (/proc/<pid>/net/dev: the process's network namespace). */
async function networksOf(roots: StatsRoots, pid: number): Promise<Record<string, NetworkStats>> {
  const out: Record<string, NetworkStats> = {};
  const lines = ((await text(join(roots.proc, String(pid), "net", "dev"))) ?? "").split("\n").slice(2);
  for (const line of lines) {
    const m = /^\s*([^:\s]+):\s*(.*)$/.exec(line);
    if (!m || m[1] === "lo") continue;
    const f = m[2]!.trim().split(/\s+/).map(num);
    out[m[1]!] = {
      rx_bytes: f[0] ?? 0,
      rx_packets: f[1] ?? 0,
      rx_errors: f[2] ?? 0,
      rx_dropped: f[3] ?? 0,
      tx_bytes: f[8] ?? 0,
      tx_packets: f[9] ?? 0,
      tx_errors: f[10] ?? 0,
      tx_dropped: f[11] ?? 0,
    };
  }
  return out;
}

/** blkio's "MAJ:MIN Op value" lines (v1). */
function blkioV1(s: string | undefined): BlkioEntry[] {
  const out: BlkioEntry[] = [];
  for (const line of (s ?? "").split("\n")) {
    const m = /^(\d+):(\d+) (\w+) (\d+)$/.exec(line.trim());
    if (m) out.push({ major: num(m[1]), minor: num(m[2]), op: m[3]!, value: num(m[4]) });
  }
  return out;
}

/** io.stat's "MAJ:MIN rbytes=.. wbytes=.." lines (v2), as docker reports them ("read", "write"). */
function blkioV2(s: string | undefined): BlkioEntry[] {
  const out: BlkioEntry[] = [];
  for (const line of (s ?? "").split("\n")) {
    const m = /^(\d+):(\d+) (.*)$/.exec(line.trim());
    if (!m) continue;
    const kv = Object.fromEntries(m[3]!.split(" ").map((p) => p.split("=") as [string, string]));
    out.push({ major: num(m[1]), minor: num(m[2]), op: "read", value: num(kv.rbytes) });
    out.push({ major: num(m[1]), minor: num(m[2]), op: "write", value: num(kv.wbytes) });
  }
  return out;
}

type Figures = Pick<ContainerStatsJSON, "cpu_stats" | "memory_stats" | "pids_stats" | "blkio_stats">;

async function cgroupV1(roots: StatsRoots, groups: Map<string, string>): Promise<Figures> {
  const dir = (controller: string, file: string) => join(roots.cgroup, controller, groups.get(controller) ?? "", file);
  const [usage, percpu, stat, mem, maxMem, limit, memStat, failcnt, pids, pidsMax, blkio, throttled] =
    await Promise.all([
      text(dir("cpuacct", "cpuacct.usage")),
      text(dir("cpuacct", "cpuacct.usage_percpu")),
      text(dir("cpuacct", "cpuacct.stat")),
      text(dir("memory", "memory.usage_in_bytes")),
      text(dir("memory", "memory.max_usage_in_bytes")),
      text(dir("memory", "memory.limit_in_bytes")),
      text(dir("memory", "memory.stat")),
      text(dir("memory", "memory.failcnt")),
      text(dir("pids", "pids.current")),
      text(dir("pids", "pids.max")),
      text(dir("blkio", "blkio.throttle.io_service_bytes_recursive")),
      text(dir("cpu", "cpu.stat")),
    ]);
  const ticks = keyValues(stat);
  const t = keyValues(throttled);
  const tickNs = 1e9 / roots.ticksPerSecond;
  return {
    cpu_stats: {
      cpu_usage: {
        total_usage: num(usage),
        percpu_usage: (percpu ?? "").trim().split(/\s+/).filter(Boolean).map(num),
        usage_in_kernelmode: (ticks.system ?? 0) * tickNs,
        usage_in_usermode: (ticks.user ?? 0) * tickNs,
      },
      system_cpu_usage: 0,
      online_cpus: 0,
      throttling_data: {
        periods: t.nr_periods ?? 0,
        throttled_periods: t.nr_throttled ?? 0,
        throttled_time: t.throttled_time ?? 0,
      },
    },
    memory_stats: {
      usage: num(mem),
      max_usage: num(maxMem),
      stats: keyValues(memStat),
      failcnt: num(failcnt),
      limit: num(limit),
    },
    pids_stats: { current: num(pids), limit: num(pidsMax) },
    blkio_stats: { io_service_bytes_recursive: blkioV1(blkio) },
  };
}

async function cgroupV2(roots: StatsRoots, path: string): Promise<Figures> {
  const dir = (file: string) => join(roots.cgroup, path, file);
  const [cpu, mem, limit, memStat, pids, pidsMax, io] = await Promise.all(
    ["cpu.stat", "memory.current", "memory.max", "memory.stat", "pids.current", "pids.max", "io.stat"].map((f) =>
      text(dir(f)),
    ),
  );
  const c = keyValues(cpu);
  return {
    cpu_stats: {
      cpu_usage: {
        total_usage: (c.usage_usec ?? 0) * 1000,
        usage_in_kernelmode: (c.system_usec ?? 0) * 1000,
        usage_in_usermode: (c.user_usec ?? 0) * 1000,
      },
      system_cpu_usage: 0,
      online_cpus: 0,
      throttling_data: {
        periods: c.nr_periods ?? 0,
        throttled_periods: c.nr_throttled ?? 0,
        throttled_time: (c.throttled_usec ?? 0) * 1000,
      },
    },
    memory_stats: { usage: num(mem), stats: keyValues(memStat), limit: num(limit) },
    pids_stats: { current: num(pids), limit: num(pidsMax) },
    blkio_stats: { io_service_bytes_recursive: blkioV2(io) },
  };
}

const EMPTY_CPU: CpuStats = {
  cpu_usage: { total_usage: 0, usage_in_kernelmode: 0, usage_in_usermode: 0 },
  system_cpu_usage: 0,
  online_cpus: 0,
  throttling_data: { periods: 0, throttled_periods: 0, throttled_time: 0 },
};

/** What a container that does not run shows: every figure 0 (as dockerd answers for a stopped container). */
export function emptyStats(id: string, name: string): ContainerStatsJSON {
  return {
    read: ZERO_TIME,
    preread: ZERO_TIME,
    pids_stats: {},
    blkio_stats: { io_service_bytes_recursive: null },
    num_procs: 0,
    storage_stats: {},
    cpu_stats: EMPTY_CPU,
    precpu_stats: EMPTY_CPU,
    memory_stats: {},
    name: `/${name}`,
    id,
  };
}

/**
 * One sample of a running container whose init process is `pid`; `previous` (the sample before, if any)
 * gives precpu_stats and preread, from which the CLI computes the CPU percentage.
 */
export async function sampleStats(
  c: { id: string; name: string; pid: number; memoryLimitBytes: number },
  previous: ContainerStatsJSON | undefined,
  roots: StatsRoots = HOST_ROOTS,
  now: () => Date = () => new Date(),
): Promise<ContainerStatsJSON> {
  const groups = await cgroupsOf(roots, c.pid);
  const unified = groups.size === 1 && groups.has("");
  // Without its process's cgroup file (it exited meanwhile): where shoal's spec puts it (spec.ts).
  const fallback = `/shoal/${c.id}`;
  const v1 = new Map(["cpuacct", "cpu", "memory", "pids", "blkio"].map((k) => [k, groups.get(k) ?? fallback]));
  const figures = unified ? await cgroupV2(roots, groups.get("")!) : await cgroupV1(roots, v1);
  const [system, networks] = await Promise.all([systemCpuNs(roots), networksOf(roots, c.pid)]);
  figures.cpu_stats.system_cpu_usage = system;
  figures.cpu_stats.online_cpus = cpus().length;
  // A cgroup without a limit says so with a huge number (or "max"): the limit is the host's memory then, as
  // dockerd reports it.
  const limit = figures.memory_stats.limit ?? 0;
  if (limit <= 0 || limit > totalmem()) figures.memory_stats.limit = c.memoryLimitBytes || totalmem();
  return {
    read: now().toISOString(),
    preread: previous?.read ?? ZERO_TIME,
    num_procs: 0,
    storage_stats: {},
    precpu_stats: previous?.cpu_stats ?? EMPTY_CPU,
    ...figures,
    name: `/${c.name}`,
    id: c.id,
    networks,
  };
}

/** What a stats stream samples: the container while it runs, undefined once it does not. */
export type StatsTarget = { id: string; name: string; pid: number; memoryLimitBytes: number };

/**
 * The samples of a stats request, as dockerd sends them: with `stream`, one each interval (the first
 * without precpu figures) until the client goes or the container stops; without, one; unless `oneShot`,
 * after a first one taken an interval before, so that its CPU figures have a delta. A container that does
 * not run gives one sample of zeros.
 */
export function statsStream(
  who: { id: string; name: string },
  current: () => StatsTarget | undefined,
  opts: { stream: boolean; oneShot: boolean },
  wait: (ms: number) => Promise<void>,
  intervalMs = 1000,
  roots: StatsRoots = HOST_ROOTS,
): StatsStream {
  let cancelled = false;
  async function* samples(): AsyncGenerator<ContainerStatsJSON> {
    let previous: ContainerStatsJSON | undefined;
    let sent = 0;
    const first = !opts.stream && !opts.oneShot ? current() : undefined;
    if (first) {
      previous = await sampleStats(first, undefined, roots);
      await wait(intervalMs);
    }
    while (!cancelled) {
      const t = current();
      if (!t) {
        if (sent === 0) yield emptyStats(who.id, who.name);
        return;
      }
      previous = await sampleStats(t, previous, roots);
      sent++;
      yield previous;
      if (!opts.stream) return;
      await wait(intervalMs);
    }
  }
  return {
    samples: samples(),
    cancel: () => {
      cancelled = true;
    },
  };
}
