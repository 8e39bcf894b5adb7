// The embedded DNS server on a real kernel (root only). "Containers" are bare network namespace files under
// one temp dir; EmbeddedDns serves 127.0.0.11:53 inside each through sockets a short-lived helper made
// there. Queries are sent from inside the namespaces: raw packets by a small node client, and names through
// the real glibc resolver (getent, with a resolv.conf saying `nameserver 127.0.0.11` bind-mounted in a
// private mount namespace). A fake upstream server runs in the test's own namespace on 127.0.0.1.
// Every namespace, socket and the temp dir are removed in afterAll, whatever happened.

import { execFile } from "node:child_process";
import dgram from "node:dgram";
import { mkdtemp, readdir, readFile, readlink, rm, stat, writeFile } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  buildQuery,
  buildResponse,
  type DnsMessage,
  EmbeddedDns,
  openNsSockets,
  parseMessage,
  parseQuery,
  RCODE_NXDOMAIN,
  TYPE_A,
  TYPE_AAAA,
} from "../../src/dataplane/dns.js";
import { createNetns, deleteNetns } from "../../src/dataplane/netns.js";
import { spawnRunner } from "../../src/dataplane/runner.js";

const isRoot = process.getuid?.() === 0;

// Two networks. c1 and c2 share "front" (think: different hosts); c2 and c3 share "back".
interface Member {
  id: string;
  name: string;
  aliases: string[];
  ip: string;
}
const NETWORKS: Record<string, Member[]> = {
  front: [
    { id: "c1", name: "web", aliases: ["www"], ip: "10.0.1.2" },
    { id: "c2", name: "api", aliases: ["backend"], ip: "10.0.1.3" },
  ],
  back: [
    { id: "c2", name: "api", aliases: [], ip: "10.0.2.3" },
    { id: "c3", name: "db", aliases: ["database"], ip: "10.0.2.2" },
  ],
};

/** What the daemon's lookup would do: names and aliases of containers on a network the asker is on. */
function lookup(containerId: string, name: string): string[] {
  const out: string[] = [];
  for (const members of Object.values(NETWORKS)) {
    if (!members.some((m) => m.id === containerId)) continue;
    for (const m of members) if (m.name === name || m.aliases.includes(name)) out.push(m.ip);
  }
  return out;
}

