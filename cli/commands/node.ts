// shoal node ls | inspect | promote | demote | update | rm — docker node's requests and output.

import type { Command } from "commander";
import { CliError, type EngineClient } from "../client.js";
import { group, type Invocation, leaf } from "../command.js";
import { filtersJSON, splitKV } from "../flags.js";
import { bytesSize, executeTemplate, naturalCompare, prettyPrint, TemplateError, table } from "../format.js";
import {
  encodeGo,
  GoMap,
  GoStruct,
  type GoValue,
  goNode,
  goNodeSpec,
  goTime,
  goTimeString,
  requestBody,
} from "../gojson.js";
import { filterFlag, inspectTemplate, LIST_FORMAT_FLAG, renderTemplate } from "./common.js";

type Json = Record<string, unknown>;
const obj = (v: unknown): Json => (typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Json) : {});
const str = (v: unknown): string => (typeof v === "string" ? v : "");

export const FORMAT_NOTES =
  "Go templates: shoal supports field lookups ({{.ID}}, {{.Spec.Role}}), {{.}} and {{json .Field}}; " +
  "if/range/with, pipes and other functions are not supported.";

/** docker's node.Reference: "self" is the node id from GET /info. */
async function nodeReference(client: EngineClient, ref: string): Promise<string> {
  if (ref !== "self") return ref;
  const info = obj(await client.get("/info"));
  const id = str(obj(info.Swarm).NodeID);
  if (id === "") {
    // Not a manager, probably: a swarm endpoint gives the better error.
    await client.get("/nodes");
    throw new CliError("node ID not found in /info");
  }
  return id;
}

// ---- node ls --------------------------------------------------------------------------------------------

const LS_HEADERS: Record<string, string> = {
  ID: "ID",
  Self: "",
  Hostname: "HOSTNAME",
  Status: "STATUS",
  Availability: "AVAILABILITY",
  ManagerStatus: "MANAGER STATUS",
  EngineVersion: "ENGINE VERSION",
  TLSStatus: "TLS STATUS",
};

function tlsKey(v: unknown): string {
  const t = obj(v);
  return JSON.stringify([str(t.TrustRoot), str(t.CertIssuerSubject), str(t.CertIssuerPublicKey)]);
}
const EMPTY_TLS = tlsKey({});

/** The row docker's node formatter renders: these fields, and {{json .}} writes them with sorted keys. */
function nodeRow(n: Json, swarmInfo: Json): GoStruct {
  const ms = n.ManagerStatus === undefined || n.ManagerStatus === null ? null : obj(n.ManagerStatus);
  const reach = ms ? (ms.Leader === true ? "Leader" : str(ms.Reachability)) : "";
  const cluster = swarmInfo.Cluster === undefined || swarmInfo.Cluster === null ? null : obj(swarmInfo.Cluster);
  const nodeTLS = tlsKey(obj(n.Description).TLSInfo);
  const clusterTLS = cluster ? tlsKey(cluster.TLSInfo) : EMPTY_TLS;
  const tls =
    !cluster || clusterTLS === EMPTY_TLS || nodeTLS === EMPTY_TLS
      ? "Unknown"
      : nodeTLS === clusterTLS
        ? "Ready"
        : "Needs Rotation";
  const fields: [string, GoValue][] = [
    ["ID", str(n.ID)],
    ["Self", str(n.ID) === str(swarmInfo.NodeID)],
    ["Hostname", str(obj(n.Description).Hostname)],
    ["Status", prettyPrint(str(obj(n.Status).State))],
    ["Availability", prettyPrint(str(obj(n.Spec).Availability))],
    ["ManagerStatus", prettyPrint(reach)],
    ["EngineVersion", str(obj(obj(n.Description).Engine).EngineVersion)],
    ["TLSStatus", tls],
  ];
  return new GoStruct(
    "*node.nodeContext",
    fields.map(([name, value]) => ({ name, value, omit: false })),
    () => new GoMap(fields),
  );
}

