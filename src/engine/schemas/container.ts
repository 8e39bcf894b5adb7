// POST /containers/create, /containers/{id}/exec and /exec/{id}/start: Docker's container.Config with
// HostConfig and NetworkingConfig, ExecOptions and ExecStartOptions, every field of API 1.24 to 1.50, and
// what shoal's runtime takes from them.
//
// shoal runs a container from its OCI image through containerd, in a network namespace attached to overlay
// networks, with a user, bind mounts (-v), a memory and CPU limit and a restart policy. Everything else
// Docker offers (ports, capabilities, devices, other resources, health checks...) is accepted at its zero
// value, as the docker CLI sends it, and refused with the flag's name when given.

import { z } from "zod";
import {
  MAX_IMAGE_REF_LENGTH,
  MAX_LIST_ENTRIES,
  MAX_NAME_LENGTH,
  MAX_PATH_LENGTH,
  MAX_SHORT_STRING,
} from "../../api/limits.js";
import type { ContainerCreateRequest, ExecCreateRequest } from "../../runtime/types.js";
import { command, env, labels, options, text } from "./common.js";
import { bodySchema } from "./decode.js";
import {
  checked,
  type GoOut,
  type GoType,
  goArray,
  goBool,
  goInt,
  goMap,
  goPointer,
  goSlice,
  goStruct,
  strSlice,
  unsupported,
} from "./go.js";
import { type EndpointRequest, EndpointsConfigType, endpointFromRequest } from "./network.js";
import { atoiError, filtersParam, intParam, lenientBool, textParam } from "./query.js";

const strings = (max = MAX_SHORT_STRING) => goSlice(text(max), MAX_LIST_ENTRIES);
const emptyStructSet = () => goMap(goStruct("struct {}", {}), MAX_LIST_ENTRIES) as GoType<unknown>;
const no = <T>(t: GoType<T>, flag = "", alsoFine?: (v: T) => boolean) => unsupported(t, flag, alsoFine);

const throttleDevice = goStruct("blkiodev.ThrottleDevice", { Path: text(MAX_PATH_LENGTH), Rate: goInt("uint64") });

