// shoal network create | ls | inspect | rm | prune | connect | disconnect — docker network's requests and output.
// One difference: a network's driver defaults to "overlay" (docker's default, "bridge", is not a shoal driver).

import type { Command } from "commander";
import { CliError } from "../client.js";
import { group, type Invocation, leaf } from "../command.js";
import { filtersJSON, parseFilter, splitKV } from "../flags.js";
import { naturalCompare } from "../format.js";
import { goTime, goTimeString } from "../gojson.js";
import {
  bytewise,
  filterFlag,
  goBody,
  INSPECT_FORMAT_FLAG,
  inspectRaw,
  LIST_FORMAT_FLAG,
  LIST_FORMAT_NOTES,
  obj,
  renderList,
  row,
  sortedMap,
  str,
} from "./common.js";

const DEFAULT_DRIVER = "overlay";

// ---- create ----------------------------------------------------------------------------------------------

interface IPv4Net {
  addr: number;
  bits: number;
}

function parseIPv4(s: string): number | undefined {
  const parts = s.split(".");
  if (parts.length !== 4 || !parts.every((p) => /^(0|[1-9]\d{0,2})$/.test(p) && Number(p) < 256)) return undefined;
  return parts.reduce((a, p) => a * 256 + Number(p), 0);
}

function parseNet(s: string): IPv4Net | undefined {
  const m = /^([^/]+)\/(\d{1,2})$/.exec(s);
  if (!m) return undefined;
  const addr = parseIPv4(m[1]!);
  const bits = Number(m[2]);
  if (addr === undefined || bits > 32) return undefined;
  return { addr, bits };
}

function contains(net: IPv4Net, ip: number): boolean {
  const mask = net.bits === 0 ? 0 : (0xffffffff << (32 - net.bits)) >>> 0;
  return (net.addr & mask) >>> 0 === (ip & mask) >>> 0;
}

/**
 * docker's consolidateIpam: each --gateway and --ip-range goes with the --subnet that holds it (subnets
 * are sent as typed; the daemon validates them).
 */
function ipamConfig(subnets: string[], ranges: string[], gateways: string[]): Record<string, unknown>[] {
  if (subnets.length < ranges.length || subnets.length < gateways.length) {
    throw new CliError("every ip-range or gateway must have a corresponding subnet");
  }
  const entries = subnets.map((s) => ({ subnet: s, net: parseNet(s), range: "", gateway: "" }));
  for (const r of ranges) {
    const rn = parseNet(r);
    if (!rn) throw new CliError(`invalid CIDR address: ${r}`);
    const e = entries.find((x) => x.net && x.net.bits <= rn.bits && contains(x.net, rn.addr));
    if (!e) throw new CliError(`no matching subnet for range ${r}`);
    if (e.range !== "")
      throw new CliError(`cannot configure multiple ranges (${r}, ${e.range}) on the same subnet (${e.subnet})`);
    e.range = r;
  }
  for (const g of gateways) {
    const ip = parseIPv4(g);
    if (ip === undefined) throw new CliError(`invalid IP address: ${g}`);
    const e = entries.find((x) => x.net && contains(x.net, ip));
    if (!e) throw new CliError(`no matching subnet for gateway ${g}`);
    if (e.gateway !== "")
      throw new CliError(`cannot configure multiple gateways (${g}, ${e.gateway}) for the same subnet (${e.subnet})`);
    e.gateway = g;
  }
  return entries.map((e) => ({
    Subnet: e.subnet,
    ...(e.range ? { IPRange: e.range } : {}),
    ...(e.gateway ? { Gateway: e.gateway } : {}),
  }));
}

function kvMap(values: string[] | undefined): Record<string, string> {
  const m: Record<string, string> = {};
  for (const kv of values ?? []) {
    const [k, v] = splitKV(kv);
    m[k] = v;
  }
  return sortedMap(m);
}

async function runCreate(inv: Invocation): Promise<void> {
  const name = inv.args[0]!;
  const list = (long: string): string[] => (inv.flag<string[] | undefined>(long) ?? []).flatMap((v) => v.split(","));
  const config = ipamConfig(list("subnet"), list("ip-range"), list("gateway"));
  const body = {
    Driver: inv.flag<string | undefined>("driver") ?? DEFAULT_DRIVER,
    Scope: inv.flag<string | undefined>("scope") ?? "",
    IPAM: {
      Driver: inv.flag<string | undefined>("ipam-driver") ?? "default",
      Options: kvMap(inv.flag("ipam-opt")),
      Config: config,
    },
    Internal: inv.flag<boolean>("internal") === true,
    Attachable: inv.flag<boolean>("attachable") === true,
    Ingress: false,
    ConfigOnly: false,
    ConfigFrom: null,
    Options: kvMap(inv.flag("opt")),
    Labels: kvMap(inv.flag("label")),
    Name: name,
  };
  const res = await inv.client().json<{ Id?: unknown }>("POST", "/networks/create", { body: goBody(body) });
  inv.out(`${str(res.Id)}\n`);
}

// ---- ls -----------------------------------------------------------------------------------------------------

