// EmbeddedDns without namespaces: each "container" gets sockets on 127.0.0.1 (random ports) through the
// injected openSockets, and fake upstream servers run on 127.0.0.1 too. Everything opened is closed in
// afterEach.

import dgram from "node:dgram";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import {
  buildQuery,
  buildResponse,
  type ContainerSockets,
  type DnsMessage,
  EmbeddedDns,
  type EmbeddedDnsOptions,
  parseMessage,
  parseQuery,
  parseResolvConf,
  parseUpstream,
  RCODE_FORMERR,
  RCODE_NXDOMAIN,
  RCODE_SERVFAIL,
  TYPE_A,
  TYPE_AAAA,
  TYPE_MX,
} from "../../src/dataplane/dns.js";

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function listen<T extends dgram.Socket | net.Server>(s: T): Promise<T> {
  return new Promise((resolve, reject) => {
    s.once("error", reject);
    const done = () => resolve(s);
    if (s instanceof dgram.Socket) s.bind(0, "127.0.0.1", done);
    else (s as net.Server).listen(0, "127.0.0.1", done);
  });
}

async function localSockets(): Promise<ContainerSockets> {
  return { udp: await listen(dgram.createSocket("udp4")), tcp: await listen(net.createServer()) };
}

/** A fake upstream: answers `known` names with their address, NXDOMAIN otherwise, over UDP and TCP. */
async function fakeUpstream(known: Record<string, string>, opts: { silent?: boolean } = {}) {
  const received: { id: number; name: string; transport: string }[] = [];
  const answer = (msg: Buffer, transport: string): Buffer | undefined => {
    const p = parseQuery(msg);
    if (p.kind !== "query") return undefined;
    received.push({ id: p.query.header.id, name: p.query.question.name, transport });
    if (opts.silent) return undefined;
    const ip = known[p.query.question.name.toLowerCase()];
    return ip
      ? buildResponse(p.query, { addresses: [ip], ttl: 300 })
      : buildResponse(p.query, { rcode: RCODE_NXDOMAIN });
  };
  const udp = await listen(dgram.createSocket("udp4"));
  udp.on("message", (msg, rinfo) => {
    const r = answer(msg, "udp");
    if (r) udp.send(r, rinfo.port, rinfo.address);
  });
  const conns = new Set<net.Socket>();
  const tcp = net.createServer((c) => {
    conns.add(c);
    c.on("close", () => conns.delete(c));
    c.on("error", () => {});
    let buf = Buffer.alloc(0);
    c.on("data", (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        const msg = buf.subarray(2, 2 + buf.readUInt16BE(0));
        buf = buf.subarray(2 + msg.length);
        const r = answer(msg, "tcp");
        if (r) c.write(Buffer.concat([Buffer.from([r.length >> 8, r.length & 0xff]), r]));
      }
    });
  });
  // The TCP server on the same port as the UDP one, so one "host:port" names both.
  const port = udp.address().port;
  await new Promise<void>((resolve, reject) => {
    tcp.once("error", reject);
    tcp.listen(port, "127.0.0.1", resolve);
  });
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        for (const c of conns) c.destroy();
        udp.close();
        tcp.close(() => resolve());
      }),
  );
  return { addr: `127.0.0.1:${port}`, received };
}

/** A port with nothing listening (bound then closed): queries to it get ICMP port unreachable. */
async function deadPort(): Promise<string> {
  const s = await listen(dgram.createSocket("udp4"));
  const port = s.address().port;
  await new Promise<void>((r) => s.close(() => r()));
  return `127.0.0.1:${port}`;
}

const TABLE: Record<string, Record<string, string[]>> = {
  c1: { web: ["10.0.1.2"], frontend: ["10.0.1.2"], db: ["10.0.1.3"], svc: ["10.0.1.10", "10.0.1.11"] },
};

async function start(opts: Partial<EmbeddedDnsOptions> = {}) {
  const lookups: string[] = [];
  const sockets: ContainerSockets[] = [];
  const dns = new EmbeddedDns({
    lookup: (cid, name) => {
      lookups.push(`${cid}:${name}`);
      return TABLE[cid]?.[name] ?? [];
    },
    upstream: [],
    openSockets: async () => {
      const s = await localSockets();
      sockets.push(s);
      return s;
    },
    ...opts,
  });
  cleanups.push(() => dns.close());
  await dns.addContainer("c1", "/run/test/c1");
  const port = sockets[0]!.udp.address().port;
  return { dns, lookups, sockets, port };
}