/** container.Resources (inlined in HostConfig): none of it is carried out by shoal. */
const resourceFields = {
  CpuShares: no(goInt("int64"), "--cpu-shares"),
  Memory: checked(goInt("int64"), (v) => (v < 0 ? "--memory cannot be negative" : undefined)),
  NanoCpus: checked(goInt("int64"), (v) => (v < 0 ? "--cpus cannot be negative" : undefined)),
  CgroupParent: no(text(MAX_PATH_LENGTH), "--cgroup-parent"),
  BlkioWeight: no(goInt("uint16"), "--blkio-weight"),
  BlkioWeightDevice: no(
    goSlice(
      goStruct("blkiodev.WeightDevice", { Path: text(MAX_PATH_LENGTH), Weight: goInt("uint16") }),
      MAX_LIST_ENTRIES,
    ),
    "--blkio-weight-device",
  ),
  BlkioDeviceReadBps: no(goSlice(throttleDevice, MAX_LIST_ENTRIES), "--device-read-bps"),
  BlkioDeviceWriteBps: no(goSlice(throttleDevice, MAX_LIST_ENTRIES), "--device-write-bps"),
  BlkioDeviceReadIOps: no(goSlice(throttleDevice, MAX_LIST_ENTRIES), "--device-read-iops"),
  BlkioDeviceWriteIOps: no(goSlice(throttleDevice, MAX_LIST_ENTRIES), "--device-write-iops"),
  CpuPeriod: no(goInt("int64"), "--cpu-period"),
  CpuQuota: no(goInt("int64"), "--cpu-quota"),
  CpuRealtimePeriod: no(goInt("int64"), "--cpu-rt-period"),
  CpuRealtimeRuntime: no(goInt("int64"), "--cpu-rt-runtime"),
  CpusetCpus: no(text(MAX_SHORT_STRING), "--cpuset-cpus"),
  CpusetMems: no(text(MAX_SHORT_STRING), "--cpuset-mems"),
  Devices: no(
    goSlice(
      goStruct("container.DeviceMapping", {
        PathOnHost: text(MAX_PATH_LENGTH),
        PathInContainer: text(MAX_PATH_LENGTH),
        CgroupPermissions: text(16),
      }),
      MAX_LIST_ENTRIES,
    ),
    "--device",
  ),
  DeviceCgroupRules: no(strings(), "--device-cgroup-rule"),
  DeviceRequests: no(
    goSlice(
      goStruct("container.DeviceRequest", {
        Driver: text(MAX_NAME_LENGTH),
        Count: goInt("int"),
        DeviceIDs: strings(),
        Capabilities: goSlice(strings(), MAX_LIST_ENTRIES, "[][]string"),
        Options: options(),
      }),
      MAX_LIST_ENTRIES,
    ),
    "--gpus",
  ),
  KernelMemory: no(goInt("int64"), "--kernel-memory"),
  KernelMemoryTCP: no(goInt("int64")),
  MemoryReservation: no(goInt("int64"), "--memory-reservation"),
  MemorySwap: no(goInt("int64"), "--memory-swap"),
  // -1 is the docker CLI's "not set".
  MemorySwappiness: no(goPointer(goInt("int64")), "--memory-swappiness", (v) => v === -1),
  OomKillDisable: no(goPointer(goBool()), "--oom-kill-disable", (v) => v === false),
  // 0 and -1 both mean "no limit".
  PidsLimit: no(goPointer(goInt("int64")), "--pids-limit", (v) => v === 0 || v === -1),
  Ulimits: no(
    goSlice(
      goStruct("container.Ulimit", { Name: text(64), Hard: goInt("int64"), Soft: goInt("int64") }),
      MAX_LIST_ENTRIES,
    ),
    "--ulimit",
  ),
  CpuCount: no(goInt("int64"), "--cpu-count"),
  CpuPercent: no(goInt("int64"), "--cpu-percent"),
  IOMaximumIOps: no(goInt("uint64"), "--io-maxiops"),
  IOMaximumBandwidth: no(goInt("uint64"), "--io-maxbandwidth"),
  // API 1.25 to 1.39 and 1.40 only.
  DiskQuota: no(goInt("int64")),
  Capabilities: no(strings()),
};

const mountType = goStruct("mount.Mount", {
  Type: text(32, "mount.Type"),
  Source: text(MAX_PATH_LENGTH),
  Target: text(MAX_PATH_LENGTH),
  ReadOnly: goBool(),
  Consistency: text(32, "mount.Consistency"),
  BindOptions: goStruct("mount.BindOptions", {
    Propagation: text(32, "mount.Propagation"),
    NonRecursive: goBool(),
    CreateMountpoint: goBool(),
    ReadOnlyNonRecursive: goBool(),
    ReadOnlyForceRecursive: goBool(),
  }),
  VolumeOptions: goStruct("mount.VolumeOptions", {
    NoCopy: goBool(),
    Labels: labels(),
    Subpath: text(MAX_PATH_LENGTH),
    DriverConfig: goStruct("mount.Driver", { Name: text(MAX_NAME_LENGTH), Options: options() }),
  }),
  ImageOptions: goStruct("mount.ImageOptions", { Subpath: text(MAX_PATH_LENGTH) }),
  TmpfsOptions: goStruct("mount.TmpfsOptions", {
    SizeBytes: goInt("int64"),
    Mode: goInt("uint32"),
    Options: goSlice(strings(), MAX_LIST_ENTRIES, "[][]string"),
  }),
  ClusterOptions: goStruct("mount.ClusterOptions", {}),
});

