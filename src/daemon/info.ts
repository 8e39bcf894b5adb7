// What shoald says about itself: the Swarm section of /info (and of /_ping's Swarm header), the node
// description it sends the managers, and the packet filter it uses (docker info's "Firewall Backend").

import os from "node:os";
import { MSG_LOCKED } from "../api/errors.js";
import type { NodeDescription } from "../api/objects.js";
import { nodeTLSInfo } from "../ca/chain.js";
import type { Firewall } from "../dataplane/firewall.js";
import type { SwarmInfo } from "../engine/types.js";
import type { Manager } from "../manager/manager.js";
import { VERSION } from "../version.js";
import type { Certificates, LocalState } from "./state.js";

export function swarmInfoOf(d: {
  state: LocalState | undefined;
  locked: boolean;
  managerError: string | undefined;
  manager: Manager | undefined;
}): SwarmInfo {
  const s = d.state;
  if (!s) {
    return {
      NodeID: "",
      NodeAddr: "",
      LocalNodeState: "inactive",
      ControlAvailable: false,
      Error: "",
      RemoteManagers: null,
    };
  }
  if (d.locked) {
    return {
      NodeID: s.nodeId,
      NodeAddr: s.dataPathAddr,
      LocalNodeState: "locked",
      ControlAvailable: false,
      Error: MSG_LOCKED,
      RemoteManagers: s.managers.map((m) => ({ NodeID: m.nodeId, Addr: m.addr })),
    };
  }
  const info: SwarmInfo = {
    NodeID: s.nodeId,
    NodeAddr: s.dataPathAddr,
    LocalNodeState: "active",
    ControlAvailable: s.role === "manager" && d.manager !== undefined,
    Error: d.managerError ?? "",
    RemoteManagers: s.managers.map((m) => ({ NodeID: m.nodeId, Addr: m.addr })),
  };
  const m = d.manager;
  const c = m?.store.cluster();
  if (m && c) {
    const nodes = m.store.nodeViews();
    info.Nodes = nodes.length;
    info.Managers = nodes.filter((n) => n.role === "manager").length;
    info.Cluster = c.info;
    info.RemoteManagers = m.store.members().map((x) => ({ NodeID: x.nodeId, Addr: x.addr }));
  }
  return info;
}
/** What this node tells the managers about itself (docker node inspect's Description). */
export function nodeDescription(hostname: string, certs: Certificates | undefined): NodeDescription {
  return {
    Hostname: hostname,
    Platform: { Architecture: os.arch() === "x64" ? "x86_64" : os.arch(), OS: "linux" },
    // The CPUs this process may run on, as /info's NCPU (Docker: runtime.NumCPU). Not os.cpus(): it reads
    // /proc/cpuinfo and every CPU's times (~1 ms), for a count, at each session a node starts; and it counts
    // CPUs outside the process's affinity.
    Resources: { NanoCPUs: os.availableParallelism() * 1e9, MemoryBytes: os.totalmem() },
    Engine: { EngineVersion: VERSION, Plugins: [{ Type: "Network", Name: "overlay" }] },
    // The root this node trusts and who issued its certificate: what `docker swarm ca` watches.
    ...(certs ? { TLSInfo: nodeTLSInfo(certs.rootPem, certs.certPem) } : {}),
  };
}

/** /info's FirewallBackend: the backend in use, or why there is none (docker info prints it). */
export async function firewallInfoOf(firewall: Firewall): Promise<{ Driver: string; Info: [string, string][] }> {
  const s = await firewall.status();
  if (s.backend === null) return { Driver: "none", Info: [["Reason", s.reason]] };
  const info: [string, string][] = [];
  if (s.backend === "iptables") info.push(["Program", "iptables-legacy"]);
  if (s.forced) info.push(["Chosen", "--firewall-backend"]);
  if (s.nftablesUnavailable) info.push(["nftables", `unavailable (${s.nftablesUnavailable})`]);
  return { Driver: s.backend, Info: info };
}
