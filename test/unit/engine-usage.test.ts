// src/engine: the routes of rename, pause/unpause, stats, the prunes and system df, over raw HTTP against
// a recording container backend: what the runtime is asked (the query decoded), and bad input refused in
// dockerd's words before the runtime hears of it.

import { mkdtemp, rm } from "node:fs/promises";
import { request as httpRequest } from "node:http";
import os from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, test } from "vitest";
import { MAX_PENDING_EVENTS } from "../../src/engine/routes/events.js";
import { EngineServer } from "../../src/engine/server.js";
import type { ContainerBackend, SwarmBackend } from "../../src/engine/types.js";
import { EventLog } from "../../src/runtime/events.js";
import type { ContainerPruneFilter, ContainerStatsJSON } from "../../src/runtime/types.js";

let dir: string;
let sock: string;
let server: EngineServer | undefined;
let calls: unknown[][];

const swarm = {
  hostname: () => "testhost",
  swarmInfo: async () => ({ LocalNodeState: "inactive", ControlAvailable: false }),
} as unknown as SwarmBackend;

/** Only the calls these routes make; each recorded with its arguments. */
const containers = {
  containerRename: async (ref: string, name: string) => void calls.push(["rename", ref, name]),
  containerPause: async (ref: string) => void calls.push(["pause", ref]),
  containerUnpause: async (ref: string) => void calls.push(["unpause", ref]),
  containerPrune: async (f: ContainerPruneFilter) => {
    calls.push(["prune", f.untilMs !== undefined, f.labels({ tier: "a" }), f.labels({ tier: "b" })]);
    return { deleted: ["c1"], reclaimedBytes: 4096 };
  },
  containerStats: async (ref: string, opts: { stream: boolean; oneShot: boolean }) => {
    calls.push(["stats", ref, opts]);
    const sample = { name: `/${ref}`, id: "x" } as ContainerStatsJSON;
    return {
      samples: (async function* () {
        yield sample;
        if (opts.stream) yield sample;
      })(),
      cancel: () => undefined,
    };
  },
  containerList: async () => [],
  events: new EventLog(),
  containerCounts: () => ({ total: 0, running: 0, paused: 0, stopped: 0 }),
} as unknown as ContainerBackend;

function call(method: string, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ socketPath: sock, method, path, agent: false }, (res) => {
      let body = "";
      res.on("data", (c: Buffer) => {
        body += c.toString("utf8");
      });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on("error", reject);
    req.end();
  });
}

const refused = (message: string, status = 400) => ({ status, body: `${JSON.stringify({ message })}\n` });
const q = (filters: object) => encodeURIComponent(JSON.stringify(filters));

beforeEach(async () => {
  calls = [];
  dir = await mkdtemp(join(os.tmpdir(), "shoal-engine-usage-"));
  sock = join(dir, "shoald.sock");
  server = await EngineServer.listen({ socketPath: sock, backend: swarm, containers });
});

afterEach(async () => {
  await server?.close();
  server = undefined;
  await rm(dir, { recursive: true, force: true });
});

describe("rename, pause, unpause, stats", () => {
  test("rename passes the new name (absent: empty, the runtime's words); pause and unpause answer 204", async () => {
    expect((await call("POST", "/v1.50/containers/a/rename?name=b")).status).toBe(204);
    expect((await call("POST", "/v1.50/containers/a/rename")).status).toBe(204);
    expect((await call("POST", "/v1.50/containers/a/pause")).status).toBe(204);
    expect((await call("POST", "/v1.50/containers/a/unpause")).status).toBe(204);
    expect(await call("POST", `/v1.50/containers/a/rename?name=${"x".repeat(300)}`)).toEqual(
      refused("invalid value for name: longer than 256 characters"),
    );
    expect(calls).toEqual([
      ["rename", "a", "b"],
      ["rename", "a", ""],
      ["pause", "a"],
      ["unpause", "a"],
    ]);
  });

  test("stats: stream by default, one JSON sample a line; stream and one-shot together refused", async () => {
    const streamed = await call("GET", "/v1.50/containers/w/stats");
    expect(streamed.body).toBe('{"name":"/w","id":"x"}\n{"name":"/w","id":"x"}\n');
    expect((await call("GET", "/v1.50/containers/w/stats?stream=0")).body).toBe('{"name":"/w","id":"x"}\n');
    await call("GET", "/v1.50/containers/w/stats?stream=false&one-shot=1");
    expect(await call("GET", "/v1.50/containers/w/stats?stream=1&one-shot=1")).toEqual(
      refused("cannot have stream=true and one-shot=true"),
    );
    expect(calls).toEqual([
      ["stats", "w", { stream: true, oneShot: false }],
      ["stats", "w", { stream: false, oneShot: false }],
      ["stats", "w", { stream: false, oneShot: true }],
    ]);
  });
});

