// The overlay data plane's base (overlay.ts is the class callers use): its configuration and the
// namespaces it knows, and the locked operations on one network's namespace: build, attach, detach,
// teardown, peers (FDB and neighbours); each runs its commands in as few processes as it can.

import { join } from "node:path";
import pino, { type Logger } from "pino";
import { DEFAULT_DATA_PATH_PORT } from "../api/ports.js";
import { observe } from "../metrics/metrics.js";
import { normalizeIp } from "./addr.js";
import { createNetns, deleteNetns, type NetnsProbe, statProbe } from "./netns.js";
import {
  BRIDGE,
  BRIDGE_INDEX,
  batch,
  type DataPathConfig,
  diffPeers,
  type Endpoint,
  type LinkState,
  nsNameFor,
  type Peer,
  parseFdb,
  parseLinks,
  parseNeigh,
  type ResolvedNetwork,
  renderBridgeCreate,
  renderContainerConfig,
  renderVethCreate,
  renderVxlanCreate,
  renderVxlanEnslave,
  VXLAN,
  vethNameFor,
} from "./render.js";
import { CommandError, type Runner, type RunResult, spawnRunner } from "./runner.js";

export interface OverlayDataplaneOptions {
  /** Namespace files live in execRoot/netns (like /var/run/docker/netns). */
  execRoot: string;
  /** Underlay device in the host namespace (the VXLAN device's `dev`). */
  underlayDev: string;
  /** This host's data-path IP (the VXLAN device's `local`, and what peers use as VTEP). */
  localAddr: string;
  /** UDP port of the data path. Default 4789. */
  dataPathPort?: number;
  runner?: Runner;
  logger?: Logger;
  /** How to tell whether a path is a mounted namespace (default: stat, no process). */
  probe?: NetnsProbe;
  /** How long to keep retrying "A VXLAN device with the specified VNI already exists". Default 1000 ms. */
  vniRetryMs?: number;
  sleep?: (ms: number) => Promise<void>;
}

export interface SetPeersResult {
  /** false: the network has no namespace here; the peers are kept and applied when it is built. */
  applied: boolean;
  added: number;
  changed: number;
  removed: number;
}

export interface NetState {
  net: ResolvedNetwork;
  nsPath: string;
  /** Local endpoints we attached (or adopted), by endpoint ID. */
  endpoints: Map<string, Endpoint>;
  /** veth links present in the overlay namespace (including ones whose endpoint we do not know). */
  veths: Set<string>;
}

const VNI_EXISTS = /VXLAN device with the specified VNI already exists/;
const NO_DEVICE = /Cannot find device|No such device/;

function sameNet(a: ResolvedNetwork, b: ResolvedNetwork): boolean {
  return (
    a.id === b.id &&
    a.vni === b.vni &&
    a.mtu === b.mtu &&
    a.gateway === b.gateway &&
    a.subnet.addr === b.subnet.addr &&
    a.subnet.prefixLen === b.subnet.prefixLen
  );
}

function sameEndpoint(a: Endpoint, b: Endpoint): boolean {
  return (
    a.id === b.id &&
    a.containerNetns === b.containerNetns &&
    a.ifname === b.ifname &&
    a.ip === b.ip &&
    a.prefixLen === b.prefixLen &&
    a.mac === b.mac
  );
}

export class OverlayBase {
  readonly netnsDir: string;
  protected readonly dp: DataPathConfig;
  protected readonly runner: Runner;
  protected readonly probe: NetnsProbe;
  protected readonly log: Logger;
  protected readonly vniRetryMs: number;
  protected readonly sleep: (ms: number) => Promise<void>;
  protected readonly nets = new Map<string, NetState>();
  /** Latest desired peers per network ID (kept while the namespace is absent). */
  protected readonly wantedPeers = new Map<string, Peer[]>();
  protected readonly locks = new Map<string, Promise<unknown>>();