/** Send one query over UDP and return the parsed reply (or undefined after `waitMs`). */
function askUdp(port: number, packet: Buffer, waitMs = 3000): Promise<DnsMessage | undefined> {
  return new Promise((resolve, reject) => {
    const s = dgram.createSocket("udp4");
    const timer = setTimeout(() => {
      s.close();
      resolve(undefined);
    }, waitMs);
    s.on("message", (msg) => {
      clearTimeout(timer);
      s.close();
      const m = parseMessage(msg);
      if (m.ok) resolve(m.value);
      else reject(new Error(m.error));
    });
    s.send(packet, port, "127.0.0.1");
  });
}

function askTcp(port: number, packet: Buffer): Promise<DnsMessage> {
  return new Promise((resolve, reject) => {
    const c = net.connect(port, "127.0.0.1");
    let buf = Buffer.alloc(0);
    c.on("error", reject);
    c.on("connect", () => c.write(Buffer.concat([Buffer.from([packet.length >> 8, packet.length & 0xff]), packet])));
    c.on("data", (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        c.destroy();
        const m = parseMessage(buf.subarray(2, 2 + buf.readUInt16BE(0)));
        if (m.ok) resolve(m.value);
        else reject(new Error(m.error));
      }
    });
  });
}

const addrs = (m: DnsMessage | undefined) => m?.answers.map((a) => a.data);

describe("EmbeddedDns answering", () => {
  it("answers names and aliases from lookup, case-insensitively, with a 10 s TTL", async () => {
    const { port, lookups } = await start();
    const r = await askUdp(port, buildQuery(0x1111, "WEB", TYPE_A));
    expect(r?.header).toMatchObject({ id: 0x1111, qr: true, aa: true, rcode: 0 });
    expect(r?.questions[0]?.name).toBe("WEB"); // echoed as asked
    expect(addrs(r)).toEqual(["10.0.1.2"]);
    expect(r?.answers[0]?.ttl).toBe(10);
    expect(lookups).toEqual(["c1:web"]);
    expect(addrs(await askUdp(port, buildQuery(2, "frontend.", TYPE_A)))).toEqual(["10.0.1.2"]);
    expect(addrs(await askUdp(port, buildQuery(3, "svc", TYPE_A)))).toEqual(["10.0.1.10", "10.0.1.11"]);
  });

  it("answers other types of a known name with an empty NOERROR, without asking upstream", async () => {
    const up = await fakeUpstream({});
    const { port } = await start({ upstream: [up.addr] });
    for (const type of [TYPE_AAAA, TYPE_MX]) {
      const r = await askUdp(port, buildQuery(7, "web", type));
      expect(r?.header).toMatchObject({ id: 7, rcode: 0, aa: true });
      expect(r?.answers).toEqual([]);
    }
    expect(up.received).toEqual([]);
  });

  it("honours a configurable TTL", async () => {
    const { port } = await start({ ttl: 600 });
    expect((await askUdp(port, buildQuery(1, "db")))?.answers[0]?.ttl).toBe(600);
  });

  it("answers FORMERR to a broken query and nothing to garbage, and keeps serving", async () => {
    const { port } = await start();
    const broken = Buffer.from(buildQuery(0x4242, "web").subarray(0, 15));
    const r = await askUdp(port, broken);
    expect(r?.header).toMatchObject({ id: 0x4242, rcode: RCODE_FORMERR });
    expect(await askUdp(port, Buffer.from("hello"), 300)).toBeUndefined();
    const response = Buffer.from(buildQuery(1, "web"));
    response[2]! |= 0x80; // QR: a response
    expect(await askUdp(port, response, 300)).toBeUndefined(); // responses are never answered
    expect(addrs(await askUdp(port, buildQuery(5, "web")))).toEqual(["10.0.1.2"]);
  });

  it("answers SERVFAIL when lookup throws", async () => {
    const { port } = await start({
      lookup: () => {
        throw new Error("store unavailable");
      },
    });
    expect((await askUdp(port, buildQuery(9, "web")))?.header.rcode).toBe(RCODE_SERVFAIL);
  });

  it("ignores addresses from lookup that are not IPv4", async () => {
    const { port } = await start({ lookup: () => ["10.0.0.1", "fd00::1", "10.0.0.1", "bogus"] });
    expect(addrs(await askUdp(port, buildQuery(9, "web")))).toEqual(["10.0.0.1"]);
  });

  it("truncates with TC over UDP and answers everything over TCP", async () => {
    const many = Array.from({ length: 100 }, (_, i) => `10.0.2.${i + 1}`);
    const { port, sockets } = await start({ lookup: () => many });
    const udp = await askUdp(port, buildQuery(1, "big"));
    expect(udp?.header.tc).toBe(true);
    expect(udp?.answers.length).toBe(30);
    const edns = await askUdp(port, buildQuery(1, "big", TYPE_A, { ednsUdpSize: 4096 }));
    expect(edns?.answers.length).toBe(Math.floor((1232 - 12 - 5 - 4 - 11) / 16));
    const tcpPort = (sockets[0]!.tcp.address() as net.AddressInfo).port;
    const all = await askTcp(tcpPort, buildQuery(2, "big"));
    expect(all.header).toMatchObject({ id: 2, tc: false });
    expect(addrs(all)).toEqual(many);
  });
});

