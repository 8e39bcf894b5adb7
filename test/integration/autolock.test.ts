// Issue 9, item 6: autolock, with real shoald processes on loopback driven by the real docker CLI.
// Three managers: autolock turned on (every manager seals its raft key under the unlock key), a manager
// restarted is locked until `docker swarm unlock` is given the right key; the key rotated (every manager
// re-seals; the old key no longer opens a restarted one); autolock turned off (every manager back in
// clear, a restart is not locked). And `swarm init --autolock` on a single manager.
//
//   flock /tmp/shoal-heavy.lock npx vitest run test/integration/autolock.test.ts

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseUnlockKey } from "../../src/ca/unlockkey.js";
import { DataRoot } from "../../src/daemon/state.js";
import { buildOnce, Lab } from "./harness.js";

const LOCKED =
  'Error response from daemon: Swarm is encrypted and needs to be unlocked before it can be used. Please use "docker swarm unlock" to unlock it.';
const INVALID_KEY = "Error response from daemon: swarm could not be unlocked: invalid key provided";

function printedKey(key: string): string {
  return (
    "To unlock a swarm manager after it restarts, run the `docker swarm unlock`\n" +
    `command and provide the following key:\n\n    ${key}\n\n` +
    "Remember to store this key in a password manager, since without it you\n" +
    "will not be able to restart the manager.\n"
  );
}

let lab: Lab;

beforeAll(async () => {
  await buildOnce();
  lab = await Lab.create("autolock", 4);
}, 240_000);

afterAll(async () => {
  await lab?.close();
});

/** What daemon i's raft-dek and node key files hold. */
function atRest(i: number): { dek: { version: number; dek?: string; sealed?: string }; keySealed: boolean } {
  const certs = join(lab.dataRoot(i), "certificates");
  return {
    dek: JSON.parse(readFileSync(join(certs, "raft-dek"), "utf8")),
    keySealed: readFileSync(join(certs, "swarm-node.key"), "utf8").includes("ENCRYPTED PRIVATE KEY"),
  };
}

/** Does `key` open daemon i's sealed raft-dek? (A DataRoot of its own, reading the files as they are.) */
async function opens(i: number, key: string): Promise<boolean> {
  return new DataRoot(lab.dataRoot(i)).unlock(parseUnlockKey(key));
}

async function state(i: number): Promise<string> {
  return (await lab.info(i)).LocalNodeState;
}

