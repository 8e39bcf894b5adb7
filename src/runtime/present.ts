// How containers look from outside: `ps` (the list, its filters and docker's status words) and `inspect`,
// in the Engine API's shapes. Pure functions of a container's record.

import { join } from "node:path";
import { badRequest } from "../api/errors.js";
import { humanDuration } from "../api/humanize.js";
import type { Container, ContainerRecord, NetworkAttachment } from "./container.js";
import { HOST_IMAGE } from "./create.js";
import type { ContainerJSON, ContainerListOptions, ContainerSummary, EndpointSettings } from "./types.js";

const LIST_FILTERS = ["id", "name", "status", "label", "exited", "network", "before", "since", "ancestor"];
const STATUSES = ["created", "restarting", "running", "removing", "paused", "exited", "dead"];

/** docker's command column: args with spaces are quoted. */
function commandText(path: string, args: string[]): string {
  if (args.length === 0) return path;
  return `${path} ${args.map((a) => (a.includes(" ") ? `'${a}'` : a)).join(" ")}`;
}

/** dockerd's name filter: a regular expression matched against the name (and "/name"). */
function matchesName(name: string, pattern: string): boolean {
  if (name === pattern || `/${name}` === pattern) return true;
  try {
    // dockerd tries the name with its slash and without ("name=^web" finds "/web").
    const re = new RegExp(pattern);
    return re.test(`/${name}`) || re.test(name);
  } catch {
    // Not a regular expression: it matched neither as a name above.
    return false;
  }
}

/** "key" or "key=value" against labels. */
function labelMatches(labels: Record<string, string>, f: string): boolean {
  const eq = f.indexOf("=");
  if (eq < 0) return Object.hasOwn(labels, f);
  const k = f.slice(0, eq);
  return Object.hasOwn(labels, k) && labels[k] === f.slice(eq + 1);
}

/** `ps --filter ancestor=X`: the image as named, or its id (or a prefix of it). */
function ancestorMatches(c: Container, a: string): boolean {
  const r = c.rec;
  if (a === r.config.Image) return true;
  if (r.image.rootfs === "host") return a === HOST_IMAGE || a === `${HOST_IMAGE}:latest`;
  const hex = r.image.id.replace(/^sha256:/, "");
  return a.replace(/^sha256:/, "") !== "" && hex.startsWith(a.replace(/^sha256:/, ""));
}

function networkMatches(c: Container, ref: string): boolean {
  if (c.rec.networkMode === ref) return true;
  return c.rec.networks.some(
    (n) => n.ref === ref || n.endpoint?.networkName === ref || (ref !== "" && n.endpoint?.networkId.startsWith(ref)),
  );
}

/** The filters of `ps`, checked in dockerd's words; whether `ps` lists stopped containers too. */
export function checkListOptions(opts: ContainerListOptions): boolean {
  const f = opts.filters;
  for (const key of Object.keys(f)) {
    if (!LIST_FILTERS.includes(key)) throw badRequest(`invalid filter '${key}'`);
  }
  for (const s of f.status ?? []) {
    if (!STATUSES.includes(s)) throw badRequest(`invalid filter 'status=${s}'`);
  }
  return opts.all || (f.status?.length ?? 0) > 0 || (f.exited?.length ?? 0) > 0;
}

/** Whether a container passes `ps`'s filters. */
export function listed(c: Container, f: Record<string, string[]>): boolean {
  const r = c.rec;
  if (f.id && !f.id.some((v) => c.id.startsWith(v))) return false;
  if (f.name && !f.name.some((v) => matchesName(r.name, v))) return false;
  if (f.status && !f.status.includes(stateOf(c))) return false;
  if (f.exited && !(r.state.status === "exited" && f.exited.includes(String(r.state.exitCode)))) return false;
  if (f.label && !f.label.every((l) => labelMatches(r.config.Labels, l))) return false;
  if (f.ancestor && !f.ancestor.some((a) => ancestorMatches(c, a))) return false;
  if (f.network && !f.network.some((n) => networkMatches(c, n))) return false;
  return true;
}

/** docker's State word: "paused" and "restarting" are states of a running (or restarting) container. */
function stateOf(c: Container): ContainerSummary["State"] {
  if (c.restarting) return "restarting";
  return c.paused ? "paused" : c.rec.state.status;
}

function statusText(c: Container, nowMs: number): string {
  const s = c.rec.state;
  if (c.restarting) return `Restarting (${s.exitCode}) ${humanDuration(nowMs - Date.parse(s.finishedAt))} ago`;
  switch (s.status) {
    case "created":
      return "Created";
    case "running":
      return `Up ${humanDuration(nowMs - Date.parse(s.startedAt))}${c.paused ? " (Paused)" : ""}`;
    case "removing":
      return "Removal In Progress";
    case "exited":
      return `Exited (${s.exitCode}) ${humanDuration(nowMs - Date.parse(s.finishedAt))} ago`;
  }
}