  constructor(opts: OverlayDataplaneOptions) {
    if (!opts.execRoot.startsWith("/") || /[\s"'\\]/.test(opts.execRoot)) {
      throw new Error(`invalid execRoot ${JSON.stringify(opts.execRoot)}: use an absolute path without spaces`);
    }
    if (!/^[A-Za-z0-9_.@-]{1,15}$/.test(opts.underlayDev)) {
      throw new Error(`invalid underlay device name ${JSON.stringify(opts.underlayDev)}`);
    }
    const port = opts.dataPathPort ?? DEFAULT_DATA_PATH_PORT;
    if (!Number.isInteger(port) || port < 1 || port > 65_535) throw new Error(`invalid data path port ${port}`);
    this.netnsDir = join(opts.execRoot, "netns");
    this.dp = {
      underlayDev: opts.underlayDev,
      localAddr: normalizeIp(opts.localAddr, "data path address"),
      dataPathPort: port,
    };
    this.runner = opts.runner ?? spawnRunner;
    this.probe = opts.probe ?? statProbe;
    this.log = (opts.logger ?? pino({ level: "silent" })).child({ component: "dataplane" });
    this.vniRetryMs = opts.vniRetryMs ?? 1000;
    this.sleep = opts.sleep ?? ((ms) => new Promise((r) => setTimeout(r, ms)));
  }

  nsPathFor(netId: string): string {
    return join(this.netnsDir, nsNameFor(netId));
  }

  protected async ensureLocked(rnet: ResolvedNetwork, firstEndpoint?: Endpoint): Promise<"exists" | "built"> {
    const nsPath = this.nsPathFor(rnet.id);
    const cached = this.nets.get(rnet.id);
    for (const st of this.nets.values()) {
      if (st.net.nsName === rnet.nsName && st.net.id !== rnet.id) {
        throw new Error(`network ${rnet.id} would share overlay namespace ${rnet.nsName} with network ${st.net.id}`);
      }
    }
    const state = await this.probe(nsPath);
    if (state === "netns") {
      if (cached && sameNet(cached.net, rnet)) return "exists";
      // Not built by this process (a restart) or the spec changed: read it back and correct it.
      const st = await this.adoptNetwork(rnet, undefined);
      if (cached) for (const [id, ep] of cached.endpoints) if (st.veths.has(vethNameFor(id))) st.endpoints.set(id, ep);
      return "exists";
    }
    this.nets.delete(rnet.id);
    const t0 = performance.now();
    await this.build(rnet, nsPath, firstEndpoint).catch((e: unknown) => {
      observe.overlayBuilt(performance.now() - t0, false);
      throw e;
    });
    observe.overlayBuilt(performance.now() - t0, true);
    return "built";
  }

  /** Fresh namespace, optionally with its first endpoint, in two stages (three with known peers). */
  protected async build(rnet: ResolvedNetwork, nsPath: string, ep?: Endpoint): Promise<void> {
    const t0 = performance.now();
    const ovl = renderBridgeCreate(rnet);
    if (ep) ovl.push(...renderVethCreate(rnet, ep));
    // Stage 1: the namespace and, in the same process, br0 (+ the veth pair into the container).
    await createNetns(nsPath, {
      runner: this.runner,
      probe: this.probe,
      exec: ["ip", "-batch", "-"],
      stdin: batch(ovl),
    });
    const t1 = performance.now();
    const st: NetState = { net: rnet, nsPath, endpoints: new Map(), veths: new Set() };
    try {
      // Stage 2: vxlan0 from the host namespace || the container's address.
      const host = this.createVxlan(rnet, renderVxlanCreate(rnet, nsPath, this.dp, BRIDGE_INDEX)).catch(
        async (err: unknown) => {
          // `master if2` is resolved by iproute2 in the host namespace; should the host have a link really
          // named "if2", or br0 not be index 2, fall back to creating vxlan0 bare and enslaving it from inside.
          if (!(err instanceof CommandError)) throw err;
          this.log.warn({ netId: rnet.id, err: err.message }, "vxlan0 with master by index failed; retrying without");
          await this.createVxlan(rnet, renderVxlanCreate(rnet, nsPath, this.dp));
          await this.mustIn(nsPath, ["ip", "-batch", "-"], batch(renderVxlanEnslave(rnet)));
        },
      );
      const cont = ep
        ? this.mustIn(ep.containerNetns, ["ip", "-batch", "-"], batch(renderContainerConfig(ep)))
        : undefined;
      const results = await Promise.allSettled([host, ...(cont ? [cont] : [])]);
      for (const r of results) if (r.status === "rejected") throw r.reason;
      const t2 = performance.now();
      // Stage 3 (only when the agent already told us the peers): static FDB and neighbour entries.
      const peers = this.wantedPeers.get(rnet.id) ?? [];
      if (peers.length > 0) await this.applyPeerDiff(nsPath, diffPeers(peers));
      if (ep) {
        st.endpoints.set(ep.id, ep);
        st.veths.add(vethNameFor(ep.id));
      }
      this.nets.set(rnet.id, st);
      this.log.debug(
        {
          netId: rnet.id,
          vni: rnet.vni,
          endpoint: ep?.id,
          stage1Ms: +(t1 - t0).toFixed(1),
          stage2Ms: +(t2 - t1).toFixed(1),
          totalMs: +(performance.now() - t0).toFixed(1),
        },
        "overlay namespace built",
      );
    } catch (err) {
      await this.teardown(nsPath, ep ? [vethNameFor(ep.id)] : []).catch((e2: unknown) =>
        this.log.warn({ err: e2, netId: rnet.id }, "cleanup after a failed build failed"),
      );
      throw err;
    }
  }

  /** Host namespace: create vxlan0, retrying while a namespace being torn down still holds the VNI. */
  protected async createVxlan(rnet: ResolvedNetwork, lines: string[]): Promise<void> {
    const argv = ["ip", "-batch", "-"];
    const stdin = batch(lines);
    const start = performance.now();
    let delay = 5;
    let tries = 0;
    for (;;) {
      tries++;
      const result = await this.runner(argv, { stdin });
      if (result.code === 0) {
        if (tries > 1) this.log.info({ netId: rnet.id, vni: rnet.vni, tries }, "VNI became free after retrying");
        return;
      }
      const elapsed = performance.now() - start;
      if (!VNI_EXISTS.test(result.stderr)) throw new CommandError(argv, result, stdin);
      if (elapsed >= this.vniRetryMs) {
        throw new Error(
          `VXLAN ID ${rnet.vni} of network ${rnet.id} is still in use on this host after ${Math.round(elapsed)} ms ` +
            `(${tries} tries): another overlay network uses it, or a namespace that has it is still being destroyed`,
        );
      }
      await this.sleep(Math.min(delay, this.vniRetryMs - elapsed));
      delay = Math.min(delay * 2, 160);
    }
  }

  protected async attachLocked(rnet: ResolvedNetwork, ep: Endpoint): Promise<void> {
    const veth = vethNameFor(ep.id);
    const before = this.nets.get(rnet.id);
    const known = before?.endpoints.get(ep.id);
    if (known && sameNet(before!.net, rnet) && (await this.probe(before!.nsPath)) === "netns") {
      if (sameEndpoint(known, ep)) return;
      throw new Error(
        `endpoint ${ep.id} is already attached to network ${rnet.id} with other settings: detach it first`,
      );
    }
    if ((await this.probe(ep.containerNetns)) !== "netns") {
      throw new Error(`container network namespace ${ep.containerNetns} does not exist`);
    }
    const how = await this.ensureLocked(rnet, ep);
    if (how === "built") return;
    const st = this.nets.get(rnet.id)!;
    for (const id of st.endpoints.keys()) {
      if (id !== ep.id && vethNameFor(id) === veth) {
        throw new Error(
          `endpoints ${id} and ${ep.id} map to the same interface ${veth}: IDs must differ in their first 11 characters`,
        );
      }
    }
    if (st.veths.has(veth)) {
      // Left by an earlier run (adopted without knowing its endpoint): keep it if it is this endpoint.
      const links = parseLinks((await this.mustIn(st.nsPath, ["ip", "-json", "link", "show"])).stdout);
      if (await this.adoptEndpoint(st, ep, links)) return;
    }
    await this.addEndpoint(st, ep);
  }

  /** An endpoint on an existing overlay namespace: veth (overlay ns) -> address (container ns). */
  protected async addEndpoint(st: NetState, ep: Endpoint): Promise<void> {
    const veth = vethNameFor(ep.id);
    await this.mustIn(st.nsPath, ["ip", "-batch", "-"], batch(renderVethCreate(st.net, ep)));
    try {
      await this.mustIn(ep.containerNetns, ["ip", "-batch", "-"], batch(renderContainerConfig(ep)));
    } catch (err) {
      await this.runIn(st.nsPath, ["ip", "-batch", "-"], batch([`link del ${veth}`]));
      throw err;
    }
    st.endpoints.set(ep.id, ep);
    st.veths.add(veth);
  }

  protected async detachLocked(netId: string, epId: string): Promise<void> {
    const nsPath = this.nsPathFor(netId);
    const state = await this.probe(nsPath);
    if (state !== "netns") {
      if (state === "file") await deleteNetns(nsPath, { runner: this.runner, probe: this.probe });
      this.nets.delete(netId);
      return;
    }
    const st = this.nets.get(netId);
    let veths: Set<string>;
    if (st) {
      veths = st.veths;
    } else {
      // Not built by this process (and not reconciled yet): find out which veths are there.
      const links = parseLinks((await this.mustIn(nsPath, ["ip", "-json", "link", "show"])).stdout);
      veths = new Set(links.map((l) => l.name).filter((n) => n !== "lo" && n !== BRIDGE && n !== VXLAN));
    }
    const veth = vethNameFor(epId);
    if ([...veths].every((v) => v === veth)) {
      await this.teardown(nsPath, [veth]);
      this.nets.delete(netId);
      this.log.debug({ netId, endpoint: epId }, "last endpoint left: overlay namespace deleted");
      return;
    }
    if (veths.has(veth)) {
      const argv = ["nsenter", `--net=${nsPath}`, "ip", "-batch", "-"];
      const r = await this.runIn(nsPath, argv.slice(2), batch([`link del ${veth}`]));
      if (r.code !== 0 && !NO_DEVICE.test(r.stderr)) throw new CommandError(argv, r);
    }
    veths.delete(veth);
    st?.endpoints.delete(epId);
  }

  /**
   * Delete a namespace and everything in it now, not when the kernel gets round to it: veths (so the
   * containers' ends vanish at once) and vxlan0 (so its VNI is free at once), then unmount. With `veths`
   * undefined the namespace's links are read first.
   */
  protected async teardown(nsPath: string, veths: string[] | undefined): Promise<void> {
    if ((await this.probe(nsPath)) === "netns") {
      let names = veths;
      if (names === undefined) {
        const r = await this.runIn(nsPath, ["ip", "-json", "link", "show"]);
        names =
          r.code === 0
            ? parseLinks(r.stdout)
                .map((l) => l.name)
                .filter((n) => n !== "lo" && n !== BRIDGE && n !== VXLAN)
            : [];
      }
      const lines = [...names.map((n) => `link del ${n}`), `link del ${VXLAN}`];
      const r = await this.runIn(nsPath, ["ip", "-force", "-batch", "-"], batch(lines));
      if (r.code !== 0) {
        const unexpected = r.stderr
          .split("\n")
          .filter((l) => l.trim() && !NO_DEVICE.test(l) && !/^Command failed/.test(l));
        if (unexpected.length > 0) this.log.warn({ nsPath, stderr: r.stderr.trim() }, "deleting overlay links failed");
      }
    }
    await deleteNetns(nsPath, { runner: this.runner, probe: this.probe });
  }

  protected async setPeersLocked(netId: string, peers: Peer[]): Promise<SetPeersResult> {
    const nsPath = this.nsPathFor(netId);
    if ((await this.probe(nsPath)) !== "netns") return { applied: false, added: 0, changed: 0, removed: 0 };
    const [fdb, neigh] = await Promise.all([
      this.mustIn(nsPath, ["bridge", "-json", "fdb", "show", "dev", VXLAN]),
      this.mustIn(nsPath, ["ip", "-json", "neigh", "show", "dev", VXLAN]),
    ]);
    const diff = diffPeers(peers, { fdb: parseFdb(fdb.stdout), neigh: parseNeigh(neigh.stdout) });
    await this.applyPeerDiff(nsPath, diff);
    if (diff.added + diff.changed + diff.removed > 0) {
      this.log.debug({ netId, added: diff.added, changed: diff.changed, removed: diff.removed }, "peers updated");
    }
    return { applied: true, added: diff.added, changed: diff.changed, removed: diff.removed };
  }

  protected async applyPeerDiff(nsPath: string, diff: { fdb: string[]; neigh: string[] }): Promise<void> {
    await Promise.all([
      diff.neigh.length > 0 ? this.mustIn(nsPath, ["ip", "-batch", "-"], batch(diff.neigh)) : undefined,
      diff.fdb.length > 0 ? this.mustIn(nsPath, ["bridge", "-batch", "-"], batch(diff.fdb)) : undefined,
    ]);
  }

  protected runIn(nsPath: string, argv: string[], stdin?: string): Promise<RunResult> {
    return this.runner(["nsenter", `--net=${nsPath}`, ...argv], stdin === undefined ? undefined : { stdin });
  }

  protected async mustIn(nsPath: string, argv: string[], stdin?: string): Promise<RunResult> {
    const full = ["nsenter", `--net=${nsPath}`, ...argv];
    const r = await this.runner(full, stdin === undefined ? undefined : { stdin });
    if (r.code !== 0) throw new CommandError(full, r, stdin);
    return r;
  }

  protected withLock<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(key) ?? Promise.resolve();
    const run = prev.then(fn, fn);
    // The caller gets run's error; the tail only orders the next holder of the lock after this one.
    const tail = run.catch(() => {});
    this.locks.set(key, tail);
    void tail.then(() => {
      if (this.locks.get(key) === tail) this.locks.delete(key);
    });
    return run;
  }

