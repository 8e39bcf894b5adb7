// Pure rendering and parsing for the overlay data plane: desired state -> `ip -batch` / `bridge -batch`
// lines, and `ip -json` / `bridge -json` output -> typed state. No I/O here, so every line can be checked
// exactly in a unit test.
//
// Layout (Docker's, seeds 000/002): per overlay network a namespace `1-<netid[:10]>` holding
//   br0     bridge, the gateway address, MTU 1450
//   vxlan0  VXLAN (VNI, dstport 4789, local = data-path IP, dev = underlay in the HOST namespace),
//           nolearning + proxy (ARP answered from the static neighbour table), master br0
//   vethX   one per local endpoint, master br0; its peer is the container's eth0 (MAC, IP, MTU)

import { assertId, assertIfname, type Cidr, inSubnet, normalizeIp, normalizeMac, parseCidr } from "./addr.js";

export const BRIDGE = "br0";
export const VXLAN = "vxlan0";
/**
 * br0 is the first link made in a fresh overlay namespace (after lo = 1), and we pin its index so that
 * links created into the namespace from elsewhere can name it as their master: iproute2 resolves
 * `master if2` to index 2 (its "if%u" fallback) and the kernel looks that index up in the namespace the
 * new link is created in. This saves a process per first attach (see overlay.ts).
 */
export const BRIDGE_INDEX = 2;
const DEFAULT_MTU = 1450;

export interface OverlayNetwork {
  id: string;
  vni: number;
  /** e.g. 10.0.1.0/24 */
  subnet: string;
  gateway: string;
  /** Default 1450 (1500 - 50 bytes of VXLAN encapsulation). */
  mtu?: number;
}

export interface Endpoint {
  id: string;
  /** Path of the container's network namespace file. */
  containerNetns: string;
  /** Interface name inside the container, e.g. eth0. */
  ifname: string;
  ip: string;
  prefixLen: number;
  mac: string;
}

/** A remote endpoint: its overlay IP and MAC, and the data-path IP of the host it lives on. */
export interface Peer {
  ip: string;
  mac: string;
  vtep: string;
}

/** A network spec after validation, with everything a batch needs. */
export interface ResolvedNetwork {
  id: string;
  vni: number;
  subnet: Cidr;
  gateway: string;
  mtu: number;
  nsName: string;
}

export function nsNameFor(netId: string): string {
  return `1-${netId.slice(0, 10)}`;
}

/** The overlay-side veth of an endpoint: "veth" + the first 11 characters of its id (IFNAMSIZ is 16). */
export function vethNameFor(epId: string): string {
  return `veth${epId.slice(0, 11)}`;
}

export function resolveNetwork(net: OverlayNetwork): ResolvedNetwork {
  assertId(net.id, "network ID");
  if (!Number.isInteger(net.vni) || net.vni < 1 || net.vni > 0xffffff) {
    throw new Error(`invalid VNI ${net.vni} for network ${net.id}: must be 1-16777215`);
  }
  const subnet = parseCidr(net.subnet);
  const gateway = normalizeIp(net.gateway, "gateway");
  if (!inSubnet(gateway, subnet)) throw new Error(`gateway ${gateway} is not in subnet ${net.subnet}`);
  const mtu = net.mtu ?? DEFAULT_MTU;
  if (!Number.isInteger(mtu) || mtu < 576 || mtu > 65_535) throw new Error(`invalid MTU ${mtu} for network ${net.id}`);
  return { id: net.id, vni: net.vni, subnet, gateway, mtu, nsName: nsNameFor(net.id) };
}