async function runList(inv: Invocation): Promise<void> {
  const client = inv.client();
  const quiet = inv.flag<boolean>("quiet") === true;
  const filters = inv.flag<[string, string][] | undefined>("filter") ?? [];
  const query = filters.length > 0 ? { filters: filtersJSON(filters) } : undefined;
  const nodes = (await client.get<unknown[]>("/nodes", query)).map(obj);
  let swarmInfo: Json = {};
  if (nodes.length > 0 && !quiet) swarmInfo = obj(obj(await client.get("/info")).Swarm);
  nodes.sort((a, b) => naturalCompare(str(obj(a.Description).Hostname), str(obj(b.Description).Hostname)));

  const format = inv.flag<string | undefined>("format") || "table";
  const rows = nodes.map((n) => nodeRow(n, swarmInfo));
  if (format === "table" && !quiet) {
    // docker's default: "table {{.ID}} {{if .Self}}*{{else}} {{ end }}\t{{.Hostname}}\t..."
    const line = (c: Record<string, GoValue>): string =>
      `${c.ID} ${c.Self === true ? "*" : " "}\t${c.Hostname}\t${c.Status}\t${c.Availability}\t${c.ManagerStatus}\t${c.EngineVersion}\n`;
    const header = line({ ...LS_HEADERS, Self: false });
    const body = rows.map((r) => line(Object.fromEntries(r.fields.map((f) => [f.name, f.value])))).join("");
    inv.out(table(`${header}${body}`));
    return;
  }
  let src = format;
  if (format === "table") src = "{{.ID}}";
  else if (format === "raw") {
    src = quiet
      ? "node_id: {{.ID}}"
      : "node_id: {{.ID}}\\nhostname: {{.Hostname}}\\nstatus: {{.Status}}\\navailability: {{.Availability}}\\nmanager_status: {{.ManagerStatus}}\\n";
  }
  if (src === "json") src = "{{json .}}";
  renderTemplate(inv, rows, src, LS_HEADERS);
}

// ---- node inspect ---------------------------------------------------------------------------------------

/** The human-friendly text of `docker node inspect --pretty` (tabs included, as docker prints them). */
export function prettyNode(raw: unknown): string {
  const n = obj(raw);
  const spec = obj(n.Spec);
  const d = obj(n.Description);
  const status = obj(n.Status);
  const engine = obj(d.Engine);
  const res = obj(d.Resources);
  const labelLines = (v: unknown): string =>
    Object.keys(obj(v))
      .sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)))
      .map((k) => {
        const val = str(obj(v)[k]);
        return `\n - ${k}${val ? `=${val}` : ""}`;
      })
      .join("");
  let s = `ID:\t\t\t${str(n.ID)}`;
  if (str(spec.Name)) s += `\nName:\t\t\t${str(spec.Name)}`;
  if (Object.keys(obj(spec.Labels)).length > 0) s += `\nLabels:${labelLines(spec.Labels)}`;
  s += `\nHostname:              \t${str(d.Hostname)}`;
  s += `\nJoined at:             \t${prettyPrint(goTimeString(goTime(n.CreatedAt)))}`;
  s += `\nStatus:\n State:\t\t\t${prettyPrint(str(status.State))}`;
  if (str(status.Message)) s += `\n Message:              \t${prettyPrint(str(status.Message))}`;
  s += `\n Availability:         \t${prettyPrint(str(spec.Availability))}`;
  if (str(status.Addr)) s += `\n Address:\t\t${str(status.Addr)}`;
  if (n.ManagerStatus !== undefined && n.ManagerStatus !== null) {
    const ms = obj(n.ManagerStatus);
    s += `\nManager Status:\n Address:\t\t${str(ms.Addr)}\n Raft Status:\t\t${prettyPrint(str(ms.Reachability))}`;
    s += ms.Leader === true ? "\n Leader:\t\tYes" : "\n Leader:\t\tNo";
  }
  const platform = obj(d.Platform);
  s += `\nPlatform:\n Operating System:\t${str(platform.OS)}\n Architecture:\t\t${str(platform.Architecture)}`;
  const cpus = typeof res.NanoCPUs === "number" ? Math.trunc(res.NanoCPUs / 1e9) : 0;
  const mem = typeof res.MemoryBytes === "number" && res.MemoryBytes !== 0 ? bytesSize(res.MemoryBytes) : "";
  s += `\nResources:\n CPUs:\t\t\t${cpus}\n Memory:\t\t${mem}`;
  const plugins = Array.isArray(engine.Plugins) ? engine.Plugins.map(obj) : [];
  if (plugins.length > 0) {
    const byType = new Map<string, string[]>();
    for (const p of plugins) {
      if (!byType.has(str(p.Type))) byType.set(str(p.Type), []);
      byType.get(str(p.Type))!.push(str(p.Name));
    }
    s += "\nPlugins:";
    for (const t of [...byType.keys()].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)))) {
      const names = byType.get(t)!.join(", ");
      s += `\n ${t}:${names ? `\t\t${names}` : ""}`;
    }
  }
  s += `\nEngine Version:\t\t${str(engine.EngineVersion)}`;
  if (Object.keys(obj(engine.Labels)).length > 0) s += `\nEngine Labels:${labelLines(engine.Labels)}`;
  const tls = obj(d.TLSInfo);
  // docker compares with an empty TLSInfo: a present (even empty) byte string counts as set.
  if (
    str(tls.TrustRoot) !== "" ||
    typeof tls.CertIssuerSubject === "string" ||
    typeof tls.CertIssuerPublicKey === "string"
  ) {
    s += `\nTLS Info:\n TrustRoot:\n${str(tls.TrustRoot)}\n Issuer Subject:\t${str(tls.CertIssuerSubject)}\n Issuer Public Key:\t${str(tls.CertIssuerPublicKey)}`;
  }
  return `${s}\n`;
}

