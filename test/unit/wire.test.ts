// The cluster protocol's boundary: requests parsed against their schemas, what a node may claim as its
// address, what a node accepts from the managers, and the slowing of join-token guessing.

import { describe, expect, it } from "vitest";
import {
  decodeAttachResponse,
  decodeSessionMessage,
  MalformedMessage,
  type SessionDecodeMemo,
} from "../../src/agent/messages.js";
import { SessionMessage } from "../../src/gen/cluster.js";
import { newNodeObject } from "../../src/manager/ca-server.js";
import { JoinLimiter } from "../../src/manager/join-limiter.js";
import { acceptableNodeAddr, requestSchemas } from "../../src/manager/wire.js";

const nodeId = "a".repeat(25);
const hex = (c: string) => c.repeat(64);

function network(extra: Record<string, unknown> = {}) {
  return {
    id: "b".repeat(25),
    spec: {
      name: "net",
      driver: "overlay",
      internal: false,
      attachable: true,
      ingress: false,
      options: {},
      labels: {},
    },
    alloc: { subnet: "10.0.1.0/24", gateway: "10.0.1.1", vni: 4097, nextHost: 3, used: {} },
    createdAt: "2026-12-06T00:00:00.000Z",
    version: 4,
    ...extra,
  };
}

function message(extra: Partial<SessionMessage> = {}): SessionMessage {
  return {
    ...SessionMessage.fromPartial({
      sessionId: "0".repeat(24),
      managers: [{ nodeId, addr: "192.0.2.1:2377" }],
      heartbeatPeriodMs: 5000,
      role: "worker",
      networks: [
        {
          networkJson: JSON.stringify(network()),
          endpoints: [
            {
              endpointId: hex("1"),
              nodeId,
              nodeAddr: "192.0.2.2",
              ip: "10.0.1.2",
              mac: "02:42:0a:00:01:02",
              containerName: "web",
              aliases: ["www"],
              hostname: "h2",
            },
          ],
        },
      ],
    }),
    ...extra,
  };
}

describe("requests on 2377", () => {
  it("names the field that is wrong", () => {
    const r = requestSchemas.attach.safeParse({
      network: "net",
      containerId: "short",
      containerName: "web",
      aliases: [],
      ip: "",
    });
    expect(r.success).toBe(false);
    expect(r.error?.issues[0]?.path).toEqual(["containerId"]);
    expect(requestSchemas.join.safeParse({ addr: "10.0.0.1:99999" }).success).toBe(false);
    expect(requestSchemas.join.safeParse({ addr: "10.0.0.1:2377" }).success).toBe(true);
    expect(requestSchemas.session.safeParse({ descriptionJson: "x".repeat(70_000), addr: "" }).success).toBe(false);
    expect(
      requestSchemas.issueNodeCertificate.safeParse({
        csrPem: "x",
        token: "t",
        availability: "sometimes",
        hostname: "h",
        advertiseAddr: "",
      }).success,
    ).toBe(false);
  });

  it("lets a node name a unicast address, and loopback only when it connects from loopback", () => {
    expect(acceptableNodeAddr("192.0.2.7", "192.0.2.7")).toBe(true);
    expect(acceptableNodeAddr("127.0.0.4", "127.0.0.1")).toBe(true);
    expect(acceptableNodeAddr("127.0.0.1", "192.0.2.7")).toBe(false);
    for (const bad of ["0.0.0.0", "224.0.0.5", "255.255.255.255", "::", "ff02::1", "example.org", ""]) {
      expect(acceptableNodeAddr(bad, "192.0.2.7"), bad).toBe(false);
    }
  });
});

