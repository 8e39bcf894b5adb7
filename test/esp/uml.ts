// Runs a job inside User-mode Linux: a Linux 6.1 kernel with ESP, AES-GCM and legacy iptables as modules
// (Debian's user-mode-linux package), running as an ordinary process on this machine. The build machines'
// own kernel has neither ESP nor GCM, so everything that needs them runs here.
//
// The guest's root is this machine's file system (hostfs), so node, iproute2 and the checkout are the same;
// test/esp/guest-init.sh mounts the guest's own /proc, /sys, /dev, /run and /tmp and loads the modules.
// A job is a directory under <repo>/.uml-jobs with `job.sh` (run with sh in the guest); the guest writes
// its output to the console (streamed here) and to `output`, and its exit status to `status`. Networks,
// namespaces, xfrm states and firewall rules made in the guest vanish with it.

import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const UML_BINARY = "/usr/bin/linux.uml";
export const UML_MODULES = "/usr/lib/uml/modules";

// test/esp/uml.ts (vitest) or dist/test/esp/uml.js (npm run bench:*): the repository holds package.json.
const here = dirname(fileURLToPath(import.meta.url));
export const REPO = [resolve(here, "..", ".."), resolve(here, "..", "..", "..")].find((d) =>
  existsSync(join(d, "package.json")),
)!;
const INIT = join(REPO, "test", "esp", "guest-init.sh");

export type UmlAvailability = { ok: true; moduleVersion: string } | { ok: false; reason: string };

/** Whether the UML kernel and its modules are installed (apt-get install user-mode-linux kmod). */
export function umlAvailable(): UmlAvailability {
  if (process.platform !== "linux") return { ok: false, reason: "User-mode Linux runs on Linux only" };
  if (!existsSync(UML_BINARY))
    return { ok: false, reason: `${UML_BINARY} is missing: install the user-mode-linux package (deploy/install.sh)` };
  const versions = existsSync(UML_MODULES) ? readdirSync(UML_MODULES) : [];
  if (versions.length === 0) return { ok: false, reason: `no kernel modules under ${UML_MODULES}` };
  if (!existsSync("/usr/sbin/modprobe") && !existsSync("/sbin/modprobe"))
    return { ok: false, reason: "modprobe is missing: install the kmod package" };
  return { ok: true, moduleVersion: versions.sort().at(-1)! };
}

export interface GuestOptions {
  /** Guest memory in MiB (default 3072). */
  memMb?: number;
  /** Kill the guest after this long (default 20 min). */
  timeoutMs?: number;
  /** Variables exported in the job's shell. */
  env?: Record<string, string>;
  /** Working directory of the job (default the repository). */
  cwd?: string;
  /** Each chunk of the guest's console as it arrives. */
  onOutput?: (chunk: string) => void;
  /** Keep the job directory (for a test that reads files the job wrote into it). */
  keepJobDir?: boolean;
}

export interface GuestResult {
  /** The job's exit status; null when the guest never reported one (see error). */
  status: number | null;
  /** The job's output (its standard output and error). */
  output: string;
  /** Everything the guest printed on its console, boot messages included. */
  console: string;
  /** Why there is no status: the guest did not boot, timed out or crashed. */
  error?: string;
  durationMs: number;
  /** The job directory (removed afterwards unless keepJobDir). */
  jobDir: string;
}

const shellQuote = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

/** Run `script` (sh) inside a fresh UML guest and wait for it to finish. */
export async function runInGuest(script: string, opts: GuestOptions = {}): Promise<GuestResult> {
  const avail = umlAvailable();
  if (!avail.ok) throw new Error(avail.reason);
  const jobDir = join(REPO, ".uml-jobs", `${Date.now()}-${randomBytes(4).toString("hex")}`);
  mkdirSync(jobDir, { recursive: true });
  const exports = Object.entries(opts.env ?? {})
    .map(([k, v]) => `export ${k}=${shellQuote(v)}`)
    .join("\n");
  writeFileSync(join(jobDir, "job.sh"), `${exports}\ncd ${shellQuote(opts.cwd ?? REPO)} || exit 125\n${script}\n`);
  const args = [
    `mem=${opts.memMb ?? 3072}M`,
    "rootfstype=hostfs",
    "rootflags=/",
    "rw",
    "quiet",
    "loglevel=3",
    `init=${INIT}`,
    `SHOAL_JOB=${jobDir}`,
    "con=null",
    "con0=fd:0,fd:1",
  ];
  const started = Date.now();
  // Its own process group, so a timeout kills the whole guest (UML runs as several host processes).
  const child = spawn(UML_BINARY, args, { stdio: ["ignore", "pipe", "pipe"], detached: true });
  let consoleText = "";
  const take = (d: Buffer) => {
    const s = d.toString("utf8");
    consoleText += s;
    opts.onOutput?.(s);
  };
  child.stdout!.on("data", take);
  child.stderr!.on("data", take);
  const timeoutMs = opts.timeoutMs ?? 20 * 60_000;
  const { timedOut, exit } = await waitExit(child, timeoutMs);
  const read = (f: string) => (existsSync(join(jobDir, f)) ? readFileSync(join(jobDir, f), "utf8") : undefined);
  const statusText = read("status");
  const status = statusText !== undefined && /^\d+\s*$/.test(statusText) ? Number(statusText) : null;
  const result: GuestResult = {
    status,
    output: read("output") ?? "",
    console: consoleText,
    durationMs: Date.now() - started,
    jobDir,
  };
  if (status === null) {
    const init = read("init-error")?.trim();
    result.error = timedOut
      ? `the guest did not finish within ${Math.round(timeoutMs / 1000)} s and was killed`
      : (init ?? `the guest stopped (${exit}) without reporting the job's exit status`);
  }
  if (!opts.keepJobDir) rmSync(jobDir, { recursive: true, force: true });
  return result;
}

