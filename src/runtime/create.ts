// What a new container is: Docker's create request mapped onto a ContainerSpec, checked in docker's words,
// merged with its image's config as docker merges it (Entrypoint, Cmd, Env, WorkingDir, User), and turned
// into the record state.json keeps. Nothing here touches the host.

import { isAbsolute } from "node:path";
import { badRequest, conflict } from "../api/errors.js";
import { type ContainerRecord, type HostConfig, newId, type RestartPolicy, ZERO_TIME } from "./container.js";
import type { RunConfig } from "./images/oci.js";
import { nowRFC3339Nano } from "./jsonlog.js";
import { DEFAULT_PATH } from "./launch.js";
import { randomName } from "./names.js";
import { endpointRequest } from "./networks.js";
import { parseSignal } from "./signals.js";
import type { ContainerConfig, ContainerCreateRequest, EndpointSettingsRequest } from "./types.js";

/** The image whose root file system is the host's own (read-only): processes of the host, in a sandbox. */
export const HOST_IMAGE = "host";

export const NAME_RE = /^\/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$/;

/** What `create` needs; specFromRequest maps Docker's request onto it. */
export interface ContainerSpec {
  name?: string;
  image: string;
  cmd: string[];
  entrypoint?: string[] | null;
  env?: string[];
  workingDir?: string;
  user?: string;
  labels?: Record<string, string>;
  tty?: boolean;
  openStdin?: boolean;
  stdinOnce?: boolean;
  /** Default: the first network's ref, or "none". "host" shares the host's network namespace. */
  networkMode?: string;
  networks: { ref: string; cfg: EndpointSettingsRequest }[];
  hostnameOverride?: string;
  domainname?: string;
  autoRemove?: boolean;
  stopSignal?: string;
  stopTimeout?: number;
  binds?: HostConfig["binds"];
  memoryBytes?: number;
  nanoCpus?: number;
  restartPolicy?: RestartPolicy;
}

/** The image a container is created from, as the runtime found it. */
export interface ImageForRun {
  /** As the user named it ("busybox"); docker shows it so. */
  name: string;
  /** The config digest ("" for the host image). */
  id: string;
  rootfs: "host" | "snapshot";
  config: RunConfig;
}

function isSpecialMode(mode: string): boolean {
  return mode === "" || mode === "default" || mode === "none" || mode === "host";
}

/** The networks of a create request: the NetworkMode's first, then the other endpoints. */
function networksOf(req: ContainerCreateRequest, mode: string): ContainerSpec["networks"] {
  const endpoints = req.NetworkingConfig?.EndpointsConfig ?? {};
  const networks: ContainerSpec["networks"] = [];
  const special = isSpecialMode(mode);
  if (!special) networks.push({ ref: mode, cfg: endpointRequest(endpoints[mode]) });
  for (const [key, cfg] of Object.entries(endpoints)) {
    if (key === mode || key === "default") continue;
    if (special && mode !== "default") {
      throw badRequest(`container cannot be connected to network ${key} and to the ${mode} network`);
    }
    networks.push({ ref: key, cfg: endpointRequest(cfg) });
  }
  return networks;
}

/** -v HOST:CTR[:ro|rw], as docker parses a bind (named volumes are not supported). */
export function parseBind(text: string): HostConfig["binds"][number] {
  const parts = text.split(":");
  if (parts.length < 2 || parts.length > 3) throw badRequest(`invalid volume specification: '${text}'`);
  const [source, destination, mode = "rw"] = parts as [string, string, string?];
  if (!isAbsolute(source)) {
    throw badRequest(
      `invalid volume specification: '${text}': shoal mounts host paths only (named volumes are not supported)`,
    );
  }
  if (!isAbsolute(destination))
    throw badRequest(`invalid volume specification: '${text}': invalid mount config: mount path must be absolute`);
  if (!/^(ro|rw)(,(ro|rw))*$/.test(mode) && mode !== "") throw badRequest(`invalid mode: ${mode}`);
  return { source, destination, readonly: mode.split(",").includes("ro") };
}

