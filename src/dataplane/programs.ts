// The external programs shoal runs, and the Debian package that provides each. shoald checks for them at
// start (one log line names every missing one and its package), and a program that turns out to be missing
// at run time is reported in the same words, never as a bare exit code.
//
// deploy/apt-packages.txt installs these packages; keep the two in step.

import { accessSync, constants as fsConstants } from "node:fs";
import { basename, join } from "node:path";

/** Program name -> the Debian package that provides it. */
export const DEBIAN_PACKAGES: Readonly<Record<string, string>> = {
  ip: "iproute2",
  bridge: "iproute2",
  nft: "nftables",
  // The firewall backend where nftables' inet family is missing (src/dataplane/firewall.ts).
  "iptables-legacy": "iptables",
  "iptables-legacy-save": "iptables",
  "iptables-legacy-restore": "iptables",
  nsenter: "util-linux",
  unshare: "util-linux",
  setpriv: "util-linux",
  umount: "mount",
  sysctl: "procps",
  mkfifo: "coreutils",
  true: "coreutils",
  // The layer applier (src/runtime/images/apply): whiteouts, devices and xattrs; where one is missing,
  // such a layer is left to containerd.
  mknod: "coreutils",
  setfattr: "attr",
  getfattr: "attr",
  // The mount mover (src/runtime/sandbox.ts); where it is missing, mount does the moves.
  perl: "perl-base",
  sh: "dash",
  ps: "procps",
  containerd: "containerd",
  "containerd-shim-runc-v2": "containerd",
  runc: "runc",
  // Not run by shoald itself, but by the demo and the benchmarks inside containers.
  ping: "iputils-ping",
  iperf3: "iperf3",
  // Test and demo images (busybox-static), the lab's registry and the pull benchmark's reference.
  busybox: "busybox-static",
  "docker-registry": "docker-registry",
  skopeo: "skopeo",
};

/** Every program shoald itself runs (src/dataplane, src/agent): what it checks for at start. */
export const SHOALD_PROGRAMS: readonly string[] = [
  "ip",
  "bridge",
  "nft",
  "nsenter",
  "unshare",
  "setpriv",
  "umount",
  "sysctl",
  "mkfifo",
  "true",
  "sh",
  "ps",
  "containerd",
  "runc",
  "containerd-shim-runc-v2",
];

const DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/** Where `name` would be run from on `pathEnv` (default: this process's PATH), or undefined. */
export function findOnPath(name: string, pathEnv: string = process.env.PATH ?? DEFAULT_PATH): string | undefined {
  for (const dir of pathEnv.split(":")) {
    if (dir === "") continue;
    const file = join(dir, name);
    try {
      accessSync(file, fsConstants.X_OK);
      return file;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** "nft is not installed: install the Debian package nftables (apt-get install nftables)". */
export function missingProgramMessage(program: string): string {
  const name = basename(program);
  const pkg = DEBIAN_PACKAGES[name];
  if (!pkg) return `${name} is not installed: it was not found on PATH`;
  return `${name} is not installed: install the Debian package ${pkg} (apt-get install ${pkg})`;
}

/** The programs of `names` that `lookup` does not find. */
export function missingPrograms(
  names: readonly string[] = SHOALD_PROGRAMS,
  lookup: (name: string) => string | undefined = (n) => findOnPath(n),
): string[] {
  return names.filter((n) => lookup(n) === undefined);
}

/**
 * One line for a set of missing programs: which, the package of each, and the command that installs them.
 * "missing programs: nft (Debian package nftables), ip (iproute2); install them with: apt-get install ...".
 */
export function missingProgramsLine(missing: readonly string[]): string {
  const parts = missing.map((n) => {
    const pkg = DEBIAN_PACKAGES[n];
    return pkg ? `${n} (Debian package ${pkg})` : `${n} (no known package)`;
  });
  const pkgs = [...new Set(missing.map((n) => DEBIAN_PACKAGES[n]).filter((p): p is string => p !== undefined))];
  const how = pkgs.length > 0 ? `; install them with: apt-get install ${pkgs.join(" ")}` : "";
  return `missing programs: ${parts.join(", ")}${how}`;
}

/** A logger with the one method the start-up check needs (pino's, say). */
export interface ProgramCheckLogger {
  error(obj: object, msg: string): void;
  debug(obj: object, msg: string): void;
}

/**
 * shoald's start-up check: logs ONE line naming every program of `names` that is missing and the Debian
 * package of each. Returns the missing programs (empty when all are there).
 */
export function checkPrograms(
  logger: ProgramCheckLogger,
  opts: { names?: readonly string[]; lookup?: (name: string) => string | undefined } = {},
): string[] {
  const missing = missingPrograms(opts.names ?? SHOALD_PROGRAMS, opts.lookup);
  if (missing.length === 0) logger.debug({ programs: opts.names ?? SHOALD_PROGRAMS }, "all external programs found");
  else logger.error({ missing }, missingProgramsLine(missing));
  return missing;
}

/**
 * The program a wrapper (nsenter, unshare, setpriv) could not find: they exit 127 saying
 * "nsenter: failed to execute nft: No such file or directory".
 */
function missingFromWrapperOutput(stderr: string): string | undefined {
  const m = /^(?:nsenter|unshare|setpriv): failed to execute (\S+): No such file or directory$/m.exec(stderr);
  return m?.[1];
}

/**
 * Why a spawn failed, in clear words when the program (or one a wrapper runs) is not installed; undefined
 * when the failure is something else.
 */
export function explainMissing(argv0: string, spawnError: unknown, stderr = ""): string | undefined {
  if ((spawnError as NodeJS.ErrnoException | undefined)?.code === "ENOENT") return missingProgramMessage(argv0);
  const inner = missingFromWrapperOutput(stderr);
  return inner === undefined ? undefined : missingProgramMessage(inner);
}
