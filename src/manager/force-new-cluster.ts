// force-new-cluster: a manager's Raft state rewritten so that it is the only member, keeping every committed
// object (docker swarm init --force-new-cluster). It runs on the storage of a stopped manager.

import type { Logger } from "pino";
import { entryPayload } from "../raft/frame.js";
import type { LevelStorage } from "../raft/level-storage.js";
import { Raft } from "../raft/raft.js";
import { ConfChangeType, EntryType, type NodeId } from "../raft/types.js";
import { encodeCommand, Store } from "../store/store.js";
import { memberCommand } from "./membership.js";

/**
 * force-new-cluster: rewrite a manager's Raft state so that it is the only member, keeping every
 * committed object. Uncommitted entries are dropped; the other members are removed for good.
 */
export async function forceNewCluster(
  openRaftStorage: () => Promise<LevelStorage>,
  raftId: NodeId,
  log: Logger,
): Promise<void> {
  const storage = await openRaftStorage();
  try {
    const mem = storage.mem;
    const { hardState, confState } = mem.initialState();
    const snap = mem.snapshot();
    const store = new Store();
    store.restore(snap.data, snap.metadata.index);
    const members = new Set([...confState.voters, ...confState.learners]);
    const removed = new Set(confState.removed);
    // Replay what was committed.
    for (let i = snap.metadata.index + 1; i <= hardState.commit; i++) {
      const e = mem.entries(i, i + 1, Number.MAX_SAFE_INTEGER)[0]!;
      if (e.type === EntryType.ConfChange) {
        const cc = Raft.decodeConfChange(e);
        if (cc.type === ConfChangeType.AddLearner && !removed.has(cc.nodeId)) members.add(cc.nodeId);
        if (cc.type === ConfChangeType.RemoveNode) {
          members.delete(cc.nodeId);
          removed.add(cc.nodeId);
        }
        const cmd = memberCommand(cc, (why) => log.warn({ index: i, why }, "replay: malformed member context skipped"));
        if (cmd) store.apply(encodeCommand(cmd, new Date(0)), i);
      } else {
        const payload = entryPayload(e);
        if (payload) store.apply(payload, i);
      }
    }
    for (const id of members) if (id !== raftId) removed.add(id);
    store.keepOnlyMember(raftId);
    const index = hardState.commit + 1;
    const term = hardState.term + 1;
    await storage.save(
      {
        snapshot: {
          metadata: {
            index,
            term,
            confState: { voters: [raftId], learners: [], removed: [...removed].sort((a, b) => a - b) },
          },
          data: store.snapshot(),
        },
        hardState: { term, vote: 0, commit: index },
        entries: [],
      },
      true,
    );
    log.warn(
      { index, term, dropped: [...members].filter((id) => id !== raftId).map((id) => id.toString(16)) },
      "forced a new cluster",
    );
  } finally {
    await storage.close();
  }
}
