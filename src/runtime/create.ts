// What a new container is: Docker's create request mapped onto a ContainerSpec, checked in docker's words,
// and turned into the record state.json keeps. Nothing here touches the host.

import { badRequest, conflict } from "../api/errors.js";
import { type ContainerRecord, newId, ZERO_TIME } from "./container.js";
import { nowRFC3339Nano } from "./jsonlog.js";
import { DEFAULT_PATH } from "./launch.js";
import { randomName } from "./names.js";
import { endpointRequest } from "./networks.js";
import { parseSignal } from "./signals.js";
import type { ContainerConfig, ContainerCreateRequest, EndpointSettingsRequest } from "./types.js";

export const HOST_IMAGE = "host";

const NAME_RE = /^\/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$/;

/** What `create` needs; specFromRequest maps Docker's request onto it. */
export interface ContainerSpec {
  name?: string;
  image: string;
  cmd: string[];
  entrypoint?: string[] | null;
  env?: string[];
  workingDir?: string;
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

/** POST /containers/create onto a ContainerSpec. */
export function specFromRequest(name: string | undefined, req: ContainerCreateRequest): ContainerSpec {
  if (req.User) {
    throw badRequest("shoal runs containers as the daemon's user: --user is not supported");
  }
  const mode = req.HostConfig?.NetworkMode || "default";
  const networks = networksOf(req, mode);
  const spec: ContainerSpec = {
    image: req.Image ?? "",
    cmd: req.Cmd ?? [],
    entrypoint: req.Entrypoint ?? null,
    env: req.Env ?? [],
    workingDir: req.WorkingDir ?? "",
    labels: req.Labels ?? {},
    tty: req.Tty ?? false,
    openStdin: req.OpenStdin ?? false,
    stdinOnce: req.StdinOnce ?? false,
    networkMode: mode === "default" || mode === "" ? (networks[0]?.ref ?? "none") : mode,
    networks,
    hostnameOverride: req.Hostname ?? "",
    domainname: req.Domainname ?? "",
    autoRemove: req.HostConfig?.AutoRemove === true,
  };
  if (name !== undefined && name !== "") spec.name = name;
  if (req.StopSignal) {
    if (parseSignal(req.StopSignal) === undefined) throw badRequest(`invalid signal: ${req.StopSignal}`);
    spec.stopSignal = req.StopSignal;
  }
  if (typeof req.StopTimeout === "number") spec.stopTimeout = req.StopTimeout;
  return spec;
}

/**
 * The checks a spec passes before anything is made, in dockerd's order; returns the command line
 * (entrypoint + cmd) and the container's name (the one asked for, or a random free one). `holderOf` says
 * which container holds a name.
 */
export function checkSpec(
  spec: ContainerSpec,
  holderOf: (name: string) => { id: string } | undefined,
): { argv: string[]; name: string } {
  const image = spec.image;
  if (image !== HOST_IMAGE && image !== `${HOST_IMAGE}:latest`) {
    throw badRequest(
      `image ${JSON.stringify(image)} is not available: shoal runs containers on the host's file system; use the image name "${HOST_IMAGE}"`,
    );
  }
  const argv = [...(spec.entrypoint ?? []), ...spec.cmd];
  if (argv.length === 0) throw badRequest("no command specified");
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
  return { argv, name };
}

function networkModeOf(spec: ContainerSpec): string {
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

function configOf(spec: ContainerSpec, id: string): ContainerConfig {
  const hostname = spec.hostnameOverride || id.slice(0, 12);
  return {
    Hostname: hostname,
    Domainname: spec.domainname ?? "",
    User: "",
    AttachStdin: false,
    AttachStdout: false,
    AttachStderr: false,
    Tty: spec.tty ?? false,
    OpenStdin: spec.openStdin ?? false,
    StdinOnce: spec.stdinOnce ?? false,
    Env: [`PATH=${DEFAULT_PATH}`, `HOSTNAME=${hostname}`, ...(spec.tty ? ["TERM=xterm"] : []), ...(spec.env ?? [])],
    Cmd: spec.cmd.length > 0 ? [...spec.cmd] : null,
    Image: spec.image,
    Volumes: null,
    WorkingDir: spec.workingDir ?? "",
    Entrypoint: spec.entrypoint && spec.entrypoint.length > 0 ? [...spec.entrypoint] : null,
    OnBuild: null,
    Labels: { ...(spec.labels ?? {}) },
    ...(spec.stopSignal ? { StopSignal: spec.stopSignal } : {}),
    ...(spec.stopTimeout !== undefined ? { StopTimeout: spec.stopTimeout } : {}),
  };
}

/** The record of a new container named `name`, created now. */
export function newRecord(spec: ContainerSpec, name: string, argv: string[]): ContainerRecord {
  const id = newId();
  return {
    id,
    name,
    created: nowRFC3339Nano(),
    path: argv[0]!,
    args: argv.slice(1),
    config: configOf(spec, id),
    networkMode: networkModeOf(spec),
    autoRemove: spec.autoRemove ?? false,
    networks: spec.networks.map((n) => ({ ref: n.ref, cfg: n.cfg, endpoint: null })),
    state: { status: "created", pid: 0, exitCode: 0, error: "", startedAt: ZERO_TIME, finishedAt: ZERO_TIME },
  };
}