describe("prune and system df", () => {
  test("container prune: until and label filters reach the runtime; other keys refused", async () => {
    const r = await call("POST", `/v1.50/containers/prune?filters=${q({ label: ["tier=a"], until: ["1h"] })}`);
    expect(r).toEqual({ status: 200, body: '{"ContainersDeleted":["c1"],"SpaceReclaimed":4096}\n' });
    expect(calls).toEqual([["prune", true, true, false]]);
    expect(await call("POST", `/v1.50/containers/prune?filters=${q({ color: ["red"] })}`)).toEqual(
      refused("invalid filter 'color'"),
    );
    expect(await call("POST", `/v1.50/containers/prune?filters=${q({ until: ["soon"] })}`)).toEqual(
      refused('failed to parse value as time or duration: "soon"'),
    );
    expect(calls).toHaveLength(1);
  });

  test("image prune's dangling filter, system df's types and build prune, in dockerd's words", async () => {
    expect(await call("POST", `/v1.50/images/prune?filters=${q({ dangling: ["maybe"] })}`)).toEqual(
      refused("invalid filter 'dangling=maybe'"),
    );
    // No image service here: the filters were checked first, then the 503.
    expect((await call("POST", `/v1.50/images/prune?filters=${q({ dangling: ["false"] })}`)).status).toBe(503);
    expect(await call("GET", "/v1.50/system/df?type=image&type=disks")).toEqual(refused("unknown object type: disks"));
    expect(await call("GET", "/v1.50/system/df?type=container&type=volume")).toEqual({
      status: 200,
      body: '{"Containers":[],"Volumes":[]}\n',
    });
    expect(await call("POST", "/v1.50/build/prune?all=1")).toEqual({
      status: 200,
      body: '{"CachesDeleted":null,"SpaceReclaimed":0}\n',
    });
  });
});

describe("events", () => {
  test("replayed between since and until, filtered by type, event and container name or id", async () => {
    const log = containers.events!;
    const since = Date.now() / 1000 - 1;
    log.emit("container", "create", "c0ffee", { name: "web", image: "busybox" });
    log.emit("container", "start", "c0ffee", { name: "web", image: "busybox" });
    log.emit("image", "tag", "sha256:1", { name: "x:1" });
    log.emit("network", "create", "n1", { name: "ov", type: "overlay" });
    const until = Date.now() / 1000 + 1;
    const get = async (filters: object) => {
      const r = await call("GET", `/v1.50/events?since=${since}&until=${until}&filters=${q(filters)}`);
      return r.body
        .trim()
        .split("\n")
        .filter(Boolean)
        .map((l) => {
          const e = JSON.parse(l) as { Type: string; Action: string; Actor: { ID: string } };
          return `${e.Type} ${e.Action} ${e.Actor.ID}`;
        });
    };
    expect(await get({})).toEqual([
      "container create c0ffee",
      "container start c0ffee",
      "image tag sha256:1",
      "network create n1",
    ]);
    expect(await get({ container: ["web"], event: ["start"] })).toEqual(["container start c0ffee"]);
    expect(await get({ type: ["network", "image"] })).toEqual(["image tag sha256:1", "network create n1"]);
    expect(await get({ image: ["busybox"], type: ["container"] })).toHaveLength(2);
    expect(await call("GET", `/v1.50/events?filters=${q({ colour: ["red"] })}`)).toEqual(
      refused("invalid filter 'colour'"),
    );
    expect(await call("GET", `/v1.50/events?since=${until}&until=${since}`)).toEqual(
      refused("`since` time must be before `until`"),
    );
  });

  test("a client that does not read: its stream ends once MAX_PENDING_EVENTS wait, instead of growing shoald", async () => {
    const log = containers.events!;
    const big = "x".repeat(4096);
    const ended = await new Promise<{ lines: number }>((resolve, reject) => {
      const req = httpRequest({ socketPath: sock, method: "GET", path: "/v1.50/events", agent: false }, (res) => {
        res.pause();
        // Far more than the socket buffers hold, while the client reads nothing.
        for (let i = 0; i < MAX_PENDING_EVENTS + 2000; i++) log.emit("container", "start", `c${i}`, { big });
        setTimeout(() => {
          let lines = 0;
          res.on("data", (c: Buffer) => {
            for (const b of c) if (b === 10) lines++;
          });
          res.on("end", () => resolve({ lines }));
          res.resume();
        }, 100);
      });
      req.on("error", reject);
      req.end();
    });
    expect(ended.lines).toBeLessThan(MAX_PENDING_EVENTS + 2000);
  });
});
