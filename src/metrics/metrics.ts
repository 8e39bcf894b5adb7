// Prometheus metrics of a daemon (prom-client): Raft, the dispatcher, the store, the overlays and the
// process itself. The metrics live in one registry per process (one shoald per process); the parts that
// count (dispatcher, agent, overlay, manager writes) call the small functions below, and what is read
// from live state (Raft's indexes, the store's objects, the sessions) is read when Prometheus scrapes,
// through the sources the daemon sets. This module depends on nothing of shoal's, so any layer may use it.

import { readdir } from "node:fs/promises";
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";

export const registry = new Registry();
collectDefaultMetrics({ register: registry, eventLoopMonitoringPrecision: 20 });
// Not these defaults: each scrape walked every handle, resource or descriptor on the event loop (a list of
// every connection: 5,000 on a swarm's leader, a 35-100 ms stall per scrape, longer than a heartbeat's budget).
for (const name of [
  "process_open_fds",
  "nodejs_active_handles",
  "nodejs_active_handles_total",
  "nodejs_active_resources",
  "nodejs_active_resources_total",
]) {
  registry.removeSingleMetric(name);
}
// The descriptors are still counted, by a directory read in libuv's thread pool instead of on the event loop.
new Gauge({
  name: "process_open_fds",
  help: "Number of open file descriptors.",
  registers: [registry],
  async collect() {
    try {
      // Less the descriptor the read itself held.
      this.set((await readdir("/proc/self/fd")).length - 1);
    } catch {
      // Not Linux: no such directory, no such metric.
    }
  },
});

/** Live state read at scrape time; each is set by the daemon (undefined: not a manager now). */
export interface MetricSources {
  raft?: () => { term: number; commitIndex: number; appliedIndex: number; leader: string } | undefined;
  store?: () => { counts: Record<string, number>; nodesByState: Record<string, number> } | undefined;
  dispatcher?: () => { sessions: number } | undefined;
}
export const sources: MetricSources = {};

const SECONDS_FAST = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

new Gauge({
  name: "shoal_raft_term",
  help: "Raft term this manager is in",
  registers: [registry],
  collect() {
    const r = sources.raft?.();
    if (r) this.set(r.term);
  },
});
new Gauge({
  name: "shoal_raft_commit_index",
  help: "Index of the last Raft entry known committed",
  registers: [registry],
  collect() {
    const r = sources.raft?.();
    if (r) this.set(r.commitIndex);
  },
});
new Gauge({
  name: "shoal_raft_apply_index",
  help: "Index of the last Raft entry applied to the store",
  registers: [registry],
  collect() {
    const r = sources.raft?.();
    if (r) this.set(r.appliedIndex);
  },
});
const leaderChanges = new Counter({
  name: "shoal_raft_leader_changes_total",
  help: "Times this manager saw the Raft leader change",
  registers: [registry],
});
const proposalSeconds = new Histogram({
  name: "shoal_raft_proposal_seconds",
  help: "From proposing a write to its outcome (committed and applied here)",
  buckets: SECONDS_FAST,
  registers: [registry],
});
const applySeconds = new Histogram({
  name: "shoal_raft_apply_seconds",
  help: "Applying one committed entry to the store",
  buckets: [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05],
  registers: [registry],
});
new Gauge({
  name: "shoal_store_objects",
  help: "Objects in the replicated store, by type",
  labelNames: ["type"],
  registers: [registry],
  collect() {
    this.reset();
    const s = sources.store?.();
    if (s) for (const [type, n] of Object.entries(s.counts)) this.set({ type }, n);
  },
});
new Gauge({
  name: "shoal_dispatcher_nodes",
  help: "Nodes by status, as this leader's dispatcher records them",
  labelNames: ["state"],
  registers: [registry],
  collect() {
    this.reset();
    const s = sources.store?.();
    if (s) for (const [state, n] of Object.entries(s.nodesByState)) this.set({ state }, n);
  },
});
new Gauge({
  name: "shoal_dispatcher_sessions",
  help: "Agent sessions this manager holds (only the leader holds any)",
  registers: [registry],
  collect() {
    this.set(sources.dispatcher?.()?.sessions ?? 0);
  },
});
const heartbeats = new Counter({
  name: "shoal_dispatcher_heartbeats_total",
  help: "Heartbeats received by this manager's dispatcher",
  registers: [registry],
});
const pushes = new Counter({
  name: "shoal_dispatcher_pushes_total",
  help: "Session messages sent by the dispatcher",
  registers: [registry],
});
const pushSeconds = new Histogram({
  name: "shoal_dispatcher_push_seconds",
  help: "From a change marking sessions to the batch of messages sent for it",
  buckets: SECONDS_FAST,
  registers: [registry],
});
const statusWrites = new Counter({
  name: "shoal_dispatcher_status_updates_total",
  help: "Node status changes written (in node.statusBatch entries)",
  registers: [registry],
});
const heartbeatSeconds = new Histogram({
  name: "shoal_agent_heartbeat_seconds",
  help: "Round trip of this node's heartbeats to the leader",
  labelNames: ["result"],
  buckets: SECONDS_FAST,
  registers: [registry],
});
const overlayBuilds = new Counter({
  name: "shoal_overlay_builds_total",
  help: "Overlay network namespaces built on this host",
  labelNames: ["result"],
  registers: [registry],
});
const overlayBuildSeconds = new Histogram({
  name: "shoal_overlay_build_seconds",
  help: "Building one overlay network's namespace (bridge, vxlan, first endpoint)",
  buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
  registers: [registry],
});

const tlsHandshakes = new Counter({
  name: "shoal_tls_handshakes_total",
  help: "TLS handshakes completed on the cluster listener (:2377), full or resumed (a session ticket of any manager)",
  labelNames: ["kind"] as const,
  registers: [registry],
});

export const observe = {
  proposal(ms: number): void {
    proposalSeconds.observe(ms / 1000);
  },
  apply(ms: number): void {
    applySeconds.observe(ms / 1000);
  },
  heartbeatReceived(): void {
    heartbeats.inc();
  },
  pushed(count: number, latencyMs: number): void {
    pushes.inc(count);
    pushSeconds.observe(latencyMs / 1000);
  },
  statusWritten(updates: number): void {
    statusWrites.inc(updates);
  },
  tlsHandshake(resumed: boolean): void {
    tlsHandshakes.inc({ kind: resumed ? "resumed" : "full" });
  },
  heartbeatSent(ms: number, ok: boolean): void {
    heartbeatSeconds.observe({ result: ok ? "ok" : "failed" }, ms / 1000);
  },
  overlayBuilt(ms: number, ok: boolean): void {
    overlayBuilds.inc({ result: ok ? "ok" : "failed" });
    if (ok) overlayBuildSeconds.observe(ms / 1000);
  },
};

let lastLeader: string | undefined;
let watcher: NodeJS.Timeout | undefined;

/** Follow the Raft leader (leader changes are counted as they happen, not only when scraped). */
export function watchLeader(everyMs = 200): void {
  if (watcher) return;
  watcher = setInterval(() => {
    const r = sources.raft?.();
    if (!r) return;
    if (lastLeader !== undefined && r.leader !== lastLeader) leaderChanges.inc();
    lastLeader = r.leader;
  }, everyMs);
  watcher.unref();
}

export function stopWatchingLeader(): void {
  if (watcher) clearInterval(watcher);
  watcher = undefined;
}

/** The Prometheus text of every metric. */
export function metricsText(): Promise<string> {
  return registry.metrics();
}

export const contentType = registry.contentType;
