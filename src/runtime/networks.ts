// A container's networks: its network namespace (a file under <execRoot>/netns/<id12>, like Docker's
// /var/run/docker/netns), the endpoints the NetworkAttacher makes in it at start and on `network
// connect` (each undone on failure), and the files that follow them: resolv.conf, hosts and hostname.

import { readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import type { Logger } from "pino";
import { ApiError, badRequest, conflict } from "../api/errors.js";
import type { Container, ContainerFiles, NetworkAttachment } from "./container.js";
import { rewriteInPlace } from "./files.js";
import { NetnsPool } from "./netns-pool.js";
import { createNetns, deleteNetns, moveNetns, netnsState } from "./sandbox.js";
import type { ContainerTable } from "./table.js";
import type { AttachedEndpoint, EndpointSettingsRequest, NetworkAttacher } from "./types.js";

/** The hosts file of a container: localhost lines, then its own addresses with its names. */
export function renderHosts(
  hostname: string,
  name: string,
  endpoints: AttachedEndpoint[],
  cfgAliases: string[][],
): string {
  const lines = [
    "127.0.0.1\tlocalhost",
    "::1\tlocalhost ip6-localhost ip6-loopback",
    "fe00::0\tip6-localnet",
    "ff00::0\tip6-mcastprefix",
    "ff02::1\tip6-allnodes",
    "ff02::2\tip6-allrouters",
  ];
  endpoints.forEach((ep, i) => {
    if (!ep.ip) return;
    const names = [hostname, name, ...(cfgAliases[i] ?? [])].filter((n, j, all) => n !== "" && all.indexOf(n) === j);
    lines.push(`${ep.ip}\t${names.join(" ")}`);
  });
  return `${lines.join("\n")}\n`;
}

/** The host's resolv.conf as hostResolvConf last read it, and what the file was then. */
let hostResolv: { key: string; text: string } | undefined;

/**
 * The host's resolv.conf without loopback name servers (unreachable from a container's namespace). Read
 * again when the file is another one or has changed (its inode, size and time of change), else as read
 * last: every container's create and start ask for it.
 */
export async function hostResolvConf(path = "/etc/resolv.conf"): Promise<string> {
  try {
    const st = await stat(path);
    const key = `${path} ${st.dev}:${st.ino} ${st.size} ${st.mtimeMs} ${st.ctimeMs}`;
    if (hostResolv?.key === key) return hostResolv.text;
    const text = filteredResolvConf(await readFile(path, "utf8"));
    hostResolv = { key, text };
    return text;
  } catch {
    // A host without /etc/resolv.conf: containers get an empty one, as on the host.
    return "";
  }
}

function filteredResolvConf(text: string): string {
  const lines = text
    .split("\n")
    .filter((l) => !/^\s*nameserver\s+(127\.|::1\b)/.test(l))
    .join("\n");
  return lines.endsWith("\n") ? lines : `${lines}\n`;
}

/** What an endpoint request keeps: the address asked for and non-empty aliases. */
export function endpointRequest(v: EndpointSettingsRequest | null | undefined): EndpointSettingsRequest {
  const out: EndpointSettingsRequest = {};
  const ip = v?.IPAMConfig?.IPv4Address;
  if (ip) out.IPAMConfig = { IPv4Address: ip };
  const aliases = (v?.Aliases ?? []).filter((a) => typeof a === "string" && a !== "");
  if (aliases.length > 0) out.Aliases = aliases;
  return out;
}

/** Whether an attachment is the network `ref` names (as the user named it, its name, id or id prefix). */
export function attachmentIs(n: NetworkAttachment, ref: string): boolean {
  if (n.ref === ref) return true;
  const ep = n.endpoint;
  if (!ep) return false;
  return ep.networkName === ref || ep.networkId === ref || (ref.length >= 3 && ep.networkId.startsWith(ref));
}

const hostNetworkRefused = (): ApiError =>
  badRequest("container cannot be disconnected from host network or connected to host network");

export class ContainerNetworks {
  /** Namespaces made ahead for containers to come, in a directory of their own (netns-pool.ts). */
  readonly pool: NetnsPool;

  constructor(
    private readonly attacher: NetworkAttacher,
    private readonly table: ContainerTable,
    private readonly execRoot: string,
    private readonly log: Logger,
  ) {
    this.pool = new NetnsPool({ dir: join(execRoot, "netns-pool"), log });
  }

  get netnsDir(): string {
    return join(this.execRoot, "netns");
  }

  netnsPathOf(id: string): string {
    return join(this.netnsDir, id.slice(0, 12));
  }

  private who(c: Container): { id: string; name: string; netnsPath: string } {
    return { id: c.id, name: c.rec.name, netnsPath: this.netnsPathOf(c.id) };
  }

  /** Whether every endpoint of the container can be taken over by the next daemon (NetworkAttacher.adoptable). */
  adoptable(c: Container): boolean {
    return c.rec.networks.every((n) => !n.endpoint || (this.attacher.adoptable?.(n.endpoint) ?? false));
  }

  /**
   * Starts making the network namespace of a container to be created with id `id`, for its first start to
   * find made, while the create looks its image up, prepares the root file system and writes its record:
   * one of the pool's moved onto the container's file (one process), or, the pool empty, a new one (two
   * processes, unshare and ip: ~30 ms). The promise (Container.netnsAhead) never rejects: false when the
   * namespace could not be made (setUp makes it again). A create that fails before its container exists
   * gives it to dropPrepared.
   */
  prepare(id: string): Promise<boolean> {
    const path = this.netnsPathOf(id);
    const pooled = this.pool.take();
    const made =
      pooled === undefined
        ? createNetns(path)
        : moveNetns(pooled, path).catch((err: unknown) => {
            this.log.debug({ err, pooled, path }, "could not move a network namespace made ahead: making one");
            return createNetns(path);
          });
    return made.then(
      () => true,
      (err: unknown) => {
        this.log.debug({ err, path }, "could not make a network namespace ahead: the start makes it");
        return false;
      },
    );
  }

  /** Removes the namespace `prepare` made for a container that was not created after all (never rejects). */
  async dropPrepared(id: string, ahead: Promise<boolean>): Promise<void> {
    await ahead;
    const path = this.netnsPathOf(id);
    await deleteNetns(path).catch((err: unknown) =>
      this.log.warn(
        { err, path },
        "could not remove the network namespace of a failed create: reconcile removes it at the next start",
      ),
    );
  }

  /**
   * The namespace made ahead for the container's first start, not taken (setUp takes it): its path once
   * made, null for the host's network, undefined when none was made.
   */
  async madeAhead(c: Container): Promise<string | null | undefined> {
    if (c.hostNetwork) return null;
    const ahead = c.netnsAhead;
    return ahead !== undefined && (await ahead) ? this.netnsPathOf(c.id) : undefined;
  }

  /** Whether the namespace made ahead is there (consumed: later starts make their own). */
  private async takeAhead(c: Container): Promise<boolean> {
    const ahead = c.netnsAhead;
    c.netnsAhead = undefined;
    return ahead !== undefined && (await ahead) && (await netnsState(this.netnsPathOf(c.id))) === "netns";
  }

  /**
   * The container's namespace with every network of its record attached (eth0, eth1, ...), and its files
   * written; all or nothing. Returns the namespace's path (null: the host's network).
   */
  async setUp(c: Container): Promise<string | null> {
    if (c.hostNetwork) return null;
    const netnsPath = this.netnsPathOf(c.id);
    if (!(await this.takeAhead(c))) await createNetns(netnsPath);
    try {
      for (const [i, n] of c.rec.networks.entries()) {
        n.endpoint = await this.attacher.attach({ ...this.who(c), ifname: `eth${i}` }, n.ref, n.cfg);
      }
      await this.writeFiles(c);
    } catch (err) {
      await this.release(c, "a failed start");
      throw err;
    }
    return netnsPath;
  }

  /**
   * Detaches every endpoint and removes the network namespace. Nothing can be undone here (the
   * container is gone or never ran): a failure is logged with what it leaves, and the rest goes on.
   */
  async release(c: Container, after: string): Promise<void> {
    // A namespace still being made ahead is waited for, so that it is removed below, not made after.
    await this.takeAhead(c);
    for (const n of [...c.rec.networks].reverse()) {
      if (!n.endpoint) continue;
      try {
        await this.attacher.detach(this.who(c), n.endpoint);
      } catch (err) {
        this.log.warn(
          { err, id: c.id, network: n.ref, endpoint: n.endpoint.endpointId },
          `could not detach from the network after ${after}: the endpoint stays allocated until the network's owner removes it`,
        );
      }
      n.endpoint = null;
    }
    if (c.hostNetwork) return;
    const path = this.netnsPathOf(c.id);
    await deleteNetns(path).catch((err: unknown) =>
      this.log.warn(
        { err, path },
        `could not remove the container's network namespace after ${after}: reconcile removes it at the next start`,
      ),
    );
  }

  /** resolv.conf, hosts and hostname for the container's current endpoints (rewritten in place). */
  async writeFiles(c: Container): Promise<void> {
    // Those written ahead of its first start: written again only if they would change (never, for a
    // container without networks). Its process has not run yet, so nothing else wrote them since.
    const ahead = c.filesAhead;
    c.filesAhead = undefined;
    const files = await this.filesOf(c);
    const was = await ahead;
    if (was?.resolv === files.resolv && was.hosts === files.hosts && was.hostname === files.hostname) return;
    await this.write(c, files);
  }

  /**
   * writeFiles ahead of the container's first start (lifecycle.ts makeAhead), before the start's own
   * (`setUp`), which writes them again only if they would change.
   */
  writeFilesAhead(c: Container): Promise<void> {
    const writing = this.filesOf(c).then(async (files) => {
      await this.write(c, files);
      return files;
    });
    c.filesAhead = writing.then(
      (files) => files,
      () => undefined,
    );
    return writing.then(() => undefined);
  }

  private async filesOf(c: Container): Promise<ContainerFiles> {
    const rec = c.rec;
    const attached = rec.networks.filter((n) => n.endpoint);
    const eps = attached.map((n) => n.endpoint!);
    const resolv = eps.length > 0 ? this.attacher.resolvConf(eps) : await hostResolvConf();
    const aliases = attached.map((n) => n.cfg.Aliases ?? []);
    const hosts = renderHosts(rec.config.Hostname, rec.name, eps, aliases);
    return { resolv, hosts, hostname: `${rec.config.Hostname}\n` };
  }

  private async write(c: Container, files: ContainerFiles): Promise<void> {
    await Promise.all([
      rewriteInPlace(join(c.dir, "resolv.conf"), files.resolv),
      rewriteInPlace(join(c.dir, "hosts"), files.hosts),
      rewriteInPlace(join(c.dir, "hostname"), files.hostname),
    ]);
  }

  /** `network connect`: joins now if the container runs, else on its next start. */
  async connect(c: Container, networkRef: string, cfg: EndpointSettingsRequest): Promise<void> {
    const rec = c.rec;
    if (c.hostNetwork) throw hostNetworkRefused();
    const exists = (net: string): ApiError =>
      new ApiError(403, `endpoint with name ${rec.name} already exists in network ${net}`);
    if (rec.networks.some((n) => attachmentIs(n, networkRef))) throw exists(networkRef);
    const n: NetworkAttachment = { ref: networkRef, cfg: endpointRequest(cfg), endpoint: null };
    if (c.running) {
      const used = new Set(rec.networks.map((_, i) => `eth${i}`));
      let i = 0;
      while (used.has(`eth${i}`)) i++;
      const ep = await this.attacher.attach({ ...this.who(c), ifname: `eth${i}` }, networkRef, n.cfg);
      if (rec.networks.some((x) => x.endpoint?.networkId === ep.networkId)) {
        // The same network under another name: undo this second endpoint before saying so.
        await this.attacher
          .detach(this.who(c), ep)
          .catch((err: unknown) =>
            this.log.warn(
              { err, id: c.id, endpoint: ep.endpointId },
              "could not detach a duplicate endpoint: it stays allocated until the network's owner removes it",
            ),
          );
        throw exists(ep.networkName);
      }
      n.endpoint = ep;
    }
    rec.networks.push(n);
    if (rec.networkMode === "none" || rec.networkMode === "default") rec.networkMode = networkRef;
    if (c.running) await this.writeFiles(c);
    await this.table.persist(c);
  }

  /**
   * A running container's endpoints take its new name (docker rename), before the container does. Whether
   * it had any to rename.
   */
  async rename(c: Container, newName: string): Promise<boolean> {
    const endpoints = c.rec.networks.flatMap((n) => (n.endpoint ? [n.endpoint] : []));
    if (endpoints.length === 0) return false;
    if (!this.attacher.rename) {
      throw conflict(
        `cannot rename container ${c.rec.name}: this node's networking cannot rename its endpoints on ${endpoints.map((e) => e.networkName).join(", ")}`,
      );
    }
    await this.attacher.rename({ id: c.id, name: c.rec.name }, endpoints, newName);
    return true;
  }

  /** `network disconnect`: leaves now if the container runs. */
  async disconnect(c: Container, networkRef: string, force: boolean): Promise<void> {
    const rec = c.rec;
    if (c.hostNetwork) throw hostNetworkRefused();
    const i = rec.networks.findIndex((n) => attachmentIs(n, networkRef));
    if (i < 0) {
      if (force) return;
      throw badRequest(`container ${rec.id} is not connected to network ${networkRef}`);
    }
    const n = rec.networks[i]!;
    const networkName = n.endpoint?.networkName;
    if (n.endpoint) {
      await this.attacher.detach(this.who(c), n.endpoint);
      n.endpoint = null;
    }
    rec.networks.splice(i, 1);
    if (rec.networkMode === n.ref || rec.networkMode === networkName) {
      rec.networkMode = rec.networks[0]?.ref ?? "none";
    }
    if (c.running) await this.writeFiles(c);
    await this.table.persist(c);
  }
}
