// Test doubles for the container runtime's tests: a NetworkAttacher that gives a container a veth pair of
// its own (both ends inside the container's namespace, so nothing leaks onto the host and no overlay is
// needed), and an in-memory NetworkBackend for the Engine API's network routes.

import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import pino from "pino";
import { ApiError } from "../../src/api/errors.js";
import type {
  AttachedEndpoint,
  ContainerBackend,
  EndpointSettingsRequest,
  NetworkAttacher,
  NetworkBackend,
  NetworkResource,
} from "../../src/engine/types.js";
import type { Containerd } from "../../src/runtime/containerd/client.js";
import { ContainerdSupervisor } from "../../src/runtime/containerd/supervisor.js";
import type { NetworkSpec } from "../../src/store/store.js";

export const CAN_RUN_CONTAINERS =
  process.platform === "linux" &&
  process.getuid?.() === 0 &&
  ["/usr/bin/unshare", "/usr/bin/nsenter", "/usr/bin/mkfifo", "/usr/bin/containerd", "/usr/sbin/runc"].every((p) =>
    existsSync(p),
  ) &&
  (existsSync("/usr/sbin/ip") || existsSync("/sbin/ip") || existsSync("/usr/bin/ip"));

/**
 * A containerd of the test's own (root and state under `dir`), as shoald runs one; `stop` ends it and
 * removes what it kept.
 */
export async function testContainerd(
  dir: string,
): Promise<{ containerd: Containerd; root: string; stop(): Promise<void> }> {
  const supervisor = new ContainerdSupervisor({
    dataRoot: join(dir, "data"),
    execRoot: join(dir, "run"),
    logger: pino({ level: "silent" }),
  });
  const containerd = await supervisor.start();
  return {
    containerd,
    root: supervisor.root!,
    stop: async () => {
      containerd.close();
      await supervisor.stop();
      // A shim whose task outlived the tests (a made-ahead task left in a race) would outlive its
      // containerd: shims of this one go with it.
      killShimsOf(dir);
    },
  };
}

/** SIGKILLs every containerd shim serving a containerd whose socket is under `dir`. */
function killShimsOf(dir: string): void {
  for (const pid of readdirSync("/proc").filter((n) => /^\d+$/.test(n))) {
    let argv: string[];
    try {
      argv = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
    } catch {
      continue;
    }
    if (!argv[0]?.includes("containerd-shim")) continue;
    const address = argv[argv.indexOf("-address") + 1];
    if (address?.startsWith(`${dir}/`)) {
      try {
        process.kill(Number(pid), "SIGKILL");
      } catch {
        // Gone already.
      }
    }
  }
}

/** Runs cmd in a running container through the exec calls the Engine API makes, and collects its output. */
export async function execIn(
  rt: ContainerBackend,
  ref: string,
  cmd: string[],
): Promise<{ exitCode: number; stdout: string; stderr: string }> {
  const id = await rt.execCreate(ref, { Cmd: cmd, AttachStdout: true, AttachStderr: true });
  const session = await rt.execStart(id);
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  const exitCode = await session.run({
    output: (c) => {
      (c.stream === 1 ? out : err).push(c.data);
      return undefined;
    },
  });
  return { exitCode, stdout: Buffer.concat(out).toString("utf8"), stderr: Buffer.concat(err).toString("utf8") };
}

/** Everything a container printed (stdout and stderr interleaved), as `docker logs` shows it. */
export async function logsOf(rt: ContainerBackend, ref: string): Promise<string> {
  const stream = await rt.containerLogs(ref, {
    stdout: true,
    stderr: true,
    follow: false,
    timestamps: false,
    tail: "all",
    since: 0,
    until: 0,
  });
  const parts: Buffer[] = [];
  for await (const c of stream.chunks) parts.push(c.data);
  return Buffer.concat(parts).toString("utf8");
}

export const TEST_RESOLV_CONF = "nameserver 192.0.2.53\nsearch shoal.test\noptions ndots:0\n";

