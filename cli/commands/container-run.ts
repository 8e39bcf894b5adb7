// shoal run and create: docker's flags, the container's HostConfig and NetworkingConfig, the image
// pulled when missing, then start and attach (or print the id with --detach).

import { readFileSync } from "node:fs";
import { CliError } from "../client.js";
import type { FlagSpec, Invocation } from "../command.js";
import { FlagValueError, parseInt64, splitKV } from "../flags.js";
import { copyOutput, goBody, hijack, isRawStream, openStream, readAll, sortedMap, str } from "./common.js";
import { pull } from "./image.js";

/** docker's opts.ValidateEnv: "KEY" alone takes the value from our environment, if it has one. */
export function envValue(kv: string): string {
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
export function envFile(path: string): string[] {
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

export async function runRun(inv: Invocation, path: string): Promise<void> {
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

function parseStopTimeout(s: string): number {
  const n = parseInt64(s);
  if (n < -2147483648 || n > 2147483647)
    throw new FlagValueError(`strconv.ParseInt: parsing ${JSON.stringify(s)}: value out of range`);
  return n;
}

export const RUN_FLAGS: FlagSpec[] = [
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