const hostConfigType = goStruct("container.HostConfig", {
  Binds: strings(MAX_PATH_LENGTH),
  // Written by the docker CLI itself; the daemon never uses it.
  ContainerIDFile: text(MAX_PATH_LENGTH),
  LogConfig: goStruct("container.LogConfig", {
    Type: no(text(MAX_NAME_LENGTH), "--log-driver", (v) => v === "json-file"),
    Config: no(options(), "--log-opt"),
  }),
  NetworkMode: text(MAX_NAME_LENGTH, "container.NetworkMode"),
  PortBindings: no(
    goMap(
      goSlice(goStruct("nat.PortBinding", { HostIp: text(64), HostPort: text(32) }), MAX_LIST_ENTRIES),
      MAX_LIST_ENTRIES,
    ),
    "-p",
  ),
  RestartPolicy: goStruct("container.RestartPolicy", {
    Name: text(32, "container.RestartPolicyMode"),
    MaximumRetryCount: goInt("int"),
  }),
  AutoRemove: goBool(),
  VolumeDriver: no(text(MAX_NAME_LENGTH), "--volume-driver"),
  VolumesFrom: no(strings(), "--volumes-from"),
  // The client's terminal size: a hint (shoal's TTY containers have no pseudo-terminal to size).
  ConsoleSize: goArray(goInt("uint"), 2),
  Annotations: no(options(), "--annotation"),
  CapAdd: no(strSlice(MAX_LIST_ENTRIES), "--cap-add"),
  CapDrop: no(strSlice(MAX_LIST_ENTRIES), "--cap-drop"),
  CgroupnsMode: no(text(32, "container.CgroupnsMode"), "--cgroupns"),
  Dns: no(strings(), "--dns"),
  DnsOptions: no(strings(), "--dns-option"),
  DnsSearch: no(strings(), "--dns-search"),
  ExtraHosts: no(strings(), "--add-host"),
  GroupAdd: no(strings(), "--group-add"),
  IpcMode: no(text(MAX_NAME_LENGTH, "container.IpcMode"), "--ipc"),
  Cgroup: no(text(MAX_NAME_LENGTH, "container.CgroupSpec"), "--cgroup"),
  Links: no(strings(), "--link"),
  OomScoreAdj: no(goInt("int"), "--oom-score-adj"),
  PidMode: no(text(MAX_NAME_LENGTH, "container.PidMode"), "--pid"),
  Privileged: no(goBool(), "--privileged"),
  PublishAllPorts: no(goBool(), "-P"),
  ReadonlyRootfs: no(goBool(), "--read-only"),
  SecurityOpt: no(strings(), "--security-opt"),
  StorageOpt: no(options(), "--storage-opt"),
  Tmpfs: no(options(), "--tmpfs"),
  UTSMode: no(text(MAX_NAME_LENGTH, "container.UTSMode"), "--uts"),
  UsernsMode: no(text(MAX_NAME_LENGTH, "container.UsernsMode"), "--userns"),
  ShmSize: no(goInt("int64"), "--shm-size"),
  Sysctls: no(options(), "--sysctl"),
  Runtime: no(text(MAX_NAME_LENGTH), "--runtime"),
  Isolation: no(text(32, "container.Isolation"), "--isolation", (v) => v === "default"),
  ...resourceFields,
  Mounts: no(goSlice(mountType, MAX_LIST_ENTRIES), "--mount"),
  MaskedPaths: no(strings(MAX_PATH_LENGTH)),
  ReadonlyPaths: no(strings(MAX_PATH_LENGTH)),
  Init: no(goPointer(goBool()), "--init", (v) => v === false),
});

const healthConfigType = goStruct("container.HealthConfig", {
  Test: strSlice(MAX_LIST_ENTRIES),
  Interval: goInt("time.Duration"),
  Timeout: goInt("time.Duration"),
  StartPeriod: goInt("time.Duration"),
  StartInterval: goInt("time.Duration"),
  Retries: goInt("int"),
});