  /**
   * Read an existing overlay namespace back and correct br0 and vxlan0. With `keepVeths`, every other link
   * not in it is deleted; without, other veths are kept (and enslaved) as endpoints we do not know.
   */
  protected async adoptNetwork(rnet: ResolvedNetwork, keepVeths: Set<string> | undefined): Promise<NetState> {
    const nsPath = this.nsPathFor(rnet.id);
    const links = parseLinks((await this.mustIn(nsPath, ["ip", "-json", "-details", "addr", "show"])).stdout);
    const m = rnet.mtu;
    const fix: string[] = [];
    const post: string[] = [];
    const gw = `${rnet.gateway}/${rnet.subnet.prefixLen}`;

    const br = links.find((l) => l.name === BRIDGE);
    const brNew = br?.kind !== "bridge";
    if (brNew) {
      if (br) fix.push(`link del ${BRIDGE}`);
      fix.push(`link add ${BRIDGE} mtu ${m} up type bridge`, `addr add ${gw} dev ${BRIDGE}`);
    } else {
      if (br.mtu !== m || !br.up) fix.push(`link set ${BRIDGE} mtu ${m} up`);
      const global = br.addresses.filter((a) => a.scope === "global");
      for (const a of global) {
        if (a.local !== rnet.gateway || a.prefixLen !== rnet.subnet.prefixLen)
          fix.push(`addr del ${a.local}/${a.prefixLen} dev ${BRIDGE}`);
      }
      if (!global.some((a) => a.local === rnet.gateway && a.prefixLen === rnet.subnet.prefixLen))
        fix.push(`addr add ${gw} dev ${BRIDGE}`);
    }

    const vx = links.find((l) => l.name === VXLAN);
    const vxOk =
      vx?.kind === "vxlan" &&
      vx.vxlan?.id === rnet.vni &&
      vx.vxlan.port === this.dp.dataPathPort &&
      vx.vxlan.local === this.dp.localAddr &&
      vx.vxlan.learning === false &&
      vx.vxlan.proxy === true;
    if (!vxOk) {
      if (vx) fix.push(`link del ${VXLAN}`);
      post.push(...renderVxlanEnslave(rnet));
    } else if (brNew || vx.master !== BRIDGE || vx.mtu !== m || !vx.up) {
      fix.push(...renderVxlanEnslave(rnet));
    }

    const veths = new Set<string>();
    const deleted = new Set<string>();
    for (const l of links) {
      if (l.name === "lo" || l.name === BRIDGE || l.name === VXLAN) continue;
      const keep = l.kind === "veth" && (keepVeths === undefined || keepVeths.has(l.name));
      if (!keep) {
        // A veth pair with both ends in here goes with its first end.
        const peerGone = l.kind === "veth" && l.peerName !== undefined && deleted.has(l.peerName);
        if (!peerGone) fix.push(`link del ${l.name}`);
        deleted.add(l.name);
        continue;
      }
      veths.add(l.name);
      if (brNew || l.master !== BRIDGE || l.mtu !== m || !l.up)
        fix.push(`link set ${l.name} master ${BRIDGE} mtu ${m} up`);
    }

    if (fix.length > 0) await this.mustIn(nsPath, ["ip", "-batch", "-"], batch(fix));
    if (!vxOk) await this.createVxlan(rnet, renderVxlanCreate(rnet, nsPath, this.dp));
    if (post.length > 0) await this.mustIn(nsPath, ["ip", "-batch", "-"], batch(post));
    if (fix.length + post.length > 0)
      this.log.info({ netId: rnet.id, fix, post }, "corrected adopted overlay namespace");

    const st: NetState = { net: rnet, nsPath, endpoints: new Map(), veths };
    this.nets.set(rnet.id, st);
    return st;
  }