export function sh(argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(argv[0]!, argv.slice(1), (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === "number" ? err.code : 127) : 0, stdout, stderr });
    });
  });
}

interface TestNetwork {
  id: string;
  name: string;
  /** The third octet of 10.77.X.0/24. */
  octet: number;
  next: number;
  spec: NetworkSpec;
  created: string;
}

/**
 * Networks 10.77.N.0/24, one per name; attach makes `ifname` a veth (peer "p-<ifname>") in the
 * container's namespace with the endpoint's address. Networks are created on first use unless `strict`.
 */
export class VethAttacher implements NetworkAttacher {
  readonly calls: string[] = [];
  readonly networks = new Map<string, TestNetwork>();
  /** Where each endpoint lives, to undo it. */
  private readonly where = new Map<string, { netnsPath: string; ifname: string; container: string }>();
  /** attach fails for these network refs (after nothing was done). */
  failOn = new Set<string>();
  strict = false;

  network(ref: string): TestNetwork {
    const found =
      this.networks.get(ref) ?? [...this.networks.values()].find((n) => n.name === ref || n.id.startsWith(ref));
    if (found) return found;
    if (this.strict) throw new ApiError(404, `network ${ref} not found`);
    return this.add({
      name: ref,
      driver: "overlay",
      internal: false,
      attachable: true,
      ingress: false,
      options: {},
      labels: {},
    });
  }

  add(spec: NetworkSpec): TestNetwork {
    const n: TestNetwork = {
      id: randomBytes(13).toString("hex").slice(0, 25),
      name: spec.name,
      octet: this.networks.size + 1,
      next: 2,
      spec,
      created: "2025-01-02T03:04:05.123456789Z",
    };
    this.networks.set(n.id, n);
    return n;
  }

  async attach(
    container: { id: string; name: string; netnsPath: string; ifname: string },
    networkRef: string,
    cfg: EndpointSettingsRequest,
  ): Promise<AttachedEndpoint> {
    this.calls.push(`attach ${container.name} ${networkRef} ${container.ifname}`);
    if (this.failOn.has(networkRef)) throw new ApiError(500, `could not attach to network ${networkRef}: test failure`);
    const net = this.network(networkRef);
    const ip = cfg.IPAMConfig?.IPv4Address || `10.77.${net.octet}.${net.next++}`;
    const ns = ["nsenter", `--net=${container.netnsPath}`];
    const steps = [
      [...ns, "ip", "link", "add", container.ifname, "type", "veth", "peer", "name", `p-${container.ifname}`],
      [...ns, "ip", "addr", "add", `${ip}/24`, "dev", container.ifname],
      [...ns, "ip", "link", "set", container.ifname, "up"],
      [...ns, "ip", "link", "set", `p-${container.ifname}`, "up"],
    ];
    for (const argv of steps) {
      const r = await sh(argv);
      if (r.code !== 0) {
        await sh([...ns, "ip", "link", "del", container.ifname]);
        throw new Error(`${argv.join(" ")}: ${r.stderr.trim()}`);
      }
    }
    const link = await sh([...ns, "ip", "-o", "link", "show", "dev", container.ifname]);
    const mac = /link\/ether ([0-9a-f:]{17})/.exec(link.stdout)?.[1] ?? "";
    const endpointId = randomBytes(32).toString("hex");
    this.where.set(endpointId, { netnsPath: container.netnsPath, ifname: container.ifname, container: container.id });
    return {
      networkId: net.id,
      networkName: net.name,
      endpointId,
      ip,
      prefixLen: 24,
      mac,
      gateway: `10.77.${net.octet}.1`,
      aliases: cfg.Aliases ?? [],
    };
  }

  async detach(container: { id: string; name: string; netnsPath: string }, endpoint: AttachedEndpoint): Promise<void> {
    this.calls.push(`detach ${container.name} ${endpoint.networkName}`);
    const w = this.where.get(endpoint.endpointId);
    this.where.delete(endpoint.endpointId);
    if (w && existsSync(w.netnsPath)) await sh(["nsenter", `--net=${w.netnsPath}`, "ip", "link", "del", w.ifname]);
  }

