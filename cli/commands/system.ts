// shoal info and shoal version: docker info's and docker version's layout.

import type { Command } from "commander";
import { API_VERSION, VERSION } from "../../src/version.js";
import { type Invocation, leaf } from "../command.js";
import { ansic, bytesSize, humanDuration, tabwrite } from "../format.js";

type Json = Record<string, unknown>;
const obj = (v: unknown): Json => (typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Json) : {});
const str = (v: unknown): string => (typeof v === "string" ? v : "");

/** Go's fmt.Println of a value: strings as they are, null as <nil>, slices as [a b]. */
function goPrint(v: unknown): string {
  if (v === null || v === undefined) return "<nil>";
  if (Array.isArray(v)) return `[${v.map(goPrint).join(" ")}]`;
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

/** Node's process.arch in Go's GOARCH words. */
function goArch(arch: string): string {
  return (
    (
      { x64: "amd64", ia32: "386", arm: "arm", arm64: "arm64", ppc64: "ppc64le", s390x: "s390x" } as Record<
        string,
        string
      >
    )[arch] ?? arch
  );
}

// ---- info -----------------------------------------------------------------------------------------------

/**
 * The Server part of `docker info`, in docker's order and words. Lines whose fields the daemon does not
 * report are left out (shoald reports a subset of dockerd's /info).
 */
export function infoServerText(info: Json): string {
  const lines: string[] = [];
  const has = (k: string): boolean => info[k] !== undefined && info[k] !== null;
  const line = (text: string, k: string): void => {
    if (has(k)) lines.push(`${text} ${goPrint(info[k])}`);
  };
  const nonEmpty = (text: string, k: string): void => {
    if (str(info[k]) !== "") lines.push(`${text} ${str(info[k])}`);
  };
  line(" Containers:", "Containers");
  line("  Running:", "ContainersRunning");
  line("  Paused:", "ContainersPaused");
  line("  Stopped:", "ContainersStopped");
  line(" Images:", "Images");
  nonEmpty(" Server Version:", "ServerVersion");
  nonEmpty(" Storage Driver:", "Driver");
  // docker prints the driver's status pairs under it; shoald puts its firewall backend there.
  for (const pair of Array.isArray(info.DriverStatus) ? info.DriverStatus : [])
    if (Array.isArray(pair) && str(info.Driver) !== "") lines.push(`  ${String(pair[0])}: ${String(pair[1])}`);
  nonEmpty(" Logging Driver:", "LoggingDriver");
  nonEmpty(" Cgroup Driver:", "CgroupDriver");
  nonEmpty(" Cgroup Version:", "CgroupVersion");
  if (has("Plugins")) {
    const p = obj(info.Plugins);
    const join = (v: unknown): string => (Array.isArray(v) ? v.map(String).join(" ") : "");
    lines.push(" Plugins:", `  Volume: ${join(p.Volume)}`, `  Network: ${join(p.Network)}`);
    if (Array.isArray(p.Authorization) && p.Authorization.length > 0)
      lines.push(`  Authorization: ${join(p.Authorization)}`);
    lines.push(`  Log: ${join(p.Log)}`);
  }
  const sw = obj(info.Swarm);
  lines.push(` Swarm: ${str(sw.LocalNodeState)}`);
  if (sw.LocalNodeState !== "inactive" && sw.LocalNodeState !== "locked") {
    lines.push(`  NodeID: ${str(sw.NodeID)}`);
    if (str(sw.Error) !== "") lines.push(`  Error: ${str(sw.Error)}`);
    lines.push(`  Is Manager: ${sw.ControlAvailable === true}`);
    const cluster = sw.Cluster === undefined || sw.Cluster === null ? null : obj(sw.Cluster);
    if (cluster && sw.ControlAvailable === true && str(sw.Error) === "" && sw.LocalNodeState !== "error") {
      const spec = obj(cluster.Spec);
      const raft = obj(spec.Raft);
      const ca = obj(spec.CAConfig);
      lines.push(
        `  ClusterID: ${str(cluster.ID)}`,
        `  Managers: ${goPrint(sw.Managers ?? 0)}`,
        `  Nodes: ${goPrint(sw.Nodes ?? 0)}`,
      );
      if (Array.isArray(cluster.DefaultAddrPool)) {
        lines.push(`  Default Address Pool: ${cluster.DefaultAddrPool.map((p) => `${String(p)}  `).join("")}`);
        lines.push(`  SubnetSize: ${goPrint(cluster.SubnetSize ?? 0)}`);
      }
      if (typeof cluster.DataPathPort === "number" && cluster.DataPathPort > 0) {
        lines.push(`  Data Path Port: ${cluster.DataPathPort}`);
      }
      const limit = obj(spec.Orchestration).TaskHistoryRetentionLimit;
      lines.push("  Orchestration:", `   Task History Retention Limit: ${typeof limit === "number" ? limit : 0}`);
      lines.push("  Raft:", `   Snapshot Interval: ${goPrint(raft.SnapshotInterval ?? 0)}`);
      if (typeof raft.KeepOldSnapshots === "number")
        lines.push(`   Number of Old Snapshots to Retain: ${raft.KeepOldSnapshots}`);
      lines.push(
        `   Heartbeat Tick: ${goPrint(raft.HeartbeatTick ?? 0)}`,
        `   Election Tick: ${goPrint(raft.ElectionTick ?? 0)}`,
      );
      const hb = obj(spec.Dispatcher).HeartbeatPeriod;
      lines.push("  Dispatcher:", `   Heartbeat Period: ${humanDuration(typeof hb === "number" ? hb : 0)}`);
      const expiry = ca.NodeCertExpiry;
      lines.push(
        "  CA Configuration:",
        `   Expiry Duration: ${humanDuration(typeof expiry === "number" ? expiry : 0)}`,
        `   Force Rotate: ${goPrint(ca.ForceRotate ?? 0)}`,
      );
      const signing = str(ca.SigningCACert).trim();
      if (signing !== "") lines.push(`   Signing CA Certificate: \n${signing}\n`);
      if (Array.isArray(ca.ExternalCAs) && ca.ExternalCAs.length > 0) {
        lines.push("   External CAs:");
        for (const e of ca.ExternalCAs.map(obj)) lines.push(`     ${str(e.Protocol)}: ${str(e.URL)}`);
      }
      lines.push(
        `  Autolock Managers: ${obj(spec.EncryptionConfig).AutoLockManagers === true}`,
        `  Root Rotation In Progress: ${cluster.RootRotationInProgress === true}`,
      );
    }
    lines.push(`  Node Address: ${str(sw.NodeAddr)}`);
    const managers = (Array.isArray(sw.RemoteManagers) ? sw.RemoteManagers : []).map((m) => str(obj(m).Addr)).sort();
    if (managers.length > 0) {
      lines.push("  Manager Addresses:");
      for (const m of managers) lines.push(`   ${m}`);
    }
  }
  nonEmpty(" Kernel Version:", "KernelVersion");
  nonEmpty(" Operating System:", "OperatingSystem");
  nonEmpty(" OSType:", "OSType");
  nonEmpty(" Architecture:", "Architecture");
  line(" CPUs:", "NCPU");
  if (typeof info.MemTotal === "number") lines.push(` Total Memory: ${bytesSize(info.MemTotal)}`);
  nonEmpty(" Name:", "Name");
  nonEmpty(" ID:", "ID");
  line(" Debug Mode:", "Debug");
  if (Array.isArray(info.Labels) && info.Labels.length > 0) {
    lines.push(" Labels:");
    for (const l of info.Labels) lines.push(`  ${String(l)}`);
  }
  line(" Experimental:", "ExperimentalBuild");
  if (Array.isArray(info.DefaultAddressPools) && info.DefaultAddressPools.length > 0) {
    lines.push(" Default Address Pools:");
    for (const p of info.DefaultAddressPools.map(obj)) lines.push(`   Base: ${str(p.Base)}, Size: ${goPrint(p.Size)}`);
  }
  return `${lines.join("\n")}\n\n`;
}

async function runInfo(inv: Invocation): Promise<void> {
  inv.out(`Client:\n Version:    ${VERSION}\n Debug Mode: false\n\nServer:\n`);
  const info = obj(await inv.client().get("/info"));
  inv.out(infoServerText(info));
  if (Array.isArray(info.Warnings)) for (const w of info.Warnings) process.stderr.write(`${String(w)}\n`);
}

// ---- version --------------------------------------------------------------------------------------------

export function clientVersionText(apiVersion: string): string {
  const downgraded = apiVersion !== API_VERSION ? ` (downgraded from ${API_VERSION})` : "";
  return [
    "Client:",
    ` Version:\t${VERSION}`,
    ` API version:\t${apiVersion}${downgraded}`,
    ` Node version:\t${process.version}`,
    ` OS/Arch:\t${process.platform}/${goArch(process.arch)}`,
  ].join("\n");
}

/** The Server part of `docker version`, from GET /version. */
export function serverVersionText(v: Json): string {
  const platform = str(obj(v.Platform).Name);
  let s = `\n\nServer:${platform ? ` ${platform}` : ""}`;
  const components = Array.isArray(v.Components) ? v.Components.map(obj) : [];
  const engineDetails = (d: Json): string[] => [
    `  API version:\t${str(d.ApiVersion)} (minimum version ${str(d.MinAPIVersion)})`,
    `  Go version:\t${str(d.GoVersion)}`,
    `  Git commit:\t${str(d.GitCommit)}`,
    `  Built:\t${str(d.BuildTime)}`,
    `  OS/Arch:\t${str(d.Os)}/${str(d.Arch)}`,
    `  Experimental:\t${str(d.Experimental)}`,
  ];
  if (!components.some((c) => c.Name === "Engine")) {
    components.push({
      Name: "Engine",
      Version: v.Version,
      Details: {
        ApiVersion: v.ApiVersion,
        MinAPIVersion: v.MinAPIVersion,
        GitCommit: v.GitCommit,
        GoVersion: v.GoVersion,
        Os: v.Os,
        Arch: v.Arch,
        BuildTime: str(v.BuildTime),
        Experimental: String(v.Experimental === true),
      },
    });
  }
  for (const c of components) {
    const details = obj(c.Details);
    s += `\n ${str(c.Name)}:`;
    if (c.Name === "Engine") {
      s += `\n  Version:\t${str(c.Version)}\n${engineDetails({ ...details, BuildTime: ansic(str(details.BuildTime)) }).join("\n")}`;
    } else {
      s += `\n  Version:\t${str(c.Version)}`;
      for (const k of Object.keys(details).sort()) s += `\n  ${k}:\t${str(details[k])}`;
    }
  }
  return s;
}

async function runVersion(inv: Invocation): Promise<void> {
  const client = inv.client();
  let server: Json | undefined;
  let error: unknown;
  try {
    await client.ping();
    server = obj(await client.get("/version"));
  } catch (e) {
    error = e;
  }
  const text = clientVersionText(client.apiVersion) + (server ? serverVersionText(server) : "");
  inv.out(`${tabwrite(`${text}\n`, 20, 1)}`);
  if (error) throw error;
}

export function addSystemCommands(program: Command): void {
  leaf(program, {
    name: "info",
    use: "[OPTIONS]",
    short: "Display system-wide information",
    args: { kind: "none" },
    run: runInfo,
  });
  leaf(program, {
    name: "version",
    use: "[OPTIONS]",
    short: "Show the shoal version information",
    args: { kind: "none" },
    run: runVersion,
  });
}
