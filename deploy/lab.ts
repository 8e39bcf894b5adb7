// The lab: N hosts on one machine, each a network namespace with an address on an underlay bridge
// (192.0.2.0/24) and its own shoald. Everything it makes carries the lab's name, so `down` removes
// exactly that and nothing else.
//
// Daemons run under `nsenter --net` (not `ip netns exec`, which would give them a private mount
// namespace): the namespace files they bind-mount under their exec root stay visible from outside, so
// `ls <exec-root>/netns` on the machine shows what each host holds.

import { type ChildProcess, execFile, spawn } from "node:child_process";
import { existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const run = promisify(execFile);

export interface LabOptions {
  /** Short name, used in every link and namespace name (default "lab"). At most 6 characters. */
  name?: string;
  /** Where sockets, data roots, exec roots and logs go (default /run/shoal-<name>). */
  root?: string;
  /** Raft tick for the daemons (ms); default: the daemon's own. */
  raftTickMs?: number;
  logLevel?: string;
  /** Extra shoald flags for every host, after the lab's own (e.g. ["--encryption-key-rotation", "4s"]). */
  daemonArgs?: string[];
  /** Environment variables for every host's shoald, over this process's (e.g. a PATH without nft). */
  daemonEnv?: NodeJS.ProcessEnv;
  /** How long a daemon may take to open its socket (default 15 s; a slow kernel such as UML needs more). */
  startTimeoutMs?: number;
}

export interface LabHost {
  index: number;
  name: string;
  /** /run/netns name of the host's namespace. */
  netns: string;
  /** Underlay address (192.0.2.N). */
  addr: string;
  dir: string;
  socket: string;
  execRoot: string;
  dataRoot: string;
  log: string;
}

// deploy/lab.ts (tests) or dist/deploy/lab.js (npm run lab): the repository is where package.json is.
const here = dirname(fileURLToPath(import.meta.url));
const repo = existsSync(join(here, "..", "package.json")) ? resolve(here, "..") : resolve(here, "..", "..");
const daemonJs = join(repo, "dist", "src", "daemon", "main.js");

/**
 * Node flags for every host's shoald, from SHOAL_LAB_NODE_FLAGS (space-separated), e.g.
 * `SHOAL_LAB_NODE_FLAGS="--cpu-prof --cpu-prof-dir=/tmp/prof" npm run bench:containers` to profile the
 * daemons of a benchmark (the profile is written when a daemon exits, at the lab's end).
 */
function nodeFlags(): string[] {
  return (process.env.SHOAL_LAB_NODE_FLAGS ?? "").split(" ").filter((f) => f !== "");
}

export class Lab {
  readonly name: string;
  readonly root: string;
  readonly bridge: string;
  private readonly opts: LabOptions;
  private procs = new Map<number, ChildProcess>();

  constructor(opts: LabOptions = {}) {
    this.opts = opts;
    this.name = opts.name ?? "lab";
    if (!/^[a-z0-9]{1,6}$/.test(this.name)) throw new Error(`lab name "${this.name}": 1-6 lowercase letters or digits`);
    this.root = opts.root ?? `/run/shoal-${this.name}`;
    this.bridge = `sl-${this.name}-br`;
  }

  host(i: number): LabHost {
    const name = `h${i}`;
    const dir = join(this.root, name);
    return {
      index: i,
      name,
      netns: `sl-${this.name}-${name}`,
      addr: `192.0.2.${i}`,
      dir,
      socket: join(dir, "shoald.sock"),
      execRoot: join(dir, "exec"),
      dataRoot: join(dir, "data"),
      log: join(dir, "shoald.log"),
    };
  }

  /** The hosts that exist now. */
  hosts(): LabHost[] {
    if (!existsSync(this.root)) return [];
    return readdirSync(this.root)
      .filter((d) => /^h\d+$/.test(d))
      .map((d) => this.host(Number(d.slice(1))))
      .sort((a, b) => a.index - b.index);
  }

  /** Build `n` hosts and start a daemon in each. */
  async up(n: number): Promise<LabHost[]> {
    if (n < 1 || n > 200) throw new Error("a lab has 1 to 200 hosts");
    mkdirSync(this.root, { recursive: true });
    await sh(["ip", "link", "add", this.bridge, "type", "bridge"], true);
    // The bridge is the lab's switch, not a host on it: without ARP, the machine's own namespace never
    // answers for a lab address that is also one of its own (a machine at 192.0.2.2 took h2's traffic).
    await sh(["ip", "link", "set", this.bridge, "arp", "off", "up"]);
    const out: LabHost[] = [];
    for (let i = 1; i <= n; i++) {
      const h = this.host(i);
      mkdirSync(h.dir, { recursive: true });
      await sh(["ip", "netns", "add", h.netns], true);
      const outer = `sl-${this.name}-v${i}`;
      await sh(["ip", "link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", h.netns], true);
      await sh(["ip", "link", "set", outer, "master", this.bridge, "up"]);
      await sh(["ip", "-n", h.netns, "addr", "replace", `${h.addr}/24`, "dev", "eth0"]);
      await sh(["ip", "-n", h.netns, "link", "set", "eth0", "up"]);
      await sh(["ip", "-n", h.netns, "link", "set", "lo", "up"]);
      await this.startDaemon(h);
      out.push(h);
    }
    for (const h of out) await waitForSocket(h, this.opts.startTimeoutMs ?? 15_000);
    return out;
  }

  /** Start (or restart) the daemon of a host. */
  async startDaemon(h: LabHost): Promise<void> {
    if (!existsSync(daemonJs)) throw new Error(`${daemonJs} is missing: run npm run build first`);
    mkdirSync(h.dir, { recursive: true });
    const fd = openSync(h.log, "a");
    const args = [
      `--net=/run/netns/${h.netns}`,
      process.execPath,
      ...nodeFlags(),
      daemonJs,
      "--data-root",
      h.dataRoot,
      "--exec-root",
      h.execRoot,
      "-H",
      `unix://${h.socket}`,
      "--hostname",
      h.name,
      "--log-level",
      this.opts.logLevel ?? "info",
      ...(this.opts.raftTickMs ? ["--raft-tick-ms", String(this.opts.raftTickMs)] : []),
      ...(this.opts.daemonArgs ?? []),
    ];
    const env = { ...process.env, ...this.opts.daemonEnv };
    const p = spawn("nsenter", args, { stdio: ["ignore", fd, fd], detached: true, env });
    p.unref();
    this.procs.set(h.index, p);
    writeFileSync(join(h.dir, "shoald.pid"), `${p.pid}\n`);
  }

  /** Removes a host's containers through its daemon (they would outlive it: containerd keeps them). */
  async removeContainers(h: LabHost): Promise<void> {
    const cli = join(repo, "dist", "cli", "main.js");
    if (!existsSync(h.socket) || !existsSync(cli)) return;
    const shoal = (...args: string[]) =>
      run(process.execPath, [cli, "-H", `unix://${h.socket}`, ...args], { timeout: 30_000 }).then(
        (r) => r.stdout,
        () => "",
      );
    const ids = (await shoal("ps", "-aq")).split("\n").filter(Boolean);
    if (ids.length > 0) await shoal("rm", "-f", ...ids);
  }

  pid(h: LabHost): number | undefined {
    try {
      const pid = Number(readFileSync(join(h.dir, "shoald.pid"), "utf8").trim());
      return pid > 0 ? pid : undefined;
    } catch {
      return undefined;
    }
  }

  /** Stop a host's daemon (SIGTERM, then SIGKILL after `graceMs`). */
  async stopDaemon(h: LabHost, signal: NodeJS.Signals = "SIGTERM", graceMs = 5000): Promise<void> {
    const pid = this.pid(h);
    if (!pid) return;
    try {
      process.kill(pid, signal);
    } catch {
      return;
    }
    const deadline = Date.now() + graceMs;
    while (alive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    if (alive(pid)) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        /* gone */
      }
      while (alive(pid)) await new Promise((r) => setTimeout(r, 20));
    }
    rmSync(join(h.dir, "shoald.pid"), { force: true });
  }

  /** Run a command inside a host's network namespace. */
  async exec(h: LabHost, argv: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}) {
    return run("nsenter", [`--net=/run/netns/${h.netns}`, ...argv], {
      timeout: opts.timeoutMs ?? 30_000,
      env: { ...process.env, ...opts.env },
      maxBuffer: 16 << 20,
    });
  }

  /**
   * A registry (Debian's docker-registry, the reference implementation) on a host, on port 5000 of its
   * underlay address; plain HTTP, so daemons that pull from it need --insecure-registry. Returns host:port.
   */
  async startRegistry(h: LabHost, port = 5000): Promise<string> {
    const addr = `${h.addr}:${port}`;
    const config = join(h.dir, "registry.yml");
    writeFileSync(
      config,
      `version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: ${join(h.dir, "registry")}\nhttp:\n  addr: ${addr}\n`,
    );
    const fd = openSync(join(h.dir, "registry.log"), "a");
    const p = spawn("nsenter", [`--net=/run/netns/${h.netns}`, "docker-registry", "serve", config], {
      stdio: ["ignore", fd, fd],
      detached: true,
    });
    p.unref();
    writeFileSync(join(h.dir, "registry.pid"), `${p.pid}\n`);
    for (let i = 0; i < 100; i++) {
      const probe = await this.exec(h, ["bash", "-c", `exec 3<>/dev/tcp/${h.addr}/${port}`]).then(
        () => true,
        () => false,
      );
      if (probe) return addr;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`the registry on ${h.name} did not listen on ${addr} (see ${join(h.dir, "registry.log")})`);
  }

  /** Copies an image archive (OCI layout or docker save) into a lab registry, with skopeo from `h`. */
  async pushImage(
    h: LabHost,
    archive: string,
    ref: string,
    format: "oci-archive" | "docker-archive" = "oci-archive",
  ): Promise<void> {
    await this.exec(h, ["skopeo", "copy", "--dest-tls-verify=false", `${format}:${archive}`, `docker://${ref}`], {
      timeoutMs: 120_000,
    });
  }

  /** Remove everything the lab made: daemons, containers, registries, namespaces (theirs too), links, files. */
  async down(): Promise<void> {
    for (const h of this.hosts()) await this.removeContainers(h);
    for (const h of this.hosts()) await this.stopDaemon(h, "SIGTERM", 3000);
    for (const h of this.hosts()) {
      // What a daemon that did not stop cleanly left: its containerd and its registry.
      for (const f of [join(h.execRoot, "containerd", "containerd.pid"), join(h.dir, "registry.pid")]) {
        const pid = pidIn(f);
        if (pid !== undefined && alive(pid)) process.kill(pid, "SIGKILL");
      }
      await killContainerProcesses(h);
    }
    // Namespace files the daemons mounted under their exec roots, and anything else mounted below root.
    await unmountBelow(this.root);
    for (const h of this.hosts()) await sh(["ip", "netns", "del", h.netns], true);
    // Any host namespace left without a directory (a crashed up).
    const { stdout } = await run("ip", ["netns", "list"]).catch(() => ({ stdout: "" }));
    for (const line of stdout.split("\n")) {
      const ns = line.split(" ")[0] ?? "";
      if (ns.startsWith(`sl-${this.name}-h`)) await sh(["ip", "netns", "del", ns], true);
    }
    const links = await run("ip", ["-o", "link", "show"]).catch(() => ({ stdout: "" }));
    for (const line of links.stdout.split("\n")) {
      const m = line.match(/^\d+: ([^:@]+)/);
      if (m?.[1]?.startsWith(`sl-${this.name}-`)) await sh(["ip", "link", "del", m[1]], true);
    }
    rmSync(this.root, { recursive: true, force: true });
  }
}

