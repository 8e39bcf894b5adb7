// The fuzzer's unit tests resolve references against this made-up cluster (no daemon runs).

import type { FuzzContext } from "../fuzz/refs.js";

/** Three managers and two workers, one ingress network; `extraNodes` join them. */
export function fuzzContext(...extraNodes: FuzzContext["nodes"]): FuzzContext {
  return {
    nodes: [
      { id: "m1aaaaaaaaaaaaaaaaaaaaaaa", hostname: "node1", version: 11, role: "manager" },
      { id: "m2bbbbbbbbbbbbbbbbbbbbbbb", hostname: "node2", version: 12, role: "manager" },
      { id: "m3ccccccccccccccccccccccc", hostname: "node3", version: 13, role: "manager" },
      { id: "w4ddddddddddddddddddddddd", hostname: "node4", version: 14, role: "worker" },
      { id: "x5eeeeeeeeeeeeeeeeeeeeeee", hostname: "node5", version: 15, role: "worker" },
      ...extraNodes,
    ],
    networks: [{ id: "n".repeat(25), name: "ingress" }],
    swarmVersion: 7,
    tokens: { worker: "SWMTKN-1-abc-wkr", manager: "SWMTKN-1-abc-mgr" },
    raftIds: [1n, 2n, 3n, 4n],
    sessions: [],
    endpoints: [],
    csrs: ["csr"],
    clusterAddrs: new Map([[1, "127.0.0.1:2377"]]),
    rootPem: "root",
    certPems: { worker: "w", exManager: "x" },
    unlockKey: "",
  };
}