  resolvConf(): string {
    return TEST_RESOLV_CONF;
  }

  /** How many endpoints are attached now. */
  get attachedCount(): number {
    return this.where.size;
  }
}

/** An in-memory NetworkBackend over a VethAttacher's networks; connect/disconnect go to `containers`. */
export class TestNetworkBackend implements NetworkBackend {
  readonly calls: { op: string; args: unknown[] }[] = [];
  /** Networks whose removal fails as a network with endpoints does. */
  readonly inUse = new Set<string>();
  containers:
    | {
        connect(c: string, net: string, cfg: EndpointSettingsRequest): Promise<void>;
        disconnect(c: string, net: string, force: boolean): Promise<void>;
      }
    | undefined;

  constructor(readonly attacher: VethAttacher) {}

  private resource(n: TestNetwork): NetworkResource {
    const subnet = `10.77.${n.octet}.0/24`;
    return {
      Name: n.name,
      Id: n.id,
      Created: n.created,
      Scope: "swarm",
      Driver: n.spec.driver,
      EnableIPv4: true,
      EnableIPv6: false,
      IPAM: { Driver: "default", Options: null, Config: [{ Subnet: subnet, Gateway: `10.77.${n.octet}.1` }] },
      Internal: n.spec.internal,
      Attachable: n.spec.attachable,
      Ingress: false,
      ConfigFrom: { Network: "" },
      ConfigOnly: false,
      Containers: {},
      Options: { "com.docker.network.driver.overlay.vxlanid_list": String(4096 + n.octet), ...n.spec.options },
      Labels: { ...n.spec.labels },
    };
  }

  private find(ref: string): TestNetwork {
    const n =
      this.attacher.networks.get(ref) ??
      [...this.attacher.networks.values()].find((x) => x.name === ref) ??
      [...this.attacher.networks.values()].find((x) => x.id.startsWith(ref));
    if (!n) throw new ApiError(404, `network ${ref} not found`);
    return n;
  }

  async networkCreate(spec: NetworkSpec): Promise<{ Id: string; Warning: string }> {
    this.calls.push({ op: "networkCreate", args: [spec] });
    if ([...this.attacher.networks.values()].some((n) => n.name === spec.name)) {
      throw new ApiError(409, `network with name ${spec.name} already exists`);
    }
    return { Id: this.attacher.add(spec).id, Warning: "" };
  }

  async networkList(filters: Record<string, string[]>): Promise<NetworkResource[]> {
    this.calls.push({ op: "networkList", args: [filters] });
    return [...this.attacher.networks.values()].map((n) => this.resource(n));
  }

  async networkInspect(ref: string): Promise<NetworkResource> {
    return this.resource(this.find(ref));
  }

  async networkRemove(ref: string): Promise<void> {
    this.calls.push({ op: "networkRemove", args: [ref] });
    const n = this.find(ref);
    if (this.inUse.has(n.name)) {
      throw new ApiError(403, `error while removing network: network ${n.name} id ${n.id} has active endpoints`);
    }
    this.attacher.networks.delete(n.id);
  }

  async networkConnect(ref: string, container: string, cfg: EndpointSettingsRequest): Promise<void> {
    this.calls.push({ op: "networkConnect", args: [ref, container, cfg] });
    const n = this.find(ref);
    if (!this.containers) throw new ApiError(503, "no containers here");
    await this.containers.connect(container, n.name, cfg);
  }

  async networkDisconnect(ref: string, container: string, force: boolean): Promise<void> {
    this.calls.push({ op: "networkDisconnect", args: [ref, container, force] });
    const n = this.find(ref);
    if (!this.containers) throw new ApiError(503, "no containers here");
    await this.containers.disconnect(container, n.name, force);
  }
}