describe("autolock with three managers", () => {
  let k1 = "";
  let k2 = "";

  it("swarm update --autolock=true prints the key once; every manager seals its keys under it", async () => {
    try {
      await lab.form(3, 0, "docker");
      const up = await lab.docker(1, "swarm", "update", "--autolock=true");
      expect(up.code, up.stderr).toBe(0);
      const m = /^ {4}(SWMKEY-1-\S+)$/m.exec(up.stdout);
      expect(m).not.toBeNull();
      k1 = m![1]!;
      expect(up.stdout).toBe(`Swarm updated.\n${printedKey(k1)}`);

      for (const i of [1, 2, 3]) {
        await lab.waitFor(() => atRest(i).dek.version === 2 && atRest(i).keySealed, 10_000, `node${i} sealed`);
        expect(atRest(i).dek.dek).toBeUndefined();
        expect(await opens(i, k1)).toBe(true);
      }
      // The key is shown by unlock-key (on any manager) and nowhere else.
      expect((await lab.must("docker", 2, "swarm", "unlock-key", "-q")).trim()).toBe(k1);
      expect((await lab.must("shoal", 2, "swarm", "unlock-key", "-q")).trim()).toBe(k1);
      expect(await lab.must("shoal", 3, "swarm", "unlock-key")).toBe(
        printedKey(k1).replace("docker swarm", "shoal swarm"),
      );
      expect(await lab.must("docker", 3, "swarm", "unlock-key")).toBe(printedKey(k1));
      for (const path of ["/v1.50/swarm", "/v1.50/info", "/v1.50/nodes"]) {
        const r = await lab.api(1, "GET", path);
        expect(JSON.stringify(r.json)).not.toContain(k1.slice(9));
      }
      const swarm = (await lab.api(1, "GET", "/v1.50/swarm")).json as {
        Spec: { EncryptionConfig: { AutoLockManagers: boolean } };
      };
      expect(swarm.Spec.EncryptionConfig.AutoLockManagers).toBe(true);
    } catch (e) {
      lab.dumpRelevant();
      throw e;
    }
  }, 120_000);

  it("a restarted manager is locked; a wrong key is refused, the right one unlocks it", async () => {
    try {
      await lab.restart(2);
      expect(await state(2)).toBe("locked");
      const info = await lab.docker(2, "info");
      expect(info.stdout).toMatch(/^ Swarm: locked$/m);
      const ls = await lab.docker(2, "node", "ls");
      expect(ls.code).toBe(1);
      expect(ls.stderr.trim()).toBe(LOCKED);
      // The others go on without it.
      expect((await lab.nodeMap(1)).get("node2")?.ManagerStatus).toBe("Unreachable");

      const garbage = await lab.dockerWithInput(2, "not-a-key\n", "swarm", "unlock");
      expect(garbage.code).toBe(1);
      expect(garbage.stderr.trim()).toBe("Error response from daemon: invalid key string");
      const wrong = await lab.dockerWithInput(2, `SWMKEY-1-${"A".repeat(42)}E\n`, "swarm", "unlock");
      expect(wrong.code).toBe(1);
      expect(wrong.stderr.trim()).toBe(INVALID_KEY);
      expect(await state(2)).toBe("locked");

      const right = await lab.dockerWithInput(2, `${k1}\n`, "swarm", "unlock");
      expect(right.code, right.stderr).toBe(0);
      expect(right.stdout).toBe("");
      expect(await state(2)).toBe("active");
      await lab.waitFor(
        async () => (await lab.nodeMap(2)).get("node2")?.ManagerStatus === "Reachable",
        15_000,
        "node2 back",
      );
      const again = await lab.dockerWithInput(2, `${k1}\n`, "swarm", "unlock");
      expect(again.stderr.trim()).toBe("Error: swarm is not locked");
    } catch (e) {
      lab.dumpRelevant();
      throw e;
    }
  }, 120_000);

  it("unlock-key --rotate: every manager re-seals; a restarted one opens with the new key only", async () => {
    try {
      const out = await lab.must("docker", 1, "swarm", "unlock-key", "--rotate");
      const m = /^ {4}(SWMKEY-1-\S+)$/m.exec(out);
      k2 = m![1]!;
      expect(k2).not.toBe(k1);
      expect(out).toBe(`Successfully rotated manager unlock key.\n${printedKey(k2)}`);
      for (const i of [1, 2, 3]) await lab.waitFor(() => opens(i, k2), 10_000, `node${i} re-sealed under the new key`);

      await lab.restart(3);
      expect(await state(3)).toBe("locked");
      const old = await lab.dockerWithInput(3, `${k1}\n`, "swarm", "unlock");
      expect(old.stderr.trim()).toBe(INVALID_KEY);
      // Our CLI, the same way.
      const wrongShoal = await lab.cliWithInput("shoal", 3, `${k1}\n`, "swarm", "unlock");
      expect(wrongShoal.stderr.trim()).toBe(INVALID_KEY);
      const right = await lab.cliWithInput("shoal", 3, `${k2}\n`, "swarm", "unlock");
      expect(right.code, right.stderr).toBe(0);
      await lab.waitFor(
        async () => (await lab.nodeMap(3)).get("node3")?.ManagerStatus === "Reachable",
        15_000,
        "node3 back",
      );
      // The cluster works with every manager: a write on the one just unlocked.
      await lab.must("docker", 3, "network", "create", "-d", "overlay", "after-unlock");
    } catch (e) {
      lab.dumpRelevant();
      throw e;
    }
  }, 120_000);

  it("--autolock=false unseals every manager; a restart is not locked", async () => {
    try {
      const out = await lab.must("docker", 1, "swarm", "update", "--autolock=false");
      expect(out).toBe("Swarm updated.\n");
      for (const i of [1, 2, 3]) {
        await lab.waitFor(() => atRest(i).dek.version === 1 && !atRest(i).keySealed, 10_000, `node${i} in clear`);
      }
      const none = await lab.docker(1, "swarm", "unlock-key");
      expect(none.code).toBe(1);
      expect(none.stderr.trim()).toBe("no unlock key is set");
      const rot = await lab.docker(1, "swarm", "unlock-key", "--rotate");
      expect(rot.stderr.trim()).toBe("cannot rotate because autolock is not turned on");

      await lab.restart(2);
      expect(await state(2)).toBe("active");
      await lab.waitFor(
        async () => (await lab.nodeMap(2)).get("node2")?.ManagerStatus === "Reachable",
        15_000,
        "node2 back",
      );
    } catch (e) {
      lab.dumpRelevant();
      throw e;
    }
  }, 120_000);
});

describe("swarm init --autolock", () => {
  it("prints the unlock key after the join hints, and the manager is locked after a restart", async () => {
    try {
      await lab.startDaemon(4);
      const r = await lab.docker(
        4,
        "swarm",
        "init",
        "--autolock",
        "--advertise-addr",
        lab.addr(4),
        "--listen-addr",
        lab.addr(4),
      );
      expect(r.code, r.stderr).toBe(0);
      const key = /^ {4}(SWMKEY-1-\S+)$/m.exec(r.stdout)![1]!;
      expect(
        r.stdout.endsWith(
          `To add a manager to this swarm, run 'docker swarm join-token manager' and follow the instructions.\n${printedKey(key)}`,
        ),
      ).toBe(true);
      await lab.waitFor(() => atRest(4).dek.version === 2, 10_000, "node4 sealed");

      await lab.restart(4);
      expect(await state(4)).toBe("locked");
      const leave = await lab.docker(4, "swarm", "leave");
      expect(leave.stderr.trim()).toBe(
        "Error response from daemon: Swarm is encrypted and locked. Please unlock it first or use `--force` to ignore this message.",
      );
      const ok = await lab.dockerWithInput(4, `${key}\n`, "swarm", "unlock");
      expect(ok.code, ok.stderr).toBe(0);
      await lab.waitFor(async () => (await lab.nodeLs(4)).length === 1, 15_000, "the single manager serving again");
    } catch (e) {
      lab.dumpRelevant();
      throw e;
    }
  }, 120_000);
});
