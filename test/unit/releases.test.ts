// Endpoint releases are never dropped: one the managers do not acknowledge is retried until they do.
import pino from "pino";
import { describe, expect, it } from "vitest";
import { EndpointReleases } from "../../src/agent/releases.js";

const log = pino({ level: "silent" });

async function until(pred: () => boolean, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe("EndpointReleases", () => {
  it("gives an endpoint back at once when the managers take it", async () => {
    const sent: string[] = [];
    const r = new EndpointReleases(async (id) => void sent.push(id), log);
    await r.release("ep1");
    expect(sent).toEqual(["ep1"]);
    expect(r.waiting()).toEqual([]);
    r.close();
  });

  it("keeps a release that failed and retries it until the managers acknowledge it", async () => {
    let failures = 2;
    const acknowledged: string[] = [];
    const r = new EndpointReleases(async (id) => {
      if (failures-- > 0) throw new Error("this node has no session with a manager yet");
      acknowledged.push(id);
    }, log);
    await expect(r.release("ep1")).resolves.toBeUndefined();
    expect(r.waiting()).toEqual(["ep1"]);
    await until(() => r.waiting().length === 0, 5000);
    expect(acknowledged).toEqual(["ep1"]);
    r.close();
  });

  it("stops retrying once closed", async () => {
    let calls = 0;
    const r = new EndpointReleases(async () => {
      calls++;
      throw new Error("no session");
    }, log);
    await r.release("ep1");
    r.close();
    await new Promise((res) => setTimeout(res, 600));
    expect(calls).toBe(1);
    expect(r.waiting()).toEqual(["ep1"]);
  });
});
