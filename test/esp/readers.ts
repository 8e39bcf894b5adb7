// What the ESP tests read back, each with its own reader (not the product's, so that a test comparing the
// kernel with what `network inspect` says does not check the product against itself): `ip -s xfrm state`,
// `ip xfrm policy`, ping's summary, /proc/net/snmp, tcpdump's lines; a crafted VXLAN frame for injection;
// and the Engine API over a lab host's socket (for polling, cheaper than a CLI process in a slow guest).

import { request } from "node:http";

export interface SaStats {
  src: string;
  dst: string;
  spi: number;
  reqid: number;
  bytes: number;
  packets: number;
}

/**
 * `ip -s xfrm state list`: a record starts with an unindented `src A dst B` line; then
 * `proto esp spi 0x...(dec) reqid N(0x...) mode ...`, and under `lifetime current:` a line
 * `  <n>(bytes), <n>(packets)` (the `lifetime config` lines say `soft (INF)(bytes)`, which does not match).
 */
export function parseSaStats(text: string): SaStats[] {
  const out: SaStats[] = [];
  let cur: SaStats | undefined;
  for (const line of text.split("\n")) {
    const head = /^src (\S+) dst (\S+)/.exec(line);
    if (head) {
      cur = {
        src: head[1]!,
        dst: head[2]!,
        spi: Number.NaN,
        reqid: Number.NaN,
        bytes: Number.NaN,
        packets: Number.NaN,
      };
      out.push(cur);
      continue;
    }
    if (!cur) continue;
    const id = /^\s+proto esp spi (0x[0-9a-f]+)(?:\(\d+\))? reqid (\d+)/.exec(line);
    if (id) {
      cur.spi = Number.parseInt(id[1]!, 16);
      cur.reqid = Number(id[2]);
    }
    const c = /^\s+(\d+)\(bytes\), (\d+)\(packets\)/.exec(line);
    if (c) {
      cur.bytes = Number(c[1]);
      cur.packets = Number(c[2]);
    }
  }
  return out;
}

export interface PolicyView {
  src: string;
  dst: string;
  proto?: string;
  dport?: number;
  dir: string;
  mark?: number;
  tmpl?: { src: string; dst: string; spi: number; reqid: number };
}

/**
 * `ip xfrm policy list`: `src A/n dst B/n proto udp dport P`, then indented `dir out ...`,
 * `mark 0x.../0x...`, `tmpl src X dst Y` and `proto esp spi 0x... reqid N mode transport`.
 */
export function parsePolicies(text: string): PolicyView[] {
  const out: PolicyView[] = [];
  let cur: PolicyView | undefined;
  let tmpl: { src: string; dst: string } | undefined;
  for (const line of text.split("\n")) {
    const head = /^src (\S+) dst (\S+)(.*)$/.exec(line);
    if (head) {
      const proto = /\bproto (\S+)/.exec(head[3]!);
      const dport = /\bdport (\d+)/.exec(head[3]!);
      cur = {
        src: head[1]!,
        dst: head[2]!,
        dir: "",
        ...(proto ? { proto: proto[1]! } : {}),
        ...(dport ? { dport: Number(dport[1]) } : {}),
      };
      tmpl = undefined;
      out.push(cur);
      continue;
    }
    if (!cur) continue;
    const dir = /^\s+dir (\S+)/.exec(line);
    if (dir) cur.dir = dir[1]!;
    const mark = /^\s+mark (0x[0-9a-f]+)/.exec(line);
    if (mark) cur.mark = Number.parseInt(mark[1]!, 16);
    const t = /^\s+tmpl src (\S+) dst (\S+)/.exec(line);
    if (t) tmpl = { src: t[1]!, dst: t[2]! };
    const id = /^\s+proto esp spi (0x[0-9a-f]+)(?:\(\d+\))? reqid (\d+)/.exec(line);
    if (id && tmpl) cur.tmpl = { ...tmpl, spi: Number.parseInt(id[1]!, 16), reqid: Number(id[2]) };
  }
  return out;
}

/** `N packets transmitted, M received` (iputils; busybox says `M packets received`). */
export function pingStats(out: string): { transmitted: number; received: number } | undefined {
  const m = /(\d+) packets transmitted, (\d+) (?:packets )?received/.exec(out);
  return m ? { transmitted: Number(m[1]), received: Number(m[2]) } : undefined;
}

/** The `Ip:` row of /proc/net/snmp as name -> value. */
export function ipSnmp(text: string): Record<string, number> {
  const rows = text.split("\n").filter((l) => l.startsWith("Ip:"));
  const names = (rows[0] ?? "").split(/\s+/).slice(1);
  const values = (rows[1] ?? "").split(/\s+/).slice(1);
  return Object.fromEntries(names.map((n, i) => [n, Number(values[i])]));
}