/** --restart no|always|on-failure[:N]|unless-stopped, as it arrives (Name, MaximumRetryCount). */
export function restartPolicyOf(p: { Name?: string; MaximumRetryCount?: number } | null | undefined): RestartPolicy {
  const name = p?.Name ?? "";
  const count = p?.MaximumRetryCount ?? 0;
  if (name === "" || name === "no") {
    if (count !== 0) throw badRequest("invalid restart policy: maximum retry count can only be used with 'on-failure'");
    return { name: "no", maximumRetryCount: 0 };
  }
  if (name !== "always" && name !== "on-failure" && name !== "unless-stopped") {
    throw badRequest(
      `invalid restart policy: unknown policy '${name}'; use one of 'no', 'always', 'on-failure', or 'unless-stopped'`,
    );
  }
  if (count < 0) throw badRequest("invalid restart policy: maximum retry count cannot be negative");
  if (count !== 0 && name !== "on-failure") {
    throw badRequest("invalid restart policy: maximum retry count can only be used with 'on-failure'");
  }
  return { name, maximumRetryCount: count };
}

/** POST /containers/create onto a ContainerSpec. */
export function specFromRequest(name: string | undefined, req: ContainerCreateRequest): ContainerSpec {
  const mode = req.HostConfig?.NetworkMode || "default";
  const networks = networksOf(req, mode);
  const hc = req.HostConfig;
  const spec: ContainerSpec = {
    image: req.Image ?? "",
    cmd: req.Cmd ?? [],
    entrypoint: req.Entrypoint ?? null,
    env: req.Env ?? [],
    workingDir: req.WorkingDir ?? "",
    user: req.User ?? "",
    labels: req.Labels ?? {},
    tty: req.Tty ?? false,
    openStdin: req.OpenStdin ?? false,
    stdinOnce: req.StdinOnce ?? false,
    networkMode: mode === "default" || mode === "" ? (networks[0]?.ref ?? "none") : mode,
    networks,
    hostnameOverride: req.Hostname ?? "",
    domainname: req.Domainname ?? "",
    autoRemove: hc?.AutoRemove === true,
    binds: (hc?.Binds ?? []).map(parseBind),
    memoryBytes: hc?.Memory ?? 0,
    nanoCpus: hc?.NanoCpus ?? 0,
    restartPolicy: restartPolicyOf(hc?.RestartPolicy),
  };
  if (spec.autoRemove && spec.restartPolicy?.name !== "no") {
    throw badRequest("conflicting options: cannot specify both --restart and --rm");
  }
  if ((spec.memoryBytes ?? 0) > 0 && (spec.memoryBytes ?? 0) < 6 * 1024 * 1024) {
    throw badRequest("Minimum memory limit allowed is 6MB");
  }
  if (name !== undefined && name !== "") spec.name = name;
  if (req.StopSignal) {
    if (parseSignal(req.StopSignal) === undefined) throw badRequest(`invalid signal: ${req.StopSignal}`);
    spec.stopSignal = req.StopSignal;
  }
  if (typeof req.StopTimeout === "number") spec.stopTimeout = req.StopTimeout;
  return spec;
}

/** The command line docker runs: the entrypoint (given, or the image's) and the cmd (given, or the image's). */
export function commandOf(spec: ContainerSpec, image: RunConfig): string[] {
  const given = spec.entrypoint !== undefined && spec.entrypoint !== null;
  const entrypoint = given ? spec.entrypoint! : (image.Entrypoint ?? []);
  // A new entrypoint drops the image's cmd, as in docker.
  const cmd = spec.cmd.length > 0 ? spec.cmd : given ? [] : (image.Cmd ?? []);
  const argv = [...entrypoint, ...cmd];
  if (argv.length === 0) throw badRequest("no command specified");
  return argv;
}

/** The image's environment with the request's on top (same names replaced). */
function mergedEnv(image: string[], given: string[]): string[] {
  const out = new Map<string, string>();
  for (const kv of [...image, ...given]) {
    const eq = kv.indexOf("=");
    out.set(eq < 0 ? kv : kv.slice(0, eq), kv);
  }
  return [...out.values()];
}

/**
 * The checks a spec passes before anything is made, in dockerd's order; returns the container's name (the
 * one asked for, or a random free one). `holderOf` says which container holds a name.
 */
