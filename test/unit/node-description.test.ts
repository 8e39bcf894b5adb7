// What a node describes to the managers about its machine (src/daemon/info.ts: nodeDescription).

import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import os from "node:os";
import { afterEach, expect, test } from "vitest";
import { nodeDescription } from "../../src/daemon/info.js";

const TASKSET = "/usr/bin/taskset";
let restore: string | undefined;

afterEach(() => {
  if (restore !== undefined) execFileSync(TASKSET, ["-p", restore, String(process.pid)]);
  restore = undefined;
});

test.skipIf(!existsSync(TASKSET) || os.cpus().length < 2)(
  "NanoCPUs counts the CPUs the process may run on, as /info's NCPU (Docker: runtime.NumCPU)",
  () => {
    // This process's affinity mask (hex), put back after the test.
    restore = /: ([0-9a-f]+)\s*$/.exec(execFileSync(TASKSET, ["-p", String(process.pid)], { encoding: "utf8" }))?.[1];
    expect(restore).toBeDefined();
    execFileSync(TASKSET, ["-p", "1", String(process.pid)]);
    expect(os.availableParallelism()).toBe(1);
    const d = nodeDescription("host-1", undefined);
    expect(d.Resources.NanoCPUs).toBe(1e9);
    expect(d.Hostname).toBe("host-1");
  },
);
