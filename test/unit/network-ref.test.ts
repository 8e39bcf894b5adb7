// The one network-reference resolver (dockerd's rules), used by the control API, the managers' Attach and a
// worker's network inspect.
import { describe, expect, it } from "vitest";
import { resolveNetworkRef } from "../../src/manager/networks.js";

interface Net {
  id: string;
  name: string;
}

const find = (nets: Net[], ref: string) =>
  resolveNetworkRef(
    nets,
    ref,
    (n) => n.id,
    (n) => n.name,
  );

describe("resolveNetworkRef", () => {
  const a: Net = { id: "abc123", name: "front" };
  const b: Net = { id: "abd456", name: "abc" };
  const c: Net = { id: "ffff00", name: "back" };

  it("takes an exact id before a name, and a name before an id prefix", () => {
    expect(find([a, b, c], "abc123")).toBe(a);
    // "abc" is b's name and a prefix of a's id: the name wins.
    expect(find([a, b, c], "abc")).toBe(b);
    expect(find([a, b, c], "back")).toBe(c);
    expect(find([a, b, c], "ff")).toBe(c);
  });

  it("refuses an id prefix that several networks share, saying how many", () => {
    expect(() => find([a, b, c], "ab")).toThrow("network ab is ambiguous (2 matches found based on ID prefix)");
  });

  it("refuses a name that several networks have", () => {
    const twin: Net = { id: "999999", name: "front" };
    expect(() => find([a, twin], "front")).toThrow("network front is ambiguous (2 matches found based on name)");
  });

  it("finds nothing for an unknown reference", () => {
    expect(find([a, b, c], "zzz")).toBeUndefined();
  });
});
