// An in-process transport: nodes of one process deliver messages to each other through a hub, each
// message encoded and decoded as on the wire. Used by the demo, the benchmark and tests; the network
// transport (gRPC over mutual TLS) plugs into the same Transport interface.

import { decodeMessage, encodeMessage } from "./codec.js";
import type { RaftNode, Transport } from "./node.js";
import type { Message, NodeId } from "./types.js";

export class LocalHub {
  private nodes = new Map<NodeId, RaftNode>();
  /** Nodes cut off from everyone (both directions). */
  private isolated = new Set<NodeId>();

  register(node: RaftNode): void {
    this.nodes.set(node.id, node);
  }

  unregister(id: NodeId): void {
    this.nodes.delete(id);
  }

  isolate(id: NodeId): void {
    this.isolated.add(id);
  }

  heal(id?: NodeId): void {
    if (id === undefined) this.isolated.clear();
    else this.isolated.delete(id);
  }

  transport(from: NodeId): Transport {
    return {
      send: (messages: Message[]) => {
        for (const m of messages) {
          const wire = encodeMessage(m);
          setImmediate(() => {
            const to = this.nodes.get(m.to);
            if (this.isolated.has(from) || this.isolated.has(m.to)) return;
            if (!to) {
              this.nodes.get(from)?.reportUnreachable(m.to);
              return;
            }
            to.step(decodeMessage(wire));
          });
        }
      },
    };
  }
}
