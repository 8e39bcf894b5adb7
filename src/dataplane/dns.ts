// The embedded DNS server: every container's resolv.conf says `nameserver 127.0.0.11`, and the daemon
// answers there, inside each container's own network namespace, without a process per container.
//
// addContainer() has a short-lived helper enter the container's namespace, bind UDP and TCP sockets on
// 127.0.0.11:53 and hand them to the daemon over IPC (see dns-child.ts); the helper then exits and the
// daemon serves the namespace through those sockets. A query is answered from `lookup` (names and aliases
// of containers that share a network with the asking container, on any host); any other name is forwarded
// to the upstream resolvers from the daemon's own namespace and the answer relayed under the client's id.
//
// Answers carry a short TTL (10 s by default, where Docker uses 600 s): they cost the daemon a map lookup,
// so caching them saves nothing, while a long TTL lets caching clients (JVMs, nscd, dnsmasq, Go/Node
// libraries with a cache) keep dialling a task's old address for ten minutes after Swarm rescheduled it.
// Negative answers carry no SOA, so they are not cached at all (RFC 2308): a container that starts a
// moment later resolves at once.

import { randomInt } from "node:crypto";
import dgram from "node:dgram";
import { readFile, stat } from "node:fs/promises";
import net from "node:net";
import pino, { type Logger } from "pino";
import { openNsSockets } from "./dns-child.js";
import {
  buildErrorResponse,
  buildResponse,
  CLASS_ANY,
  CLASS_IN,
  canonicalName,
  type DnsQuery,
  EDNS_UDP_SIZE,
  HEADER_LEN,
  parseHeader,
  parseQuery,
  RCODE_NOERROR,
  RCODE_SERVFAIL,
  TCP_MAX_SIZE,
  TYPE_A,
  TYPE_ANY,
  UDP_MIN_SIZE,
  withId,
} from "./dns-codec.js";

export { DNS_CHILD_SCRIPT, type NsSockets, openNsSockets } from "./dns-child.js";
export * from "./dns-codec.js";

/** IPv4 addresses of `name` as seen by container `containerId` ([] when it is not a name we own). */
export type DnsLookup = (containerId: string, name: string) => string[];

/** The two sockets a container's resolver talks to (the helper in dns-child.ts makes them). */
export interface ContainerSockets {
  udp: dgram.Socket;
  tcp: net.Server;
}

export interface EmbeddedDnsOptions {
  logger?: Logger;
  /**
   * Upstream resolvers for names `lookup` does not know: "1.2.3.4", "1.2.3.4:5353", "2001:db8::1" or
   * "[2001:db8::1]:5353". Default: the nameservers of the host's resolv.conf, re-read when it changes.
   * None at all: such queries get SERVFAIL.
   */
  upstream?: string[];
  lookup: DnsLookup;
  /** TTL of the A records we answer. Default 10 s. */
  ttl?: number;
  /** How long to wait for one upstream server before trying the next. Default 2000 ms. */
  upstreamTimeoutMs?: number;
  /** The host's resolver configuration (used when `upstream` is not given). Default /etc/resolv.conf. */
  resolvConfPath?: string;
  /** Forwarded queries in flight at most (each holds a socket); beyond, queries get SERVFAIL. Default 512. */
  maxInflight?: number;
  /** Idle TCP client connections are closed after this long. Default 10 s. */
  tcpIdleMs?: number;
  /** How to get a container's sockets (default: openNsSockets, 127.0.0.11:53 in the namespace). */
  openSockets?: (netnsPath: string) => Promise<ContainerSockets>;
}

export interface Upstream {
  host: string;
  port: number;
  family: 4 | 6;
}

