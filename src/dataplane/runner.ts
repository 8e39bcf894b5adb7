// Process spawning for the data plane. Every command that touches the kernel goes through one injectable
// Runner, so unit tests can record the rendered argv/stdin exactly and e2e tests can run them for real
// (inside a test "host" namespace, see netnsRunner).

import { spawn } from "node:child_process";
import { explainMissing } from "./programs.js";

export interface RunResult {
  stdout: string;
  stderr: string;
  /** Exit code; 127 when the program could not be started, 128+N when killed by signal N. */
  code: number;
  /**
   * Set when the program, or the one a wrapper (nsenter, unshare, setpriv) was to run, is not installed:
   * "nft is not installed: install the Debian package nftables (apt-get install nftables)". stderr says so too.
   */
  missing?: string;
}

export interface RunOptions {
  /** Written to the process's standard input (e.g. an `ip -batch -` script). */
  stdin?: string;
}

export type Runner = (argv: string[], opts?: RunOptions) => Promise<RunResult>;

const SIGNALS: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGKILL: 9, SIGSEGV: 11, SIGPIPE: 13, SIGTERM: 15 };

/**
 * A real runner: spawns argv[0] with the rest as arguments (no shell), LC_ALL=C for stable messages.
 * `path` replaces $PATH for the lookup and the child (tests; default: this process's PATH).
 */
export function makeSpawnRunner(opts: { path?: string } = {}): Runner {
  return (argv, runOpts) =>
    new Promise((resolve) => {
      const stdin = runOpts?.stdin;
      const env = { ...process.env, LC_ALL: "C", ...(opts.path !== undefined ? { PATH: opts.path } : {}) };
      const child = spawn(argv[0]!, argv.slice(1), {
        stdio: [stdin === undefined ? "ignore" : "pipe", "pipe", "pipe"],
        env,
      });
      let stdout = "";
      let stderr = "";
      let spawnError: Error | undefined;
      child.stdout?.setEncoding("utf8").on("data", (d: string) => {
        stdout += d;
      });
      child.stderr?.setEncoding("utf8").on("data", (d: string) => {
        stderr += d;
      });
      child.on("error", (err) => {
        spawnError = err;
      });
      child.on("close", (code, signal) => {
        // A program that could not be started closes with a negative errno (-2 for ENOENT), not an exit code.
        const status = spawnError ? 127 : (code ?? 128 + (signal ? (SIGNALS[signal] ?? 0) : 0));
        const missing = status === 127 ? explainMissing(argv[0]!, spawnError, stderr) : undefined;
        if (missing !== undefined) resolve({ stdout, stderr: `${missing}\n`, code: 127, missing });
        else if (spawnError) resolve({ stdout, stderr: `${stderr}${argv[0]}: ${spawnError.message}\n`, code: 127 });
        else resolve({ stdout, stderr, code: status });
      });
      if (stdin !== undefined && child.stdin) {
        // A program that exits without reading all of its input must not crash us with EPIPE.
        child.stdin.on("error", () => {});
        child.stdin.end(stdin);
      }
    });
}

/** The real runner, on this process's PATH. */
export const spawnRunner: Runner = makeSpawnRunner();

/**
 * A runner whose commands run in the network namespace at `netnsPath` (via `nsenter --net=`), e.g. a
 * test "host". Commands whose effect does not depend on the calling network namespace are passed through
 * unchanged, since a wrapping nsenter would only cost a process: `nsenter --net=/abs ...` (a namespace file
 * names the same namespace from anywhere), `unshare --net=/abs ...` (a new namespace is new wherever it is
 * made) and `umount` (mounts belong to the mount namespace, which nsenter --net does not change).
 */
export function netnsRunner(base: Runner, netnsPath: string): Runner {
  return (argv, opts) => {
    const byPath = (argv[0] === "nsenter" || argv[0] === "unshare") && argv[1]?.startsWith("--net=/");
    if (byPath || argv[0] === "umount") return base(argv, opts);
    return base(["nsenter", `--net=${netnsPath}`, ...argv], opts);
  };
}

/** A command that exited non-zero. The message says which command and what it printed. */
export class CommandError extends Error {
  constructor(
    readonly argv: string[],
    readonly result: RunResult,
    readonly stdin?: string,
  ) {
    const detail = result.stderr.trim() || result.stdout.trim() || "no output";
    super(result.missing ?? `${argv.join(" ")} exited with code ${result.code}: ${detail}`);
    this.name = "CommandError";
  }
}

/** Run and throw CommandError on a non-zero exit. */
export async function mustRun(runner: Runner, argv: string[], opts?: RunOptions): Promise<RunResult> {
  const result = await runner(argv, opts);
  if (result.code !== 0) throw new CommandError(argv, result, opts?.stdin);
  return result;
}

/** "what failed (exit N): the stderr lines, joined": how a failed command is reported. */
export function commandFailure(what: string, stderr: string, code: number): string {
  const detail = stderr
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "")
    .join("; ");
  return `${what} failed (exit ${code}): ${detail || "no output"}`;
}
