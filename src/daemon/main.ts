#!/usr/bin/env node
// shoald: the daemon, one per host (manager or worker).

import { hostname as osHostname } from "node:os";
import { join } from "node:path";
import { Command, InvalidArgumentError, Option } from "commander";
import pino from "pino";
import { checkPrograms } from "../dataplane/programs.js";
import { EngineServer } from "../engine/server.js";
import { listenMetrics, parseMetricsAddr } from "../metrics/server.js";
import { ContainerdSupervisor } from "../runtime/containerd/supervisor.js";
import { ContainerRuntime } from "../runtime/runtime.js";
import type { ContainerBackend } from "../runtime/types.js";
import { unavailableBackend } from "../runtime/unavailable.js";
import { VERSION } from "../version.js";
import { Daemon } from "./daemon.js";
import { metricSourcesFor } from "./metrics.js";

interface Flags {
  dataRoot: string;
  execRoot: string;
  host: string;
  hostname: string;
  logLevel: string;
  raftTickMs?: string;
  encryptionKeyRotation?: string;
  containerd?: string;
  insecureRegistry: string[];
  maxConcurrentDownloads: number;
  firewallBackend: "auto" | "nftables" | "iptables";
  metricsAddr?: string;
}

function socketPathOf(host: string): string {
  if (!host.startsWith("unix://")) {
    throw new Error(`invalid --host ${host}: shoald listens on a unix socket (unix:///path/to/shoald.sock)`);
  }
  return host.slice("unix://".length);
}

/** "12h", "30m", "10s", "500ms" -> milliseconds. */
function parseDuration(text: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(text.trim());
  if (!m) throw new Error(`invalid duration "${text}": use a number with ms, s, m or h (e.g. 12h)`);
  const n = Number(m[1]);
  const ms = n * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] as "ms" | "s" | "m" | "h"];
  if (ms < 1000) throw new Error(`invalid duration "${text}": at least 1s`);
  return ms;
}

function buildProgram(): Command {
  return new Command("shoald")
    .description("The shoal daemon: runs a swarm manager or worker on this host")
    .version(`shoald version ${VERSION}`, "-v, --version", "Print version information and quit")
    .option("--data-root <dir>", "Root directory of persistent swarm state", "/var/lib/shoal")
    .option("--exec-root <dir>", "Root directory of run-time state: namespace files, container sandboxes", "/run/shoal")
    .option("-H, --host <unix:///path.sock>", "Socket to serve the Engine API on", "unix:///run/shoal/shoald.sock")
    .option("--hostname <name>", "Hostname this node reports (several daemons on one machine)", osHostname())
    .addOption(
      new Option("--log-level <level>", "Log level")
        .choices(["trace", "debug", "info", "warn", "error", "fatal"])
        .default("info"),
    )
    .addOption(new Option("--raft-tick-ms <ms>", "Raft tick length in milliseconds (tests)").hideHelp())
    .option("--metrics-addr <host:port>", "Serve Prometheus metrics on this address (GET /metrics)")
    .option("--containerd <socket>", "containerd socket to use (default: shoald runs its own containerd)")
    .option(
      "--insecure-registry <host:port>",
      "A registry to reach over plain HTTP (repeatable)",
      (v: string, all: string[]) => [...all, v],
      [] as string[],
    )
    .option(
      "--max-concurrent-downloads <n>",
      "How many layers of one pull download at once (as dockerd's flag)",
      (v: string) => {
        const n = Number(v);
        if (!Number.isInteger(n) || n < 1 || n > 64) {
          throw new InvalidArgumentError(`invalid --max-concurrent-downloads ${v}: a whole number from 1 to 64`);
        }
        return n;
      },
      3,
    )
    .option(
      "--encryption-key-rotation <duration>",
      "How often the managers rotate the overlay encryption keys (e.g. 12h, 30m, 10s)",
    )
    .addOption(
      new Option(
        "--firewall-backend <backend>",
        "Packet filter for the overlay guard and the gateway NAT (auto: nftables if the kernel can, else iptables-legacy)",
      )
        .choices(["auto", "nftables", "iptables"])
        .default("auto"),
    )
    .action((flags: Flags) => run(flags));
}

