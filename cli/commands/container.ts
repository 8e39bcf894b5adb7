// shoal run | create | ps | exec | logs | stop | rm | start | kill | restart | wait | top | inspect, and the
// same under `shoal container` — docker's requests and output. Images are OCI images run through
// containerd; the image "host" is the host's own file system, read-only.

import { readFileSync } from "node:fs";
import type { Command } from "commander";
import { CliError } from "../client.js";
import { commandPath, type FlagSpec, group, type Invocation, type LeafSpec, leaf } from "../command.js";
import { FlagValueError, filtersJSON, parseDuration, parseFilter, parseInt64, splitKV } from "../flags.js";
import type { GoValue } from "../gojson.js";
import {
  bytewise,
  copyOutput,
  ellipsis,
  goBody,
  goQuote,
  hijack,
  humanDuration,
  INSPECT_FORMAT_FLAG,
  inspectRaw,
  isRawStream,
  LIST_FORMAT_NOTES,
  obj,
  openStream,
  readAll,
  renderList,
  row,
  sortedMap,
  str,
  unixTimeString,
} from "./common.js";
import { pull } from "./image.js";

/** docker's opts.ValidateEnv: "KEY" alone takes the value from our environment, if it has one. */
function envValue(kv: string): string {
  if (kv.includes("=")) return kv;
  const v = process.env[kv];
  return v === undefined ? kv : `${kv}=${v}`;
}

function labelMap(values: string[] | undefined): Record<string, string> {
  const m: Record<string, string> = {};
  for (const kv of values ?? []) {
    const [k, v] = splitKV(kv);
    m[k] = v;
  }
  return sortedMap(m);
}

interface RunHost {
  networkMode: string;
  autoRemove: boolean;
  binds: string[];
  memory: number;
  nanoCpus: number;
  restart: { Name: string; MaximumRetryCount: number };
}

/** The HostConfig docker 28 sends with `run`: defaults but the network, --rm, -v, --memory, --cpus, --restart. */
function hostConfig(h: RunHost): Record<string, unknown> {
  const { networkMode, autoRemove } = h;
  return {
    Binds: h.binds.length > 0 ? h.binds : null,
    ContainerIDFile: "",
    LogConfig: { Type: "", Config: {} },
    NetworkMode: networkMode,
    PortBindings: {},
    RestartPolicy: h.restart,
    AutoRemove: autoRemove,
    VolumeDriver: "",
    VolumesFrom: null,
    ConsoleSize: [0, 0],
    CapAdd: null,
    CapDrop: null,
    CgroupnsMode: "",
    Dns: [],
    DnsOptions: [],
    DnsSearch: [],
    ExtraHosts: null,
    GroupAdd: null,
    IpcMode: "",
    Cgroup: "",
    Links: null,
    OomScoreAdj: 0,
    PidMode: "",
    Privileged: false,
    PublishAllPorts: false,
    ReadonlyRootfs: false,
    SecurityOpt: null,
    UTSMode: "",
    UsernsMode: "",
    ShmSize: 0,
    Isolation: "",
    CpuShares: 0,
    Memory: h.memory,
    NanoCpus: h.nanoCpus,
    CgroupParent: "",
    BlkioWeight: 0,
    BlkioWeightDevice: [],
    BlkioDeviceReadBps: [],
    BlkioDeviceWriteBps: [],
    BlkioDeviceReadIOps: [],
    BlkioDeviceWriteIOps: [],
    CpuPeriod: 0,
    CpuQuota: 0,
    CpuRealtimePeriod: 0,
    CpuRealtimeRuntime: 0,
    CpusetCpus: "",
    CpusetMems: "",
    Devices: [],
    DeviceCgroupRules: null,
    DeviceRequests: null,
    MemoryReservation: 0,
    MemorySwap: 0,
    MemorySwappiness: -1,
    OomKillDisable: false,
    PidsLimit: 0,
    Ulimits: [],
    CpuCount: 0,
    CpuPercent: 0,
    IOMaximumIOps: 0,
    IOMaximumBandwidth: 0,
    MaskedPaths: null,
    ReadonlyPaths: null,
  };
}

function endpointConfig(ip: string, aliases: string[]): Record<string, unknown> {
  return {
    IPAMConfig: ip ? { IPv4Address: ip } : null,
    Links: null,
    Aliases: aliases.length > 0 ? aliases : null,
    MacAddress: "",
    DriverOpts: null,
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
  };
}