export function checkSpec(spec: ContainerSpec, holderOf: (name: string) => { id: string } | undefined): string {
  const name = nameFor(spec, holderOf);
  const networkMode = networkModeOf(spec);
  if (networkMode.startsWith("container:")) {
    throw badRequest("shoal does not share network namespaces between containers: use a network instead");
  }
  if ((networkMode === "host" || networkMode === "none") && spec.networks.length > 0) {
    throw badRequest(
      `container cannot be connected to network(s) ${spec.networks.map((n) => n.ref).join(", ")} and to the ${networkMode} network`,
    );
  }
  return name;
}

export function networkModeOf(spec: ContainerSpec): string {
  return spec.networkMode ?? spec.networks[0]?.ref ?? "none";
}

function nameFor(spec: ContainerSpec, holderOf: (name: string) => { id: string } | undefined): string {
  let name = spec.name ?? "";
  if (name === "") {
    for (let i = 0; name === "" || holderOf(name); i++) name = randomName(i);
    return name;
  }
  if (!NAME_RE.test(name)) {
    throw badRequest(`Invalid container name (${name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed`);
  }
  if (name.startsWith("/")) name = name.slice(1);
  const holder = holderOf(name);
  if (holder) {
    throw conflict(
      `Conflict. The container name "/${name}" is already in use by container "${holder.id}". You have to remove (or rename) that container to be able to reuse that name.`,
    );
  }
  return name;
}

function configOf(spec: ContainerSpec, image: ImageForRun, id: string): ContainerConfig {
  const hostname = spec.hostnameOverride || id.slice(0, 12);
  const ic = image.config;
  const imageEnv = ic.Env && ic.Env.length > 0 ? ic.Env : [`PATH=${DEFAULT_PATH}`];
  return {
    Hostname: hostname,
    Domainname: spec.domainname ?? "",
    User: spec.user || ic.User || "",
    AttachStdin: false,
    AttachStdout: false,
    AttachStderr: false,
    Tty: spec.tty ?? false,
    OpenStdin: spec.openStdin ?? false,
    StdinOnce: spec.stdinOnce ?? false,
    Env: mergedEnv([...imageEnv, `HOSTNAME=${hostname}`, ...(spec.tty ? ["TERM=xterm"] : [])], spec.env ?? []),
    Cmd: spec.cmd.length > 0 ? [...spec.cmd] : spec.entrypoint ? null : (ic.Cmd ?? null),
    Image: image.name,
    Volumes: null,
    WorkingDir: spec.workingDir || ic.WorkingDir || "",
    Entrypoint: spec.entrypoint && spec.entrypoint.length > 0 ? [...spec.entrypoint] : (ic.Entrypoint ?? null),
    OnBuild: null,
    Labels: { ...(ic.Labels ?? {}), ...(spec.labels ?? {}) },
    ...(spec.stopSignal || ic.StopSignal ? { StopSignal: spec.stopSignal || ic.StopSignal } : {}),
    ...(spec.stopTimeout !== undefined ? { StopTimeout: spec.stopTimeout } : {}),
  };
}

/** The record of a new container named `name` (id `id`, drawn by the caller or here), created now from `image`. */
export function newRecord(spec: ContainerSpec, name: string, image: ImageForRun, id = newId()): ContainerRecord {
  const argv = commandOf(spec, image.config);
  return {
    id,
    name,
    created: nowRFC3339Nano(),
    path: argv[0]!,
    args: argv.slice(1),
    config: configOf(spec, image, id),
    networkMode: networkModeOf(spec),
    autoRemove: spec.autoRemove ?? false,
    networks: spec.networks.map((n) => ({ ref: n.ref, cfg: n.cfg, endpoint: null })),
    state: { status: "created", pid: 0, exitCode: 0, error: "", startedAt: ZERO_TIME, finishedAt: ZERO_TIME },
    image: { id: image.id, rootfs: image.rootfs },
    hostConfig: {
      binds: spec.binds ?? [],
      memoryBytes: spec.memoryBytes ?? 0,
      nanoCpus: spec.nanoCpus ?? 0,
      restartPolicy: spec.restartPolicy ?? { name: "no", maximumRetryCount: 0 },
    },
    restartCount: 0,
    stoppedByUser: false,
  };
}
