// Process spawning for the data plane. Every command that touches the kernel goes through one injectable
// Runner, so unit tests can record the rendered argv/stdin exactly and e2e tests can run them for real
// (inside a test "host" namespace, see netnsRunner).

import { spawn } from "node:child_process";

export interface RunResult {
  stdout: string;
  stderr: string;
  /** Exit code; 127 when the program could not be started, 128+N when killed by signal N. */
  code: number;
}

export interface RunOptions {
  /** Written to the process's standard input (e.g. an `ip -batch -` script). */
  stdin?: string;
}

export type Runner = (argv: string[], opts?: RunOptions) => Promise<RunResult>;

const SIGNALS: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGKILL: 9, SIGSEGV: 11, SIGPIPE: 13, SIGTERM: 15 };

/** The real runner: spawns argv[0] with the rest as arguments (no shell), LC_ALL=C for stable messages. */
export const spawnRunner: Runner = (argv, opts) =>
  new Promise((resolve) => {
    const stdin = opts?.stdin;
    const child = spawn(argv[0]!, argv.slice(1), {
      stdio: [stdin === undefined ? "ignore" : "pipe", "pipe", "pipe"],
      env: { ...process.env, LC_ALL: "C" },
    });
    let stdout = "";
    let stderr = "";
    let spawnError: Error | undefined;
    child.stdout!.setEncoding("utf8").on("data", (d: string) => {
      stdout += d;
    });
    child.stderr!.setEncoding("utf8").on("data", (d: string) => {
      stderr += d;
    });
    child.on("error", (err) => {
      spawnError = err;
    });
    child.on("close", (code, signal) => {
      if (spawnError && code === null) {
        resolve({ stdout, stderr: stderr + `${argv[0]}: ${spawnError.message}\n`, code: 127 });
        return;
      }
      resolve({ stdout, stderr, code: code ?? 128 + (signal ? (SIGNALS[signal] ?? 0) : 0) });
    });
    if (stdin !== undefined && child.stdin) {
      // A program that exits without reading all of its input must not crash us with EPIPE.
      child.stdin.on("error", () => {});
      child.stdin.end(stdin);
    }
  });

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
    super(`${argv.join(" ")} exited with code ${result.code}: ${detail}`);
    this.name = "CommandError";
  }
}

/** Run and throw CommandError on a non-zero exit. */
export async function mustRun(runner: Runner, argv: string[], opts?: RunOptions): Promise<RunResult> {
  const result = await runner(argv, opts);
  if (result.code !== 0) throw new CommandError(argv, result, opts?.stdin);
  return result;
}
