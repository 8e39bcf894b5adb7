// The agent's Attachments: an attach that fails after the managers allocated the endpoint undoes it the
// one way an endpoint leaves, and gives the address back over the session; a detach does the same.
import pino from "pino";
import { afterEach, describe, expect, it, vi } from "vitest";
import { Attachments } from "../../src/agent/attachments.js";
import type { OverlayHost } from "../../src/agent/overlays.js";
import type { Firewall } from "../../src/dataplane/firewall.js";

const NET_ID = "n".repeat(25);
const NODE_ID = "a".repeat(25);
const EP_ID = "e".repeat(64);
const CONTAINER_ID = "c".repeat(64);
const GRACE_MS = 5000;

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

/**
 * A dispatcher client as the agent's session has one: Attach answers with the endpoint (once `answer`
 * resolves, if given); Detach records.
 */
function fakeSession(answer?: Promise<void>) {
  const detached: string[] = [];
  const client = {
    attach: (_req: unknown, _md: unknown, _opts: unknown, cb: Cb) =>
      void (answer ?? Promise.resolve()).then(() =>
        cb(null, {
          endpointJson: JSON.stringify(endpoint),
          network: { networkJson: JSON.stringify(network), endpoints: [] },
          networkKeysJson: "",
        }),
      ),
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
    orphanGraceMs: GRACE_MS,
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

describe("Attachments: endpoints the managers hold for this node that no container here has", () => {
  afterEach(() => void vi.useRealTimers());

  const peer = (endpointId: string, nodeId: string, ip: string) => ({
    endpointId,
    nodeId,
    nodeAddr: "192.0.2.1",
    ip,
    mac: "02:42:0a:00:01:09",
    containerName: `c-${ip}`,
    aliases: [],
    hostname: "h",
  });
  const ORPHAN = "0".repeat(64);
  const OTHERS = "1".repeat(64);
  /** The managers' push: the network with our attached endpoint, an orphan of ours and another node's. */
  const push = (...extra: ReturnType<typeof peer>[]) => [
    {
      networkJson: JSON.stringify(network),
      network: network as never,
      endpoints: [peer(EP_ID, NODE_ID, "10.0.1.2"), peer(OTHERS, "b".repeat(25), "10.0.1.4"), ...extra],
    },
  ];

  it("are given back once seen at two sweeps; the node's attached endpoints and other nodes' are left", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
    const session = fakeSession();
    const { host } = fakeHost(undefined);
    const a = attachments(session, host);
    await a.attach(container, "front", {});
    a.startSweeping();
    a.onSessionNetworks(push(peer(ORPHAN, NODE_ID, "10.0.1.3")));
    await vi.advanceTimersByTimeAsync(GRACE_MS);
    // One sweep: a suspect only (it may be an endpoint on its way in or out).
    expect(session.detached).toEqual([]);
    await vi.advanceTimersByTimeAsync(GRACE_MS);
    expect(session.detached).toEqual([ORPHAN]);
    // The managers took it back: nothing more is sent.
    a.onSessionNetworks(push());
    await vi.advanceTimersByTimeAsync(3 * GRACE_MS);
    expect(session.detached).toEqual([ORPHAN]);
    await a.close(host);
  });

  it("are left alone before the start-up adoption is done", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
    const session = fakeSession();
    const { host } = fakeHost(undefined);
    const a = attachments(session, host);
    a.onSessionNetworks(push(peer(ORPHAN, NODE_ID, "10.0.1.3")));
    await vi.advanceTimersByTimeAsync(5 * GRACE_MS);
    expect(session.detached).toEqual([]);
    await a.close(host);
  });

  it("an endpoint pushed while its attach waits for the answer is not taken for one", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
    let answer!: () => void;
    const session = fakeSession(new Promise<void>((r) => (answer = r)));
    const { host } = fakeHost(undefined);
    const a = attachments(session, host);
    a.startSweeping();
    const attached = a.attach(container, "front", {});
    // The managers recorded the endpoint and pushed it; the Attach answer is slow to arrive.
    a.onSessionNetworks(push());
    await vi.advanceTimersByTimeAsync(4 * GRACE_MS);
    answer();
    await attached;
    await vi.advanceTimersByTimeAsync(4 * GRACE_MS);
    expect(session.detached).toEqual([]);
    await a.close(host);
  });
});