/** The containers' runtime on its containerd; without one, shoald runs on and every container call says why. */
async function startRuntime(
  flags: Flags,
  daemon: Daemon,
  supervisor: ContainerdSupervisor,
  logger: pino.Logger,
): Promise<{ runtime: ContainerRuntime | undefined; containers: ContainerBackend }> {
  try {
    const runtime = new ContainerRuntime({
      execRoot: flags.execRoot,
      // On the data root, as dockerd keeps them: containers outlive a host restart (their restart policies act).
      stateDir: join(flags.dataRoot, "containers"),
      attacher: daemon.networks.attacher,
      containerd: await supervisor.start(),
      ownsContainerd: supervisor.managed,
      ...(supervisor.root !== undefined ? { containerdRoot: supervisor.root } : {}),
      insecureRegistries: flags.insecureRegistry,
      maxConcurrentDownloads: flags.maxConcurrentDownloads,
      hostname: () => flags.hostname,
      logger,
    });
    daemon.networks.containers = runtime;
    return { runtime, containers: runtime };
  } catch (e) {
    const line = e instanceof Error ? e.message : String(e);
    logger.error(line);
    process.stderr.write(`shoald: ${line}\n`);
    return { runtime: undefined, containers: unavailableBackend(line) };
  }
}

async function run(flags: Flags): Promise<void> {
  const logger = pino(
    { level: flags.logLevel, base: { pid: process.pid, hostname: flags.hostname } },
    pino.destination(2),
  );
  // Every program the data plane and the container runtime run, checked once: one line names the missing.
  checkPrograms(logger);
  if (flags.metricsAddr) parseMetricsAddr(flags.metricsAddr);
  const tickMs = flags.raftTickMs ? Number(flags.raftTickMs) : undefined;
  const rotationMs = flags.encryptionKeyRotation ? parseDuration(flags.encryptionKeyRotation) : undefined;
  const daemon = await Daemon.start({
    dataRoot: flags.dataRoot,
    execRoot: flags.execRoot,
    hostname: flags.hostname,
    logger,
    ...(tickMs ? { tickMs } : {}),
    ...(rotationMs ? { encryptionKeyRotationMs: rotationMs } : {}),
    firewallBackend: flags.firewallBackend,
  });
  metricSourcesFor(() => daemon.manager);
  const metrics = flags.metricsAddr ? await listenMetrics(flags.metricsAddr) : undefined;
  if (metrics) logger.info({ addr: `${metrics.host}:${metrics.port}` }, "serving metrics");
  const supervisor = new ContainerdSupervisor({
    dataRoot: flags.dataRoot,
    execRoot: flags.execRoot,
    logger,
    ...(flags.containerd ? { socket: flags.containerd } : {}),
  });
  const { runtime, containers } = await startRuntime(flags, daemon, supervisor, logger);
  // Containers of a previous run that still run are adopted, with their networking (the overlays they are
  // on, their names, their gateway); those that ended while no daemon watched release their endpoints, and
  // whatever else the previous run left goes: nothing leaks across a restart.
  daemon.networks.containersRecovered = await (runtime?.reconcile().then(
    () => true,
    (e: unknown) => {
      logger.warn({ err: e }, "could not reconcile containers");
      return false;
    },
  ) ?? false);
  await daemon.networks
    .reconcile()
    .catch((e: unknown) => logger.warn({ err: e }, "could not reconcile overlay namespaces"));
  const server = await EngineServer.listen({
    socketPath: socketPathOf(flags.host),
    backend: daemon,
    networks: daemon.networks,
    containers,
    ...(runtime ? { images: runtime.imageService } : {}),
    logger,
    dataRoot: flags.dataRoot,
  });
  logger.info({ socket: server.socketPath, dataRoot: flags.dataRoot, version: VERSION }, "shoald is ready");
  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, "shutting down");
    // A last resort against a stop that hangs: long enough for containers the next daemon cannot adopt to
    // stop (their 5 s grace, then SIGKILL and their endpoints released through containerd) and for the data
    // plane to be taken down on a loaded host; cut short, the kernel keeps the host's SAs, policies and rules.
    const force = setTimeout(() => process.exit(1), SHUTDOWN_FORCE_MS);
    force.unref();
    try {
      await server.close();
      await metrics?.close();
      // Containers keep running under containerd, with their networking (the next shoald adopts them).
      await runtime?.shutdown(5);
      await supervisor.stop();
      await daemon.stop();
    } finally {
      logger.flush?.();
      process.exit(0);
    }
  };
  process.on("SIGTERM", () => void shutdown("SIGTERM"));
  process.on("SIGINT", () => void shutdown("SIGINT"));
}

/** How long a SIGTERM'd shoald may take to stop cleanly before it exits anyway. */
const SHUTDOWN_FORCE_MS = 60_000;

try {
  await buildProgram().parseAsync(process.argv);
} catch (e) {
  process.stderr.write(`shoald: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
}
