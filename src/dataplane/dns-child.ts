// Sockets inside a container's network namespace, held by the daemon, without a process per container.
//
// A socket belongs to the network namespace it was created in, for its whole life, whichever process holds
// it. So a short-lived child enters the container's namespace (`nsenter --net=PATH node -e SCRIPT`), creates
// a UDP socket and a listening TCP socket on 127.0.0.11:53 there, and hands both to the daemon over the IPC
// channel Node sets up for it (`process.send(msg, handle)`: Node passes the file descriptor with
// SCM_RIGHTS, and supports dgram.Socket and net.Server handles). The daemon's received sockets keep
// serving that namespace after the child has exited. They also keep the namespace itself alive, so they
// must be closed when the container goes away.
//
// The script is passed with -e, not as a file, so it runs the same from the TypeScript sources (tests) and
// from dist/ (the daemon): there is nothing to locate or copy.

import { type ChildProcess, spawn } from "node:child_process";
import type { Socket as DgramSocket } from "node:dgram";
import type { Server as NetServer } from "node:net";
import { explainMissing, missingProgramMessage } from "./programs.js";

/**
 * The child (CommonJS, run by `node -e` inside the target namespace; argv: address, port). It makes sure
 * `lo` is up (os.networkInterfaces() lists only interfaces that are up and running with an address; a
 * socket bound on a down `lo` would bind but never receive), binds UDP and TCP, sends both handles, then
 * waits for the parent to disconnect (so the handles are surely received before it exits). Any failure is
 * reported as a message { error } and exit code 1; a parent that never answers costs at most 10 s.
 */
export const DNS_CHILD_SCRIPT = `
"use strict";
const dgram = require("node:dgram");
const net = require("node:net");
const os = require("node:os");
const { spawnSync } = require("node:child_process");
const [address, portText] = process.argv.slice(1);
const port = Number(portText);
setTimeout(() => process.exit(3), 10000).unref();
const fail = (what, err) => {
  const msg = what + ": " + (err && err.code ? err.code + " " : "") + (err && err.message ? err.message : String(err));
  if (process.send) process.send({ error: msg }, () => process.exit(1));
  else process.exit(1);
};
if (!process.send) process.exit(2);
process.on("disconnect", () => process.exit(0));
const loUp = () => Object.prototype.hasOwnProperty.call(os.networkInterfaces(), "lo");
function ensureLo() {
  if (loUp()) return true;
  const r = spawnSync("ip", ["link", "set", "lo", "up"], { stdio: ["ignore", "ignore", "pipe"], encoding: "utf8" });
  if (r.error && r.error.code === "ENOENT") {
    fail("bringing lo up in the container namespace", new Error(${JSON.stringify(missingProgramMessage("ip"))}));
    return false;
  }
  if (r.error || r.status !== 0 || !loUp()) {
    fail("bringing lo up in the container namespace", r.error || new Error((r.stderr || "").trim() || "lo still down"));
    return false;
  }
  return true;
}
if (ensureLo()) bindAndSend();
function bindAndSend() {
const udp = dgram.createSocket("udp4");
udp.once("error", (err) => fail("binding udp " + address + ":" + port, err));
udp.bind({ address, port, exclusive: true }, () => {
  const tcp = net.createServer();
  tcp.once("error", (err) => fail("listening on tcp " + address + ":" + port, err));
  tcp.listen({ host: address, port, exclusive: true, backlog: 64 }, () => {
    process.send({ kind: "udp" }, udp, (err) => {
      if (err) return fail("sending the udp socket", err);
      process.send({ kind: "tcp" }, tcp, (err2) => {
        if (err2) fail("sending the tcp socket", err2);
      });
    });
  });
});
}
`;

export interface NsSockets {
  udp: DgramSocket;
  tcp: NetServer;
  /** The pid of the child that made them (it has exited when openNsSockets resolves). */
  childPid: number;
}

const DNS_CHILD_TIMEOUT_MS = 60_000;

