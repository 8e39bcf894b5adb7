// docker stats' figures from the kernel's files: a container's cgroup (v1 per controller, or the v2
// unified hierarchy, wherever /proc/<pid>/cgroup says) and its namespace's interfaces, in the JSON the CLI
// computes its columns from; and the samples of a request (one, one after a primer, or a stream).

import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { type StatsRoots, sampleStats, statsStream } from "../../src/runtime/stats.js";
import type { ContainerStatsJSON } from "../../src/runtime/types.js";

const PID = 4242;
const ID = "ab".repeat(32);
const NET_DEV = `Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0
  eth0:    3700      40    1    2    0     0          0         0     1370      17    3    4    0     0       0          0
`;

let dirs: string[] = [];
afterEach(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  dirs = [];
});

/** A /proc and /sys/fs/cgroup of our own: `files` relative to the root. */
function tree(files: Record<string, string>): StatsRoots {
  const root = mkdtempSync(join(tmpdir(), "shoal-stats-"));
  dirs.push(root);
  for (const [path, text] of Object.entries(files)) {
    mkdirSync(dirname(join(root, path)), { recursive: true });
    writeFileSync(join(root, path), text);
  }
  return { proc: join(root, "proc"), cgroup: join(root, "cgroup"), ticksPerSecond: 100 };
}

const common = {
  "proc/stat": "cpu  100 0 50 800 10 0 40 0 0 0\ncpu0 100 0 50 800 10 0 40 0 0 0\n",
  [`proc/${PID}/net/dev`]: NET_DEV,
};

describe("stats from cgroup v1", () => {
  const g = `/shoal/${ID}`;
  const roots = () =>
    tree({
      ...common,
      [`proc/${PID}/cgroup`]: `4:memory:${g}\n2:cpuacct,cpu:${g}\n8:pids:${g}\n7:blkio:${g}\n0::/\n`,
      [`cgroup/cpuacct${g}/cpuacct.usage`]: "5000000000\n",
      [`cgroup/cpuacct${g}/cpuacct.usage_percpu`]: "3000000000 2000000000 \n",
      [`cgroup/cpuacct${g}/cpuacct.stat`]: "user 300\nsystem 200\n",
      [`cgroup/cpu${g}/cpu.stat`]: "nr_periods 10\nnr_throttled 2\nthrottled_time 999\n",
      [`cgroup/memory${g}/memory.usage_in_bytes`]: "8388608\n",
      [`cgroup/memory${g}/memory.max_usage_in_bytes`]: "9000000\n",
      [`cgroup/memory${g}/memory.limit_in_bytes`]: "67108864\n",
      [`cgroup/memory${g}/memory.stat`]: "cache 4096\ntotal_inactive_file 1048576\n",
      [`cgroup/pids${g}/pids.current`]: "3\n",
      [`cgroup/pids${g}/pids.max`]: "max\n",
      [`cgroup/blkio${g}/blkio.throttle.io_service_bytes_recursive`]:
        "8:0 Read 4096\n8:0 Write 8192\n8:0 Total 12288\nTotal 12288\n",
    });

  it("reads CPU, memory, pids, block I/O and network figures in docker's shape", async () => {
    const s = await sampleStats({ id: ID, name: "web", pid: PID, memoryLimitBytes: 0 }, undefined, roots());
    expect(s).toMatchObject({
      name: "/web",
      id: ID,
      preread: "0001-01-01T00:00:00Z",
      cpu_stats: {
        cpu_usage: {
          total_usage: 5_000_000_000,
          percpu_usage: [3_000_000_000, 2_000_000_000],
          usage_in_usermode: 3_000_000_000,
          usage_in_kernelmode: 2_000_000_000,
        },
        // (100 + 50 + 800 + 10 + 40) ticks of 10 ms.
        system_cpu_usage: 10_000_000_000,
        throttling_data: { periods: 10, throttled_periods: 2, throttled_time: 999 },
      },
      precpu_stats: { cpu_usage: { total_usage: 0 }, system_cpu_usage: 0 },
      memory_stats: { usage: 8388608, max_usage: 9000000, limit: 67108864, stats: { total_inactive_file: 1048576 } },
      pids_stats: { current: 3, limit: 0 },
      blkio_stats: {
        io_service_bytes_recursive: [
          { major: 8, minor: 0, op: "Read", value: 4096 },
          { major: 8, minor: 0, op: "Write", value: 8192 },
          { major: 8, minor: 0, op: "Total", value: 12288 },
        ],
      },
    });
    expect(s.networks).toEqual({
      eth0: {
        rx_bytes: 3700,
        rx_packets: 40,
        rx_errors: 1,
        rx_dropped: 2,
        tx_bytes: 1370,
        tx_packets: 17,
        tx_errors: 3,
        tx_dropped: 4,
      },
    });
  });

  it("gives the previous sample's CPU figures as precpu_stats (the CLI's CPU % is their delta)", async () => {
    const r = roots();
    const first = await sampleStats({ id: ID, name: "web", pid: PID, memoryLimitBytes: 0 }, undefined, r);
    const second = await sampleStats({ id: ID, name: "web", pid: PID, memoryLimitBytes: 0 }, first, r);
    expect(second.precpu_stats).toEqual(first.cpu_stats);
    expect(second.preread).toBe(first.read);
  });
});