/** docker run's error report: "shoal: <error>", a hint, and 125 (126/127 when the command could not run). */
function runError(path: string, e: unknown): never {
  if (!(e instanceof CliError)) throw e;
  const msg = e.message;
  let code = 125;
  if (/executable file not found|no such file or directory|system cannot find the file specified/.test(msg)) code = 127;
  else if (/permission denied|is a directory/.test(msg)) code = 126;
  throw new CliError(`${path.split(" ")[0]}: ${msg}\n\nRun '${path} --help' for more information`, code);
}

/** --restart no|always|on-failure[:N]|unless-stopped, as docker parses it. */
function parseRestart(s: string): { Name: string; MaximumRetryCount: number } {
  const [name = "", count] = s.split(":", 2);
  if (count !== undefined) {
    if (name !== "on-failure")
      throw new FlagValueError("maximum retry count cannot be used with restart policy '" + name + "'");
    if (!/^[0-9]+$/.test(count))
      throw new FlagValueError(`invalid restart policy format: maximum retry count must be an integer`);
    return { Name: name, MaximumRetryCount: Number(count) };
  }
  return { Name: name, MaximumRetryCount: 0 };
}

/** --memory 64m: bytes (docker's RAMInBytes: b, k, m, g, t; binary multiples). */
function parseMemory(s: string): number {
  const m = /^([0-9]+(?:\.[0-9]+)?)\s*([kmgtp]?)b?$/i.exec(s.trim());
  if (!m) throw new FlagValueError(`invalid size: '${s}'`);
  const mult = { "": 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4, p: 1024 ** 5 }[
    m[2]!.toLowerCase() as "" | "k"
  ];
  return Math.floor(Number(m[1]) * mult);
}

/** --cpus 1.5: billionths of a CPU. */
function parseCpus(s: string): number {
  const n = Number(s);
  if (!Number.isFinite(n) || n < 0 || s.trim() === "")
    throw new FlagValueError(`failed to parse ${s} as a rational number`);
  return Math.round(n * 1e9);
}

/** --env-file: KEY=VALUE lines (comments and blank lines skipped; a bare KEY takes our value). */
function envFile(path: string): string[] {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    throw new CliError(
      `open ${path}: ${e instanceof Error && "code" in e && e.code === "ENOENT" ? "no such file or directory" : String(e)}`,
    );
  }
  return text
    .split("\n")
    .map((l) => l.replace(/^\s+/, ""))
    .filter((l) => l !== "" && !l.startsWith("#"))
    .map(envValue);
}

/** POST /containers/create; a missing image is pulled first, as docker run does. */
async function createContainer(
  inv: Invocation,
  image: string,
  body: unknown,
  name: string | undefined,
): Promise<string> {
  const client = inv.client();
  const create = () =>
    client.json<{ Id?: unknown; Warnings?: unknown }>("POST", "/containers/create", {
      ...(name ? { query: { name } } : {}),
      body: goBody(body),
    });
  let created: { Id?: unknown; Warnings?: unknown };
  try {
    created = await create();
  } catch (e) {
    if (!(e instanceof CliError) || !/^Error response from daemon: No such image: /.test(e.message)) throw e;
    const ref = e.message.replace(/^Error response from daemon: No such image: /, "");
    process.stderr.write(`Unable to find image '${ref}' locally\n`);
    await pull(client, image.includes(":") || image.includes("@") ? image : `${image}:latest`, (t) =>
      process.stderr.write(t),
    );
    created = await create();
  }
  for (const w of Array.isArray(created.Warnings) ? created.Warnings : []) process.stderr.write(`WARNING: ${str(w)}\n`);
  return str(created.Id);
}

