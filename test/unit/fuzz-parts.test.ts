// The boundary fuzzer's own parts (test/fuzz): the same seed draws the same cases, mutations and the
// protobuf writer produce what they claim, the safety rules keep valid destructive requests out, and the
// answer judges flag what the docker CLI could not read.

import fc from "fast-check";
import { afterEach, describe, expect, it, vi } from "vitest";
import { PingRequest, RaftMessageRequest } from "../../src/gen/raft.js";
import { engineCase } from "../fuzz/by-hand.js";
import { arbBatch, casesFromJson, casesToJson } from "../fuzz/cases.js";
import type { EngineCase, QVal } from "../fuzz/engine-cases.js";
import { applyMutations, j, serialize } from "../fuzz/json.js";
import { LagProbe } from "../fuzz/lag.js";
import { encode, varint } from "../fuzz/protobuf.js";
import type { FuzzContext, Ref } from "../fuzz/refs.js";
import { makeSafe } from "../fuzz/safety.js";
import { judgeGrpc, judgeHttp, parseHttp, pbString, renderTarget } from "../fuzz/send.js";
import { fuzzContext } from "./fuzz-fixtures.js";

const ctx: FuzzContext = fuzzContext({
  id: "j6fffffffffffffffffffffff",
  hostname: "fz-joiner",
  version: 16,
  role: "manager",
});

/** An engine case of route "t"; `body` is any JSON value. */
const req = (daemon: number, method: string, path: (string | Ref)[], body?: unknown, query: [string, QVal][] = []) =>
  engineCase("t", daemon, method, path, body === undefined ? undefined : j(body), query);

const bodyOf = (c: EngineCase): unknown =>
  c.body.b === "json" ? JSON.parse(serialize(c.body.v, () => null)) : undefined;

describe("fuzz cases are drawn from the seed", () => {
  it("the same seed gives the same batches, and they survive a save and load", () => {
    const a = fc.sample(arbBatch(40), { seed: 1234, numRuns: 3 });
    const b = fc.sample(arbBatch(40), { seed: 1234, numRuns: 3 });
    expect(casesToJson(a.flat())).toBe(casesToJson(b.flat()));
    expect(casesToJson(casesFromJson(casesToJson(a.flat())))).toBe(casesToJson(a.flat()));
    expect(casesToJson(fc.sample(arbBatch(40), { seed: 1235, numRuns: 3 }).flat())).not.toBe(casesToJson(a.flat()));
  });
});

describe("fuzz JSON mutations", () => {
  it("apply by position, leave the template alone, and can say what JSON.stringify cannot", () => {
    const template = j({ Name: "n", Labels: { a: "b" } });
    const out = applyMutations(template, [
      { at: 1, op: "replace", with: { k: "raw", text: "9007199254740993" } },
      { at: 0, op: "addKey", key: "__proto__", value: j({ polluted: 1 }) },
      { at: 1, op: "dupKey", value: j(5) },
    ]);
    expect(serialize(template, () => null)).toBe('{"Name":"n","Labels":{"a":"b"}}');
    expect(serialize(out, () => null)).toBe(
      '{"Name":9007199254740993,"Labels":{"a":"b"},"__proto__":{"polluted":1},"Name":5}',
    );
  });

  it("copy a value where it goes in: a shared value is never changed, and adding it into itself makes no cycle", () => {
    const shared = j({ x: 1 });
    const out = applyMutations(j({}), [
      { at: 0, op: "addKey", key: "a", value: shared },
      { at: 1, op: "addKey", key: "b", value: shared },
    ]);
    expect(serialize(shared, () => null)).toBe('{"x":1}');
    expect(serialize(out, () => null)).toBe('{"a":{"x":1,"b":{"x":1}}}');
  });

  it("expand big values only when serialized", () => {
    expect(serialize({ k: "big", shape: "deepArray", n: 3 }, () => null)).toBe("[[[]]]");
    expect(serialize({ k: "big", shape: "deepObject", n: 2 }, () => null)).toBe('{"a":{"a":"x"}}');
    expect(serialize({ k: "big", shape: "string", n: 5_000_000 }, () => null).length).toBe(5_000_002);
  });
});