/** Parse "host", "host:port", "v6" or "[v6]:port" (port default 53). Throws on anything else. */
export function parseUpstream(spec: string): Upstream {
  const s = spec.trim();
  let host = s;
  let port = 53;
  const bracket = /^\[([^\]]+)\](?::(\d+))?$/.exec(s);
  if (bracket) {
    host = bracket[1]!;
    if (bracket[2] !== undefined) port = Number(bracket[2]);
  } else if (net.isIPv6(s)) {
    host = s;
  } else {
    const m = /^([^:]+):(\d+)$/.exec(s);
    if (m) {
      host = m[1]!;
      port = Number(m[2]);
    }
  }
  const family = net.isIP(host.split("%")[0]!);
  if ((family !== 4 && family !== 6) || !(port >= 1 && port <= 65_535)) {
    throw new Error(`invalid DNS upstream ${JSON.stringify(spec)}: use an IP address, optionally with :port`);
  }
  return { host, port, family };
}

/**
 * The nameservers of a resolv.conf text, in order. Loopback entries (127.0.0.53 of systemd-resolved, a
 * local dnsmasq...) are kept: we forward from the daemon's own network namespace, where they are the
 * host's resolvers (a container could not reach them from its namespace, but it never has to).
 */
export function parseResolvConf(text: string): Upstream[] {
  const out: Upstream[] = [];
  for (const raw of text.split("\n")) {
    const line = raw.replace(/[#;].*$/, "").trim();
    const m = /^nameserver\s+(\S+)/.exec(line);
    if (!m) continue;
    const addr = m[1]!;
    const family = net.isIP(addr.split("%")[0]!);
    if (family === 4 || family === 6) out.push({ host: addr, port: 53, family });
  }
  return out;
}

interface Entry {
  containerId: string;
  netnsPath: string;
  udp: dgram.Socket;
  tcp: net.Server;
  conns: Set<net.Socket>;
}

type Transport = "udp" | "tcp";

const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

export class EmbeddedDns {
  private readonly log: Logger;
  private readonly lookup: DnsLookup;
  private readonly ttl: number;
  private readonly timeoutMs: number;
  private readonly maxInflight: number;
  private readonly tcpIdleMs: number;
  private readonly resolvConfPath: string;
  private readonly fixedUpstream: Upstream[] | undefined;
  private readonly openSockets: (netnsPath: string) => Promise<ContainerSockets>;
  private readonly entries = new Map<string, Entry>();
  /** The latest addContainer call per container; an older one that finishes late gives way. */
  private readonly wanted = new Map<string, number>();
  private generation = 0;
  private inflight = 0;
  private readonly forwardSockets = new Set<dgram.Socket | net.Socket>();
  private resolvCache: { mtimeMs: number; checkedAt: number; servers: Upstream[] } | undefined;
  private closed = false;

  constructor(opts: EmbeddedDnsOptions) {
    this.log = (opts.logger ?? pino({ level: "silent" })).child({ component: "dns" });
    this.lookup = opts.lookup;
    this.ttl = opts.ttl ?? 10;
    this.timeoutMs = opts.upstreamTimeoutMs ?? 2000;
    this.maxInflight = opts.maxInflight ?? 512;
    this.tcpIdleMs = opts.tcpIdleMs ?? 10_000;
    this.resolvConfPath = opts.resolvConfPath ?? "/etc/resolv.conf";
    this.fixedUpstream = opts.upstream?.map(parseUpstream);
    this.openSockets = opts.openSockets ?? ((p) => openNsSockets(p));
  }

  /** Containers currently served. */
  containers(): string[] {
    return [...this.entries.keys()];
  }

  /**
   * Serve DNS on 127.0.0.11:53 inside the network namespace at `netnsPath` for container `containerId`.
   * Idempotent for the same namespace; a different namespace replaces the old sockets. Rejects (serving
   * nothing new) if the sockets cannot be made, e.g. the namespace is gone or port 53 is taken there.
   */
  async addContainer(containerId: string, netnsPath: string): Promise<void> {
    if (this.closed) throw new Error("the embedded DNS server is closed");
    const current = this.entries.get(containerId);
    if (current && current.netnsPath === netnsPath && this.wanted.get(containerId) === undefined) return;
    const gen = ++this.generation;
    this.wanted.set(containerId, gen);
    let sockets: ContainerSockets;
    try {
      sockets = await this.openSockets(netnsPath);
    } catch (err) {
      if (this.wanted.get(containerId) === gen) this.wanted.delete(containerId);
      throw err;
    }
    if (this.closed || this.wanted.get(containerId) !== gen) {
      // Removed (or re-added elsewhere, or the server closed) while the helper ran.
      void closeSockets(sockets, new Set());
      if (this.closed) throw new Error("the embedded DNS server is closed");
      return;
    }
    this.wanted.delete(containerId);
    const old = this.entries.get(containerId);
    if (old) void closeSockets(old, old.conns);
    const entry: Entry = { containerId, netnsPath, ...sockets, conns: new Set() };
    this.entries.set(containerId, entry);
    this.serve(entry);
    this.log.debug({ container: containerId, netns: netnsPath }, "serving DNS in container namespace");
  }

  /**
   * Stop serving a container and close its sockets (which also releases its namespace). Idempotent. The
   * sockets are closed when this returns; the promise settles once Node has finished closing them.
   */
  removeContainer(containerId: string): Promise<void> {
    this.wanted.delete(containerId);
    const entry = this.entries.get(containerId);
    if (!entry) return Promise.resolve();
    this.entries.delete(containerId);
    this.log.debug({ container: containerId }, "stopped serving DNS");
    return closeSockets(entry, entry.conns);
  }

  /** Close every container's sockets and every forwarded query in flight. */
  close(): Promise<void> {
    this.closed = true;
    const closing = [...this.entries.keys()].map((id) => this.removeContainer(id));
    this.wanted.clear();
    for (const s of this.forwardSockets) destroyForward(s);
    this.forwardSockets.clear();
    return Promise.all(closing).then(() => undefined);
  }

  /**
   * The reply to one query packet from `containerId` (undefined: send nothing). Never throws. Exposed for
   * tests and for transports other than the ones addContainer sets up.
   */
  async answer(containerId: string, packet: Buffer, transport: Transport = "udp"): Promise<Buffer | undefined> {
    try {
      return await this.answerUnsafe(containerId, packet, transport);
    } catch (err) {
      this.log.warn({ err, container: containerId }, "DNS query failed");
      const h = parseHeader(packet);
      return h.ok && !h.value.qr ? buildErrorResponse(h.value, RCODE_SERVFAIL) : undefined;
    }
  }

  // ---- serving ------------------------------------------------------------------------------------------

  private serve(entry: Entry): void {
    const { udp, tcp } = entry;
    udp.on("message", (msg, rinfo) => {
      void this.answer(entry.containerId, msg, "udp").then((reply) => {
        if (!reply || this.entries.get(entry.containerId) !== entry) return;
        try {
          udp.send(reply, rinfo.port, rinfo.address, (err) => {
            if (err) this.log.debug({ err, container: entry.containerId }, "cannot send DNS reply");
          });
        } catch (err) {
          this.log.debug({ err, container: entry.containerId }, "cannot send DNS reply");
        }
      });
    });
    udp.on("error", (err) => this.log.warn({ err, container: entry.containerId }, "DNS udp socket error"));
    tcp.maxConnections = 64;
    tcp.on("error", (err) => this.log.warn({ err, container: entry.containerId }, "DNS tcp socket error"));
    tcp.on("connection", (conn) => this.serveTcp(entry, conn));
  }

  /** RFC 1035 4.2.2 / RFC 7766: 2-byte length-prefixed messages, pipelined; replies may come out of order. */
  private serveTcp(entry: Entry, conn: net.Socket): void {
    entry.conns.add(conn);
    conn.setTimeout(this.tcpIdleMs, () => conn.destroy());
    conn.on("error", () => conn.destroy());
    conn.on("close", () => entry.conns.delete(conn));
    let buf: Buffer = Buffer.alloc(0);
    conn.on("data", (chunk: Buffer) => {
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
      while (buf.length >= 2) {
        const len = buf.readUInt16BE(0);
        if (buf.length < 2 + len) break;
        const msg = buf.subarray(2, 2 + len);
        buf = buf.subarray(2 + len);
        void this.answer(entry.containerId, msg, "tcp").then((reply) => {
          if (!reply || conn.destroyed) return;
          if (reply.length > TCP_MAX_SIZE) return;
          const lenBuf = Buffer.alloc(2);
          lenBuf.writeUInt16BE(reply.length, 0);
          conn.write(Buffer.concat([lenBuf, reply]));
        });
      }
    });
  }

  private async answerUnsafe(containerId: string, packet: Buffer, transport: Transport): Promise<Buffer | undefined> {
    const parsed = parseQuery(packet);
    if (parsed.kind === "drop") return undefined;
    if (parsed.kind === "error") {
      this.log.debug({ container: containerId, reason: parsed.reason }, "bad DNS query");
      return buildErrorResponse(parsed.header, parsed.rcode);
    }
    const query = parsed.query;
    const q = query.question;
    const maxSize =
      transport === "tcp"
        ? TCP_MAX_SIZE
        : query.edns
          ? Math.min(Math.max(query.edns.udpSize, UDP_MIN_SIZE), EDNS_UDP_SIZE)
          : UDP_MIN_SIZE;
    if ((q.class === CLASS_IN || q.class === CLASS_ANY) && q.name !== "") {
      let addrs: string[];
      try {
        addrs = this.lookup(containerId, canonicalName(q.name));
      } catch (err) {
        this.log.warn({ err, container: containerId, name: q.name }, "DNS lookup failed");
        return buildResponse(query, { rcode: RCODE_SERVFAIL });
      }
      const valid = [...new Set(addrs.filter((a) => IPV4.test(a)))];
      if (valid.length < addrs.length) {
        this.log.warn({ container: containerId, name: q.name, addrs }, "lookup returned non-IPv4 addresses; ignored");
      }
      if (valid.length > 0) {
        // A name we own: A (or ANY) gets its addresses, any other type an empty NOERROR, at once, so a
        // resolver asking A and AAAA in parallel does not wait for an upstream that cannot know the name.
        const wantsA = q.type === TYPE_A || q.type === TYPE_ANY;
        return buildResponse(query, {
          rcode: RCODE_NOERROR,
          addresses: wantsA ? valid : [],
          ttl: this.ttl,
          aa: true,
          maxSize,
        });
      }
    }
    return this.forward(containerId, packet, query, transport);
  }

  // ---- forwarding ---------------------------------------------------------------------------------------

  private async upstreams(): Promise<Upstream[]> {
    if (this.fixedUpstream) return this.fixedUpstream;
    const now = Date.now();
    const cache = this.resolvCache;
    if (cache && now - cache.checkedAt < 1000) return cache.servers;
    try {
      const st = await stat(this.resolvConfPath);
      if (cache && cache.mtimeMs === st.mtimeMs) {
        cache.checkedAt = now;
        return cache.servers;
      }
      const servers = parseResolvConf(await readFile(this.resolvConfPath, "utf8"));
      this.resolvCache = { mtimeMs: st.mtimeMs, checkedAt: now, servers };
      this.log.info({ servers: servers.map((s) => s.host) }, "DNS upstream servers from resolv.conf");
      return servers;
    } catch (err) {
      if (!cache || cache.servers.length > 0) this.log.warn({ err }, `cannot read ${this.resolvConfPath}`);
      this.resolvCache = { mtimeMs: -1, checkedAt: now, servers: [] };
      return [];
    }
  }

  private async forward(
    containerId: string,
    packet: Buffer,
    query: DnsQuery,
    transport: Transport,
  ): Promise<Buffer | undefined> {
    const servers = await this.upstreams();
    if (servers.length === 0) {
      this.log.debug({ container: containerId, name: query.question.name }, "no upstream DNS server: SERVFAIL");
      return buildResponse(query, { rcode: RCODE_SERVFAIL });
    }
    if (this.inflight >= this.maxInflight) {
      this.log.warn({ container: containerId }, "too many forwarded DNS queries in flight: SERVFAIL");
      return buildResponse(query, { rcode: RCODE_SERVFAIL });
    }
    this.inflight++;
    try {
      for (const server of servers) {
        if (this.closed) return undefined;
        try {
          const reply =
            transport === "udp" ? await this.exchangeUdp(server, packet) : await this.exchangeTcp(server, packet);
          return withId(reply, query.header.id);
        } catch (err) {
          this.log.debug(
            { err: (err as Error).message, server: `${server.host}:${server.port}`, name: query.question.name },
            "upstream DNS server failed; trying the next",
          );
        }
      }
      return buildResponse(query, { rcode: RCODE_SERVFAIL });
    } finally {
      this.inflight--;
    }
  }

  /**
   * One query to one server over UDP from a fresh socket (a random source port) under a random id; only a
   * response from that server (the socket is connected) with that id counts.
   */
  private exchangeUdp(server: Upstream, packet: Buffer): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      const id = randomInt(0x10000);
      const sock = dgram.createSocket(server.family === 6 ? "udp6" : "udp4");
      this.forwardSockets.add(sock);
      let settled = false;
      const finish = (err: Error | undefined, reply?: Buffer) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.forwardSockets.delete(sock);
        destroyForward(sock);
        if (err) reject(err);
        else resolve(reply!);
      };
      const timer = setTimeout(() => finish(new Error(`no answer in ${this.timeoutMs} ms`)), this.timeoutMs);
      sock.on("error", (err) => finish(err));
      sock.on("close", () => finish(new Error("closed")));
      sock.on("message", (msg) => {
        const h = parseHeader(msg);
        if (h.ok && h.value.qr && h.value.id === id) finish(undefined, msg);
      });
      // Node calls this with an error when the connect fails (no route to the server, say).
      sock.connect(server.port, server.host, ((err?: Error) => {
        if (err) {
          finish(err);
          return;
        }
        try {
          sock.send(withId(packet, id), (e) => {
            if (e) finish(e);
          });
        } catch (e) {
          finish(e as Error);
        }
      }) as () => void);
    });
  }

  private exchangeTcp(server: Upstream, packet: Buffer): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      const id = randomInt(0x10000);
      const sock = net.connect({ host: server.host, port: server.port });
      this.forwardSockets.add(sock);
      let settled = false;
      let buf: Buffer = Buffer.alloc(0);
      const finish = (err: Error | undefined, reply?: Buffer) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.forwardSockets.delete(sock);
        sock.destroy();
        if (err) reject(err);
        else resolve(reply!);
      };
      const timer = setTimeout(() => finish(new Error(`no answer in ${this.timeoutMs} ms`)), this.timeoutMs);
      sock.on("error", (err) => finish(err));
      sock.on("close", () => finish(new Error("connection closed")));
      sock.on("connect", () => {
        const lenBuf = Buffer.alloc(2);
        lenBuf.writeUInt16BE(packet.length, 0);
        sock.write(Buffer.concat([lenBuf, withId(packet, id)]));
      });
      sock.on("data", (chunk: Buffer) => {
        buf = Buffer.concat([buf, chunk]);
        while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
          const msg = buf.subarray(2, 2 + buf.readUInt16BE(0));
          buf = buf.subarray(2 + msg.length);
          const h = parseHeader(msg);
          if (h.ok && h.value.qr && h.value.id === id && msg.length >= HEADER_LEN) {
            finish(undefined, Buffer.from(msg));
            return;
          }
        }
      });
    });
  }
}

function destroyForward(s: dgram.Socket | net.Socket): void {
  if (s instanceof net.Socket) {
    s.destroy();
    return;
  }
  try {
    s.close();
  } catch {
    // already closed
  }
}

/** Close both sockets now (the file descriptors go at once); resolves when Node reports them closed. */
function closeSockets(s: ContainerSockets, conns: Set<net.Socket>): Promise<void> {
  const udpClosed = new Promise<void>((resolve) => {
    try {
      s.udp.close(() => resolve());
    } catch {
      resolve(); // already closed
    }
  });
  const tcpClosed = new Promise<void>((resolve) => {
    if (!s.tcp.listening) resolve();
    else s.tcp.close(() => resolve());
  });
  for (const c of conns) c.destroy();
  conns.clear();
  return Promise.all([udpClosed, tcpClosed]).then(() => undefined);
}