async function runRun(inv: Invocation, path: string): Promise<void> {
  const client = inv.client();
  const [image, ...cmd] = inv.args as [string, ...string[]];
  const detach = inv.flag<boolean>("detach") === true;
  const interactive = inv.flag<boolean>("interactive") === true;
  const autoRemove = inv.flag<boolean>("rm") === true;
  const networks = inv.flag<string[] | undefined>("network") ?? [];
  const ip = inv.flag<string | undefined>("ip") ?? "";
  const aliases = inv.flag<string[] | undefined>("network-alias") ?? [];
  const env = [
    ...(inv.flag<string[] | undefined>("env-file") ?? []).flatMap(envFile),
    ...(inv.flag<string[] | undefined>("env") ?? []).map(envValue),
  ];
  const entrypoint = inv.flag<string | undefined>("entrypoint");
  const networkMode = networks[0] ?? "default";
  const endpoints: Record<string, unknown> = {};
  for (const [i, n] of (networks.length > 0 ? networks : ["default"]).entries()) {
    endpoints[n] = i === 0 ? endpointConfig(ip, aliases) : endpointConfig("", []);
  }
  const stopTimeout = inv.flag<number | undefined>("stop-timeout");
  const body = {
    Hostname: inv.flag<string | undefined>("hostname") ?? "",
    Domainname: "",
    User: inv.flag<string | undefined>("user") ?? "",
    AttachStdin: interactive && !detach,
    AttachStdout: !detach,
    AttachStderr: !detach,
    Tty: inv.flag<boolean>("tty") === true,
    OpenStdin: interactive,
    StdinOnce: interactive && !detach,
    Env: env.length > 0 ? env : null,
    Cmd: cmd.length > 0 ? cmd : null,
    Image: image,
    Volumes: {},
    WorkingDir: inv.flag<string | undefined>("workdir") ?? "",
    Entrypoint: entrypoint === undefined ? null : [entrypoint],
    OnBuild: null,
    Labels: labelMap(inv.flag("label")),
    ...(inv.flag<string | undefined>("stop-signal") ? { StopSignal: inv.flag<string>("stop-signal") } : {}),
    ...(stopTimeout !== undefined ? { StopTimeout: stopTimeout } : {}),
    HostConfig: hostConfig({
      networkMode,
      autoRemove,
      binds: inv.flag<string[] | undefined>("volume") ?? [],
      memory: inv.flag<number | undefined>("memory") ?? 0,
      nanoCpus: inv.flag<number | undefined>("cpus") ?? 0,
      restart: inv.flag<{ Name: string; MaximumRetryCount: number } | undefined>("restart") ?? {
        Name: "no",
        MaximumRetryCount: 0,
      },
    }),
    NetworkingConfig: { EndpointsConfig: endpoints },
  };
  const name = inv.flag<string | undefined>("name");
  let id: string;
  try {
    id = await createContainer(inv, image, body, name);
  } catch (e) {
    runError(path, e);
  }
  // Detached, docker prints the id as soon as the container exists (even if it then fails to start).
  if (detach) inv.out(`${id}\n`);

  let attached: Awaited<ReturnType<typeof hijack>> | undefined;
  if (!detach) {
    try {
      attached = await hijack(
        client,
        `/containers/${id}/attach`,
        { stderr: "1", stdin: interactive ? "1" : undefined, stdout: "1", stream: "1" },
        undefined,
      );
    } catch (e) {
      runError(path, e);
    }
  }
  let wait: Awaited<ReturnType<typeof openStream>>;
  try {
    wait = await openStream(client, "POST", `/containers/${id}/wait`, {
      condition: autoRemove ? "removed" : "next-exit",
    });
  } catch (e) {
    attached?.socket.destroy();
    runError(path, e);
  }
  const status = readAll(wait.res);
  try {
    await client.call("POST", `/containers/${id}/start`);
  } catch (e) {
    attached?.socket.destroy();
    if (autoRemove) await status;
    else wait.req.destroy();
    runError(path, e);
  }
  if (detach) {
    wait.req.destroy();
    return;
  }
  const socket = attached!.socket;
  if (interactive) {
    process.stdin.on("data", (d: Buffer) => socket.write(d));
    process.stdin.once("end", () => socket.end());
  }
  await copyOutput(socket, isRawStream(attached!.mediaType, body.Tty), attached!.head);
  if (interactive) process.stdin.destroy();
  const text = await status;
  let code = 0;
  try {
    const r = JSON.parse(text) as { StatusCode?: unknown; Error?: { Message?: unknown } | null };
    if (r.Error && typeof r.Error.Message === "string") process.stderr.write(`${r.Error.Message}\n`);
    code = typeof r.StatusCode === "number" ? r.StatusCode : 125;
  } catch {
    code = 125;
  }
  if (code !== 0) throw new CliError("", code);
}

// ---- ps ----------------------------------------------------------------------------------------------------

const PS_HEADERS: Record<string, string> = {
  ID: "CONTAINER ID",
  Image: "IMAGE",
  Command: "COMMAND",
  CreatedAt: "CREATED AT",
  RunningFor: "CREATED",
  Ports: "PORTS",
  State: "STATE",
  Status: "STATUS",
  Size: "SIZE",
  Names: "NAMES",
  Labels: "LABELS",
  Mounts: "MOUNTS",
  LocalVolumes: "LOCAL VOLUMES",
  Networks: "NETWORKS",
  Platform: "PLATFORM",
};