const ContainerCreateType = goStruct("container.CreateRequest", {
  Hostname: text(MAX_NAME_LENGTH),
  Domainname: text(MAX_NAME_LENGTH),
  User: text(MAX_NAME_LENGTH),
  AttachStdin: goBool(),
  AttachStdout: goBool(),
  AttachStderr: goBool(),
  ExposedPorts: no(emptyStructSet(), "--expose"),
  Tty: goBool(),
  OpenStdin: goBool(),
  StdinOnce: goBool(),
  Env: env(),
  Cmd: command(),
  Healthcheck: no(healthConfigType, "--health-cmd"),
  ArgsEscaped: no(goBool()),
  Image: text(MAX_IMAGE_REF_LENGTH),
  Volumes: no(emptyStructSet(), "-v"),
  WorkingDir: text(MAX_PATH_LENGTH),
  Entrypoint: command(),
  NetworkDisabled: no(goBool()),
  MacAddress: no(text(64), "--mac-address"),
  OnBuild: no(strings()),
  Labels: labels(),
  StopSignal: text(32),
  StopTimeout: goPointer(goInt("int")),
  Shell: no(strSlice(MAX_LIST_ENTRIES)),
  HostConfig: hostConfigType,
  NetworkingConfig: goStruct("network.NetworkingConfig", { EndpointsConfig: EndpointsConfigType }),
});
export const ContainerCreateBody = bodySchema(ContainerCreateType);
export type ContainerCreateRequestIn = NonNullable<GoOut<typeof ContainerCreateType>>;

/** What shoal's runtime takes from a container create request (the runtime owns the shape). */
export type ContainerCreate = ContainerCreateRequest;

export function containerCreateFromRequest(r: ContainerCreateRequestIn): ContainerCreate {
  const endpoints: Record<string, EndpointRequest> = {};
  for (const [net, cfg] of Object.entries(r.NetworkingConfig?.EndpointsConfig ?? {})) {
    endpoints[net] = endpointFromRequest(cfg);
  }
  const out: ContainerCreate = {
    Tty: r.Tty ?? false,
    OpenStdin: r.OpenStdin ?? false,
    StdinOnce: r.StdinOnce ?? false,
    HostConfig: hostConfigFromRequest(r.HostConfig),
    NetworkingConfig: { EndpointsConfig: endpoints },
  };
  if (r.Hostname) out.Hostname = r.Hostname;
  if (r.User) out.User = r.User;
  if (r.Domainname) out.Domainname = r.Domainname;
  if (r.Env) out.Env = [...r.Env];
  if (r.Cmd) out.Cmd = [...r.Cmd];
  if (r.Image) out.Image = r.Image;
  if (r.WorkingDir) out.WorkingDir = r.WorkingDir;
  if (r.Entrypoint) out.Entrypoint = [...r.Entrypoint];
  if (r.Labels) out.Labels = { ...r.Labels };
  if (r.StopSignal) out.StopSignal = r.StopSignal;
  if (r.StopTimeout !== undefined) out.StopTimeout = r.StopTimeout;
  return out;
}

function hostConfigFromRequest(hc: ContainerCreateRequestIn["HostConfig"]): NonNullable<ContainerCreate["HostConfig"]> {
  const out: NonNullable<ContainerCreate["HostConfig"]> = { AutoRemove: hc?.AutoRemove ?? false };
  if (hc?.NetworkMode) out.NetworkMode = hc.NetworkMode;
  if (hc?.Binds && hc.Binds.length > 0) out.Binds = [...hc.Binds];
  if (hc?.Memory) out.Memory = hc.Memory;
  if (hc?.NanoCpus) out.NanoCpus = hc.NanoCpus;
  const rp = hc?.RestartPolicy;
  if (rp?.Name && rp.Name !== "no") out.RestartPolicy = { Name: rp.Name, MaximumRetryCount: rp.MaximumRetryCount ?? 0 };
  return out;
}

// ------------------------------------------------------------------ exec

