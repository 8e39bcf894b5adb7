// Helpers the end-to-end tests share: build once, run the shoal and docker CLIs against a lab host's
// daemon, wait for a condition, and see what a host holds under its exec root.

import { execFile } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import type { LabHost } from "../../deploy/lab.js";

export const run = promisify(execFile);
export const isRoot = process.getuid?.() === 0;
export const cli = join(process.cwd(), "dist", "cli", "main.js");
/** How long one CLI command may take (SHOAL_CLI_TIMEOUT_MS: the User-mode Linux guest is far slower). */
const CLI_TIMEOUT_MS = Number(process.env.SHOAL_CLI_TIMEOUT_MS) || 60_000;
/** How often waitFor tries again (SHOAL_POLL_MS: in the guest every try costs processes on its one CPU). */
const POLL_MS = Number(process.env.SHOAL_POLL_MS) || 100;

export async function build(): Promise<void> {
  // Inside the User-mode Linux guest the host has built already (test/esp/esp.test.ts), and a build there
  // would cost minutes.
  if (process.env.SHOAL_PREBUILT === "1" && existsSync(cli)) return;
  await run("npm", ["run", "build", "--silent"], { timeout: 180_000 }).catch(
    (e: { stdout?: string; stderr?: string }) => {
      // Type errors elsewhere still emit dist/; what we run must exist.
      if (!existsSync(cli)) throw new Error(`build failed: ${e.stdout ?? ""}${e.stderr ?? ""}`);
    },
  );
}

export async function shoal(h: LabHost, ...args: string[]): Promise<{ stdout: string; stderr: string; code: number }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [cli, "-H", `unix://${h.socket}`, ...args], {
      timeout: CLI_TIMEOUT_MS,
    });
    return { stdout, stderr, code: 0 };
  } catch (e) {
    const x = e as { stdout?: string; stderr?: string; code?: number; killed?: boolean };
    const killed = x.killed ? `(killed after ${CLI_TIMEOUT_MS} ms)\n` : "";
    return { stdout: x.stdout ?? "", stderr: killed + (x.stderr ?? ""), code: typeof x.code === "number" ? x.code : 1 };
  }
}

export async function ok(h: LabHost, ...args: string[]): Promise<string> {
  const r = await shoal(h, ...args);
  if (r.code !== 0) throw new Error(`shoal ${args.join(" ")} on ${h.name} failed (${r.code}): ${r.stderr}${r.stdout}`);
  return r.stdout;
}

export async function docker(h: LabHost, ...args: string[]): Promise<{ stdout: string; stderr: string; code: number }> {
  try {
    const { stdout, stderr } = await run("docker", ["-H", `unix://${h.socket}`, ...args], {
      timeout: CLI_TIMEOUT_MS,
      env: { ...process.env, DOCKER_CONFIG: join(h.dir, "docker-config") },
    });
    return { stdout, stderr, code: 0 };
  } catch (e) {
    const x = e as { stdout?: string; stderr?: string; code?: number };
    return { stdout: x.stdout ?? "", stderr: x.stderr ?? "", code: typeof x.code === "number" ? x.code : 1 };
  }
}

/** Every file under <exec-root>/netns: overlay namespaces ("1-...") and container namespaces (12 hex). */
export function netnsFiles(h: LabHost): string[] {
  const dir = join(h.execRoot, "netns");
  if (!existsSync(dir)) return [];
  return readdirSync(dir).sort();
}

/** The overlay namespaces a host holds, as `ls <exec-root>/netns` shows them. */
export function overlayNamespaces(h: LabHost): string[] {
  return netnsFiles(h).filter((n) => n.startsWith("1-"));
}

export async function waitFor<T>(
  what: string,
  f: () => Promise<T | undefined | false> | T | undefined | false,
  ms = 20_000,
): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}
