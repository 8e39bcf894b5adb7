// The command shell: short commands (network namespaces, FIFOs) run by one shell shoald keeps, not each by a
// process forked from shoald (a fork stops shoald's event loop until the child has exec'd). Words reach the
// command as they are; exit codes and stderr come back as a spawn's; a missing program is named; a shell
// that died is started again.

import { readFileSync } from "node:fs";
import { afterEach, describe, expect, test } from "vitest";
import { CommandShell } from "../../src/runtime/sandbox.js";

/** The parent pid of a process (/proc/<pid>/stat's 4th field, after the command name in parentheses). */
function ppidOf(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
}

/** The process between this one and `pid` (its ancestor whose parent is this process). */
function childOfOurs(pid: number): number {
  let p = pid;
  for (let i = 0; i < 10 && p > 1; i++) {
    const parent = ppidOf(p);
    if (parent === process.pid) return p;
    p = parent;
  }
  throw new Error(`${pid} does not descend from this process`);
}

/** Runs a command that reports its parent's pid (the parent is alive while it runs) and returns our child above it. */
async function shellOf(shell: CommandShell): Promise<number> {
  const r = await shell.run(["sh", "-c", 'echo "$PPID $(cat /proc/$PPID/stat | cut -d" " -f4)" >&2']);
  expect(r.code).toBe(0);
  const [parent, grandparent] = r.stderr.trim().split(" ").map(Number) as [number, number];
  // The command's parent may be gone by now: its own parent is the shell or a subshell of it.
  return grandparent === process.pid ? parent : childOfOurs(grandparent);
}

describe("CommandShell", () => {
  let shell: CommandShell;
  afterEach(() => shell?.close());

  test("runs commands with their words as given, and reports their exit code and stderr", async () => {
    shell = new CommandShell();
    const word = 'a\'b "c" $HOME `id` * ; | && \\ ü';
    const r = await shell.run(["sh", "-c", 'printf "%s" "$1" >&2; exit 3', "sh", word]);
    expect(r).toEqual({ stdout: "", stderr: `${word}\n`, code: 3 });
    expect(await shell.run(["true"])).toEqual({ stdout: "", stderr: "", code: 0 });
    // Many at once: each gets its own result.
    const all = await Promise.all(Array.from({ length: 12 }, (_, i) => shell.run(["sh", "-c", `echo ${i} >&2`])));
    expect(all.map((x) => x.stderr)).toEqual(Array.from({ length: 12 }, (_, i) => `${i}\n`));
  });

  test("every command is run by the same shell, not by a process of its own from this one", async () => {
    shell = new CommandShell();
    const first = await shellOf(shell);
    const second = await shellOf(shell);
    expect(second).toBe(first);
    expect(readFileSync(`/proc/${first}/cmdline`, "utf8")).toMatch(/^\/bin\/sh\0-c\0while /);
  });

  test("a program that is not installed is named, with code 127", async () => {
    shell = new CommandShell();
    const r = await shell.run(["shoal-no-such-program", "x"]);
    expect(r.code).toBe(127);
    expect(r.missing).toMatch(/shoal-no-such-program is not installed/);
  });

  test("a shell that died is started again; the command it ran is reported failed", async () => {
    shell = new CommandShell();
    const pid = await shellOf(shell);
    const killed = shell.run(["sleep", "1"]);
    process.kill(pid, "SIGKILL");
    const r = await killed;
    expect(r.code).toBe(127);
    expect(r.stderr).toMatch(/the command shell exited/);
    expect(await shell.run(["true"])).toEqual({ stdout: "", stderr: "", code: 0 });
    expect(await shellOf(shell)).not.toBe(pid);
  });
});