const ExecCreateType = goStruct("container.ExecOptions", {
  User: text(MAX_NAME_LENGTH),
  Privileged: no(goBool(), "--privileged"),
  Tty: goBool(),
  ConsoleSize: goPointer(goArray(goInt("uint"), 2)),
  AttachStdin: goBool(),
  AttachStderr: goBool(),
  AttachStdout: goBool(),
  Detach: goBool(),
  DetachKeys: text(64),
  Env: env(),
  WorkingDir: text(MAX_PATH_LENGTH),
  Cmd: command(false),
  // Older clients (Docker's Python SDK) repeat the container here; the path names it, as in dockerd.
  Container: text(MAX_NAME_LENGTH + 64),
});
export const ExecCreateBody = bodySchema(ExecCreateType);

const ExecStartType = goStruct("container.ExecStartOptions", {
  Detach: goBool(),
  Tty: goBool(),
  ConsoleSize: goPointer(goArray(goInt("uint"), 2)),
});
export const ExecStartBody = bodySchema(ExecStartType);

/** What shoal's runtime takes from an exec create request. */
export type ExecCreate = ExecCreateRequest;

export function execCreateFromRequest(r: NonNullable<GoOut<typeof ExecCreateType>>): ExecCreate {
  return {
    ...(r.User ? { User: r.User } : {}),
    Tty: r.Tty ?? false,
    AttachStdin: r.AttachStdin ?? false,
    AttachStdout: r.AttachStdout ?? false,
    AttachStderr: r.AttachStderr ?? false,
    Detach: r.Detach ?? false,
    DetachKeys: r.DetachKeys ?? "",
    Env: [...(r.Env ?? [])],
    WorkingDir: r.WorkingDir ?? "",
    Cmd: [...(r.Cmd ?? [])],
  };
}

// ------------------------------------------------------------------ query parameters

const CONTAINER_FILTERS = [
  "id",
  "name",
  "status",
  "label",
  "exited",
  "network",
  "before",
  "since",
  "ancestor",
] as const;

const tParam = intParam((v) => `invalid value for t: ${v}`);

export const ContainerCreateQuery = z.object({
  name: textParam("name", MAX_NAME_LENGTH + 1),
  // Images are the host's file system: there is one platform.
  platform: textParam("platform", 64),
});
export const ContainerListQuery = z.object({
  all: lenientBool(),
  limit: intParam((v) => `invalid value for limit: ${v}`),
  size: lenientBool(),
  filters: filtersParam(CONTAINER_FILTERS),
});
export const ContainerInspectQuery = z.object({ size: lenientBool() });
export const ContainerStartQuery = z.object({
  detachKeys: textParam("detachKeys", 64),
  checkpoint: textParam("checkpoint"),
  "checkpoint-dir": textParam("checkpoint-dir", MAX_PATH_LENGTH),
});
export const ContainerStopQuery = z.object({ t: tParam, signal: textParam("signal", 32) });
export const ContainerKillQuery = z.object({ signal: textParam("signal", 32) });
export const ContainerWaitQuery = z.object({ condition: textParam("condition", 32) });
export const ContainerRemoveQuery = z.object({ v: lenientBool(), force: lenientBool(), link: lenientBool() });
export const ContainerLogsQuery = z.object({
  follow: lenientBool(),
  stdout: lenientBool(),
  stderr: lenientBool(),
  since: textParam("since", 64),
  until: textParam("until", 64),
  timestamps: lenientBool(),
  tail: textParam("tail", 32),
  details: lenientBool(),
});
export const ContainerAttachQuery = z.object({
  detachKeys: textParam("detachKeys", 64),
  logs: lenientBool(),
  stream: lenientBool(),
  stdin: lenientBool(),
  stdout: lenientBool(),
  stderr: lenientBool(),
});
export const ResizeQuery = z.object({ h: intParam(atoiError), w: intParam(atoiError) });
