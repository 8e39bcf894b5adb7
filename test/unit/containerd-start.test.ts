// shoald --containerd SOCK: a containerd that is not there is refused at once, in one line with the fix; one
// whose socket is there but that answers late (a loaded machine, or a containerd still starting) is waited
// for instead of refused after the first two seconds.

import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { createServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import pino from "pino";
import { describe, expect, it } from "vitest";
import type { Containerd } from "../../src/runtime/containerd/client.js";
import { answers, ContainerdSupervisor } from "../../src/runtime/containerd/supervisor.js";
import { CAN_RUN_CONTAINERS, testContainerd } from "./runtime-fixtures.js";

const given = (dir: string, socket: string) =>
  new ContainerdSupervisor({
    socket,
    dataRoot: join(dir, "shoald-data"),
    execRoot: join(dir, "shoald-run"),
    logger: pino({ level: "silent" }),
  });

describe("a given containerd (shoald --containerd)", () => {
  it("with no socket there is refused at once, saying how to fix it", async () => {
    const dir = mkdtempSync(join(tmpdir(), "shoal-ctd-"));
    try {
      const sock = join(dir, "nothing.sock");
      const t0 = Date.now();
      await expect(given(dir, sock).start()).rejects.toThrow(
        `containerd is not available at ${sock} (it does not answer): start containerd (systemctl start containerd) or leave out --containerd`,
      );
      expect(Date.now() - t0).toBeLessThan(10_000);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it.skipIf(!CAN_RUN_CONTAINERS)(
    "whose socket is there but says nothing for 3 s, then answers, is waited for",
    async () => {
      const dir = mkdtempSync(join(tmpdir(), "shoal-ctd-"));
      // The socket a containerd of the test's own (testContainerd(dir)) listens on.
      const sock = join(dir, "run", "containerd", "containerd.sock");
      mkdirSync(dirname(sock), { recursive: true });
      const conns = new Set<Socket>();
      const silent = createServer((c) => void conns.add(c));
      await new Promise<void>((r) => silent.listen(sock, r));
      let client: Containerd | undefined;
      let real: Awaited<ReturnType<typeof testContainerd>> | undefined;
      try {
        const started = given(dir, sock).start();
        await new Promise((r) => setTimeout(r, 3000));
        // The silent one goes; a real containerd takes its socket.
        for (const c of conns) c.destroy();
        await new Promise<void>((r) => silent.close(() => r()));
        rmSync(sock, { force: true });
        real = await testContainerd(dir);
        client = await started;
        expect(await answers(client, 5000)).toMatch(/^1\./);
      } finally {
        client?.close();
        await real?.stop();
        silent.close();
        rmSync(dir, { recursive: true, force: true });
      }
    },
    60_000,
  );
});