/** `ip xfrm state` output without the lines that carry key material (for failure diagnostics). */
export function withoutKeys(text: string): string {
  return text
    .split("\n")
    .filter((l) => !/^\s+(aead|enc|auth|auth-trunc|comp)\s/.test(l))
    .join("\n");
}

/** One packet as `tcpdump -nn -r FILE` prints it: IPv4 source and destination, and what it carried. */
export interface WirePacket {
  src: string;
  dst: string;
  kind: "esp" | "vxlan" | "other";
  /** The VNI, for VXLAN. */
  vni?: number;
}

/**
 * tcpdump's one-line summaries (tcpdump 4.99, -nn): `IP 192.0.2.2 > 192.0.2.3: ESP(spi=0x...,seq=0x5)`,
 * `IP 192.0.2.2.43512 > 192.0.2.3.4789: VXLAN, flags [I] (0x08), vni 4097`, anything else is "other".
 * A leading timestamp is allowed; lines that are not IPv4 are skipped.
 */
export function parseTcpdump(text: string): WirePacket[] {
  const out: WirePacket[] = [];
  for (const line of text.split("\n")) {
    const m = /\bIP (\d+\.\d+\.\d+\.\d+)(?:\.\d+)? > (\d+\.\d+\.\d+\.\d+)(?:\.(\d+))?: (.*)$/.exec(line);
    if (!m) continue;
    const rest = m[4]!;
    const vni = /^VXLAN\b.*\bvni (\d+)/.exec(rest);
    out.push({
      src: m[1]!,
      dst: m[2]!,
      kind: rest.startsWith("ESP") ? "esp" : vni || m[3] === "4789" ? "vxlan" : "other",
      ...(vni ? { vni: Number(vni[1]) } : {}),
    });
  }
  return out;
}

// ---- a crafted VXLAN frame -------------------------------------------------------------------------------

function checksum(b: Buffer): number {
  let sum = 0;
  for (let i = 0; i < b.length; i += 2) sum += (b[i]! << 8) + (i + 1 < b.length ? b[i + 1]! : 0);
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return ~sum & 0xffff;
}

const mac = (m: string) => Buffer.from(m.split(":").map((x) => Number.parseInt(x, 16)));
const ip4 = (a: string) => Buffer.from(a.split(".").map(Number));

/**
 * The UDP payload of a VXLAN packet (8-byte VXLAN header with the I flag and `vni`) carrying an Ethernet
 * frame with an ICMP echo request from (srcMac, srcIp) to (dstMac, dstIp): what a host without IPsec
 * would send for that VNI.
 */
export function vxlanEchoRequest(
  vni: number,
  f: { srcMac: string; dstMac: string; srcIp: string; dstIp: string; id: number; seq: number },
): Buffer {
  const icmp = Buffer.alloc(8 + 32, 0x61);
  icmp.writeUInt8(8, 0);
  icmp.writeUInt8(0, 1);
  icmp.writeUInt16BE(0, 2);
  icmp.writeUInt16BE(f.id, 4);
  icmp.writeUInt16BE(f.seq, 6);
  icmp.writeUInt16BE(checksum(icmp), 2);
  const ip = Buffer.alloc(20);
  ip.writeUInt8(0x45, 0);
  ip.writeUInt16BE(20 + icmp.length, 2);
  ip.writeUInt16BE(f.seq, 4);
  ip.writeUInt8(64, 8);
  ip.writeUInt8(1, 9);
  ip4(f.srcIp).copy(ip, 12);
  ip4(f.dstIp).copy(ip, 16);
  ip.writeUInt16BE(checksum(ip), 10);
  const eth = Buffer.concat([mac(f.dstMac), mac(f.srcMac), Buffer.from([0x08, 0x00])]);
  const vxlan = Buffer.alloc(8);
  vxlan.writeUInt8(0x08, 0);
  vxlan.writeUIntBE(vni, 4, 3);
  return Buffer.concat([vxlan, eth, ip, icmp]);
}

// ---- the Engine API over a lab host's socket -----------------------------------------------------------

/** GET a path of the Engine API on a unix socket; the parsed JSON answer (throws on a non-2xx status). */
export function apiGet(socketPath: string, path: string, timeoutMs = 30_000): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path, method: "GET", timeout: timeoutMs }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => {
        body += d;
      });
      res.on("end", () => {
        if ((res.statusCode ?? 0) >= 300) {
          reject(new Error(`GET ${path}: ${res.statusCode} ${body}`));
          return;
        }
        try {
          resolve(JSON.parse(body) as unknown);
        } catch (e) {
          reject(new Error(`GET ${path}: not JSON (${(e as Error).message})`));
        }
      });
    });
    req.on("timeout", () => req.destroy(new Error(`GET ${path}: no answer in ${timeoutMs} ms`)));
    req.on("error", reject);
    req.end();
  });
}