const LS_HEADERS: Record<string, string> = {
  ID: "NETWORK ID",
  Name: "NAME",
  Driver: "DRIVER",
  Scope: "SCOPE",
  IPv4: "IPV4",
  IPv6: "IPV6",
  Internal: "INTERNAL",
  Labels: "LABELS",
  CreatedAt: "CREATED AT",
};

function labelsText(v: unknown): string {
  return Object.entries(obj(v))
    .sort(([a], [b]) => bytewise(a, b))
    .map(([k, x]) => `${k}=${str(x)}`)
    .join(",");
}

async function runList(inv: Invocation): Promise<void> {
  const filters = inv.flag<[string, string][] | undefined>("filter") ?? [];
  const query = filters.length > 0 ? { filters: filtersJSON(filters) } : undefined;
  const nets = (await inv.client().get<unknown[]>("/networks", query)).map(obj);
  nets.sort((a, b) => naturalCompare(str(a.Name), str(b.Name)));
  // (commander reads --no-trunc as the negation of a "trunc" flag)
  const trunc = inv.flag<boolean>("trunc") !== false;
  const rows = nets.map((n) =>
    row("*network.networkContext", [
      ["ID", trunc ? str(n.Id).slice(0, 12) : str(n.Id)],
      ["Name", str(n.Name)],
      ["Driver", str(n.Driver)],
      ["Scope", str(n.Scope)],
      ["IPv4", String(n.EnableIPv4 === true)],
      ["IPv6", String(n.EnableIPv6 === true)],
      ["Internal", String(n.Internal === true)],
      ["Labels", labelsText(n.Labels)],
      ["CreatedAt", goTimeString(goTime(n.Created))],
    ]),
  );
  renderList(inv, rows, {
    headers: LS_HEADERS,
    defaultTable: "table {{.ID}}\t{{.Name}}\t{{.Driver}}\t{{.Scope}}",
    quietField: "ID",
    format: inv.flag<string | undefined>("format") ?? "",
    quiet: inv.flag<boolean>("quiet") === true,
  });
}

// ---- inspect, rm, connect, disconnect ------------------------------------------------------------------

function runInspect(inv: Invocation): Promise<void> {
  const client = inv.client();
  return inspectRaw(inv, (ref) => client.call("GET", `/networks/${ref}`));
}

async function runRemove(inv: Invocation): Promise<void> {
  const client = inv.client();
  const force = inv.flag<boolean>("force") === true;
  let failed = false;
  for (const name of inv.args) {
    // docker looks first: removing the ingress network needs a confirmation shoal does not ask for.
    const nw = await client.get(`/networks/${name}`).then(obj, () => undefined);
    if (nw?.Ingress === true) {
      process.stderr.write(`${name}: the routing-mesh (ingress) network is not removed by shoal network rm\n`);
      failed = true;
      continue;
    }
    try {
      await client.call("DELETE", `/networks/${name}`);
    } catch (e) {
      if (!(e instanceof CliError)) throw e;
      if (force && / not found$/.test(e.message)) continue;
      process.stderr.write(`${e.message}\n`);
      failed = true;
      continue;
    }
    inv.out(`${name}\n`);
  }
  if (failed) throw new CliError("exit status 1");
}

// ---- prune -----------------------------------------------------------------------------------------------

const PRUNE_WARNING =
  "WARNING! This will remove all custom networks not used by at least one container.\nAre you sure you want to continue?";

/** docker's prompt.Confirm: the question, " [y/N] ", and a line from stdin that must be y or Y. */
async function confirm(question: string): Promise<boolean> {
  process.stdout.write(`${question} [y/N] `);
  const line = await new Promise<string>((resolve) => {
    let text = "";
    const done = (): void => {
      process.stdin.off("data", onData);
      process.stdin.off("end", done);
      process.stdin.pause();
      resolve(text);
    };
    const onData = (d: Buffer): void => {
      text += d.toString("utf8");
      if (text.includes("\n")) done();
    };
    process.stdin.on("data", onData);
    process.stdin.once("end", done);
    process.stdin.resume();
  });
  const answer = line.split("\n")[0]!.trim();
  return answer === "y" || answer === "Y";
}

async function runPrune(inv: Invocation): Promise<void> {
  const filters = inv.flag<[string, string][] | undefined>("filter") ?? [];
  if (inv.flag<boolean>("force") !== true && !(await confirm(PRUNE_WARNING))) return;
  const query = filters.length > 0 ? { filters: filtersJSON(filters) } : undefined;
  const report = obj(await inv.client().json("POST", "/networks/prune", query ? { query } : {}));
  const deleted = Array.isArray(report.NetworksDeleted) ? report.NetworksDeleted.map(str) : [];
  if (deleted.length > 0) inv.out(`Deleted Networks:\n${deleted.map((n) => `${n}\n`).join("")}\n`);
}

