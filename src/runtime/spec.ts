// The OCI runtime spec of a container, as docker writes it for runc: the image's process with the user's
// overrides, docker's default mounts, capabilities, masked paths and device rules, the network namespace
// that shoal's data plane built (by its file), /etc/resolv.conf, /etc/hosts and /etc/hostname bind-mounted
// from the container's directory, the user's -v binds, and --memory / --cpus as cgroup limits.

import { join } from "node:path";

export interface ProcessUser {
  uid: number;
  gid: number;
  additionalGids?: number[];
}

export interface SpecInput {
  id: string;
  /** Container directory: resolv.conf, hosts and hostname live there. */
  dir: string;
  hostname: string;
  args: string[];
  env: string[];
  cwd: string;
  user: ProcessUser;
  terminal: boolean;
  /** null: the host's network namespace (NetworkMode "host"). */
  netnsPath: string | null;
  /** -v HOST:CTR[:ro] */
  binds: { source: string; destination: string; readonly: boolean }[];
  /** Bytes; 0: no limit. */
  memoryBytes: number;
  /** Billionths of a CPU (docker's NanoCpus); 0: no limit. */
  nanoCpus: number;
  /** The container's root file system is read-only (the host image). */
  readonlyRootfs: boolean;
}

/** Docker's default capabilities. */
export const DEFAULT_CAPABILITIES = [
  "CAP_CHOWN",
  "CAP_DAC_OVERRIDE",
  "CAP_FSETID",
  "CAP_FOWNER",
  "CAP_MKNOD",
  "CAP_NET_RAW",
  "CAP_SETGID",
  "CAP_SETUID",
  "CAP_SETFCAP",
  "CAP_SETPCAP",
  "CAP_NET_BIND_SERVICE",
  "CAP_SYS_CHROOT",
  "CAP_KILL",
  "CAP_AUDIT_WRITE",
];

const MASKED_PATHS = [
  "/proc/asound",
  "/proc/acpi",
  "/proc/kcore",
  "/proc/keys",
  "/proc/latency_stats",
  "/proc/timer_list",
  "/proc/timer_stats",
  "/proc/sched_debug",
  "/proc/scsi",
  "/sys/firmware",
];

const READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/** The character devices every container may use (docker's defaults). */
const ALLOWED_DEVICES: { type: string; major: number; minor: number }[] = [
  { type: "c", major: 1, minor: 3 }, // null
  { type: "c", major: 1, minor: 5 }, // zero
  { type: "c", major: 1, minor: 7 }, // full
  { type: "c", major: 1, minor: 8 }, // random
  { type: "c", major: 1, minor: 9 }, // urandom
  { type: "c", major: 5, minor: 0 }, // tty
  { type: "c", major: 5, minor: 1 }, // console
  { type: "c", major: 5, minor: 2 }, // ptmx
  { type: "c", major: 136, minor: -1 }, // pts
];

/** CPU quota per 100 ms period, as docker turns --cpus into one. */
const CPU_PERIOD_US = 100_000;

export function processSpec(input: Pick<SpecInput, "args" | "env" | "cwd" | "user" | "terminal">): object {
  const caps = [...DEFAULT_CAPABILITIES];
  return {
    terminal: input.terminal,
    user: { uid: input.user.uid, gid: input.user.gid, additionalGids: input.user.additionalGids ?? [] },
    args: input.args,
    env: input.env,
    cwd: input.cwd,
    capabilities: { bounding: caps, effective: caps, permitted: caps },
    noNewPrivileges: false,
  };
}

function defaultMounts(): object[] {
  return [
    { destination: "/proc", type: "proc", source: "proc", options: ["nosuid", "noexec", "nodev"] },
    {
      destination: "/dev",
      type: "tmpfs",
      source: "tmpfs",
      options: ["nosuid", "strictatime", "mode=755", "size=65536k"],
    },
    {
      destination: "/dev/pts",
      type: "devpts",
      source: "devpts",
      options: ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
    },
    { destination: "/sys", type: "sysfs", source: "sysfs", options: ["nosuid", "noexec", "nodev", "ro"] },
    { destination: "/dev/mqueue", type: "mqueue", source: "mqueue", options: ["nosuid", "noexec", "nodev"] },
    {
      destination: "/dev/shm",
      type: "tmpfs",
      source: "shm",
      options: ["nosuid", "noexec", "nodev", "mode=1777", "size=67108864"],
    },
  ];
}

function resources(input: SpecInput): object {
  const out: Record<string, unknown> = {
    devices: [
      { allow: false, access: "rwm" },
      ...ALLOWED_DEVICES.map((d) => ({ allow: true, type: d.type, major: d.major, minor: d.minor, access: "rwm" })),
    ],
  };
  if (input.memoryBytes > 0) out.memory = { limit: input.memoryBytes };
  if (input.nanoCpus > 0)
    out.cpu = { quota: Math.round((input.nanoCpus * CPU_PERIOD_US) / 1e9), period: CPU_PERIOD_US };
  return out;
}

/** The container's OCI runtime spec (runtime-spec 1.0). */
export function containerSpec(input: SpecInput): object {
  const hostNet = input.netnsPath === null;
  const mounts: object[] = defaultMounts();
  for (const f of ["resolv.conf", "hosts", "hostname"]) {
    // With the host's network a container sees the host's files (docker's rule), as the host image does.
    const source = hostNet ? (f === "hostname" ? undefined : `/etc/${f}`) : join(input.dir, f);
    if (source && !(hostNet && input.readonlyRootfs)) {
      mounts.push({ destination: `/etc/${f}`, type: "bind", source, options: ["rbind", "rprivate"] });
    }
  }
  for (const b of input.binds) {
    const options = ["rbind", "rprivate", ...(b.readonly ? ["ro"] : [])];
    mounts.push({ destination: b.destination, type: "bind", source: b.source, options });
  }
  // The host's network comes with the host's name (no UTS namespace of its own), as in docker.
  const namespaces: object[] = [{ type: "pid" }, { type: "ipc" }, { type: "mount" }];
  if (!hostNet) namespaces.push({ type: "uts" }, { type: "network", path: input.netnsPath });
  return {
    ociVersion: "1.0.2",
    process: processSpec(input),
    root: { path: "rootfs", readonly: input.readonlyRootfs },
    ...(hostNet ? {} : { hostname: input.hostname }),
    mounts,
    linux: {
      resources: resources(input),
      cgroupsPath: `/shoal/${input.id}`,
      namespaces,
      maskedPaths: MASKED_PATHS,
      readonlyPaths: READONLY_PATHS,
    },
  };
}

export const SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
export const PROCESS_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process";

/** A spec as containerd takes it: JSON under its type URL. */
export function specAny(typeUrl: string, spec: object): { typeUrl: string; value: Buffer } {
  return { typeUrl, value: Buffer.from(JSON.stringify(spec)) };
}
