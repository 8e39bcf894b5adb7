// shoal run | create | ps | exec | logs | stop | rm | start | kill | restart | wait | top | inspect, and the
// same under `shoal container` — docker's requests and output. Images are OCI images run through
// containerd; the image "host" is the host's own file system, read-only.

import type { Command } from "commander";
import { CliError } from "../client.js";
import { commandPath, type FlagSpec, group, type Invocation, type LeafSpec, leaf } from "../command.js";
import { filtersJSON, parseDuration, parseInt64 } from "../flags.js";
import type { GoValue } from "../gojson.js";
import {
  bytewise,
  copyOutput,
  ellipsis,
  filterFlag,
  goBody,
  goQuote,
  hijack,
  humanDuration,
  INSPECT_FORMAT_FLAG,
  inspectRaw,
  isRawStream,
  LIST_FORMAT_FLAG,
  LIST_FORMAT_NOTES,
  obj,
  openStream,
  renderList,
  row,
  str,
  unixTimeString,
} from "./common.js";
import { envFile, envValue, RUN_FLAGS, runRun } from "./container-run.js";

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

/**
 * Each ref in turn: print the line f returns (the ref, an exit code; none: nothing); the errors, joined,
 * make the exit status 1.
 */
async function eachRef(inv: Invocation, f: (ref: string) => Promise<string | undefined>): Promise<void> {
  const errors: string[] = [];
  for (const ref of inv.args) {
    try {
      const line = await f(ref);
      if (line !== undefined) inv.out(`${line}\n`);
    } catch (e) {
      if (!(e instanceof CliError)) throw e;
      errors.push(e.message);
    }
  }
  if (errors.length > 0) throw new CliError(errors.join("\n"));
}

/** docker stop and docker restart: the same query (--signal, and --timeout only when given), each ref. */
function stopOrRestart(action: "stop" | "restart"): (inv: Invocation) => Promise<void> {
  return (inv) => {
    const client = inv.client();
    const timeout = inv.flag<number | undefined>("timeout");
    const query = {
      signal: inv.flag<string | undefined>("signal") || undefined,
      t: inv.changed("timeout") && timeout !== undefined ? String(timeout) : undefined,
    };
    return eachRef(inv, async (ref) => {
      await client.call("POST", `/containers/${ref}/${action}`, { query });
      return ref;
    });
  };
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
        return undefined;
      }
      throw e;
    }
    return ref;
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
    return ref;
  });
}

/** docker wait: each container's exit code, a line each. */
function runWait(inv: Invocation): Promise<void> {
  const client = inv.client();
  return eachRef(inv, async (ref) => {
    const r = obj(JSON.parse(await client.call("POST", `/containers/${ref}/wait`)));
    return `${typeof r.StatusCode === "number" ? r.StatusCode : -1}`;
  });
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

const SIGNAL_FLAG: FlagSpec = {
  long: "signal",
  short: "s",
  type: "string",
  kind: "string",
  description: "Signal to send to the container",
};

const STOP_WAIT_FLAG: FlagSpec = {
  long: "timeout",
  short: "t",
  type: "int",
  kind: "custom",
  description: "Seconds to wait before killing the container",
  parse: parseIntFlag,
};

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
        filterFlag(),
        LIST_FORMAT_FLAG,
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
      flags: [SIGNAL_FLAG, STOP_WAIT_FLAG],
      run: stopOrRestart("stop"),
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
      flags: [SIGNAL_FLAG],
      run: runKill,
    },
    restart: {
      name: "restart",
      use: "[OPTIONS] CONTAINER [CONTAINER...]",
      short: "Restart one or more containers",
      args: { kind: "min", n: 1 },
      flags: [SIGNAL_FLAG, STOP_WAIT_FLAG],
      run: stopOrRestart("restart"),
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
