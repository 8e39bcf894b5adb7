// Where the daemon's metrics read live state: the manager this daemon runs now (if any), read at scrape
// time, so a promotion, a demotion or a restart of the manager needs nothing more.

import type { Manager } from "../manager/manager.js";
import { sources, watchLeader } from "../metrics/metrics.js";
import type { NodeRecord, View } from "../store/store.js";

/** Counted once per list of nodes (the store shares the list until a node changes; a scrape asks twice). */
const counted = new WeakMap<readonly View<NodeRecord>[], Record<string, number>>();

function nodesByState(nodes: readonly View<NodeRecord>[]): Record<string, number> {
  let out = counted.get(nodes);
  if (out) return out;
  out = { unknown: 0, ready: 0, down: 0, disconnected: 0 };
  for (const rec of nodes) {
    const s = rec.node.Status.State;
    out[s] = (out[s] ?? 0) + 1;
  }
  counted.set(nodes, out);
  return out;
}

export function metricSourcesFor(manager: () => Manager | undefined): void {
  sources.raft = () => {
    const m = manager();
    if (!m?.raft) return undefined;
    const st = m.raft.status();
    return { term: st.term, commitIndex: st.commit, appliedIndex: st.applied, leader: String(st.lead) };
  };
  sources.store = () => {
    const m = manager();
    if (!m) return undefined;
    return { counts: m.store.counts(), nodesByState: nodesByState(m.store.nodeViews()) };
  };
  sources.dispatcher = () => {
    const m = manager();
    return m ? { sessions: m.dispatcher.sessionCount() } : undefined;
  };
  watchLeader();
}
