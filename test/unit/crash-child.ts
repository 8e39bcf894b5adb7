// A child process for the kill -9 test in raft-crash.test.ts (run from dist/ after a build):
//
//   node dist/test/unit/crash-child.js <dir> <tag> [snapshotInterval] [keepTail]
//
// Opens (or bootstraps) a single-node cluster in <dir>, elects itself and writes as fast as it can, 16
// proposals in flight. After each propose() resolves it prints "acked <index> <value>" to stdout (stdout
// is a pipe: synchronous on Linux, so a printed line was acknowledged before the kill). The parent kills
// it with SIGKILL at a random moment; it never exits on its own.
//
// It proposes at once after a restart, while it is still re-applying the log it reopened with: entries of
// the previous process must not acknowledge this one's proposals.

import { LevelStorage } from "../../src/raft/level-storage.js";
import { RaftNode } from "../../src/raft/node.js";
import { bootstrapSnapshot } from "../../src/raft/rawnode.js";
import { KVMachine } from "./kv-machine.js";
import { TEST_DEK } from "./test-dek.js";

const [dir, tag, snapArg, keepArg] = process.argv.slice(2);
if (!dir || !tag) {
  process.stderr.write("usage: crash-child <dir> <tag> [snapshotInterval] [keepTail]\n");
  process.exit(2);
}

const storage = await LevelStorage.open(dir, { dek: TEST_DEK });
if (storage.mem.lastIndex() === 0) {
  const b = bootstrapSnapshot([1]);
  await storage.save({ snapshot: b.snapshot, hardState: b.hardState, entries: [] }, true);
}
const node = await RaftNode.start({
  id: 1,
  storage,
  stateMachine: new KVMachine(),
  transport: { send: () => {} },
  tickMs: 10,
  snapshotInterval: snapArg ? Number(snapArg) : 10_000,
  keepTail: keepArg ? Number(keepArg) : 500,
  proposalTimeoutMs: 60_000,
});
node.campaign();
while (!node.isLeader) await new Promise((r) => setTimeout(r, 1));
process.stdout.write(`ready ${storage.mem.hardState.commit}\n`);

let seq = 0;
async function writer(): Promise<void> {
  for (;;) {
    const value = `${tag}-${++seq}`;
    try {
      const index = await node.propose(KVMachine.put(value, value));
      process.stdout.write(`acked ${index} ${value}\n`);
    } catch (e) {
      process.stderr.write(`propose ${value} failed: ${String(e)}\n`);
      if (node.fatal) process.exit(3);
      await new Promise((r) => setTimeout(r, 1));
    }
  }
}
for (let i = 0; i < 16; i++) void writer();
