// The CLI's pure helpers: Go-compatible formatting and flag parsing (values checked against docker/Go).

import { describe, expect, it } from "vitest";
import { encodeQuery, pathEscape, resolveHost } from "../../cli/client.js";
import {
  filtersJSON,
  parseCIDR,
  parseDuration,
  parseFilter,
  parseInt64,
  parseNodeAddr,
  parseUint,
} from "../../cli/flags.js";
import {
  ansic,
  bytesSize,
  executeTemplate,
  formatG,
  humanDuration,
  naturalCompare,
  parseTemplate,
  prettyPrint,
  tabwrite,
} from "../../cli/format.js";
import { encodeGo, GoMap, goNode, goTime, goTimeString } from "../../cli/gojson.js";

describe("Go-compatible formatting", () => {
  it("aligns elastic tab stops like text/tabwriter", () => {
    expect(tabwrite("a\tbb\tc\naaaa\tb\tc\n", 0, 1)).toBe("a    bb c\naaaa b  c\n");
    // a line with fewer cells ends the column block above it
    expect(tabwrite("x\ty\nz\nlonger\tw\n", 0, 2)).toBe("x  y\nz\nlonger  w\n");
    expect(tabwrite("ID  \tHOST\n", 10, 3)).toBe("ID        HOST\n");
  });

  it("sorts hostnames naturally", () => {
    const names = ["node10", "node2", "node1", "node01", "Node3", "node", "host-007", "host-7", "a10b", "a9b"];
    expect([...names].sort(naturalCompare)).toEqual([
      "Node3",
      "a9b",
      "a10b",
      "host-7",
      "host-007",
      "node",
      "node1",
      "node01",
      "node2",
      "node10",
    ]);
  });

  it("prints sizes, durations and times like go-units and time", () => {
    expect(formatG(1.0625, 4)).toBe("1.062"); // exact tie: round half to even
    expect(formatG(1.1875, 4)).toBe("1.188"); // exact tie, odd: up
    expect(formatG(1.0635, 4)).toBe("1.063"); // the double is just below the tie
    expect(formatG(2, 4)).toBe("2");
    expect(formatG(1023.99, 4)).toBe("1024");
    expect(bytesSize(8_254_390_272)).toBe("7.688GiB");
    expect(bytesSize(512)).toBe("512B");
    expect(bytesSize(1536)).toBe("1.5KiB");
    expect(humanDuration(5e9)).toBe("5 seconds");
    expect(humanDuration(90e9)).toBe("About a minute");
    expect(humanDuration(7_776_000e9)).toBe("3 months");
    expect(humanDuration(0)).toBe("Less than a second");
    expect(ansic("2025-05-30T12:07:27.000000000+00:00")).toBe("Fri May 30 12:07:27 2025");
    expect(ansic("2025-06-03T01:02:03Z")).toBe("Tue Jun  3 01:02:03 2025");
    expect(goTime("2025-01-02T03:04:05.120000+00:00").rfc3339).toBe("2025-01-02T03:04:05.12Z");
    expect(goTimeString(goTime("2025-01-02T03:04:05.5Z"))).toBe("2025-01-02 03:04:05.5 +0000 UTC");
    expect(goTimeString(goTime(undefined))).toBe("0001-01-01 00:00:00 +0000 UTC");
    expect(prettyPrint("ready")).toBe("Ready");
    expect(prettyPrint("HEARTBEAT failure")).toBe("Heartbeat failure");
  });

  it("encodes JSON like encoding/json: struct order, omitempty, sorted maps, HTML escaping", () => {
    const node = goNode({ ID: "x", Spec: { Labels: { b: "<&>", a: "1", "10": "", "9": "" } }, ManagerStatus: null });
    expect(encodeGo(node)).toBe(
      '{"ID":"x","Version":{},"CreatedAt":"0001-01-01T00:00:00Z","UpdatedAt":"0001-01-01T00:00:00Z",' +
        '"Spec":{"Labels":{"10":"","9":"","a":"1","b":"\\u003c\\u0026\\u003e"}},' +
        '"Description":{"Platform":{},"Resources":{},"Engine":{},"TLSInfo":{}},"Status":{}}',
    );
    expect(encodeGo(new GoMap([["k", "<\u2028>"]]), { escapeHTML: false })).toBe('{"k":"<\\u2028>"}');
  });

  it("runs the supported template subset", () => {
    const node = goNode({ ID: "x", Version: { Index: 3 }, Spec: { Role: "manager", Labels: { a: "1" } } });
    expect(executeTemplate(parseTemplate("{{.ID}} {{.Version}} {{.Spec.Role}} {{.Spec.Labels}}"), node)).toBe(
      "x 3 manager map[a:1]",
    );
    expect(executeTemplate(parseTemplate("{{json .Spec.Labels}} {{- .ID -}} !"), node)).toBe('{"a":"1"}x!');
    expect(() => executeTemplate(parseTemplate("{{.ManagerStatus.Leader}}"), node)).toThrow(
      'template: :1:16: executing "" at <.ManagerStatus.Leader>: nil pointer evaluating *swarm.ManagerStatus.Leader',
    );
    expect(() => parseTemplate("{{range .X}}{{end}}")).toThrow(/unsupported/);
    expect(() => parseTemplate("{{upper .ID}}")).toThrow(/unsupported|not defined/);
  });
});

