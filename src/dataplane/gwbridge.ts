// External access for containers on overlay networks, like docker_gwbridge: a per-host bridge
// (shoal_gwbridge, 172.18.0.1/16) in the host's namespace, NAT to the host's own address (masquerade, in
// nftables or iptables: see firewall.ts), and for each container on a non-internal overlay a second interface `gw0` on that bridge
// carrying the container's default route. Containers only on --internal networks get none of it.

import type { Logger } from "pino";
import type { Firewall } from "./firewall.js";
import { parseLinks } from "./render.js";
import { mustRun, type Runner, spawnRunner } from "./runner.js";

const GW_BRIDGE = "shoal_gwbridge";
const GW_SUBNET = "172.18.0.0/16";
const GW_GATEWAY = "172.18.0.1";
const GW_IFNAME = "gw0";
const PREFIX = 16;

export interface GatewayBridgeOptions {
  /** Where the NAT rules go (the host's chosen backend). */
  firewall: Firewall;
  runner?: Runner;
  logger: Logger;
}

export class GatewayBridge {
  private readonly run: Runner;
  private readonly firewall: Firewall;
  private readonly log: Logger;
  private ready: Promise<void> | undefined;
  /** Container id -> its address on the bridge. */
  private addrs = new Map<string, string>();
  /** The next host number to try (serial, like the overlays). */
  private next = 2;

  constructor(opts: GatewayBridgeOptions) {
    this.run = opts.runner ?? spawnRunner;
    this.firewall = opts.firewall;
    this.log = opts.logger.child({ component: "gwbridge" });
  }

  /** The bridge, forwarding and the NAT rule: made once, idempotently. */
  ensure(): Promise<void> {
    this.ready ??= this.setup().catch((e: unknown) => {
      this.ready = undefined;
      throw e;
    });
    return this.ready;
  }

  private async setup(): Promise<void> {
    const have = await this.run(["ip", "-json", "link", "show", "dev", GW_BRIDGE]);
    if (have.code !== 0) {
      await mustRun(this.run, ["ip", "link", "add", GW_BRIDGE, "type", "bridge"]);
    }
    await mustRun(this.run, ["ip", "addr", "replace", `${GW_GATEWAY}/${PREFIX}`, "dev", GW_BRIDGE]);
    await mustRun(this.run, ["ip", "link", "set", GW_BRIDGE, "up"]);
    await mustRun(this.run, ["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    await this.firewall.loadGateway({ bridge: GW_BRIDGE, subnet: GW_SUBNET });
    this.log.info({ bridge: GW_BRIDGE, subnet: GW_SUBNET }, "gateway bridge ready");
  }

  /** Give a container its gw0 interface and default route; returns its address. Idempotent. */
  async attach(containerId: string, netnsPath: string): Promise<string> {
    const existing = this.addrs.get(containerId);
    if (existing) return existing;
    await this.ensure();
    const ip = this.allocate(containerId);
    const host = hostVeth(containerId);
    try {
      await mustRun(this.run, [
        "ip",
        "link",
        "add",
        host,
        "mtu",
        "1500",
        "type",
        "veth",
        "peer",
        "name",
        GW_IFNAME,
        "netns",
        netnsPath,
      ]);
      await mustRun(this.run, ["ip", "link", "set", host, "master", GW_BRIDGE, "up"]);
      await mustRun(this.run, ["nsenter", `--net=${netnsPath}`, "ip", "-batch", "-"], {
        stdin: [
          `addr add ${ip}/${PREFIX} dev ${GW_IFNAME}`,
          `link set ${GW_IFNAME} up`,
          `route replace default via ${GW_GATEWAY} dev ${GW_IFNAME}`,
          "",
        ].join("\n"),
      });
    } catch (e) {
      this.addrs.delete(containerId);
      await this.run(["ip", "link", "del", host]);
      throw e;
    }
    return ip;
  }

  /**
   * After a restart: take over the gw0 of a container that kept running (its address and host end kept,
   * its default route put back if it went); a container whose gw0 is missing or broken gets a new one.
   * Returns its address.
   */
  async adopt(containerId: string, netnsPath: string): Promise<string> {
    const existing = this.addrs.get(containerId);
    if (existing) return existing;
    await this.ensure();
    const found = await this.existing(containerId, netnsPath);
    if (!found) {
      // Whatever half of it is left goes first (deleting the host end removes both).
      await this.run(["ip", "link", "del", hostVeth(containerId)]);
      return this.attach(containerId, netnsPath);
    }
    this.addrs.set(containerId, found);
    await mustRun(this.run, ["ip", "link", "set", hostVeth(containerId), "master", GW_BRIDGE, "up"]);
    await mustRun(this.run, ["nsenter", `--net=${netnsPath}`, "ip", "-batch", "-"], {
      stdin: [`link set ${GW_IFNAME} up`, `route replace default via ${GW_GATEWAY} dev ${GW_IFNAME}`, ""].join("\n"),
    });
    this.log.debug({ container: containerId, ip: found }, "gateway interface adopted");
    return found;
  }

  /** A container's gw0 address on the bridge, if its gw0 and the host end are there and paired. */
  private async existing(containerId: string, netnsPath: string): Promise<string | undefined> {
    const [host, inner] = await Promise.all([
      this.run(["ip", "-json", "link", "show", "dev", hostVeth(containerId)]),
      this.run(["nsenter", `--net=${netnsPath}`, "ip", "-json", "addr", "show", "dev", GW_IFNAME]),
    ]);
    if (host.code !== 0 || inner.code !== 0) return undefined;
    const h = parseLinks(host.stdout)[0];
    const g = parseLinks(inner.stdout)[0];
    if (!h || !g || h.peerIndex !== g.ifindex || g.peerIndex !== h.ifindex) return undefined;
    const a = g.addresses.find((x) => x.scope === "global" && x.prefixLen === PREFIX && inGatewaySubnet(x.local));
    if (!a || [...this.addrs.values()].includes(a.local)) return undefined;
    return a.local;
  }

  /** Remove a container's gw0 (deleting the host end removes both). */
  async detach(containerId: string): Promise<void> {
    if (!this.addrs.has(containerId)) return;
    this.addrs.delete(containerId);
    const r = await this.run(["ip", "link", "del", hostVeth(containerId)]);
    if (r.code !== 0 && !/Cannot find device/.test(r.stderr)) {
      this.log.warn({ container: containerId, err: r.stderr.trim() }, "could not remove the gateway interface");
    }
  }

  has(containerId: string): boolean {
    return this.addrs.has(containerId);
  }

  private allocate(containerId: string): string {
    const used = new Set(this.addrs.values());
    const hosts = 65534;
    for (let k = 0; k < hosts; k++) {
      const n = ((this.next - 2 + k) % (hosts - 1)) + 2;
      const ip = `172.18.${n >> 8}.${n & 255}`;
      if (used.has(ip)) continue;
      this.next = n + 1;
      this.addrs.set(containerId, ip);
      return ip;
    }
    throw new Error(`no free address on ${GW_BRIDGE}`);
  }
}

function inGatewaySubnet(ip: string): boolean {
  return /^172\.18\.\d{1,3}\.\d{1,3}$/.test(ip) && ip !== GW_GATEWAY;
}

/** The host end of a container's gateway veth: gw + 12 hex digits of the container id (15 chars max). */
function hostVeth(containerId: string): string {
  return `gw${containerId.slice(0, 12)}`;
}