export function validateEndpoint(ep: Endpoint): Endpoint {
  assertId(ep.id, "endpoint ID");
  assertIfname(ep.ifname, "container interface name");
  if (!ep.containerNetns.startsWith("/") || /[\s"'\\]/.test(ep.containerNetns)) {
    throw new Error(`invalid container namespace path ${JSON.stringify(ep.containerNetns)}`);
  }
  const ip = normalizeIp(ep.ip, "endpoint IP");
  const max = ip.includes(":") ? 128 : 32;
  if (!Number.isInteger(ep.prefixLen) || ep.prefixLen < 1 || ep.prefixLen > max) {
    throw new Error(`invalid prefix length ${ep.prefixLen} for endpoint ${ep.id}`);
  }
  return { ...ep, ip, mac: normalizeMac(ep.mac, "endpoint MAC") };
}

export interface DataPathConfig {
  underlayDev: string;
  localAddr: string;
  dataPathPort: number;
}

// ---- creation batches -------------------------------------------------------------------------------

/** Overlay namespace, first lines: the bridge (pinned index, MTU, up) and the gateway address. */
export function renderBridgeCreate(net: ResolvedNetwork): string[] {
  return [
    `link add ${BRIDGE} index ${BRIDGE_INDEX} mtu ${net.mtu} up type bridge`,
    `addr add ${net.gateway}/${net.subnet.prefixLen} dev ${BRIDGE}`,
  ];
}

/**
 * Host namespace: the VXLAN device, created directly in the overlay namespace (its UDP socket and underlay
 * device stay in the host namespace; `link set netns` afterwards would cost ~26 ms). With `masterIndex`
 * it is also enslaved to br0 and brought up in the same request.
 */
export function renderVxlanCreate(
  net: ResolvedNetwork,
  nsPath: string,
  dp: DataPathConfig,
  masterIndex?: number,
): string[] {
  const master = masterIndex === undefined ? "" : ` master if${masterIndex}`;
  const up = masterIndex === undefined ? "" : " up";
  return [
    `link add ${VXLAN} netns ${nsPath}${master} mtu ${net.mtu}${up} type vxlan id ${net.vni} dstport ${dp.dataPathPort}` +
      ` local ${dp.localAddr} dev ${dp.underlayDev} nolearning proxy`,
  ];
}

/** Overlay namespace: enslave an existing vxlan0 and bring it up (when it was made without a master). */
export function renderVxlanEnslave(net: ResolvedNetwork): string[] {
  return [`link set ${VXLAN} master ${BRIDGE} mtu ${net.mtu} up`];
}

/**
 * Overlay namespace: the endpoint's veth pair. The overlay end is enslaved and up at creation; the peer is
 * created directly in the container's namespace under its final name, with its MAC and MTU (a veth peer
 * cannot be brought up at creation: the kernel answers ENOTCONN).
 */
export function renderVethCreate(net: ResolvedNetwork, ep: Endpoint): string[] {
  return [
    `link add ${vethNameFor(ep.id)} master ${BRIDGE} mtu ${net.mtu} up type veth` +
      ` peer name ${ep.ifname} netns ${ep.containerNetns} address ${ep.mac} mtu ${net.mtu}`,
  ];
}

/** Container namespace: the address, then up. No default route (the gateway bridge is separate). */
export function renderContainerConfig(ep: Endpoint): string[] {
  return [`addr add ${ep.ip}/${ep.prefixLen} dev ${ep.ifname}`, `link set ${ep.ifname} up`];
}

export function batch(lines: string[]): string {
  return lines.length === 0 ? "" : `${lines.join("\n")}\n`;
}

// ---- JSON parsing -------------------------------------------------------------------------------------

type Json = unknown;
const isObj = (v: Json): v is Record<string, Json> => typeof v === "object" && v !== null && !Array.isArray(v);
const str = (v: Json): string | undefined => (typeof v === "string" ? v : undefined);
const num = (v: Json): number | undefined => (typeof v === "number" ? v : undefined);
const strs = (v: Json): string[] => (Array.isArray(v) ? v.filter((x): x is string => typeof x === "string") : []);

function parseArray(text: string, what: string): Json[] {
  const trimmed = text.trim();
  if (trimmed === "") return [];
  let v: Json;
  try {
    v = JSON.parse(trimmed);
  } catch {
    throw new Error(`cannot parse ${what} JSON: ${trimmed.slice(0, 200)}`);
  }
  if (!Array.isArray(v)) throw new Error(`${what} JSON is not an array`);
  return v;
}

export interface FdbEntry {
  mac: string;
  /** Remote VTEP (VXLAN FDB entries only). */
  dst?: string;
  /** The device's own FDB ("self"), as opposed to the bridge's entry for the port ("master"). */
  self: boolean;
  master?: string;
  state: string;
}

/** `bridge -json fdb show dev vxlan0` */
export function parseFdb(text: string): FdbEntry[] {
  return parseArray(text, "bridge fdb").flatMap((e) => {
    if (!isObj(e)) return [];
    const mac = str(e["mac"]);
    if (!mac) return [];
    const out: FdbEntry = {
      mac: mac.toLowerCase(),
      self: strs(e["flags"]).includes("self"),
      state: str(e["state"]) ?? "",
    };
    const dst = str(e["dst"]);
    if (dst) out.dst = normalizeIp(dst);
    const master = str(e["master"]);
    if (master) out.master = master;
    return [out];
  });
}

export interface NeighEntry {
  ip: string;
  lladdr?: string;
  state: string[];
}

/** `ip -json neigh show dev vxlan0` */
export function parseNeigh(text: string): NeighEntry[] {
  return parseArray(text, "ip neigh").flatMap((e) => {
    if (!isObj(e)) return [];
    const dst = str(e["dst"]);
    if (!dst) return [];
    const out: NeighEntry = { ip: normalizeIp(dst), state: strs(e["state"]) };
    const ll = str(e["lladdr"]);
    if (ll) out.lladdr = ll.toLowerCase();
    return [out];
  });
}

export interface LinkAddr {
  family: "inet" | "inet6";
  local: string;
  prefixLen: number;
  scope: string;
}

export interface VxlanInfo {
  id: number;
  port?: number;
  local?: string;
  learning?: boolean;
  proxy?: boolean;
}

export interface LinkState {
  ifindex: number;
  name: string;
  /** linkinfo.info_kind: bridge, vxlan, veth; undefined for lo. */
  kind?: string;
  mtu: number;
  /** Administratively up (IFF_UP). */
  up: boolean;
  operstate: string;
  master?: string;
  mac: string;
  /** For a veth: the peer's ifindex (in the peer's namespace). */
  peerIndex?: number;
  /** For a veth whose peer is in another namespace: that namespace's id as seen from here. */
  peerNetnsId?: number;
  /** For a veth whose peer is in the same namespace: the peer's name (`ip` prints it instead of the index). */
  peerName?: string;
  addresses: LinkAddr[];
  vxlan?: VxlanInfo;
}

/** `ip -json -details addr show` (also accepts `ip -json link show`: then no addresses). */
export function parseLinks(text: string): LinkState[] {
  return parseArray(text, "ip link").flatMap((e) => {
    if (!isObj(e)) return [];
    const name = str(e["ifname"]);
    const ifindex = num(e["ifindex"]);
    if (!name || ifindex === undefined) return [];
    const link: LinkState = {
      ifindex,
      name,
      mtu: num(e["mtu"]) ?? 0,
      up: strs(e["flags"]).includes("UP"),
      operstate: str(e["operstate"]) ?? "",
      mac: (str(e["address"]) ?? "").toLowerCase(),
      addresses: [],
    };
    const master = str(e["master"]);
    if (master) link.master = master;
    const peer = num(e["link_index"]);
    if (peer !== undefined) link.peerIndex = peer;
    const peerName = str(e["link"]);
    if (peerName) link.peerName = peerName;
    const peerNs = num(e["link_netnsid"]);
    if (peerNs !== undefined) link.peerNetnsId = peerNs;
    const info = e["linkinfo"];
    if (isObj(info)) {
      const kind = str(info["info_kind"]);
      if (kind) link.kind = kind;
      const data = info["info_data"];
      if (kind === "vxlan" && isObj(data)) {
        const vx: VxlanInfo = { id: num(data["id"]) ?? -1 };
        const port = num(data["port"]);
        if (port !== undefined) vx.port = port;
        const local = str(data["local"]);
        if (local) vx.local = normalizeIp(local);
        if (typeof data["learning"] === "boolean") vx.learning = data["learning"];
        if (typeof data["proxy"] === "boolean") vx.proxy = data["proxy"];
        link.vxlan = vx;
      }
    }
    const addrs = e["addr_info"];
    if (Array.isArray(addrs)) {
      for (const a of addrs) {
        if (!isObj(a)) continue;
        const fam = str(a["family"]);
        const local = str(a["local"]);
        const plen = num(a["prefixlen"]);
        if ((fam === "inet" || fam === "inet6") && local && plen !== undefined) {
          link.addresses.push({
            family: fam,
            local: normalizeIp(local),
            prefixLen: plen,
            scope: str(a["scope"]) ?? "",
          });
        }
      }
    }
    return [link];
  });
}

// ---- peers ---------------------------------------------------------------------------------------------

export function normalizePeers(peers: Peer[]): Peer[] {
  const byIp = new Map<string, Peer>();
  const vtepByMac = new Map<string, string>();
  for (const p of peers) {
    const peer = {
      ip: normalizeIp(p.ip, "peer IP"),
      mac: normalizeMac(p.mac, "peer MAC"),
      vtep: normalizeIp(p.vtep, "VTEP"),
    };
    const seen = byIp.get(peer.ip);
    if (seen && seen.mac !== peer.mac)
      throw new Error(`peer IP ${peer.ip} is given twice, with MACs ${seen.mac} and ${peer.mac}`);
    const vtep = vtepByMac.get(peer.mac);
    if (vtep !== undefined && vtep !== peer.vtep) {
      throw new Error(`peer MAC ${peer.mac} is given on two hosts, ${vtep} and ${peer.vtep}`);
    }
    byIp.set(peer.ip, peer);
    vtepByMac.set(peer.mac, peer.vtep);
  }
  return [...byIp.values()].sort((a, b) => (a.ip < b.ip ? -1 : a.ip > b.ip ? 1 : 0));
}

export interface PeerDiff {
  /** `bridge -batch` lines for vxlan0 (deletes first, then replaces). */
  fdb: string[];
  /** `ip -batch` lines for vxlan0 (deletes first, then replaces). */
  neigh: string[];
  added: number;
  changed: number;
  removed: number;
}

/**
 * What to run so that vxlan0's own FDB (MAC -> VTEP) and neighbour table (IP -> MAC) hold exactly the
 * given peers, all permanent. The bridge's entries for the port (`master br0`) are left alone.
 * With `current` undefined the tables are known to be empty (a namespace we just built).
 */
export function diffPeers(peers: Peer[], current?: { fdb: FdbEntry[]; neigh: NeighEntry[] }): PeerDiff {
  const fdbDel: string[] = [];
  const fdbSet: string[] = [];
  const neighDel: string[] = [];
  const neighSet: string[] = [];
  let added = 0;
  let changed = 0;
  let removed = 0;

  const wantVtep = new Map<string, string>();
  for (const p of peers) wantVtep.set(p.mac, p.vtep);
  const haveFdb = (current?.fdb ?? []).filter((e) => e.self && e.dst !== undefined);
  const haveByMac = new Map<string, FdbEntry[]>();
  for (const e of haveFdb) haveByMac.set(e.mac, [...(haveByMac.get(e.mac) ?? []), e]);
  for (const e of haveFdb) {
    if (wantVtep.get(e.mac) !== e.dst) fdbDel.push(`fdb del ${e.mac} dev ${VXLAN} dst ${e.dst} self`);
  }
  for (const [mac, vtep] of [...wantVtep].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    const have = haveByMac.get(mac) ?? [];
    if (have.some((e) => e.dst === vtep && e.state === "permanent")) continue;
    fdbSet.push(`fdb replace ${mac} dev ${VXLAN} dst ${vtep} self permanent`);
  }
  // A MAC whose only entries were all deleted and re-added counts as changed, not removed + added.
  const fdbRemovedMacs = new Set(haveFdb.filter((e) => !wantVtep.has(e.mac)).map((e) => e.mac));

  const wantMac = new Map<string, string>();
  for (const p of peers) wantMac.set(p.ip, p.mac);
  const haveNeigh = new Map<string, NeighEntry>();
  for (const n of current?.neigh ?? []) haveNeigh.set(n.ip, n);
  for (const n of current?.neigh ?? []) {
    if (!wantMac.has(n.ip)) {
      neighDel.push(`neigh del ${n.ip} dev ${VXLAN}`);
      removed++;
    }
  }
  for (const p of peers) {
    const n = haveNeigh.get(p.ip);
    const fdbOk = (haveByMac.get(p.mac) ?? []).some((e) => e.dst === p.vtep && e.state === "permanent");
    const neighOk = n !== undefined && n.lladdr === p.mac && n.state.includes("PERMANENT");
    if (!neighOk) neighSet.push(`neigh replace ${p.ip} lladdr ${p.mac} dev ${VXLAN} nud permanent`);
    if (n === undefined) added++;
    else if (!neighOk || !fdbOk) changed++;
  }
  // FDB entries whose MAC belongs to no desired peer and whose IP was not in the neighbour table.
  for (const mac of fdbRemovedMacs) {
    if (![...(current?.neigh ?? [])].some((n) => n.lladdr === mac && !wantMac.has(n.ip))) removed++;
  }
  return { fdb: [...fdbDel, ...fdbSet], neigh: [...neighDel, ...neighSet], added, changed, removed };
}