function endpointSettingsOf(n: NetworkAttachment, rec: ContainerRecord): EndpointSettings {
  const ep = n.endpoint;
  return {
    IPAMConfig: n.cfg.IPAMConfig?.IPv4Address ? { IPv4Address: n.cfg.IPAMConfig.IPv4Address } : null,
    Links: null,
    Aliases: n.cfg.Aliases && n.cfg.Aliases.length > 0 ? [...n.cfg.Aliases] : null,
    MacAddress: ep?.mac ?? "",
    DriverOpts: null,
    GwPriority: 0,
    NetworkID: ep?.networkId ?? "",
    EndpointID: ep?.endpointId ?? "",
    Gateway: ep?.gateway ?? "",
    IPAddress: ep?.ip ?? "",
    IPPrefixLen: ep?.prefixLen ?? 0,
    IPv6Gateway: "",
    GlobalIPv6Address: "",
    GlobalIPv6PrefixLen: 0,
    DNSNames: ep ? [rec.name, ...(n.cfg.Aliases ?? []), rec.id.slice(0, 12)] : null,
  };
}

function endpointSettings(c: Container): Record<string, EndpointSettings> {
  const rec = c.rec;
  const out: Record<string, EndpointSettings> = {};
  if (rec.networks.length === 0) {
    out[c.hostNetwork ? "host" : "none"] = endpointSettingsOf({ ref: "", cfg: {}, endpoint: null }, rec);
    return out;
  }
  for (const n of rec.networks) out[n.endpoint?.networkName || n.ref] = endpointSettingsOf(n, rec);
  return out;
}

export function summaryOf(c: Container, nowMs: number): ContainerSummary {
  const r = c.rec;
  return {
    Id: r.id,
    Names: [`/${r.name}`],
    Image: r.config.Image,
    ImageID: r.image.id,
    Command: commandText(r.path, r.args),
    Created: Math.floor(Date.parse(r.created) / 1000),
    Ports: [],
    Labels: { ...r.config.Labels },
    State: stateOf(c),
    Status: statusText(c, nowMs),
    HostConfig: { NetworkMode: r.networkMode },
    NetworkSettings: { Networks: endpointSettings(c) },
    Mounts: [],
  };
}

/** `inspect`; `execIds` are the container's running exec instances, `netnsPath` its namespace file. */
export function inspectOf(c: Container, execIds: string[], netnsPath: string): ContainerJSON {
  const r = c.rec;
  const s = r.state;
  const hostNet = c.hostNetwork;
  const sandbox = c.running && !hostNet;
  return {
    Id: r.id,
    Created: r.created,
    Path: r.path,
    Args: [...r.args],
    State: {
      Status: stateOf(c),
      Running: s.status === "running",
      Paused: c.paused,
      Restarting: c.restarting,
      OOMKilled: false,
      Dead: false,
      Pid: s.pid,
      ExitCode: s.exitCode,
      Error: s.error,
      StartedAt: s.startedAt,
      FinishedAt: s.finishedAt,
    },
    Image: r.image.id || r.config.Image,
    ResolvConfPath: hostNet ? "" : join(c.dir, "resolv.conf"),
    HostnamePath: hostNet ? "" : join(c.dir, "hostname"),
    HostsPath: hostNet ? "" : join(c.dir, "hosts"),
    LogPath: c.logPath,
    Name: `/${r.name}`,
    RestartCount: r.restartCount,
    Driver: r.image.rootfs === "host" ? HOST_IMAGE : "overlayfs",
    Platform: "linux",
    MountLabel: "",
    ProcessLabel: "",
    AppArmorProfile: "",
    ExecIDs: execIds.length > 0 ? execIds : null,
    HostConfig: {
      NetworkMode: r.networkMode,
      AutoRemove: r.autoRemove,
      LogConfig: { Type: "json-file", Config: {} },
      Binds:
        r.hostConfig.binds.length > 0
          ? r.hostConfig.binds.map((b) => `${b.source}:${b.destination}${b.readonly ? ":ro" : ""}`)
          : null,
      Memory: r.hostConfig.memoryBytes,
      NanoCpus: r.hostConfig.nanoCpus,
      RestartPolicy: {
        Name: r.hostConfig.restartPolicy.name,
        MaximumRetryCount: r.hostConfig.restartPolicy.maximumRetryCount,
      },
    },
    GraphDriver: { Data: null, Name: r.image.rootfs === "host" ? HOST_IMAGE : "overlayfs" },
    Mounts: r.hostConfig.binds.map((b) => ({
      Type: "bind",
      Source: b.source,
      Destination: b.destination,
      Mode: b.readonly ? "ro" : "",
      RW: !b.readonly,
      Propagation: "rprivate",
    })),
    Config: { ...r.config, Env: [...r.config.Env], Labels: { ...r.config.Labels } },
    NetworkSettings: {
      SandboxID: sandbox ? r.id : "",
      SandboxKey: sandbox ? netnsPath : "",
      Ports: {},
      Networks: endpointSettings(c),
    },
  };
}