/** Lazily unmounts everything mounted below `dir`, deepest first (what a crashed run left mounted). */
export async function unmountBelow(dir: string): Promise<void> {
  const mounts = readFileSync("/proc/self/mounts", "utf8")
    .split("\n")
    .map((l) => l.split(" ")[1] ?? "")
    .filter((m) => m.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length);
  for (const m of mounts) await sh(["umount", "-l", m], true);
}

/** SIGKILLs every process whose command line holds `text` (the shims of a containerd name its socket). */
export function killProcessesNaming(text: string): void {
  for (const p of readdirSync("/proc").filter((d) => /^\d+$/.test(d))) {
    let cmdline = "";
    try {
      cmdline = readFileSync(`/proc/${p}/cmdline`, "utf8");
    } catch {
      continue; // gone
    }
    if (!cmdline.includes(text) || Number(p) === process.pid) continue;
    try {
      process.kill(Number(p), "SIGKILL");
    } catch {
      /* gone */
    }
  }
}

function pidIn(path: string): number | undefined {
  try {
    const pid = Number(readFileSync(path, "utf8").trim());
    return pid > 0 ? pid : undefined;
  } catch {
    // No pid file: nothing was started.
    return undefined;
  }
}

/** Kills what is left in the cgroups of a host's containers (their shims died with a crashed daemon). */
async function killContainerProcesses(h: LabHost): Promise<void> {
  const dir = join(h.dataRoot, "containers");
  if (!existsSync(dir)) return;
  for (const id of readdirSync(dir).filter((d) => /^[0-9a-f]{64}$/.test(d))) {
    // cgroup v1 (a pids hierarchy) or v2 (one hierarchy).
    const procs = [
      join("/sys/fs/cgroup/pids/shoal", id, "cgroup.procs"),
      join("/sys/fs/cgroup/shoal", id, "cgroup.procs"),
    ].find((p) => existsSync(p));
    if (!procs) continue;
    for (const pid of readFileSync(procs, "utf8").split("\n").filter(Boolean)) {
      try {
        process.kill(Number(pid), "SIGKILL");
      } catch {
        /* gone */
      }
    }
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function sh(argv: string[], tolerate = false): Promise<void> {
  try {
    await run(argv[0]!, argv.slice(1), { timeout: 15_000 });
  } catch (e) {
    if (!tolerate)
      throw new Error(`${argv.join(" ")}: ${(e as { stderr?: string }).stderr?.trim() || (e as Error).message}`);
  }
}

async function waitForSocket(h: LabHost, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!existsSync(h.socket)) {
    if (Date.now() > deadline) {
      const log = existsSync(h.log) ? readFileSync(h.log, "utf8").split("\n").slice(-15).join("\n") : "(no log)";
      throw new Error(`no daemon socket at ${h.socket} after ${ms} ms; the end of its log:\n${log}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}