async function runInspect(inv: Invocation): Promise<void> {
  const client = inv.client();
  let format = inv.flag<string | undefined>("format") ?? "";
  if (inv.flag<boolean>("pretty") === true) format = "pretty";
  const getNode = async (ref: string): Promise<unknown> => client.get(`/nodes/${await nodeReference(client, ref)}`);

  if (format.startsWith("pretty")) {
    if (format !== "pretty") throw new CliError("cannot supply extra formatting options to the pretty template");
    let text = "";
    for (const ref of inv.args) text += prettyNode(await getNode(ref));
    inv.out(text);
    return;
  }

  const tmpl = inspectTemplate(format);
  const errors: string[] = [];
  const found: GoStruct[] = [];
  let text = "";
  for (const ref of inv.args) {
    let node: GoStruct;
    try {
      node = goNode(await getNode(ref));
    } catch (e) {
      if (!(e instanceof CliError)) throw e;
      errors.push(e.message);
      continue;
    }
    if (!tmpl) {
      found.push(node);
      continue;
    }
    try {
      text += `${executeTemplate(tmpl, node)}\n`;
    } catch (e) {
      if (!(e instanceof TemplateError)) throw e;
      errors.push(`template parsing error: ${e.message}`);
    }
  }
  if (tmpl) inv.out(text === "" ? "\n" : text);
  else if (format === "json") inv.out(`${encodeGo(found)}\n`);
  else inv.out(`${found.length === 0 ? "[]" : encodeGo(found, { indent: "    " })}\n`);
  if (errors.length > 0) throw new CliError(errors.join("\n"));
}

// ---- promote / demote / update --------------------------------------------------------------------------

class NoRoleChange extends Error {}

/** docker's updateNodes: GET each node, change its spec, POST it back with the version it was read at. */
async function updateNodes(
  inv: Invocation,
  refs: string[],
  merge: (node: Json, spec: Json) => void,
  success: (ref: string) => void,
): Promise<void> {
  const client = inv.client();
  for (const ref of refs) {
    const node = obj(await client.get(`/nodes/${ref}`));
    const spec: Json = { ...obj(node.Spec) };
    try {
      merge(node, spec);
    } catch (e) {
      if (e instanceof NoRoleChange) continue;
      throw e;
    }
    const version = obj(node.Version).Index;
    await client.call("POST", `/nodes/${str(node.ID)}/update`, {
      query: { version: String(typeof version === "number" ? version : 0) },
      body: requestBody(goNodeSpec(spec)),
    });
    success(ref);
  }
}

function runPromote(inv: Invocation): Promise<void> {
  return updateNodes(
    inv,
    inv.args,
    (node, spec) => {
      if (spec.Role === "manager") {
        inv.out(`Node ${str(node.ID)} is already a manager.\n`);
        throw new NoRoleChange();
      }
      spec.Role = "manager";
    },
    (ref) => inv.out(`Node ${ref} promoted to a manager in the swarm.\n`),
  );
}