describe("stats from cgroup v2", () => {
  it("reads the unified hierarchy's files; no memory limit is the host's memory", async () => {
    const g = `/shoal/${ID}`;
    const r = tree({
      ...common,
      [`proc/${PID}/cgroup`]: `0::${g}\n`,
      [`cgroup${g}/cpu.stat`]: "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\nnr_periods 0\n",
      [`cgroup${g}/memory.current`]: "1048576\n",
      [`cgroup${g}/memory.max`]: "max\n",
      [`cgroup${g}/memory.stat`]: "inactive_file 4096\n",
      [`cgroup${g}/pids.current`]: "2\n",
      [`cgroup${g}/pids.max`]: "100\n",
      [`cgroup${g}/io.stat`]: "8:0 rbytes=100 wbytes=200 rios=1 wios=2\n",
    });
    const s = await sampleStats({ id: ID, name: "web", pid: PID, memoryLimitBytes: 0 }, undefined, r);
    expect(s.cpu_stats.cpu_usage).toEqual({
      total_usage: 2_500_000,
      usage_in_kernelmode: 500_000,
      usage_in_usermode: 2_000_000,
    });
    expect(s.memory_stats.usage).toBe(1048576);
    expect(s.memory_stats.limit).toBeGreaterThan(1048576);
    expect(s.pids_stats).toEqual({ current: 2, limit: 100 });
    expect(s.blkio_stats.io_service_bytes_recursive).toEqual([
      { major: 8, minor: 0, op: "read", value: 100 },
      { major: 8, minor: 0, op: "write", value: 200 },
    ]);
  });
});

describe("the samples of a stats request", () => {
  const r = () => tree({ ...common, [`proc/${PID}/cgroup`]: `0::/x\n` });
  const target = { id: ID, name: "web", pid: PID, memoryLimitBytes: 0 };
  const collect = async (it: AsyncIterable<ContainerStatsJSON>, max: number) => {
    const out: ContainerStatsJSON[] = [];
    for await (const s of it) {
      out.push(s);
      if (out.length >= max) break;
    }
    return out;
  };

  it("without stream: one sample, primed by another an interval before (unless one-shot)", async () => {
    const waits: number[] = [];
    const wait = async (ms: number) => void waits.push(ms);
    const roots = r();
    const primed = await collect(
      statsStream(target, () => target, { stream: false, oneShot: false }, wait, 1000, roots).samples,
      5,
    );
    expect(primed).toHaveLength(1);
    expect(primed[0]!.precpu_stats.system_cpu_usage).toBeGreaterThan(0);
    expect(waits).toEqual([1000]);
    const one = await collect(
      statsStream(target, () => target, { stream: false, oneShot: true }, wait, 1000, roots).samples,
      5,
    );
    expect(one).toHaveLength(1);
    expect(one[0]!.precpu_stats.system_cpu_usage).toBe(0);
  });

  it("a stream goes on until the container stops; a container that does not run gives one of zeros", async () => {
    let running = 3;
    const current = () => (running-- > 0 ? target : undefined);
    const s = await collect(
      statsStream(target, current, { stream: true, oneShot: false }, async () => undefined, 1000, r()).samples,
      10,
    );
    expect(s).toHaveLength(3);
    const stopped = await collect(
      statsStream(
        target,
        () => undefined,
        { stream: true, oneShot: false },
        async () => undefined,
        1000,
        r(),
      ).samples,
      10,
    );
    expect(stopped).toHaveLength(1);
    expect(stopped[0]).toMatchObject({ name: "/web", read: "0001-01-01T00:00:00Z", memory_stats: {} });
  });
});
