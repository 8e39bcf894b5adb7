// GET/HEAD /_ping, GET /version, GET /info: what the docker CLI asks before anything else.

import { readdir, readFile } from "node:fs/promises";
import os from "node:os";
import { API_VERSION, MIN_API_VERSION, VERSION } from "../../version.js";
import { type Ctx, type RouteDeps, route, sendJSON } from "../router.js";
import type { LocalNodeState, SwarmInfo } from "../types.js";

/** What /version and /info report about this engine. */
export interface EngineIdentity {
  /** GitCommit of /version. */
  gitCommit: string;
  /** BuildTime of /version, RFC 3339. */
  buildTime: string;
  /** DockerRootDir of /info. */
  dataRoot: string;
  /** ID of /info. */
  engineId: string;
  /** OperatingSystem of /info (PRETTY_NAME of os-release). */
  operatingSystem: string;
}

export function systemRoutes(d: RouteDeps, id: EngineIdentity) {
  const ping = async ({ req, res }: Ctx): Promise<void> => {
    res.setHeader("Api-Version", API_VERSION);
    res.setHeader("Ostype", "linux");
    res.setHeader("Docker-Experimental", "false");
    res.setHeader("Swarm", await swarmStatus(d));
    res.setHeader("Cache-Control", "no-cache, no-store, must-revalidate");
    res.setHeader("Pragma", "no-cache");
    res.setHeader("Builder-Version", "1");
    res.setHeader("Content-Type", "text/plain; charset=utf-8");
    if (req.method === "HEAD") {
      res.setHeader("Content-Length", "0");
      res.writeHead(200).end();
      return;
    }
    res.setHeader("Content-Length", "2");
    res.writeHead(200).end("OK");
  };
  return [
    route("GET", "/_ping", ping),
    route("HEAD", "/_ping", ping),
    route("GET", "/version", async ({ res }) => sendJSON(res, 200, versionBody(id))),
    route("GET", "/info", async ({ res }) => sendJSON(res, 200, await infoBody(d, id))),
  ];
}

/** The Swarm header value dockerd derives from the local node state. */
export function swarmStatusOf(state: LocalNodeState, controlAvailable: boolean): string {
  if (state === "active") return controlAvailable ? "active/manager" : "active/worker";
  return state;
}

/** The Swarm header of /_ping: "inactive", "pending", "active/manager", "active/worker", ... */
async function swarmStatus(d: RouteDeps): Promise<string> {
  let info: SwarmInfo;
  try {
    info = await d.backend.swarmInfo();
  } catch (err) {
    d.log?.warn({ err }, "swarm status unavailable for /_ping");
    return "error";
  }
  return swarmStatusOf(info.LocalNodeState, info.ControlAvailable);
}

function versionBody(id: EngineIdentity): unknown {
  const common = {
    Version: VERSION,
    ApiVersion: API_VERSION,
    MinAPIVersion: MIN_API_VERSION,
    GitCommit: id.gitCommit,
    GoVersion: `node ${process.version}`,
    Os: "linux",
    Arch: dockerArch(),
    KernelVersion: os.release(),
    BuildTime: id.buildTime,
  };
  return {
    Platform: { Name: "shoal" },
    Components: [
      {
        Name: "Engine",
        Version: VERSION,
        Details: {
          ApiVersion: API_VERSION,
          Arch: common.Arch,
          BuildTime: common.BuildTime,
          Experimental: "false",
          GitCommit: common.GitCommit,
          GoVersion: common.GoVersion,
          KernelVersion: common.KernelVersion,
          MinAPIVersion: MIN_API_VERSION,
          Os: common.Os,
        },
      },
    ],
    ...common,
  };
}

/** The Swarm section of /info: dockerd's /info never fails for swarm trouble, it reports it in Swarm.Error. */
async function swarmSection(d: RouteDeps): Promise<SwarmInfo> {
  try {
    return await d.backend.swarmInfo();
  } catch (err) {
    d.log?.warn({ err }, "swarm info unavailable for /info");
    return {
      NodeID: "",
      NodeAddr: "",
      LocalNodeState: "error",
      ControlAvailable: false,
      Error: err instanceof Error ? err.message : String(err),
      RemoteManagers: null,
    };
  }
}