function runDemote(inv: Invocation): Promise<void> {
  return updateNodes(
    inv,
    inv.args,
    (node, spec) => {
      if (spec.Role === "worker") {
        inv.out(`Node ${str(node.ID)} is already a worker.\n`);
        throw new NoRoleChange();
      }
      spec.Role = "worker";
    },
    (ref) => inv.out(`Manager ${ref} demoted in the swarm.\n`),
  );
}

function runUpdate(inv: Invocation): Promise<void> {
  const ref = inv.args[0]!;
  return updateNodes(
    inv,
    [ref],
    (_node, spec) => {
      if (inv.changed("role")) spec.Role = inv.flag<string>("role");
      if (inv.changed("availability")) spec.Availability = inv.flag<string>("availability");
      const labels: Record<string, unknown> = { ...obj(spec.Labels) };
      if (inv.changed("label-add")) {
        for (const kv of inv.flag<string[]>("label-add")) {
          const [k, v] = splitKV(kv);
          labels[k] = v;
        }
      }
      if (inv.changed("label-rm")) {
        for (const k of inv.flag<string[]>("label-rm")) {
          if (!Object.hasOwn(labels, k)) throw new CliError(`key ${k} doesn't exist in node's labels`);
          delete labels[k];
        }
      }
      spec.Labels = labels;
    },
    () => inv.out(`${ref}\n`),
  );
}

async function runRemove(inv: Invocation): Promise<void> {
  const client = inv.client();
  const errors: string[] = [];
  const force = inv.flag<boolean>("force") === true;
  for (const ref of inv.args) {
    try {
      await client.call("DELETE", `/nodes/${ref}`, force ? { query: { force: "1" } } : {});
    } catch (e) {
      if (!(e instanceof CliError)) throw e;
      errors.push(e.message);
      continue;
    }
    inv.out(`${ref}\n`);
  }
  if (errors.length > 0) throw new CliError(errors.join("\n"));
}

export function addNodeCommands(program: Command): void {
  const node = group(program, "node", "Manage Swarm nodes");
  leaf(node, {
    name: "demote",
    use: "NODE [NODE...]",
    short: "Demote one or more nodes from manager in the swarm",
    args: { kind: "min", n: 1 },
    run: runDemote,
  });
  leaf(node, {
    name: "inspect",
    use: "[OPTIONS] self|NODE [NODE...]",
    short: "Display detailed information on one or more nodes",
    args: { kind: "min", n: 1 },
    flags: [
      {
        long: "format",
        short: "f",
        type: "string",
        kind: "string",
        description:
          "Format output using a custom template: 'json' (JSON format), 'TEMPLATE' (a Go template; see below)",
      },
      { long: "pretty", kind: "bool", description: "Print the information in a human friendly format" },
    ],
    notes: FORMAT_NOTES,
    run: runInspect,
  });
  leaf(node, {
    name: "ls",
    aliases: ["list"],
    use: "[OPTIONS]",
    short: "List nodes in the swarm",
    args: { kind: "none" },
    flags: [
      filterFlag(),
      LIST_FORMAT_FLAG,
      { long: "quiet", short: "q", kind: "bool", description: "Only display IDs" },
    ],
    notes: FORMAT_NOTES,
    run: runList,
  });
  leaf(node, {
    name: "promote",
    use: "NODE [NODE...]",
    short: "Promote one or more nodes to manager in the swarm",
    args: { kind: "min", n: 1 },
    run: runPromote,
  });
  leaf(node, {
    name: "rm",
    aliases: ["remove"],
    use: "[OPTIONS] NODE [NODE...]",
    short: "Remove one or more nodes from the swarm",
    args: { kind: "min", n: 1 },
    flags: [{ long: "force", short: "f", kind: "bool", description: "Force remove a node from the swarm" }],
    run: runRemove,
  });
  leaf(node, {
    name: "update",
    use: "[OPTIONS] NODE",
    short: "Update a node",
    args: { kind: "exact", n: 1 },
    flags: [
      {
        long: "availability",
        type: "string",
        kind: "string",
        description: 'Availability of the node ("active", "pause", "drain")',
      },
      { long: "label-add", type: "list", kind: "list", description: 'Add or update a node label ("key=value")' },
      { long: "label-rm", type: "list", kind: "list", description: "Remove a node label if exists" },
      { long: "role", type: "string", kind: "string", description: 'Role of the node ("worker", "manager")' },
    ],
    run: runUpdate,
  });
}