function containerRow(c: Record<string, unknown>, trunc: boolean): ReturnType<typeof row> {
  const names = (Array.isArray(c.Names) ? c.Names : []).map((n) => str(n).replace(/^\//, ""));
  let shown = names;
  if (trunc) {
    const plain = names.find((n) => !n.includes("/"));
    if (plain !== undefined) shown = [plain];
  }
  const command = str(c.Command);
  const created = typeof c.Created === "number" ? c.Created : 0;
  const labels = Object.entries(obj(c.Labels))
    .sort(([a], [b]) => bytewise(a, b))
    .map(([k, v]) => `${k}=${str(v)}`)
    .join(",");
  const networks = Object.keys(obj(obj(c.NetworkSettings).Networks))
    .sort(bytewise)
    .join(",");
  const fields: [string, GoValue][] = [
    ["ID", trunc ? str(c.Id).slice(0, 12) : str(c.Id)],
    ["Image", str(c.Image)],
    ["Command", goQuote(trunc ? ellipsis(command, 20) : command)],
    ["CreatedAt", unixTimeString(created)],
    ["RunningFor", `${humanDuration(Date.now() - created * 1000)} ago`],
    ["Ports", ""],
    ["State", str(c.State)],
    ["Status", str(c.Status)],
    ["Size", "0B"],
    ["Names", shown.join(",")],
    ["Labels", labels],
    ["Mounts", ""],
    ["LocalVolumes", "0"],
    ["Networks", networks],
    ["Platform", null],
  ];
  return row("*container.ContainerContext", fields);
}

async function runPs(inv: Invocation): Promise<void> {
  const filters = inv.flag<[string, string][] | undefined>("filter") ?? [];
  let last = inv.flag<number | undefined>("last") ?? -1;
  if (inv.flag<boolean>("latest") === true) last = 1;
  const query: Record<string, string | undefined> = {
    all: inv.flag<boolean>("all") === true ? "1" : undefined,
    limit: last > 0 ? String(last) : undefined,
    filters: filters.length > 0 ? filtersJSON(filters) : undefined,
    size: inv.flag<boolean>("size") === true ? "1" : undefined,
  };
  const list = (await inv.client().get<unknown[]>("/containers/json", query)).map(obj);
  // (commander reads --no-trunc as the negation of a "trunc" flag)
  const trunc = inv.flag<boolean>("trunc") !== false;
  renderList(
    inv,
    list.map((c) => containerRow(c, trunc)),
    {
      headers: PS_HEADERS,
      defaultTable: "table {{.ID}}\t{{.Image}}\t{{.Command}}\t{{.RunningFor}}\t{{.Status}}\t{{.Ports}}\t{{.Names}}",
      quietField: "ID",
      format: inv.flag<string | undefined>("format") ?? "",
      quiet: inv.flag<boolean>("quiet") === true,
    },
  );
}

// ---- exec ----------------------------------------------------------------------------------------------------

async function runExec(inv: Invocation): Promise<void> {
  const client = inv.client();
  const [ref, ...cmd] = inv.args as [string, ...string[]];
  const detach = inv.flag<boolean>("detach") === true;
  const interactive = inv.flag<boolean>("interactive") === true;
  const tty = inv.flag<boolean>("tty") === true;
  const env = [
    ...(inv.flag<string[] | undefined>("env-file") ?? []).flatMap(envFile),
    ...(inv.flag<string[] | undefined>("env") ?? []).map(envValue),
  ];
  await client.get(`/containers/${ref}/json`);
  const body = {
    User: inv.flag<string | undefined>("user") ?? "",
    Privileged: false,
    Tty: tty,
    AttachStdin: interactive && !detach,
    AttachStderr: !detach,
    AttachStdout: !detach,
    Detach: detach,
    DetachKeys: "",
    Env: env.length > 0 ? env : null,
    WorkingDir: inv.flag<string | undefined>("workdir") ?? "",
    Cmd: cmd,
  };
  const created = await client.json<{ Id?: unknown }>("POST", `/containers/${ref}/exec`, { body: goBody(body) });
  const execId = str(created.Id);
  if (execId === "") throw new CliError("exec ID empty");
  const start = goBody({ Detach: detach, Tty: tty });
  if (detach) {
    await client.call("POST", `/exec/${execId}/start`, { body: start });
    return;
  }
  const { socket, head, mediaType } = await hijack(client, `/exec/${execId}/start`, undefined, start);
  if (interactive) {
    process.stdin.on("data", (d: Buffer) => socket.write(d));
    process.stdin.once("end", () => socket.end());
  }
  await copyOutput(socket, isRawStream(mediaType, tty), head);
  if (interactive) process.stdin.destroy();
  const inspected = await client.get<{ ExitCode?: unknown }>(`/exec/${execId}/json`);
  const code = typeof inspected.ExitCode === "number" ? inspected.ExitCode : 0;
  if (code !== 0) throw new CliError("", code);
}

// ---- logs ------------------------------------------------------------------------------------------------------

/** docker's timetypes.GetTimestamp: a duration back from now, an RFC 3339 time, or Unix seconds as they are. */
export function logTimestamp(value: string, now: number): string {
  if (value === "") return "";
  if (value !== "0") {
    try {
      const d = parseDuration(value);
      return String(Math.floor((now - d / 1e6) / 1000));
    } catch {
      // not a duration
    }
  }
  if (/^-?[0-9]+(\.[0-9]+)?$/.test(value)) return value;
  const m = /^(\d{4}-\d{2}-\d{2})(?:T(\d{2}:\d{2}(?::\d{2})?)(\.\d+)?(Z|[+-]\d{2}:\d{2})?)?$/.exec(value);
  if (!m)
    throw new CliError(
      `invalid value for "since": failed to parse value as time or duration: ${JSON.stringify(value)}`,
    );
  const time = m[2] ? (m[2].length === 5 ? `${m[2]}:00` : m[2]) : "00:00:00";
  const ms = Date.parse(`${m[1]}T${time}${m[4] ?? ""}`);
  const frac = (m[3] ?? "").slice(1).padEnd(9, "0").slice(0, 9);
  return `${Math.floor(ms / 1000)}.${frac}`;
}

async function runLogs(inv: Invocation): Promise<void> {
  const client = inv.client();
  const ref = inv.args[0]!;
  const c = obj(await client.get(`/containers/${ref}/json`));
  const tty = obj(c.Config).Tty === true;
  const now = Date.now();
  const query: Record<string, string | undefined> = {
    details: inv.flag<boolean>("details") === true ? "1" : undefined,
    follow: inv.flag<boolean>("follow") === true ? "1" : undefined,
    since: inv.flag<string | undefined>("since") ? logTimestamp(inv.flag<string>("since"), now) : undefined,
    stderr: "1",
    stdout: "1",
    tail: inv.flag<string | undefined>("tail") ?? "all",
    timestamps: inv.flag<boolean>("timestamps") === true ? "1" : undefined,
    until: inv.flag<string | undefined>("until") ? logTimestamp(inv.flag<string>("until"), now) : undefined,
  };
  const { res } = await openStream(client, "GET", `/containers/${str(c.Id)}/logs`, query);
  await copyOutput(res, isRawStream(String(res.headers["content-type"] ?? ""), tty));
}

// ---- stop, rm, start, kill ---------------------------------------------------------------------------------

/** Each ref in turn: print it on success; the errors, joined, make the exit status 1. */
async function eachRef(inv: Invocation, f: (ref: string) => Promise<boolean>): Promise<void> {
  const errors: string[] = [];
  for (const ref of inv.args) {
    try {
      if (await f(ref)) inv.out(`${ref}\n`);
    } catch (e) {
      if (!(e instanceof CliError)) throw e;
      errors.push(e.message);
    }
  }
  if (errors.length > 0) throw new CliError(errors.join("\n"));
}

function runStop(inv: Invocation): Promise<void> {
  const client = inv.client();
  const timeout = inv.flag<number | undefined>("timeout");
  const query = {
    signal: inv.flag<string | undefined>("signal") || undefined,
    t: inv.changed("timeout") && timeout !== undefined ? String(timeout) : undefined,
  };
  return eachRef(inv, async (ref) => {
    await client.call("POST", `/containers/${ref}/stop`, { query });
    return true;
  });
}

function runRemove(inv: Invocation): Promise<void> {
  const client = inv.client();
  const force = inv.flag<boolean>("force") === true;
  const query = {
    force: force ? "1" : undefined,
    link: inv.flag<boolean>("link") === true ? "1" : undefined,
    v: inv.flag<boolean>("volumes") === true ? "1" : undefined,
  };
  return eachRef(inv, async (ref) => {
    try {
      await client.call("DELETE", `/containers/${ref}`, { query });
    } catch (e) {
      // docker rm -f of a container that is not there says so, but it is no failure.
      if (force && e instanceof CliError && /^Error response from daemon: No such container: /.test(e.message)) {
        process.stderr.write(`${e.message}\n`);
        return false;
      }
      throw e;
    }
    return true;
  });
}

/** docker start: each failure at once, then which ones failed. */
async function runStart(inv: Invocation): Promise<void> {
  const client = inv.client();
  const failed: string[] = [];
  for (const ref of inv.args) {
    try {
      await client.call("POST", `/containers/${ref}/start`);
    } catch (e) {
      if (!(e instanceof CliError)) throw e;
      process.stderr.write(`${e.message}\n`);
      failed.push(ref);
      continue;
    }
    inv.out(`${ref}\n`);
  }
  if (failed.length > 0) throw new CliError(`Error: failed to start containers: ${failed.join(", ")}`);
}

function runKill(inv: Invocation): Promise<void> {
  const client = inv.client();
  const signal = inv.flag<string | undefined>("signal");
  return eachRef(inv, async (ref) => {
    await client.call("POST", `/containers/${ref}/kill`, signal ? { query: { signal } } : {});
    return true;
  });
}

function runRestart(inv: Invocation): Promise<void> {
  const client = inv.client();
  const timeout = inv.flag<number | undefined>("timeout");
  const query = {
    signal: inv.flag<string | undefined>("signal") || undefined,
    t: inv.changed("timeout") && timeout !== undefined ? String(timeout) : undefined,
  };
  return eachRef(inv, async (ref) => {
    await client.call("POST", `/containers/${ref}/restart`, { query });
    return true;
  });
}

/** docker wait: each container's exit code, a line each. */
async function runWait(inv: Invocation): Promise<void> {
  const client = inv.client();
  const errors: string[] = [];
  for (const ref of inv.args) {
    try {
      const r = obj(JSON.parse(await client.call("POST", `/containers/${ref}/wait`)));
      inv.out(`${typeof r.StatusCode === "number" ? r.StatusCode : -1}\n`);
    } catch (e) {
      if (!(e instanceof CliError)) throw e;
      errors.push(e.message);
    }
  }
  if (errors.length > 0) throw new CliError(errors.join("\n"));
}

/** docker top: the container's processes as the host's ps shows them. */
async function runTop(inv: Invocation): Promise<void> {
  const [ref, ...psArgs] = inv.args as [string, ...string[]];
  const r = obj(
    JSON.parse(
      await inv.client().call("GET", `/containers/${ref}/top`, {
        query: { ps_args: psArgs.length > 0 ? psArgs.join(" ") : undefined },
      }),
    ),
  );
  const titles = (Array.isArray(r.Titles) ? r.Titles : []).map(str);
  const rows = (Array.isArray(r.Processes) ? r.Processes : []).map((p) => (Array.isArray(p) ? p.map(str) : []));
  const widths = titles.map((t, i) => Math.max(t.length, ...rows.map((p) => (p[i] ?? "").length)));
  const line = (cells: string[]): string =>
    `${cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]! + 3))).join("")}\n`;
  inv.out(line(titles) + rows.map(line).join(""));
}

function runContainerInspect(inv: Invocation): Promise<void> {
  const client = inv.client();
  return inspectRaw(inv, (ref) => client.call("GET", `/containers/${ref}/json`));
}

/** `shoal inspect`: a container, else a network, by that name or id (docker asks for an image between). */
function runInspectAny(inv: Invocation): Promise<void> {
  const client = inv.client();
  return inspectRaw(inv, async (ref) => {
    for (const path of [`/containers/${ref}/json`, `/images/${ref}/json`, `/networks/${ref}`]) {
      try {
        return await client.call("GET", path);
      } catch (e) {
        const notThere =
          /^Error response from daemon: (No such container: |No such image: |page not found$|network .* not found$)/;
        if (!(e instanceof CliError) || !notThere.test(e.message)) throw e;
      }
    }
    throw new CliError(`Error: No such object: ${ref}`);
  });
}

// ---- registration --------------------------------------------------------------------------------------

function parseIntFlag(s: string): number {
  return parseInt64(s);
}

function parseStopTimeout(s: string): number {
  const n = parseInt64(s);
  if (n < -2147483648 || n > 2147483647)
    throw new FlagValueError(`strconv.ParseInt: parsing ${JSON.stringify(s)}: value out of range`);
  return n;
}

const RUN_FLAGS: FlagSpec[] = [
  { long: "cpus", type: "decimal", kind: "custom", description: "Number of CPUs", parse: parseCpus },
  { long: "detach", short: "d", kind: "bool", description: "Run container in background and print container ID" },
  { long: "env-file", type: "list", kind: "list", description: "Read in a file of environment variables" },
  { long: "memory", short: "m", type: "bytes", kind: "custom", description: "Memory limit", parse: parseMemory },
  {
    long: "restart",
    type: "string",
    kind: "custom",
    description: "Restart policy to apply when a container exits",
    defaultText: '"no"',
    parse: parseRestart,
  },
  { long: "volume", short: "v", type: "list", kind: "list", description: "Bind mount a volume" },
  { long: "entrypoint", type: "string", kind: "string", description: "Overwrite the default ENTRYPOINT of the image" },
  { long: "env", short: "e", type: "list", kind: "list", description: "Set environment variables" },
  { long: "hostname", short: "h", type: "string", kind: "string", description: "Container host name" },
  { long: "interactive", short: "i", kind: "bool", description: "Keep STDIN open even if not attached" },
  { long: "ip", type: "string", kind: "string", description: 'IPv4 address (e.g., "172.30.100.104")' },
  { long: "label", short: "l", type: "list", kind: "list", description: "Set meta data on a container" },
  { long: "name", type: "string", kind: "string", description: "Assign a name to the container" },
  { long: "network", type: "network", kind: "list", description: "Connect a container to a network" },
  { long: "network-alias", type: "list", kind: "list", description: "Add network-scoped alias for the container" },
  {
    long: "rm",
    kind: "bool",
    description: "Automatically remove the container and its associated anonymous volumes when it exits",
  },
  { long: "stop-signal", type: "string", kind: "string", description: "Signal to stop the container" },
  {
    long: "stop-timeout",
    type: "int",
    kind: "custom",
    description: "Timeout (in seconds) to stop a container",
    parse: parseStopTimeout,
  },
  { long: "tty", short: "t", kind: "bool", description: "Allocate a pseudo-TTY" },
  {
    long: "user",
    short: "u",
    type: "string",
    kind: "string",
    description: "Username or UID (format: <name|uid>[:<group|gid>])",
  },
  {
    long: "workdir",
    short: "w",
    type: "string",
    kind: "string",
    description: "Working directory inside the container",
  },
];

type Spec = Omit<LeafSpec, "run"> & { run: (inv: Invocation, path: string) => Promise<void> };

function specs(): Record<string, Spec> {
  return {
    run: {
      name: "run",
      use: "[OPTIONS] IMAGE [COMMAND] [ARG...]",
      short: "Create and run a new container from an image",
      args: { kind: "min", n: 1 },
      interspersed: false,
      flags: RUN_FLAGS,
      notes:
        'Images come from a registry (pulled when missing) or `shoal load`; the image "host" runs on the host\'s own file system (read-only).',
      run: runRun,
    },
    ps: {
      name: "ps",
      use: "[OPTIONS]",
      short: "List containers",
      args: { kind: "none" },
      flags: [
        { long: "all", short: "a", kind: "bool", description: "Show all containers (default shows just running)" },
        {
          long: "filter",
          short: "f",
          type: "filter",
          kind: "list",
          description: "Filter output based on conditions provided",
          parse: parseFilter,
        },
        {
          long: "format",
          type: "string",
          kind: "string",
          description:
            "Format output using a custom template: 'table' (default), 'table TEMPLATE', 'json', 'TEMPLATE' (see below)",
        },
        {
          long: "last",
          short: "n",
          type: "int",
          kind: "custom",
          description: "Show n last created containers (includes all states)",
          defaultText: "-1",
          parse: parseIntFlag,
        },
        {
          long: "latest",
          short: "l",
          kind: "bool",
          description: "Show the latest created container (includes all states)",
        },
        { long: "no-trunc", kind: "bool", description: "Don't truncate output" },
        { long: "quiet", short: "q", kind: "bool", description: "Only display container IDs" },
        { long: "size", short: "s", kind: "bool", description: "Display total file sizes" },
      ],
      notes: LIST_FORMAT_NOTES,
      run: runPs,
    },
    exec: {
      name: "exec",
      use: "[OPTIONS] CONTAINER COMMAND [ARG...]",
      short: "Execute a command in a running container",
      args: { kind: "min", n: 2 },
      interspersed: false,
      flags: [
        { long: "detach", short: "d", kind: "bool", description: "Detached mode: run command in the background" },
        { long: "env", short: "e", type: "list", kind: "list", description: "Set environment variables" },
        { long: "interactive", short: "i", kind: "bool", description: "Keep STDIN open even if not attached" },
        { long: "tty", short: "t", kind: "bool", description: "Allocate a pseudo-TTY" },
        {
          long: "user",
          short: "u",
          type: "string",
          kind: "string",
          description: 'Username or UID (format: "<name|uid>[:<group|gid>]")',
        },
        {
          long: "workdir",
          short: "w",
          type: "string",
          kind: "string",
          description: "Working directory inside the container",
        },
      ],
      run: runExec,
    },
    logs: {
      name: "logs",
      use: "[OPTIONS] CONTAINER",
      short: "Fetch the logs of a container",
      args: { kind: "exact", n: 1 },
      flags: [
        { long: "details", kind: "bool", description: "Show extra details provided to logs" },
        { long: "follow", short: "f", kind: "bool", description: "Follow log output" },
        {
          long: "since",
          type: "string",
          kind: "string",
          description:
            'Show logs since timestamp (e.g. "2013-01-02T13:23:37Z") or relative (e.g. "42m" for 42 minutes)',
        },
        {
          long: "tail",
          short: "n",
          type: "string",
          kind: "string",
          description: "Number of lines to show from the end of the logs",
          defaultText: '"all"',
        },
        { long: "timestamps", short: "t", kind: "bool", description: "Show timestamps" },
        {
          long: "until",
          type: "string",
          kind: "string",
          description:
            'Show logs before a timestamp (e.g. "2013-01-02T13:23:37Z") or relative (e.g. "42m" for 42 minutes)',
        },
      ],
      run: runLogs,
    },
    stop: {
      name: "stop",
      use: "[OPTIONS] CONTAINER [CONTAINER...]",
      short: "Stop one or more running containers",
      args: { kind: "min", n: 1 },
      flags: [
        { long: "signal", short: "s", type: "string", kind: "string", description: "Signal to send to the container" },
        {
          long: "timeout",
          short: "t",
          type: "int",
          kind: "custom",
          description: "Seconds to wait before killing the container",
          parse: parseIntFlag,
        },
      ],
      run: runStop,
    },
    rm: {
      name: "rm",
      aliases: ["remove"],
      use: "[OPTIONS] CONTAINER [CONTAINER...]",
      short: "Remove one or more containers",
      args: { kind: "min", n: 1 },
      flags: [
        {
          long: "force",
          short: "f",
          kind: "bool",
          description: "Force the removal of a running container (uses SIGKILL)",
        },
        { long: "link", short: "l", kind: "bool", description: "Remove the specified link" },
        {
          long: "volumes",
          short: "v",
          kind: "bool",
          description: "Remove anonymous volumes associated with the container",
        },
      ],
      run: runRemove,
    },
    start: {
      name: "start",
      use: "[OPTIONS] CONTAINER [CONTAINER...]",
      short: "Start one or more stopped containers",
      args: { kind: "min", n: 1 },
      run: runStart,
    },
    kill: {
      name: "kill",
      use: "[OPTIONS] CONTAINER [CONTAINER...]",
      short: "Kill one or more running containers",
      args: { kind: "min", n: 1 },
      flags: [
        { long: "signal", short: "s", type: "string", kind: "string", description: "Signal to send to the container" },
      ],
      run: runKill,
    },
    restart: {
      name: "restart",
      use: "[OPTIONS] CONTAINER [CONTAINER...]",
      short: "Restart one or more containers",
      args: { kind: "min", n: 1 },
      flags: [
        { long: "signal", short: "s", type: "string", kind: "string", description: "Signal to send to the container" },
        {
          long: "timeout",
          short: "t",
          type: "int",
          kind: "custom",
          description: "Seconds to wait before killing the container",
          parse: parseIntFlag,
        },
      ],
      run: runRestart,
    },
    wait: {
      name: "wait",
      use: "CONTAINER [CONTAINER...]",
      short: "Block until one or more containers stop, then print their exit codes",
      args: { kind: "min", n: 1 },
      run: runWait,
    },
    top: {
      name: "top",
      use: "CONTAINER [ps OPTIONS]",
      short: "Display the running processes of a container",
      args: { kind: "min", n: 1 },
      interspersed: false,
      run: runTop,
    },
    inspect: {
      name: "inspect",
      use: "[OPTIONS] CONTAINER [CONTAINER...]",
      short: "Display detailed information on one or more containers",
      args: { kind: "min", n: 1 },
      flags: [INSPECT_FORMAT_FLAG],
      notes: LIST_FORMAT_NOTES,
      run: runContainerInspect,
    },
  };
}

function add(parent: Command, spec: Spec, overrides: Partial<Spec> = {}): void {
  const merged: Spec = { ...spec, ...overrides };
  const cmd: Command = leaf(parent, { ...merged, run: (inv) => merged.run(inv, commandPath(cmd)) });
}

export function addContainerCommands(program: Command): void {
  const s = specs();
  // Top-level shortcuts, as docker has them.
  for (const name of ["exec", "kill", "logs", "ps", "restart", "rm", "run", "start", "stop", "top", "wait"])
    add(program, s[name]!, { aliases: [] });
  add(program, s.inspect!, {
    use: "[OPTIONS] NAME|ID [NAME|ID...]",
    short: "Return low-level information on a container or network",
    run: runInspectAny,
  });
  const container = group(program, "container", "Manage containers").enablePositionalOptions();
  for (const name of ["exec", "inspect", "kill", "logs", "restart", "rm", "run", "start", "stop", "top", "wait"])
    add(container, s[name]!);
  add(container, s.ps!, { name: "ls", aliases: ["ps", "list"] });
}
