// Where the daemon's metrics read live state: the manager this daemon runs now (if any), read at scrape
// time, so a promotion, a demotion or a restart of the manager needs nothing more.

import type { Manager } from "../manager/manager.js";
import { sources, watchLeader } from "../metrics/metrics.js";

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
    const nodesByState: Record<string, number> = { unknown: 0, ready: 0, down: 0, disconnected: 0 };
    for (const rec of m.store.nodeViews()) {
      const s = rec.node.Status.State;
      nodesByState[s] = (nodesByState[s] ?? 0) + 1;
    }
    return { counts: m.store.counts(), nodesByState };
  };
  sources.dispatcher = () => {
    const m = manager();
    return m ? { sessions: m.dispatcher.sessionCount() } : undefined;
  };
  watchLeader();
}