describe("what a node accepts from the managers", () => {
  it("decodes a session message once, with its network records typed", () => {
    const d = decodeSessionMessage(message());
    expect(d.role).toBe("worker");
    expect(d.networks[0]!.network.alloc.vni).toBe(4097);
    expect(d.networks[0]!.endpoints[0]!.aliases).toEqual(["www"]);
  });

  it("refuses a malformed message as a whole, naming the field and never quoting keys", () => {
    const cases: Partial<SessionMessage>[] = [
      { role: "admin" },
      { networks: [{ networkJson: "{", endpoints: [] }] },
      { networks: [{ networkJson: JSON.stringify(network({ alloc: { vni: "x" } })), endpoints: [] }] },
      { managers: [{ nodeId, addr: "nowhere" }] },
      { nodeJson: JSON.stringify({ ID: nodeId, Spec: { Labels: { n: 5 } } }) },
      {
        networkKeysJson: JSON.stringify({
          algorithm: "AES_128_GCM",
          keys: [{ tag: 1, key: "SECRETSECRET", salt: "x" }],
        }),
      },
    ];
    for (const c of cases) {
      let err: unknown;
      try {
        decodeSessionMessage(message(c));
      } catch (e) {
        err = e;
      }
      expect(err, JSON.stringify(c)).toBeInstanceOf(MalformedMessage);
      expect((err as Error).message).not.toContain("SECRET");
    }
  });

  it("a node whose JSON is the text of the session's previous message is the node parsed then; another is parsed and checked", () => {
    const memo: SessionDecodeMemo = { nodeJson: "", node: undefined };
    const nodeJson = JSON.stringify(newNodeObject(nodeId, "worker", "active", "h1", "192.0.2.1"));
    const first = decodeSessionMessage(message({ nodeJson }), memo);
    expect(first.node?.Description.Hostname).toBe("h1");
    const second = decodeSessionMessage(message({ nodeJson, heartbeatPeriodMs: 6000 }), memo);
    expect(second.heartbeatPeriodMs).toBe(6000);
    expect(second.node).toBe(first.node);
    // The rest of a message is still checked whole.
    expect(() => decodeSessionMessage(message({ nodeJson, role: "admin" }), memo)).toThrow(MalformedMessage);
    const bad = JSON.stringify({ ID: nodeId, Spec: { Labels: { n: 5 } } });
    expect(() => decodeSessionMessage(message({ nodeJson: bad }), memo)).toThrow(MalformedMessage);
    const renamed = JSON.stringify(newNodeObject(nodeId, "worker", "active", "h2", "192.0.2.1"));
    expect(decodeSessionMessage(message({ nodeJson: renamed }), memo).node?.Description.Hostname).toBe("h2");
  });

  it("refuses an attach answer whose endpoint is not one", () => {
    expect(() =>
      decodeAttachResponse({
        endpointJson: JSON.stringify({ id: "x" }),
        network: message().networks[0]!,
        networkKeysJson: "",
      }),
    ).toThrow(/malformed attach answer: endpointJson\.id/);
  });
});

describe("join-token guessing", () => {
  it("refuses an address after 10 failures within a minute, until the window passes, and logs per interval", () => {
    let now = 1_000_000;
    const lines: unknown[] = [];
    const logger = { warn: (o: unknown) => lines.push(o) } as unknown as import("pino").Logger;
    const l = new JoinLimiter({ now: () => now, logger });
    for (let i = 0; i < 10; i++) {
      expect(l.retryAfterMs("192.0.2.9")).toBe(0);
      l.failed("192.0.2.9", "wrong token");
      now += 100;
    }
    expect(l.retryAfterMs("192.0.2.9")).toBeGreaterThan(58_000);
    expect(l.retryAfterMs("192.0.2.10")).toBe(0);
    expect(lines).toHaveLength(1);
    now += 10_000;
    l.failed("192.0.2.9", "wrong token");
    expect(lines).toHaveLength(2);
    expect(lines[1]).toMatchObject({ addr: "192.0.2.9", attempts: 10 });
    now += 60_000;
    expect(l.retryAfterMs("192.0.2.9")).toBe(0);
  });
});
