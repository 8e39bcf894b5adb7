// A small lab for the data-plane e2e tests: "hosts" are network namespaces (files under one unique temp
// dir), joined by a veth pair on 192.0.2.0/24; each host runs its own OverlayDataplane through a runner that
// enters the host's namespace. Everything the lab makes lives under that temp dir, so cleanup unmounts
// exactly the mounts below it (deepest first) and removes it, whatever state a failed test left.

import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createNetns, deleteNetns } from "../../src/dataplane/netns.js";
import { OverlayDataplane, type OverlayDataplaneOptions } from "../../src/dataplane/overlay.js";
import { mustRun, netnsRunner, type Runner, type RunResult, spawnRunner } from "../../src/dataplane/runner.js";

export interface LabHost {
  name: string;
  /** The host's network namespace file. */
  netns: string;
  /** Data-path (underlay) address. */
  addr: string;
  execRoot: string;
  runner: CountingRunner;
  dataplane: OverlayDataplane;
}

/** Records every command the data plane runs (for counting processes). */
export interface RecordedCall {
  argv: string[];
  stdin?: string;
  /** When it started (performance.now()) and how long it took, in ms. */
  start: number;
  ms?: number;
}

export interface CountingRunner extends Runner {
  calls: RecordedCall[];
}

export function countingRunner(base: Runner): CountingRunner {
  const calls: RecordedCall[] = [];
  const r = (async (argv, opts) => {
    const call: RecordedCall = { argv, start: performance.now() };
    if (opts?.stdin !== undefined) call.stdin = opts.stdin;
    calls.push(call);
    const result = await base(argv, opts);
    call.ms = performance.now() - call.start;
    return result;
  }) as CountingRunner;
  r.calls = calls;
  return r;
}

export class Lab {
  readonly hosts: LabHost[] = [];
  private containers = 0;

  private constructor(readonly dir: string) {}

  /** A lab with two hosts, 192.0.2.1 and 192.0.2.2, on a veth-pair underlay. */
  static async create(opts: Partial<OverlayDataplaneOptions> = {}): Promise<Lab> {
    const dir = await mkdtemp(join(tmpdir(), "shoal-dp-e2e-"));
    const lab = new Lab(dir);
    try {
      for (let i = 1; i <= 2; i++) {
        const netns = join(dir, `host${i}`);
        await createNetns(netns);
        const runner = countingRunner(netnsRunner(spawnRunner, netns));
        const execRoot = join(dir, `host${i}-exec`);
        const addr = `192.0.2.${i}`;
        const dataplane = new OverlayDataplane({ execRoot, underlayDev: "u0", localAddr: addr, runner, ...opts });
        lab.hosts.push({ name: `host${i}`, netns, addr, execRoot, runner, dataplane });
      }
      // The underlay: one veth pair between the two hosts.
      await lab.inHost(lab.hosts[0]!, [
        "ip",
        "link",
        "add",
        "u0",
        "type",
        "veth",
        "peer",
        "name",
        "u0",
        "netns",
        lab.hosts[1]!.netns,
      ]);
      for (const h of lab.hosts) {
        await mustRun(spawnRunner, ["nsenter", `--net=${h.netns}`, "ip", "-batch", "-"], {
          stdin: `addr add ${h.addr}/24 dev u0\nlink set u0 up\nlink set lo up\n`,
        });
      }
    } catch (err) {
      await lab.cleanup();
      throw err;
    }
    return lab;
  }

  /** A fresh "container": just a network namespace file. */
  async container(label = "c"): Promise<string> {
    const path = join(this.dir, `${label}-${++this.containers}`);
    await createNetns(path);
    return path;
  }

  async removeContainer(path: string): Promise<void> {
    await deleteNetns(path);
  }

  inHost(h: LabHost, argv: string[], stdin?: string): Promise<RunResult> {
    return mustRun(spawnRunner, ["nsenter", `--net=${h.netns}`, ...argv], stdin === undefined ? {} : { stdin });
  }

  /**
   * `ping -c 1 -W 1` from inside a container namespace: true if the one echo got a reply within 1 s. Use it
   * to show that something is NOT reachable.
   */
  async ping(containerNetns: string, ip: string, extra: string[] = []): Promise<boolean> {
    const r = await spawnRunner([
      "nsenter",
      `--net=${containerNetns}`,
      "ping",
      "-n",
      "-c",
      "1",
      "-W",
      "1",
      ...extra,
      ip,
    ]);
    return r.code === 0;
  }

  /**
   * `ping -c 1 -w 3`: true as soon as one reply comes back, re-sending once a second for up to 3 s. Use it
   * to show that something IS reachable: a container whose earlier ARP request went unanswered (an
   * INCOMPLETE/FAILED neighbour entry) only asks again on its own ARP timer, up to a second later.
   */
  async reaches(containerNetns: string, ip: string, extra: string[] = []): Promise<boolean> {
    const r = await spawnRunner([
      "nsenter",
      `--net=${containerNetns}`,
      "ping",
      "-n",
      "-c",
      "1",
      "-w",
      "3",
      ...extra,
      ip,
    ]);
    return r.code === 0;
  }

  /** Unmount every mount below the lab dir (deepest first), then remove the dir. Safe to call twice. */
  async cleanup(): Promise<void> {
    const mounts = await mountsUnder(this.dir);
    for (const m of mounts.sort((a, b) => b.length - a.length)) {
      const r = await spawnRunner(["umount", m]);
      if (r.code !== 0) await spawnRunner(["umount", "-l", m]);
    }
    await rm(this.dir, { recursive: true, force: true });
  }
}

/** Mount points at or below `dir` in our mount namespace (from /proc/self/mountinfo). */
export async function mountsUnder(dir: string): Promise<string[]> {
  const info = await readFile("/proc/self/mountinfo", "utf8");
  const out: string[] = [];
  for (const line of info.split("\n")) {
    const f = line.split(" ");
    const mp = f[4]?.replace(/\\(\d{3})/g, (_, o: string) => String.fromCharCode(Number.parseInt(o, 8)));
    if (mp && (mp === dir || mp.startsWith(`${dir}/`))) out.push(mp);
  }
  return out;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}
