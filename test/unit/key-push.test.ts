// What a host does with the keys the managers push down its session: take a newer ring, keep the one it
// has against a stale push (a new leader that has not applied the latest rotation yet), forget the keys
// when nothing here needs them, refuse malformed rings - and the conversion to what xfrm programs want.

import { describe, expect, it } from "vitest";
import { goDuration, keyPush, keysOf } from "../../src/agent/keys.js";
import { type AgentKeys, agentView, initialKeyring, newKey, rotatedKeyring } from "../../src/manager/keymanager.js";

const T0 = Date.parse("2026-11-22T00:00:00Z");
const H = 3_600_000;
const ring1 = initialKeyring(new Date(T0));
const ring2 = rotatedKeyring(ring1, newKey(4), new Date(T0 + 12 * H));
const ring3 = rotatedKeyring(ring2, newKey(5), new Date(T0 + 24 * H));
const v = (r: typeof ring1): AgentKeys => agentView(r);
const json = (r: typeof ring1) => JSON.stringify(agentView(r));

describe("keyPush", () => {
  it("takes the first ring, then each newer one; the same ring again is kept", () => {
    expect(keyPush(undefined, json(ring1), false)).toEqual({ action: "take", keys: v(ring1) });
    expect(keyPush(v(ring1), json(ring2), true)).toEqual({ action: "take", keys: v(ring2) });
    expect(keyPush(v(ring2), json(ring3), true)).toMatchObject({ action: "take" });
    expect(keyPush(v(ring2), json(ring2), true)).toEqual({ action: "keep" });
  });

  it("keeps the newer ring against a stale push, but takes a ring made afresh (lower tags, later time)", () => {
    expect(keyPush(v(ring3), json(ring2), true)).toEqual({ action: "keep" });
    const fresh = initialKeyring(new Date(T0 + 48 * H));
    expect(keyPush(v(ring3), JSON.stringify(agentView(fresh)), true)).toMatchObject({ action: "take" });
  });

  it('"" drops the keys only when no local container is on an encrypted network', () => {
    expect(keyPush(v(ring1), "", false)).toEqual({ action: "drop" });
    expect(keyPush(v(ring1), "", true)).toEqual({ action: "keep" });
    expect(keyPush(undefined, "", false)).toEqual({ action: "keep" });
  });

  it("refuses malformed rings, without quoting them", () => {
    const bad = (f: (k: AgentKeys) => unknown) => {
      const k = JSON.parse(json(ring1)) as AgentKeys;
      return keyPush(undefined, JSON.stringify(f(k) ?? k), false);
    };
    expect(keyPush(undefined, "{not json", false)).toEqual({ action: "malformed", why: "not JSON" });
    expect(bad((k) => ({ ...k, keys: k.keys.slice(1) }))).toEqual({ action: "malformed", why: "2 keys, not 3" });
    expect(
      bad((k) => {
        k.keys[1]!.key = Buffer.alloc(15).toString("base64");
      }),
    ).toEqual({ action: "malformed", why: "key 2 is not 16 bytes" });
    expect(
      bad((k) => {
        k.keys[2]!.salt = "";
      }),
    ).toEqual({ action: "malformed", why: "salt of key 3 is not 4 bytes" });
    expect(bad((k) => ({ ...k, keys: [k.keys[1], k.keys[0], k.keys[2]] }))).toEqual({
      action: "malformed",
      why: "tags not ascending",
    });
    expect(bad((k) => ({ ...k, primaryTag: 9 }))).toEqual({
      action: "malformed",
      why: "the primary is not in the ring",
    });
  });
});

describe("keysOf and goDuration", () => {
  it("gives xfrm the raw bytes, ascending", () => {
    const k = keysOf(v(ring2));
    expect(k.map((x) => x.tag)).toEqual([2, 3, 4]);
    expect(k.map((x) => [x.key.length, x.salt.length])).toEqual([
      [16, 4],
      [16, 4],
      [16, 4],
    ]);
    expect(k[2]!.key.toString("base64")).toBe(ring2.keys[2]!.key);
  });

  it("prints intervals as Go does", () => {
    expect(goDuration(12 * H)).toBe("12h0m0s");
    expect(goDuration(90_000)).toBe("1m30s");
    expect(goDuration(4000)).toBe("4s");
    expect(goDuration(1500)).toBe("1.5s");
  });
});