  /**
   * Check (and correct) one endpoint whose overlay namespace was adopted. Returns false when it has to be
   * attached afresh (its veth or the container's end is missing or wrong; a wrong one is deleted here).
   */
  protected async adoptEndpoint(st: NetState, ep: Endpoint, ovlLinks: LinkState[]): Promise<boolean> {
    const vethName = vethNameFor(ep.id);
    const veth = ovlLinks.find((l) => l.name === vethName);
    const dropVeth = async () => {
      if (veth) await this.mustIn(st.nsPath, ["ip", "-batch", "-"], batch([`link del ${vethName}`]));
      st.veths.delete(vethName);
    };
    if ((await this.probe(ep.containerNetns)) !== "netns") {
      await dropVeth();
      throw new Error(`container network namespace ${ep.containerNetns} does not exist`);
    }
    if (!veth) return false;
    const r = await this.runIn(ep.containerNetns, ["ip", "-json", "addr", "show", "dev", ep.ifname]);
    const cont = r.code === 0 ? parseLinks(r.stdout)[0] : undefined;
    if (!cont || cont.peerIndex !== veth.ifindex || veth.peerIndex !== cont.ifindex || cont.mac !== ep.mac) {
      await dropVeth();
      return false;
    }
    const fix: string[] = [];
    if (cont.mtu !== st.net.mtu) fix.push(`link set ${ep.ifname} mtu ${st.net.mtu}`);
    const global = cont.addresses.filter((a) => a.scope === "global");
    for (const a of global) {
      if (a.local !== ep.ip || a.prefixLen !== ep.prefixLen)
        fix.push(`addr del ${a.local}/${a.prefixLen} dev ${ep.ifname}`);
    }
    if (!global.some((a) => a.local === ep.ip && a.prefixLen === ep.prefixLen))
      fix.push(`addr add ${ep.ip}/${ep.prefixLen} dev ${ep.ifname}`);
    if (!cont.up) fix.push(`link set ${ep.ifname} up`);
    if (fix.length > 0) await this.mustIn(ep.containerNetns, ["ip", "-batch", "-"], batch(fix));
    st.endpoints.set(ep.id, ep);
    return true;
  }
}