describe("fuzz protobuf writer", () => {
  it("writes varints up to 2^64-1 and messages the generated decoder reads back", () => {
    expect(varint((1n << 64n) - 1n)).toEqual([255, 255, 255, 255, 255, 255, 255, 255, 255, 1]);
    expect(varint(300n)).toEqual([0xac, 0x02]);
    const ping = encode(
      [
        { f: 1, t: "varint", v: { ref: { r: "raftId", who: 1, delta: 0 } } },
        { f: 2, t: "varint", v: 9n },
      ],
      { string: String, bigint: () => 2n, json: () => null },
    );
    expect(PingRequest.decode(ping)).toEqual({ from: 2, to: 9 });
    const msg = encode(
      [
        {
          f: 1,
          t: "msg",
          v: [
            { f: 1, t: "varint", v: 3n },
            { f: 4, t: "varint", v: 7n },
            { f: 11, t: "text", v: { s: "ctx" } },
          ],
        },
      ],
      { string: String, bigint: () => 0n, json: () => null },
    );
    const decoded = RaftMessageRequest.decode(msg);
    expect(decoded.message?.term).toBe(7);
    expect(Buffer.from(decoded.message!.context).toString()).toBe("ctx");
    expect(pbString(Buffer.from([0x0a, 0x02, 0x68, 0x69]), 1)).toBe("hi");
  });
});

describe("fuzz safety rules: no valid destructive request reaches the cluster", () => {
  it("a manager is never force-removed, by id, prefix, hostname, upper case or self", () => {
    const force: [string, QVal][] = [["force", { lit: "1" }]];
    for (const ref of ["m2bbbbbbbbbbbbbbbbbbbbbbb", "m2bb", "node2", "M2BBBBBBBBBBBBBBBBBBBBBBB", " node2\n"]) {
      const safe = makeSafe(ctx, req(1, "DELETE", ["nodes", ref], undefined, force));
      expect(safe.query, ref).toEqual([]);
    }
    expect(makeSafe(ctx, req(2, "DELETE", ["nodes", "self"], undefined, force)).query).toEqual([]);
    // A node the fuzzer joined may go.
    expect(makeSafe(ctx, req(1, "DELETE", ["nodes", "fz-joiner"], undefined, force)).query).toEqual(force);
  });

  it("the cluster's workers are not removed at all; their removal names a node that does not exist", () => {
    for (const ref of ["node4", "w4dd", "x5eeeeeeeeeeeeeeeeeeeeeee"]) {
      const safe = makeSafe(ctx, req(1, "DELETE", ["nodes", ref]));
      expect(renderTarget(ctx, safe)).toBe("/v1.50/nodes/fuzz-kept-node");
    }
    expect(makeSafe(ctx, req(4, "DELETE", ["nodes", "self"])).path[1]).toEqual({ lit: "fuzz-kept-node", enc: true });
  });

  it("a node update keeps the role of the cluster's own nodes", () => {
    const safe = makeSafe(
      ctx,
      req(1, "POST", ["nodes", "node4", "update"], { Role: "MANAGER", role: "manager", Labels: {} }),
    );
    expect(bodyOf(safe)).toEqual({ Role: "worker", role: "worker", Labels: {} });
    const mgr = makeSafe(ctx, req(3, "POST", ["nodes", "self", "update"], { Role: "worker" }));
    expect(bodyOf(mgr)).toEqual({ Role: "manager" });
    // Odd roles stay odd (the server refuses them); a joined node's role may change.
    expect(bodyOf(makeSafe(ctx, req(1, "POST", ["nodes", "node4", "update"], { Role: 5 })))).toEqual({ Role: 5 });
    expect(bodyOf(makeSafe(ctx, req(1, "POST", ["nodes", "fz-joiner", "update"], { Role: "worker" })))).toEqual({
      Role: "worker",
    });
  });

  it("no daemon leaves, no cluster is forced new, no root rotation, no container runs", () => {
    const leave = makeSafe(ctx, req(4, "POST", ["swarm", "leave"], undefined, [["force", { lit: "true" }]]));
    expect(leave.daemon).toBeLessThanOrEqual(3);
    expect(leave.query).toEqual([]);
    expect(
      bodyOf(makeSafe(ctx, req(1, "POST", ["swarm", "init"], { ForceNewCluster: true, forcenewcluster: 1, A: 1 }))),
    ).toEqual({
      A: 1,
    });
    const update = makeSafe(
      ctx,
      req(1, "POST", ["swarm", "update"], { CAConfig: { ForceRotate: 3, SigningCACert: "pem", NodeCertExpiry: 1 } }),
    );
    expect(bodyOf(update)).toEqual({ CAConfig: { ForceRotate: 0, NodeCertExpiry: 1 } });
    const ctr = makeSafe(ctx, req(1, "POST", ["containers", "create"], { Image: "host:latest", image: " HOST" }));
    expect(bodyOf(ctr)).toEqual({ Image: "fuzz-no-such-image", image: "fuzz-no-such-image" });
  });

  it("a pull never leaves the machine: every fromImage names the loopback discard port, fromSrc reads the body", () => {
    const pull = makeSafe(
      ctx,
      req(1, "POST", ["images", "create"], undefined, [
        ["X", { lit: "&fromImage=busybox" }],
        ["fromImage", { lit: "busybox" }],
        ["fromImage", { lit: "registry.example.com:443/a/b" }],
        ["tag", { lit: "latest" }],
        ["fromSrc", { lit: "http://example.com/rootfs.tar" }],
      ]),
    );
    expect(renderTarget(ctx, pull)).toBe(
      "/v1.50/images/create?fromImage=127.0.0.1:9/fuzz/busybox" +
        "&fromImage=127.0.0.1:9/fuzz/registry.example.com:443/a/b&tag=latest&fromSrc=-",
    );
  });
});

