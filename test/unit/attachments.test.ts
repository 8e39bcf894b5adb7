// The agent's Attachments: an attach that fails after the managers allocated the endpoint undoes it the
// one way an endpoint leaves, and gives the address back over the session; a detach does the same.
import pino from "pino";
import { describe, expect, it } from "vitest";
import { Attachments } from "../../src/agent/attachments.js";
import type { OverlayHost } from "../../src/agent/overlays.js";
import type { Firewall } from "../../src/dataplane/firewall.js";

const NET_ID = "n".repeat(25);
const NODE_ID = "a".repeat(25);
const EP_ID = "e".repeat(64);
const CONTAINER_ID = "c".repeat(64);

const network = {
  id: NET_ID,
  spec: {
    name: "front",
    driver: "overlay",
    internal: true,
    attachable: true,
    ingress: false,
    options: {},
    labels: {},
  },
  alloc: { subnet: "10.0.1.0/24", gateway: "10.0.1.1", vni: 4097, nextHost: 3, used: {} },
  createdAt: "2026-01-01T00:00:00Z",
  version: 5,
};
const endpoint = {
  id: EP_ID,
  networkId: NET_ID,
  nodeId: NODE_ID,
  containerId: CONTAINER_ID,
  containerName: "web",
  aliases: [],
  ip: "10.0.1.2",
  mac: "02:42:0a:00:01:02",
  version: 6,
};

type Cb = (err: Error | null, res?: unknown) => void;

/** A dispatcher client as the agent's session has one: Attach answers with the endpoint; Detach records. */
function fakeSession() {
  const detached: string[] = [];
  const client = {
    attach: (_req: unknown, _md: unknown, _opts: unknown, cb: Cb) =>
      cb(null, {
        endpointJson: JSON.stringify(endpoint),
        network: { networkJson: JSON.stringify(network), endpoints: [] },
        networkKeysJson: "",
      }),
    detach: (req: { endpointId: string }, _md: unknown, _opts: unknown, cb: Cb) => {
      detached.push(req.endpointId);
      cb(null, {});
    },
  };
  return { client, detached };
}

function fakeHost(attachError: Error | undefined) {
  const calls: string[] = [];
  const host = {
    dataplane: {
      attach: async () => {
        calls.push("attach");
        if (attachError) throw attachError;
      },
      detach: async () => void calls.push("detach"),
      setPeers: async () => void calls.push("setPeers"),
    },
    ipsec: { status: () => ({ guardedVnis: [], peers: [] }), sync: async () => undefined, close: () => undefined },
  };
  return { host: host as unknown as OverlayHost, calls };
}

/** The DNS server's part (its sockets need a real namespace): which containers it serves. */
function fakeDns() {
  const served = new Set<string>();
  return {
    served,
    addContainer: async (id: string) => void served.add(id),
    removeContainer: async (id: string) => void served.delete(id),
    close: async () => undefined,
  };
}

function attachments(session: ReturnType<typeof fakeSession>, host: OverlayHost, dns = fakeDns()) {
  return new Attachments({
    nodeId: () => NODE_ID,
    session: () => session.client as never,
    host: () => host,
    probe: async () => ({ supported: true }) as never,
    firewall: {} as Firewall,
    logger: pino({ level: "silent" }),
    sessionWaitMs: 100,
    dns,
  });
}

const container = { id: CONTAINER_ID, name: "web", netnsPath: "/run/shoal/netns/cccccccccccc", ifname: "eth0" };

describe("Attachments", () => {
  it("undoes an attach whose overlay could not be wired, and gives the endpoint back", async () => {
    const session = fakeSession();
    const { host, calls } = fakeHost(new Error("container network namespace does not exist"));
    const a = attachments(session, host);
    await expect(a.attach(container, "front", {})).rejects.toThrow(
      "could not attach to network front: container network namespace does not exist",
    );
    expect(calls).toEqual(["attach", "detach"]);
    expect(session.detached).toEqual([EP_ID]);
    expect(a.heldNetworks()).toEqual([]);
    await a.close(host);
  });

  it("gives the endpoint back on a detach, and holds the network no more", async () => {
    const session = fakeSession();
    const { host } = fakeHost(undefined);
    const dns = fakeDns();
    const a = attachments(session, host, dns);
    const ep = await a.attach(container, "front", {});
    expect(dns.served.has(CONTAINER_ID)).toBe(true);
    expect(ep).toMatchObject({ networkId: NET_ID, endpointId: EP_ID, ip: "10.0.1.2", prefixLen: 24 });
    expect(a.heldNetworks().map((h) => h.network.spec.name)).toEqual(["front"]);
    await a.detach(container, ep);
    expect(dns.served.has(CONTAINER_ID)).toBe(false);
    expect(session.detached).toEqual([EP_ID]);
    expect(a.heldNetworks()).toEqual([]);
    await a.close(host);
  });

  it("refuses at once, allocating nothing, while the node has no session", async () => {
    const { host, calls } = fakeHost(undefined);
    const a = new Attachments({
      nodeId: () => NODE_ID,
      session: () => undefined,
      host: () => host,
      probe: async () => ({ supported: true }) as never,
      firewall: {} as Firewall,
      logger: pino({ level: "silent" }),
      sessionWaitMs: 100,
    });
    await expect(a.attach(container, "front", {})).rejects.toThrow("this node has no session with a manager yet");
    expect(calls).toEqual([]);
    await a.close(host);
  });

  it("outside a swarm, a network is not found, in dockerd's words", async () => {
    const { host, calls } = fakeHost(undefined);
    const a = new Attachments({
      nodeId: () => "",
      session: () => undefined,
      host: () => host,
      probe: async () => ({ supported: true }) as never,
      firewall: {} as Firewall,
      logger: pino({ level: "silent" }),
      sessionWaitMs: 100,
    });
    const err = await a.attach(container, "nonet", {}).catch((e: unknown) => e);
    expect(err).toMatchObject({ status: 404, message: "network nonet not found" });
    expect(calls).toEqual([]);
    await a.close(host);
  });
});