async function infoBody(d: RouteDeps, id: EngineIdentity): Promise<unknown> {
  const swarm = await swarmSection(d);
  const counts = d.containerBackend?.containerCounts() ?? { total: 0, running: 0, paused: 0, stopped: 0 };
  const firewall = await d.backend.firewallInfo?.().catch((err: unknown) => {
    d.log?.warn({ err }, "firewall backend unavailable for /info");
    return undefined;
  });
  return {
    ID: id.engineId,
    Containers: counts.total,
    ContainersRunning: counts.running,
    ContainersPaused: counts.paused,
    ContainersStopped: counts.stopped,
    Images: 0,
    Driver: "shoal",
    // docker info (28.2) prints these pairs under "Storage Driver"; newer CLIs also read FirewallBackend.
    DriverStatus: firewall ? firewallStatusPairs(firewall) : [],
    Plugins: { Volume: [], Network: ["overlay"], Authorization: null, Log: [] },
    MemoryLimit: false,
    SwapLimit: false,
    CpuCfsPeriod: false,
    CpuCfsQuota: false,
    CPUShares: false,
    CPUSet: false,
    PidsLimit: false,
    IPv4Forwarding: true,
    Debug: d.log?.isLevelEnabled("debug") ?? false,
    NFd: await openFileCount(),
    OomKillDisable: false,
    NGoroutines: 0,
    SystemTime: rfc3339Nano(new Date()),
    LoggingDriver: "",
    CgroupDriver: "",
    CgroupVersion: "",
    NEventsListener: 0,
    KernelVersion: os.release(),
    OperatingSystem: id.operatingSystem,
    OSVersion: "",
    OSType: "linux",
    Architecture: os.machine(),
    IndexServerAddress: "https://index.docker.io/v1/",
    RegistryConfig: { InsecureRegistryCIDRs: [], IndexConfigs: {}, Mirrors: [] },
    NCPU: os.availableParallelism(),
    MemTotal: os.totalmem(),
    GenericResources: null,
    DockerRootDir: id.dataRoot,
    HttpProxy: "",
    HttpsProxy: "",
    NoProxy: "",
    Name: d.backend.hostname(),
    Labels: [],
    ExperimentalBuild: false,
    ServerVersion: VERSION,
    Runtimes: {},
    DefaultRuntime: "",
    Swarm: swarm,
    LiveRestoreEnabled: false,
    Isolation: "",
    InitBinary: "",
    ContainerdCommit: { ID: "" },
    RuncCommit: { ID: "" },
    InitCommit: { ID: "" },
    SecurityOptions: [],
    ...(firewall ? { FirewallBackend: firewall } : {}),
    CDISpecDirs: [],
    Warnings: [],
  };
}

/** Go's GOARCH names for Node's process.arch. */
function dockerArch(): string {
  switch (process.arch) {
    case "x64":
      return "amd64";
    case "ia32":
      return "386";
    case "ppc64":
      return os.endianness() === "LE" ? "ppc64le" : "ppc64";
    default:
      return process.arch;
  }
}

/** Go's RFC3339Nano-ish timestamp, as dockerd reports times. */
export function rfc3339Nano(d: Date): string {
  return d.toISOString().replace(/\.(\d{3})Z$/, ".$1000000Z");
}

/** PRETTY_NAME of os-release ("Linux" without one). */
export async function readOperatingSystem(): Promise<string> {
  for (const f of ["/etc/os-release", "/usr/lib/os-release"]) {
    try {
      const text = await readFile(f, "utf8");
      const m = /^PRETTY_NAME=(.*)$/m.exec(text);
      if (m) return m[1]!.trim().replace(/^["']|["']$/g, "");
    } catch {
      // try the next one
    }
  }
  return "Linux";
}

async function openFileCount(): Promise<number> {
  try {
    return (await readdir("/proc/self/fd")).length;
  } catch {
    return -1;
  }
}

/** The firewall backend as docker info's "Storage Driver" status pairs: "Firewall Backend: iptables", then its details. */
function firewallStatusPairs(fw: { Driver: string; Info: [string, string][] }): [string, string][] {
  return [["Firewall Backend", fw.Driver], ...fw.Info];
}