function waitExit(child: ChildProcess, timeoutMs: number): Promise<{ timedOut: boolean; exit: string }> {
  return new Promise((resolveExit) => {
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup(child);
    }, timeoutMs);
    const onSignal = () => killGroup(child);
    process.once("exit", onSignal);
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      process.off("exit", onSignal);
      resolveExit({ timedOut, exit: signal ? `signal ${signal}` : `exit code ${code}` });
    });
    child.on("error", (e) => {
      clearTimeout(timer);
      process.off("exit", onSignal);
      resolveExit({ timedOut, exit: e.message });
    });
  });
}

function killGroup(child: ChildProcess): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, "SIGKILL");
  } catch {
    /* already gone */
  }
}

// ---- the ESP suite ---------------------------------------------------------------------------------------

/** One test of vitest's JSON report (the fields the host reads). */
export interface InnerTest {
  file: string;
  /** describe titles and the test's own, as vitest names it. */
  fullName: string;
  title: string;
  status: "passed" | "failed" | "skipped" | "pending" | "todo";
  durationMs: number;
  failureMessages: string[];
}

export interface SuiteOutcome {
  guest: GuestResult;
  /** Every test the guest ran, in report order; empty when there was no report. */
  tests: InnerTest[];
  /** Files that failed without a failed test (an import error, a failing beforeAll), with vitest's message. */
  brokenFiles: { file: string; message: string }[];
  /** Why there is no report, if there is none. */
  noReport?: string;
}

const STATUSES = new Set(["passed", "failed", "skipped", "pending", "todo"]);

/** vitest's JSON report -> the inner tests, checked field by field (it is a file the guest wrote). */
export function parseVitestReport(text: string): Pick<SuiteOutcome, "tests" | "brokenFiles"> {
  const r = JSON.parse(text) as unknown;
  if (typeof r !== "object" || r === null || !Array.isArray((r as { testResults?: unknown }).testResults))
    throw new Error("not a vitest JSON report (no testResults)");
  const tests: InnerTest[] = [];
  const brokenFiles: { file: string; message: string }[] = [];
  for (const f of (r as { testResults: unknown[] }).testResults) {
    const file = f as { name?: unknown; status?: unknown; message?: unknown; assertionResults?: unknown };
    const name = typeof file.name === "string" ? file.name.replace(`${REPO}/`, "") : "(unnamed file)";
    const results = Array.isArray(file.assertionResults) ? file.assertionResults : [];
    for (const a of results) {
      const t = a as Record<string, unknown>;
      const status =
        typeof t.status === "string" && STATUSES.has(t.status) ? (t.status as InnerTest["status"]) : "failed";
      tests.push({
        file: name,
        fullName: typeof t.fullName === "string" ? t.fullName : String(t.title ?? "(unnamed test)"),
        title: typeof t.title === "string" ? t.title : "(unnamed test)",
        status,
        durationMs: typeof t.duration === "number" ? t.duration : 0,
        failureMessages: Array.isArray(t.failureMessages) ? t.failureMessages.map(String) : [],
      });
    }
    const anyFailed = tests.some((t) => t.file === name && t.status === "failed");
    if (file.status === "failed" && !anyFailed)
      brokenFiles.push({ file: name, message: typeof file.message === "string" ? file.message : "failed to run" });
  }
  return { tests, brokenFiles };
}

/**
 * Boot a guest and run the ESP suite in it (vitest with test/esp/vitest.guest.config.ts; `files` and
 * `testNamePattern` (vitest's -t) narrow it), against the dist/ the host built. The guest's vitest writes its JSON report into the job directory.
 */
export async function runEspSuite(
  files: string[] = [],
  opts: GuestOptions = {},
  testNamePattern?: string,
): Promise<SuiteOutcome> {
  const report = "vitest-report.json";
  const quoted = [...files.map(shellQuote), ...(testNamePattern ? ["-t", shellQuote(testNamePattern)] : [])].join(" ");
  const guest = await runInGuest(
    `node node_modules/vitest/vitest.mjs run --config test/esp/vitest.guest.config.ts --reporter=default ` +
      `--reporter=json --outputFile.json="$SHOAL_JOB/${report}" ${quoted}`,
    {
      ...opts,
      keepJobDir: true,
      env: { SHOAL_PREBUILT: "1", SHOAL_CLI_TIMEOUT_MS: "240000", SHOAL_POLL_MS: "700", ...(opts.env ?? {}) },
    },
  );
  try {
    const path = join(guest.jobDir, report);
    if (!existsSync(path)) {
      return { guest, tests: [], brokenFiles: [], noReport: guest.error ?? "the guest's vitest wrote no report" };
    }
    return { guest, ...parseVitestReport(readFileSync(path, "utf8")) };
  } finally {
    if (!opts.keepJobDir) rmSync(guest.jobDir, { recursive: true, force: true });
  }
}