describe("fuzz answer judges", () => {
  const answer = (head: string, body = "") => parseHttp(Buffer.from(`${head}\r\n\r\n${body}`))!;

  it("read past 100 Continue, and decode chunked bodies", () => {
    const a = parseHttp(
      Buffer.from(
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
      ),
    )!;
    expect(a.status).toBe(400);
    expect(a.body.toString()).toBe("abc");
  });

  it("an error the docker CLI cannot read is a finding; Node's parser refusals and HEAD are not", () => {
    expect(
      judgeHttp(answer("HTTP/1.1 400 x\r\nContent-Type: application/json", '{"message":"bad"}'), "POST"),
    ).toBeUndefined();
    expect(
      judgeHttp(answer("HTTP/1.1 400 x\r\nContent-Type: application/json; charset=utf-8", '{"message":"bad"}'), "POST"),
    ).toMatch(/Content-Type/);
    expect(judgeHttp(answer("HTTP/1.1 404 x\r\nContent-Type: application/json", "{}"), "GET")).toMatch(
      /without a message/,
    );
    expect(
      judgeHttp(
        answer("HTTP/1.1 500 x\r\nContent-Type: application/json", '{"message":"Cannot read properties of undefined"}'),
        "POST",
      ),
    ).toMatch(/internal error/);
    expect(judgeHttp(answer("HTTP/1.1 400 Bad Request\r\nConnection: close"), "GET")).toBeUndefined();
    expect(judgeHttp(answer("HTTP/1.1 404 x\r\nContent-Type: application/json"), "HEAD")).toBeUndefined();
  });

  it("a gRPC answer that leaks a JavaScript error is a finding; undecodable bytes are not", () => {
    expect(judgeGrpc(2, "Cannot read properties of null (reading 'Hostname')")).toMatch(/internal error/);
    expect(judgeGrpc(13, "Error deserializing request: RangeError: index out of range")).toBeUndefined();
    expect(judgeGrpc(3, "invalid session request: TypeError in description")).toBeUndefined();
  });
});

describe("the fuzzer's own delays do not count against a daemon", () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it("a wait lasts its time while the fuzzer is awake, and is extended by the time its event loop was late", async () => {
    vi.useFakeTimers();
    const probe = new LagProbe();
    let done = false;
    const since = Date.now();
    void probe.waitAwake(since, 20_000).then(() => {
      done = true;
    });
    await vi.advanceTimersByTimeAsync(5000);
    // The fuzzer is starved for 10 s: the clock moves, no timer runs.
    vi.setSystemTime(Date.now() + 10_000);
    await vi.advanceTimersByTimeAsync(200);
    expect(probe.lostSince(since)).toBeGreaterThanOrEqual(9_800);
    expect(probe.describe(since)).toMatch(/late by up to (9\d{3}|10\d{3}) ms/);
    // 20 s have passed on the clock, but the fuzzer listened for 5.2 s only.
    await vi.advanceTimersByTimeAsync(10_000);
    expect(done).toBe(false);
    await vi.advanceTimersByTimeAsync(5_500);
    expect(done).toBe(true);
    probe.stop();
  });

  it("without delays a wait ends on time", async () => {
    vi.useFakeTimers();
    const probe = new LagProbe();
    let done = false;
    void probe.waitAwake(Date.now(), 20_000).then(() => {
      done = true;
    });
    await vi.advanceTimersByTimeAsync(19_900);
    expect(done).toBe(false);
    await vi.advanceTimersByTimeAsync(200);
    expect(done).toBe(true);
    probe.stop();
  });
});