describe("flag values", () => {
  it("parses numbers and durations with Go's errors", () => {
    expect(parseUint("4790", 32)).toBe(4790);
    expect(parseUint("0x10", 32)).toBe(16);
    expect(() => parseUint("x", 32)).toThrow('strconv.ParseUint: parsing "x": invalid syntax');
    expect(() => parseUint("4294967296", 32)).toThrow('strconv.ParseUint: parsing "4294967296": value out of range');
    expect(parseInt64("-1")).toBe(-1);
    expect(parseDuration("1m30s")).toBe(90e9);
    expect(parseDuration("2160h")).toBe(7_776_000e9);
    expect(parseDuration("1.5s")).toBe(1.5e9);
    expect(() => parseDuration("x")).toThrow('time: invalid duration "x"');
    expect(() => parseDuration("5x")).toThrow('time: unknown unit "x" in duration "5x"');
    expect(() => parseDuration("5")).toThrow('time: missing unit in duration "5"');
  });

  it("normalises CIDRs and listen addresses like docker", () => {
    expect(parseCIDR("10.20.3.4/16")).toBe("10.20.0.0/16");
    expect(parseCIDR("fd00:1:2:3::1/64")).toBe("fd00:1:2:3::/64");
    expect(() => parseCIDR("foo")).toThrow("invalid string being converted to CIDR: foo");
    // each checked against docker 28's request body
    expect(parseNodeAddr("192.0.2.1")).toBe("192.0.2.1:2377");
    expect(parseNodeAddr(":4000")).toBe("0.0.0.0:4000");
    expect(parseNodeAddr("::1")).toBe("[::1]:2377");
    expect(parseNodeAddr("x/y")).toBe("x:2377/y");
    expect(parseNodeAddr("")).toBe("0.0.0.0:2377");
    expect(() => parseNodeAddr("[::1]")).toThrow("invalid bind address format: [::1]");
    expect(() => parseNodeAddr("udp://x")).toThrow("invalid proto, expected tcp: udp://x");
    expect(() => parseNodeAddr("x:y")).toThrow('parse "tcp://x:y": invalid port ":y" after host');
  });

  it("builds filters, queries and paths like docker's client", () => {
    expect(parseFilter(" Role = manager ")).toEqual(["role", "manager"]);
    expect(
      filtersJSON([
        ["role", "worker"],
        ["id", "b"],
        ["id", "a"],
      ]),
    ).toBe('{"id":{"a":true,"b":true},"role":{"worker":true}}');
    expect(encodeQuery({ version: "3", force: "1", skip: undefined })).toBe("force=1&version=3");
    expect(pathEscape("/nodes/a b!")).toBe("/nodes/a%20b%21");
    expect(resolveHost(undefined, { DOCKER_HOST: "tcp://h:2375" })).toBe("unix:///run/shoal/shoald.sock");
    expect(resolveHost(undefined, { DOCKER_HOST: "unix:///d.sock" })).toBe("unix:///d.sock");
    expect(resolveHost(undefined, { DOCKER_HOST: "unix:///d.sock", SHOAL_HOST: "unix:///s.sock" })).toBe(
      "unix:///s.sock",
    );
    expect(resolveHost("unix:///h.sock", { SHOAL_HOST: "unix:///s.sock" })).toBe("unix:///h.sock");
  });
});
