// The ESP suite's own readers (test/esp/readers.ts), checked here on the host against the formats of
// iproute2 6.1, iputils, /proc/net/snmp and tcpdump 4.99, and the VXLAN frame it crafts for injection.

import { describe, expect, it } from "vitest";
import { XFRM_MARK, XFRM_REQID } from "../../src/dataplane/xfrm.js";
import {
  ipSnmp,
  parsePolicies,
  parseSaStats,
  parseTcpdump,
  pingStats,
  vxlanEchoRequest,
  withoutKeys,
} from "../esp/readers.js";

describe("the ESP tests' readers of iproute2, ping and tcpdump output", () => {
  it("parse `ip -s xfrm state`, `ip xfrm policy`, ping's summary and /proc/net/snmp", () => {
    // Laid out as iproute2 6.1 prints a state with -s (xfrm_state_info_print, xfrm_lifetime_print);
    // the key is a made-up one.
    const states = [
      "src 192.0.2.2 dst 192.0.2.3",
      "\tproto esp spi 0x1a2b3c4d(439041101) reqid 5457996(0x0053484c) mode transport",
      "\treplay-window 0 seq 0x00000000 flag  (0x00000000)",
      `\taead rfc4106(gcm(aes)) 0x${"ab".repeat(20)} (160 bits) 128`,
      "\tanti-replay context: seq 0x0, oseq 0x2a, bitmap 0x00000000",
      "\tsel src 0.0.0.0/0 dst 0.0.0.0/0 uid 0",
      "\tlifetime config:",
      "\t  limit: soft (INF)(bytes), hard (INF)(bytes)",
      "\t  limit: soft (INF)(packets), hard (INF)(packets)",
      "\t  expire add: soft 0(sec), hard 0(sec)",
      "\t  expire use: soft 0(sec), hard 0(sec)",
      "\tlifetime current:",
      "\t  5208(bytes), 42(packets)",
      "\t  add 2025-01-01 00:00:00 use 2025-01-01 00:00:01",
      "\tstats:",
      "\t  replay-window 0 replay 0 failed 0",
      "src 192.0.2.3 dst 192.0.2.2",
      "\tproto esp spi 0x00000100(256) reqid 5457996(0x0053484c) mode transport",
      "\tlifetime current:",
      "\t  0(bytes), 0(packets)",
      "",
    ].join("\n");
    expect(parseSaStats(states)).toEqual([
      { src: "192.0.2.2", dst: "192.0.2.3", spi: 0x1a2b3c4d, reqid: XFRM_REQID, bytes: 5208, packets: 42 },
      { src: "192.0.2.3", dst: "192.0.2.2", spi: 0x100, reqid: XFRM_REQID, bytes: 0, packets: 0 },
    ]);
    expect(withoutKeys(states)).not.toContain("abab");
    // As `ip xfrm policy list` (and, the second, `ip -s`) printed policies like the product's in a scratch
    // namespace (iproute2 6.1).
    const policies = [
      "src 192.0.2.2/32 dst 192.0.2.3/32 proto udp dport 4789 ",
      "\tdir out priority 0 ptype main ",
      "\tmark 0x53484c/0xffffffff ",
      "\ttmpl src 192.0.2.2 dst 192.0.2.3",
      "\t\tproto esp spi 0x1a2b3c4d reqid 5457996 mode transport",
      "src 192.0.2.2/32 dst 192.0.2.4/32 proto udp dport 4789 uid 0",
      "\tdir out action allow index 9 priority 0 ptype main share any flag  (0x00000000)",
      "\tmark 0x53484c/0xffffffff ",
      "\ttmpl src 192.0.2.2 dst 192.0.2.4",
      "\t\tproto esp spi 0x00000100(256) reqid 5457996(0x0053484c) mode transport",
      "\t\tlevel required share any ",
      "",
    ].join("\n");
    expect(parsePolicies(policies)).toEqual([
      {
        src: "192.0.2.2/32",
        dst: "192.0.2.3/32",
        proto: "udp",
        dport: 4789,
        dir: "out",
        mark: XFRM_MARK,
        tmpl: { src: "192.0.2.2", dst: "192.0.2.3", spi: 0x1a2b3c4d, reqid: XFRM_REQID },
      },
      {
        src: "192.0.2.2/32",
        dst: "192.0.2.4/32",
        proto: "udp",
        dport: 4789,
        dir: "out",
        mark: XFRM_MARK,
        tmpl: { src: "192.0.2.2", dst: "192.0.2.4", spi: 0x100, reqid: XFRM_REQID },
      },
    ]);
    expect(
      pingStats(
        "--- c3 ping statistics ---\n240 packets transmitted, 239 received, 0.416667% packet loss, time 12000ms\n",
      ),
    ).toEqual({ transmitted: 240, received: 239 });
    expect(pingStats("3 packets transmitted, 3 packets received, 0% packet loss")).toEqual({
      transmitted: 3,
      received: 3,
    });
    expect(
      ipSnmp(
        "Ip: Forwarding DefaultTTL InReceives FragOKs FragFails FragCreates\nIp: 1 64 100 0 0 7\nIcmp: InMsgs\nIcmp: 3\n",
      ),
    ).toMatchObject({ InReceives: 100, FragCreates: 7 });
  });
  it("parse tcpdump's lines: ESP, VXLAN with its VNI, anything else", () => {
    const text = [
      "IP 192.0.2.2 > 192.0.2.3: ESP(spi=0x1a2b3c4d,seq=0x5), length 140",
      "14:37:12.883412 IP 192.0.2.2.43512 > 192.0.2.3.4789: VXLAN, flags [I] (0x08), vni 4097",
      "IP 192.0.2.99.51000 > 192.0.2.3.4789: UDP, length 90",
      "IP 192.0.2.1.2377 > 192.0.2.2.53000: Flags [P.], seq 1:10, ack 1, win 500, length 9",
      "ARP, Request who-has 192.0.2.3 tell 192.0.2.2, length 28",
      "",
    ].join("\n");
    expect(parseTcpdump(text)).toEqual([
      { src: "192.0.2.2", dst: "192.0.2.3", kind: "esp" },
      { src: "192.0.2.2", dst: "192.0.2.3", kind: "vxlan", vni: 4097 },
      { src: "192.0.2.99", dst: "192.0.2.3", kind: "vxlan" },
      { src: "192.0.2.1", dst: "192.0.2.2", kind: "other" },
    ]);
  });

  it("craft a VXLAN echo request: header, VNI, inner frame and checksums a kernel accepts", () => {
    const b = vxlanEchoRequest(4097, {
      srcMac: "02:42:0a:00:00:02",
      dstMac: "02:42:0a:00:00:03",
      srcIp: "10.0.0.2",
      dstIp: "10.0.0.3",
      id: 0x5348,
      seq: 1,
    });
    expect(b.subarray(0, 8).toString("hex")).toBe("0800000000100100");
    expect(b.subarray(8, 22).toString("hex")).toBe("02420a00000302420a0000020800");
    const ip = b.subarray(22, 42);
    const sum = (x: Buffer) => {
      let s = 0;
      for (let i = 0; i < x.length; i += 2) s += (x[i]! << 8) + (x[i + 1] ?? 0);
      while (s >> 16) s = (s & 0xffff) + (s >> 16);
      return s;
    };
    expect(sum(ip)).toBe(0xffff); // a valid header sums to all ones
    expect(sum(b.subarray(42))).toBe(0xffff);
    expect(b.length).toBe(8 + 14 + 20 + 40);
  });
});