describe("EmbeddedDns forwarding", () => {
  it("forwards unknown names under a fresh id and relays the answer under the client's", async () => {
    const up = await fakeUpstream({ "ext.example": "203.0.113.7" });
    const { port } = await start({ upstream: [up.addr] });
    const r = await askUdp(port, buildQuery(0xabcd, "ext.example"));
    expect(r?.header).toMatchObject({ id: 0xabcd, rcode: 0 });
    expect(addrs(r)).toEqual(["203.0.113.7"]);
    const nx = await askUdp(port, buildQuery(0x0101, "nope.example"));
    expect(nx?.header).toMatchObject({ id: 0x0101, rcode: RCODE_NXDOMAIN });
    expect(up.received.map((q) => q.name)).toEqual(["ext.example", "nope.example"]);
    // Random ids upstream (a clash with both client ids has odds 2/65536).
    expect(up.received.map((q) => q.id)).not.toEqual([0xabcd, 0x0101]);
  });

  it("forwards over TCP what came over TCP", async () => {
    const up = await fakeUpstream({ "ext.example": "203.0.113.7" });
    const { sockets } = await start({ upstream: [up.addr] });
    const tcpPort = (sockets[0]!.tcp.address() as net.AddressInfo).port;
    const r = await askTcp(tcpPort, buildQuery(0x5555, "ext.example"));
    expect(r.header.id).toBe(0x5555);
    expect(addrs(r)).toEqual(["203.0.113.7"]);
    expect(up.received.map((q) => q.transport)).toEqual(["tcp"]);
  });

  it("tries the next server when one refuses or stays silent", async () => {
    const silent = await fakeUpstream({}, { silent: true });
    const good = await fakeUpstream({ "ext.example": "203.0.113.8" });
    const { port } = await start({ upstream: [await deadPort(), silent.addr, good.addr], upstreamTimeoutMs: 300 });
    const t0 = Date.now();
    const r = await askUdp(port, buildQuery(77, "ext.example"));
    expect(r?.header.id).toBe(77);
    expect(addrs(r)).toEqual(["203.0.113.8"]);
    expect(silent.received.length).toBe(1);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(290);
  });

  it("answers SERVFAIL when every server fails, or there is none", async () => {
    const { port } = await start({ upstream: [await deadPort()], upstreamTimeoutMs: 300 });
    expect((await askUdp(port, buildQuery(3, "ext.example")))?.header).toMatchObject({ id: 3, rcode: RCODE_SERVFAIL });
    const none = await start({ upstream: [] });
    expect((await askUdp(none.port, buildQuery(4, "ext.example")))?.header).toMatchObject({
      id: 4,
      rcode: RCODE_SERVFAIL,
    });
  });

  it("answers SERVFAIL beyond maxInflight forwarded queries", async () => {
    const silent = await fakeUpstream({}, { silent: true });
    const { port } = await start({ upstream: [silent.addr], upstreamTimeoutMs: 500, maxInflight: 1 });
    const first = askUdp(port, buildQuery(1, "a.example"));
    await new Promise((r) => setTimeout(r, 50));
    const second = await askUdp(port, buildQuery(2, "b.example"));
    expect(second?.header).toMatchObject({ id: 2, rcode: RCODE_SERVFAIL });
    expect((await first)?.header).toMatchObject({ id: 1, rcode: RCODE_SERVFAIL });
  });

  it("reads the upstream servers from resolv.conf by default", async () => {
    const dir = await mkdtemp(join(tmpdir(), "shoal-dns-"));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const path = join(dir, "resolv.conf");
    await writeFile(path, "# nothing\nsearch example\n");
    const { port } = await start({ upstream: undefined, resolvConfPath: path });
    expect((await askUdp(port, buildQuery(3, "ext.example")))?.header.rcode).toBe(RCODE_SERVFAIL);
  });
});

