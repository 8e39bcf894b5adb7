// The cluster listener's address (--listen-addr, 2377 by default). Only a manager listens on it: a worker
// keeps the address for a later promotion and holds no socket, so several workers and managers can share
// a machine. The address is checked, and bound, when the node becomes a manager: init and join as manager
// refuse with a clear error; a promotion or a restart as manager says why in the log and in `docker info`,
// keeps the daemon up, and retries.

import { createServer } from "node:net";
import { ListenError, splitHostPort } from "../manager/listener.js";

/** How often a node that should be a manager retries while its listen address cannot be bound. */
export const LISTEN_RETRY_MS = 2000;

/** Whether `host:port` can be listened on now: undefined if so, else why (a ListenError when busy or not ours). */
export function listenAddrError(addr: string): Promise<Error | undefined> {
  const [host, portText] = splitHostPort(addr);
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once("error", (e: NodeJS.ErrnoException) => {
      if (e.code === "EADDRINUSE" || e.code === "EADDRNOTAVAIL") resolve(new ListenError(addr, e.code));
      else resolve(new Error(`cannot listen on ${addr}: ${e.message}`));
    });
    srv.listen(Number(portText), host, () => srv.close(() => resolve(undefined)));
  });
}

/** Why a promoted node is not a manager yet, and what to do. */
export class PromotionBlocked extends Error {
  constructor(cause: Error, hostname: string) {
    const why = cause instanceof ListenError ? cause.reason : cause.message;
    super(
      `cannot become a manager: ${why}; free it or demote this node (docker node demote ${hostname}); shoald retries every ${LISTEN_RETRY_MS / 1000} s`,
    );
    this.name = "PromotionBlocked";
  }
}

/** Why a manager's Raft member and cluster listener did not start after a restart, and what to do. */
export function restartBlocked(e: ListenError): string {
  return `cannot start the manager: ${e.reason}; free it (shoald retries every ${LISTEN_RETRY_MS / 1000} s)`;
}