/** Run a program with a clean environment (no test-runner NODE_OPTIONS); stdout, or the failure. */
function run(argv: string[], timeoutMs = 15_000): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      argv[0]!,
      argv.slice(1),
      { env: { PATH: process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C" }, timeout: timeoutMs },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === "number" ? err.code : 1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

// Sends one query (hex) to 127.0.0.11:53 from inside a namespace, over a connected UDP socket (so a closed
// server shows as ECONNREFUSED) or TCP; prints the reply in hex, "ERR <code>" or "TIMEOUT".
const CLIENT = `
const [hexq, transport] = process.argv.slice(1);
const q = Buffer.from(hexq, "hex");
const out = (s) => { process.stdout.write(s); process.exit(0); };
setTimeout(() => out("TIMEOUT"), 4000);
if (transport === "tcp") {
  const c = require("node:net").connect(53, "127.0.0.11");
  let buf = Buffer.alloc(0);
  c.on("error", (e) => out("ERR " + e.code));
  c.on("connect", () => c.write(Buffer.concat([Buffer.from([q.length >> 8, q.length & 255]), q])));
  c.on("data", (d) => {
    buf = Buffer.concat([buf, d]);
    if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) out(buf.subarray(2, 2 + buf.readUInt16BE(0)).toString("hex"));
  });
} else {
  const s = require("node:dgram").createSocket("udp4");
  s.on("error", (e) => out("ERR " + e.code));
  s.on("message", (m) => out(m.toString("hex")));
  s.connect(53, "127.0.0.11", () => s.send(q));
}
`;

async function ask(ns: string, packet: Buffer, transport: "udp" | "tcp" = "udp"): Promise<DnsMessage | string> {
  const r = await run(["nsenter", `--net=${ns}`, process.execPath, "-e", CLIENT, packet.toString("hex"), transport]);
  if (r.code !== 0) throw new Error(`client failed (${r.code}): ${r.stderr}`);
  if (r.stdout === "TIMEOUT" || r.stdout.startsWith("ERR")) return r.stdout;
  const m = parseMessage(Buffer.from(r.stdout, "hex"));
  if (!m.ok) throw new Error(`bad reply: ${m.error}`);
  return m.value;
}
async function askMsg(ns: string, packet: Buffer, transport: "udp" | "tcp" = "udp"): Promise<DnsMessage> {
  const r = await ask(ns, packet, transport);
  if (typeof r === "string") throw new Error(`no reply: ${r}`);
  return r;
}
const addrs = (m: DnsMessage) => m.answers.map((a) => a.data);

/** Pids of the processes whose network namespace is the one mounted at `ns`. */
async function processesIn(ns: string): Promise<number[]> {
  const ino = (await stat(ns)).ino;
  const out: number[] = [];
  for (const e of await readdir("/proc")) {
    if (!/^\d+$/.test(e)) continue;
    const link = await readlink(`/proc/${e}/ns/net`).catch(() => "");
    if (link === `net:[${ino}]`) out.push(Number(e));
  }
  return out;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe.skipIf(!isRoot)("embedded DNS in container namespaces", () => {
  let dir: string | undefined;
  const ns: Record<string, string> = {};
  let dns: EmbeddedDns | undefined;
  let upstreamAddr = "";
  const upstreamSeen: { id: number; name: string; type: number }[] = [];
  const closeUpstream: (() => void)[] = [];
  const helperPids: number[] = [];

  beforeAll(async () => {
    const missing: string[] = [];
    for (const tool of ["ip", "nsenter", "unshare", "umount", "mount"]) {
      if ((await spawnRunner(["sh", "-c", `command -v ${tool}`])).code !== 0) missing.push(tool);
    }
    if (missing.length > 0) {
      throw new Error(
        `missing tools for the DNS e2e tests: ${missing.join(", ")} (apt-get install iproute2 util-linux)`,
      );
    }
    dir = await mkdtemp(join(tmpdir(), "shoal-dns-e2e-"));
    // c1 and c2 with lo up, as the container runtime leaves them; c3 with lo down, which the helper fixes.
    for (const id of ["c1", "c2", "c3"]) {
      ns[id] = join(dir, "netns", id);
      await createNetns(ns[id]!, id === "c3" ? {} : { exec: ["ip", "link", "set", "lo", "up"] });
    }

    // The fake upstream: ext.example → 203.0.113.7 (A), NXDOMAIN for anything else; UDP and TCP.
    const answer = (msg: Buffer): Buffer | undefined => {
      const p = parseQuery(msg);
      if (p.kind !== "query") return undefined;
      const q = p.query.question;
      upstreamSeen.push({ id: p.query.header.id, name: q.name, type: q.type });
      if (q.name.toLowerCase() === "ext.example") {
        return buildResponse(p.query, { addresses: q.type === TYPE_A ? ["203.0.113.7"] : [], ttl: 300 });
      }
      return buildResponse(p.query, { rcode: RCODE_NXDOMAIN });
    };
    const udp = dgram.createSocket("udp4");
    closeUpstream.push(() => udp.close());
    await new Promise<void>((resolve, reject) => {
      udp.once("error", reject);
      udp.bind(0, "127.0.0.1", resolve);
    });
    udp.on("message", (msg, rinfo) => {
      const r = answer(msg);
      if (r) udp.send(r, rinfo.port, rinfo.address);
    });
    const tcp = net.createServer((c) => {
      c.on("error", () => {});
      c.once("data", (d: Buffer) => {
        const r = answer(d.subarray(2));
        if (r) c.end(Buffer.concat([Buffer.from([r.length >> 8, r.length & 0xff]), r]));
      });
    });
    closeUpstream.push(() => tcp.close());
    await new Promise<void>((resolve, reject) => {
      tcp.once("error", reject);
      tcp.listen(udp.address().port, "127.0.0.1", resolve);
    });
    upstreamAddr = `127.0.0.1:${udp.address().port}`;

    dns = new EmbeddedDns({
      lookup,
      upstream: [upstreamAddr],
      openSockets: async (path) => {
        const s = await openNsSockets(path);
        helperPids.push(s.childPid);
        return s;
      },
    });
    for (const id of ["c1", "c2", "c3"]) await dns.addContainer(id, ns[id]!);
  });

  afterAll(async () => {
    const errors: unknown[] = [];
    await dns?.close().catch((e) => errors.push(e));
    for (const c of closeUpstream) {
      try {
        c();
      } catch (e) {
        errors.push(e);
      }
    }
    for (const path of Object.values(ns)) await deleteNetns(path).catch((e) => errors.push(e));
    if (dir) await rm(dir, { recursive: true, force: true }).catch((e) => errors.push(e));
    if (errors.length > 0) throw new AggregateError(errors, "DNS e2e cleanup failed");
  });

  it("leaves no process behind: the helpers have exited and nothing runs in the namespaces", async () => {
    expect(helperPids.length).toBe(3);
    for (const pid of helperPids) expect(alive(pid), `helper ${pid}`).toBe(false);
    for (const id of ["c1", "c2", "c3"]) expect(await processesIn(ns[id]!), id).toEqual([]);
  });

  it("resolves names and aliases of containers on the same network", async () => {
    const web = await askMsg(ns.c1!, buildQuery(0x1001, "web"));
    expect(web.header).toMatchObject({ id: 0x1001, qr: true, aa: true, rcode: 0 });
    expect(addrs(web)).toEqual(["10.0.1.2"]);
    expect(web.answers[0]?.ttl).toBe(10);
    expect(addrs(await askMsg(ns.c1!, buildQuery(0x1002, "API")))).toEqual(["10.0.1.3"]);
    expect(addrs(await askMsg(ns.c1!, buildQuery(0x1003, "backend")))).toEqual(["10.0.1.3"]);
    // c2 is on both networks; c3's lo was down until the helper brought it up.
    expect(addrs(await askMsg(ns.c2!, buildQuery(0x1004, "database")))).toEqual(["10.0.2.2"]);
    expect(addrs(await askMsg(ns.c3!, buildQuery(0x1005, "api")))).toEqual(["10.0.2.3"]);
    expect(addrs(await askMsg(ns.c3!, buildQuery(0x1006, "db"), "tcp"))).toEqual(["10.0.2.2"]);
  });

  it("answers AAAA of a known name with an empty NOERROR, without asking upstream", async () => {
    const before = upstreamSeen.length;
    const r = await askMsg(ns.c1!, buildQuery(0x2001, "www", TYPE_AAAA));
    expect(r.header).toMatchObject({ id: 0x2001, rcode: 0 });
    expect(r.answers).toEqual([]);
    expect(upstreamSeen.length).toBe(before);
  });

  it("forwards other names upstream and relays the answer under the client's id", async () => {
    const r = await askMsg(ns.c1!, buildQuery(0x3001, "ext.example"));
    expect(r.header).toMatchObject({ id: 0x3001, rcode: 0 });
    expect(addrs(r)).toEqual(["203.0.113.7"]);
    expect(upstreamSeen.at(-1)?.name).toBe("ext.example");
    const t = await askMsg(ns.c2!, buildQuery(0x3002, "ext.example"), "tcp");
    expect(t.header).toMatchObject({ id: 0x3002, rcode: 0 });
    expect(addrs(t)).toEqual(["203.0.113.7"]);
  });

  it("does not resolve a container on another network (forwarded, NXDOMAIN)", async () => {
    const r = await askMsg(ns.c1!, buildQuery(0x4001, "db"));
    expect(r.header).toMatchObject({ id: 0x4001, rcode: RCODE_NXDOMAIN });
    expect(r.answers).toEqual([]);
    expect(upstreamSeen.at(-1)?.name).toBe("db");
  });

  it("serves the real glibc resolver (getent, A and AAAA in parallel)", async (ctx) => {
    const nss = await readFile("/etc/nsswitch.conf", "utf8").catch(() => "");
    const hostsLine = /^hosts:(.*)$/m.exec(nss)?.[1] ?? "";
    const getent = await spawnRunner(["sh", "-c", "command -v getent"]);
    if (!/\bdns\b/.test(hostsLine) || /\bresolve\b/.test(hostsLine) || getent.code !== 0) {
      ctx.skip();
      return;
    }
    const conf = join(dir!, "resolv.conf");
    await writeFile(conf, "nameserver 127.0.0.11\noptions timeout:2 attempts:1\n");
    // A private mount namespace (unshare's default propagation is private) so the bind mount of resolv.conf
    // is seen by getent only, and disappears with it.
    const getentIn = (id: string, name: string) =>
      run([
        "unshare",
        "--mount",
        "sh",
        "-c",
        'mount --bind "$1" /etc/resolv.conf && exec nsenter --net="$2" getent ahosts "$3"',
        "sh",
        conf,
        ns[id]!,
        name,
      ]);
    const ips = (out: string) => [
      ...new Set(
        out
          .split("\n")
          .map((l) => l.split(/\s+/)[0])
          .filter(Boolean),
      ),
    ];
    const t0 = Date.now();
    const web = await getentIn("c1", "web");
    expect(web.code, web.stderr).toBe(0);
    expect(ips(web.stdout)).toEqual(["10.0.1.2"]);
    expect(Date.now() - t0).toBeLessThan(1500); // no resolver timeout waiting on AAAA
    expect(ips((await getentIn("c1", "backend")).stdout)).toEqual(["10.0.1.3"]);
    expect(ips((await getentIn("c2", "ext.example")).stdout)).toEqual(["203.0.113.7"]);
    const other = await getentIn("c1", "database");
    expect(other.code).toBe(2); // not found
  });

  it("closes the sockets on removeContainer, and serves again after addContainer", async () => {
    await dns!.removeContainer("c3");
    expect(await ask(ns.c3!, buildQuery(0x5001, "db"))).toBe("ERR ECONNREFUSED");
    expect(await ask(ns.c3!, buildQuery(0x5002, "db"), "tcp")).toBe("ERR ECONNREFUSED");
    // Other containers are unaffected.
    expect(addrs(await askMsg(ns.c2!, buildQuery(0x5003, "api")))).toEqual(["10.0.1.3", "10.0.2.3"]);
    // Port 53 in c3 is free again.
    await dns!.addContainer("c3", ns.c3!);
    expect(addrs(await askMsg(ns.c3!, buildQuery(0x5004, "db")))).toEqual(["10.0.2.2"]);
    expect(await processesIn(ns.c3!)).toEqual([]);
  });

  it("fails clearly, leaving nothing behind, when the path is not a namespace", async () => {
    const plain = join(dir!, "not-a-netns");
    await writeFile(plain, "");
    const before = helperPids.length;
    await expect(dns!.addContainer("c9", plain)).rejects.toThrow(
      /cannot open DNS sockets on 127.0.0.11:53 in network namespace .*not-a-netns: nsenter/,
    );
    expect(dns!.containers().sort()).toEqual(["c1", "c2", "c3"]);
    expect(helperPids.length).toBe(before);
  });
});