async function runConnect(inv: Invocation): Promise<void> {
  const [network, container] = inv.args as [string, string];
  const ip = inv.flag<string | undefined>("ip") ?? "";
  const aliases = inv.flag<string[] | undefined>("alias") ?? [];
  const body = {
    Container: container,
    EndpointConfig: {
      IPAMConfig: ip ? { IPv4Address: ip } : {},
      Links: null,
      Aliases: aliases,
      MacAddress: "",
      DriverOpts: kvMap(inv.flag("driver-opt")),
      GwPriority: 0,
      NetworkID: "",
      EndpointID: "",
      Gateway: "",
      IPAddress: "",
      IPPrefixLen: 0,
      IPv6Gateway: "",
      GlobalIPv6Address: "",
      GlobalIPv6PrefixLen: 0,
      DNSNames: null,
    },
  };
  await inv.client().call("POST", `/networks/${network}/connect`, { body: goBody(body) });
}

async function runDisconnect(inv: Invocation): Promise<void> {
  const [network, container] = inv.args as [string, string];
  const body = { Container: container, Force: inv.flag<boolean>("force") === true };
  await inv.client().call("POST", `/networks/${network}/disconnect`, { body: goBody(body) });
}

export function addNetworkCommands(program: Command): void {
  const network = group(program, "network", "Manage networks");
  leaf(network, {
    name: "connect",
    use: "[OPTIONS] NETWORK CONTAINER",
    short: "Connect a container to a network",
    args: { kind: "exact", n: 2 },
    flags: [
      { long: "alias", type: "strings", kind: "list", description: "Add network-scoped alias for the container" },
      { long: "driver-opt", type: "strings", kind: "list", description: "driver options for the network" },
      { long: "ip", type: "string", kind: "string", description: 'IPv4 address (e.g., "172.30.100.104")' },
    ],
    run: runConnect,
  });
  leaf(network, {
    name: "create",
    use: "[OPTIONS] NETWORK",
    short: "Create a network",
    args: { kind: "exact", n: 1 },
    flags: [
      { long: "attachable", kind: "bool", description: "Enable manual container attachment" },
      {
        long: "driver",
        short: "d",
        type: "string",
        kind: "string",
        description: "Driver to manage the Network",
        defaultText: `"${DEFAULT_DRIVER}"`,
      },
      { long: "gateway", type: "strings", kind: "list", description: "IPv4 Gateway for the master subnet" },
      { long: "internal", kind: "bool", description: "Restrict external access to the network" },
      { long: "ip-range", type: "strings", kind: "list", description: "Allocate container ip from a sub-range" },
      {
        long: "ipam-driver",
        type: "string",
        kind: "string",
        description: "IP Address Management Driver",
        defaultText: '"default"',
      },
      {
        long: "ipam-opt",
        type: "map",
        kind: "list",
        description: "Set IPAM driver specific options",
        defaultText: "map[]",
      },
      { long: "label", type: "list", kind: "list", description: "Set metadata on a network" },
      {
        long: "opt",
        short: "o",
        type: "map",
        kind: "list",
        description: "Set driver specific options",
        defaultText: "map[]",
      },
      { long: "scope", type: "string", kind: "string", description: "Control the network's scope" },
      {
        long: "subnet",
        type: "strings",
        kind: "list",
        description: "Subnet in CIDR format that represents a network segment",
      },
    ],
    run: runCreate,
  });
  leaf(network, {
    name: "disconnect",
    use: "[OPTIONS] NETWORK CONTAINER",
    short: "Disconnect a container from a network",
    args: { kind: "exact", n: 2 },
    flags: [
      { long: "force", short: "f", kind: "bool", description: "Force the container to disconnect from a network" },
    ],
    run: runDisconnect,
  });
  leaf(network, {
    name: "inspect",
    use: "[OPTIONS] NETWORK [NETWORK...]",
    short: "Display detailed information on one or more networks",
    args: { kind: "min", n: 1 },
    flags: [INSPECT_FORMAT_FLAG],
    notes: LIST_FORMAT_NOTES,
    run: runInspect,
  });
  leaf(network, {
    name: "ls",
    aliases: ["list"],
    use: "[OPTIONS]",
    short: "List networks",
    args: { kind: "none" },
    flags: [
      filterFlag('Provide filter values (e.g. "driver=overlay")'),
      LIST_FORMAT_FLAG,
      { long: "no-trunc", kind: "bool", description: "Do not truncate the output" },
      { long: "quiet", short: "q", kind: "bool", description: "Only display network IDs" },
    ],
    notes: LIST_FORMAT_NOTES,
    run: runList,
  });
  leaf(network, {
    name: "prune",
    use: "[OPTIONS]",
    short: "Remove all unused networks",
    args: { kind: "none" },
    flags: [
      {
        long: "filter",
        type: "filter",
        kind: "list",
        description: 'Provide filter values (e.g. "until=<timestamp>")',
        parse: parseFilter,
      },
      { long: "force", short: "f", kind: "bool", description: "Do not prompt for confirmation" },
    ],
    run: runPrune,
  });
  leaf(network, {
    name: "rm",
    aliases: ["remove"],
    use: "NETWORK [NETWORK...]",
    short: "Remove one or more networks",
    args: { kind: "min", n: 1 },
    flags: [{ long: "force", short: "f", kind: "bool", description: "Do not error if the network does not exist" }],
    run: runRemove,
  });
}