export interface OpenNsSocketsOptions {
  address?: string;
  port?: number;
  /**
   * Give up (and kill the child) after this long. Default 60 s: the child is a node process, which on a
   * loaded slow host (User-mode Linux, one CPU, three daemons) took more than 10 s to start, failing the
   * container's attach; the timeout only guards against a child that hangs.
   */
  timeoutMs?: number;
  /** For tests: how to start the child (default: child_process.spawn). */
  spawnFn?: typeof spawn;
}

/**
 * Open a UDP socket and a listening TCP server on address:port (default 127.0.0.11:53) inside the network
 * namespace bind-mounted at `netnsPath`, held by this process. Resolves once the helper child has exited;
 * rejects with the child's own explanation if it could not bind (nothing is left open then).
 */
export function openNsSockets(netnsPath: string, opts: OpenNsSocketsOptions = {}): Promise<NsSockets> {
  const address = opts.address ?? "127.0.0.11";
  const port = opts.port ?? 53;
  const timeoutMs = opts.timeoutMs ?? DNS_CHILD_TIMEOUT_MS;
  const spawnFn = opts.spawnFn ?? spawn;
  return new Promise((resolve, reject) => {
    let child: ChildProcess;
    try {
      child = spawnFn(
        "nsenter",
        [`--net=${netnsPath}`, process.execPath, "-e", DNS_CHILD_SCRIPT, address, String(port)],
        {
          stdio: ["ignore", "ignore", "pipe", "ipc"],
          // No NODE_OPTIONS (loaders of a test runner, inspector flags...) leak into the helper.
          env: { PATH: process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C" },
          serialization: "json",
        },
      );
    } catch (err) {
      reject(err);
      return;
    }
    let udp: DgramSocket | undefined;
    let tcp: NetServer | undefined;
    let childError: string | undefined;
    let stderr = "";
    let done = false;
    const timer = setTimeout(() => {
      childError ??= `timed out after ${timeoutMs} ms`;
      child.kill("SIGKILL");
    }, timeoutMs);
    // Disconnect on the next turn: called from inside a 'message' handler, disconnect() can wait for a
    // further message that never comes.
    const disconnect = () => {
      setImmediate(() => {
        if (child.connected) child.disconnect();
      });
    };
    const closeAll = () => {
      try {
        udp?.close();
      } catch {
        // already closed
      }
      tcp?.close();
    };
    const settle = (code: number | null, signal: NodeJS.Signals | null) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (udp && tcp && !childError) {
        resolve({ udp, tcp, childPid: child.pid ?? -1 });
        return;
      }
      closeAll();
      const why = childError ?? (stderr.trim() || `helper exited with ${signal ?? `code ${code}`}`);
      reject(new Error(`cannot open DNS sockets on ${address}:${port} in network namespace ${netnsPath}: ${why}`));
    };
    // Settle on 'exit' plus the end of stderr, not on 'close': a child whose IPC channel the parent
    // disconnected never gets a 'close' event.
    let exited: { code: number | null; signal: NodeJS.Signals | null } | undefined;
    let stderrDone = !child.stderr;
    child.stderr?.setEncoding("utf8").on("data", (d: string) => {
      if (stderr.length < 4096) stderr += d;
    });
    child.stderr?.on("close", () => {
      stderrDone = true;
      if (exited) settle(exited.code, exited.signal);
    });
    child.on("message", (msg: unknown, handle: unknown) => {
      const m = (msg ?? {}) as { kind?: string; error?: string };
      if (typeof m.error === "string") childError = m.error;
      else if (m.kind === "udp" && handle) udp = handle as DgramSocket;
      else if (m.kind === "tcp" && handle) tcp = handle as NetServer;
      if ((udp && tcp) || childError) disconnect();
    });
    child.on("error", (err) => {
      childError ??= explainMissing("nsenter", err) ?? `cannot start nsenter: ${err.message}`;
      if (child.pid === undefined) settle(null, null); // never started: no 'exit' to wait for
    });
    child.on("exit", (code, signal) => {
      exited = { code, signal };
      if (stderrDone) settle(code, signal);
      // Something else (a grandchild) holding stderr must not hold us.
      else setTimeout(() => settle(code, signal), 1000).unref();
    });
  });
}