describe("EmbeddedDns containers", () => {
  it("closes a container's sockets on removeContainer and on close", async () => {
    const { dns, sockets, port } = await start();
    await dns.addContainer("c2", "/run/test/c2");
    expect(dns.containers().sort()).toEqual(["c1", "c2"]);
    await dns.removeContainer("c1");
    expect(() => sockets[0]!.udp.address()).toThrow(/not running/i);
    expect(sockets[0]!.tcp.listening).toBe(false);
    expect(await askUdp(port, buildQuery(1, "web"), 300)).toBeUndefined();
    await dns.removeContainer("c1"); // idempotent
    await dns.close();
    expect(sockets[1]!.tcp.listening).toBe(false);
    expect(dns.containers()).toEqual([]);
    await expect(dns.addContainer("c3", "/run/test/c3")).rejects.toThrow(/closed/);
  });

  it("is idempotent for the same namespace and replaces the sockets for another", async () => {
    const { dns, sockets } = await start();
    await dns.addContainer("c1", "/run/test/c1");
    expect(sockets.length).toBe(1);
    await dns.addContainer("c1", "/run/test/c1-again");
    expect(sockets.length).toBe(2);
    expect(sockets[0]!.tcp.listening).toBe(false);
    expect(sockets[1]!.tcp.listening).toBe(true);
  });

  it("closes the sockets of an add that a remove overtook", async () => {
    let release: () => void = () => {};
    const gate = new Promise<void>((r) => {
      release = r;
    });
    const made: ContainerSockets[] = [];
    const dns = new EmbeddedDns({
      lookup: () => [],
      openSockets: async () => {
        await gate;
        const s = await localSockets();
        made.push(s);
        return s;
      },
    });
    cleanups.push(() => dns.close());
    const adding = dns.addContainer("c9", "/run/test/c9");
    await dns.removeContainer("c9");
    release();
    await adding;
    expect(dns.containers()).toEqual([]);
    await new Promise((r) => setTimeout(r, 10));
    expect(made[0]!.tcp.listening).toBe(false);
  });

  it("propagates a failure to open the sockets", async () => {
    const dns = new EmbeddedDns({
      lookup: () => [],
      openSockets: async (p) => {
        throw new Error(`no namespace at ${p}`);
      },
    });
    cleanups.push(() => dns.close());
    await expect(dns.addContainer("c1", "/nope")).rejects.toThrow(/no namespace at \/nope/);
    expect(dns.containers()).toEqual([]);
  });
});

describe("upstream configuration", () => {
  it("parses host, host:port and IPv6 forms", () => {
    expect(parseUpstream("192.0.2.53")).toEqual({ host: "192.0.2.53", port: 53, family: 4 });
    expect(parseUpstream("127.0.0.1:5353")).toEqual({ host: "127.0.0.1", port: 5353, family: 4 });
    expect(parseUpstream("2001:db8::53")).toEqual({ host: "2001:db8::53", port: 53, family: 6 });
    expect(parseUpstream("[2001:db8::53]:5300")).toEqual({ host: "2001:db8::53", port: 5300, family: 6 });
    for (const bad of ["", "dns.example", "1.2.3.4:0", "1.2.3.4:70000", "[::1", "1.2.3:53"]) {
      expect(() => parseUpstream(bad), bad).toThrow(/invalid DNS upstream/);
    }
    expect(() => new EmbeddedDns({ lookup: () => [], upstream: ["nope"] })).toThrow(/invalid DNS upstream/);
  });

  it("reads the nameservers of resolv.conf, keeping loopback ones (we forward from the host namespace)", () => {
    const text = [
      "# generated",
      "nameserver 127.0.0.53",
      "nameserver   192.0.2.1 # office",
      "; nameserver 192.0.2.99",
      "nameserver fe80::1%eth0",
      "nameserver not-an-ip",
      "search example.com",
      "options edns0",
    ].join("\n");
    expect(parseResolvConf(text).map((u) => `${u.host}/${u.family}`)).toEqual([
      "127.0.0.53/4",
      "192.0.2.1/4",
      "fe80::1%eth0/6",
    ]);
  });
});
