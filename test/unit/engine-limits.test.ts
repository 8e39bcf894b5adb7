// src/engine/http.ts: what a client cannot do to the Engine API server. Each test shortens a limit and
// checks the behaviour a client sees (a refusal, a closed connection, a bounded read), never how fast the
// machine is: waits are generous upper bounds.

import { mkdtemp, rm } from "node:fs/promises";
import { request as httpRequest } from "node:http";
import { connect, type Socket } from "node:net";
import os from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, test } from "vitest";
import { EngineServer } from "../../src/engine/server.js";
import type {
  ContainerBackend,
  LogsOptions,
  OutputChunk,
  OutputStream,
  SwarmBackend,
  SwarmInfo,
} from "../../src/engine/types.js";

const swarm = {
  hostname: () => "testhost",
  async swarmInfo(): Promise<SwarmInfo> {
    return {
      NodeID: "",
      NodeAddr: "",
      LocalNodeState: "inactive",
      ControlAvailable: false,
      Error: "",
      RemoteManagers: null,
    };
  },
  async swarmInit(): Promise<string> {
    return "n0de1d000000000000000000a";
  },
} as unknown as SwarmBackend;

let dir: string;
let sock: string;
let server: EngineServer | undefined;
const sockets: Socket[] = [];

beforeEach(async () => {
  dir = await mkdtemp(join(os.tmpdir(), "shoal-engine-limits-"));
  sock = join(dir, "shoald.sock");
});

afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await server?.close();
  server = undefined;
  await rm(dir, { recursive: true, force: true });
});

/** A raw connection that records what it receives and when it is closed. */
function open(): Promise<{ socket: Socket; received: () => string; closed: Promise<void> }> {
  return new Promise((resolve, reject) => {
    const socket = connect(sock);
    sockets.push(socket);
    let text = "";
    socket.on("data", (d: Buffer) => {
      text += d.toString("utf8");
    });
    socket.on("error", () => undefined);
    const closed = new Promise<void>((r) => socket.once("close", () => r()));
    socket.once("connect", () => resolve({ socket, received: () => text, closed }));
    socket.once("error", reject);
  });
}

function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return Promise.race([
    p,
    new Promise<T>((_, reject) => setTimeout(() => reject(new Error(`not within ${ms} ms: ${what}`)), ms)),
  ]);
}

/** Polls `done` until it holds; fails after 10 s naming `what`. */
function until(done: () => boolean, what: string): Promise<void> {
  return within(
    new Promise<void>((r) => {
      const t = setInterval(() => {
        if (done()) {
          clearInterval(t);
          r();
        }
      }, 10);
    }),
    10_000,
    what,
  );
}

function get(path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ socketPath: sock, method: "GET", path, agent: false }, (res) => {
      let body = "";
      res.on("data", (c: Buffer) => {
        body += c.toString();
      });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on("error", reject);
    req.end();
  });
}

describe("connections", () => {
  test("past the limit, a connection is answered 503 with a reason and closed; below it, served again", async () => {
    server = await EngineServer.listen({ socketPath: sock, backend: swarm, limits: { maxConnections: 3 } });
    const held = [await open(), await open(), await open()];
    // A client writes its request first, then reads: it gets the answer, not a broken pipe.
    const extra = await open();
    extra.socket.write("GET /v1.50/nodes HTTP/1.1\r\nHost: shoal\r\n\r\n");
    await within(extra.closed, 10_000, "the connection past the limit is closed");
    expect(extra.received()).toMatch(/^HTTP\/1\.1 503 Service Unavailable\r\n/);
    expect(extra.received()).toContain("Content-Type: application/json\r\n");
    expect(extra.received()).toContain(
      '{"message":"shoald is serving 3 connections already (its limit): close some and try again"}',
    );
    // So does one whose request has a body of megabytes, still being written when it is refused.
    const big = await open();
    let writeError = "";
    big.socket.on("error", (e: NodeJS.ErrnoException) => {
      writeError = e.code ?? e.message;
    });
    const body = `{"Name":"${"x".repeat(4_000_000)}"}`;
    big.socket.write(
      `POST /v1.50/networks/create HTTP/1.1\r\nHost: shoal\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
    );
    await within(big.closed, 10_000, "the connection past the limit is closed");
    expect(`${writeError} ${big.received()}`).toMatch(/^ HTTP\/1\.1 503 Service Unavailable\r\n/);
    // One that sends nothing is closed too.
    const silent = await open();
    await within(silent.closed, 10_000, "a silent connection past the limit is closed");
    expect(silent.received()).toBe("");
    held[0]!.socket.destroy();
    await held[0]!.closed;
    // The count follows closes (the server sees the close a moment later).
    let r = { status: 0, body: "" };
    for (let i = 0; i < 50 && r.status !== 200; i++) {
      r = await get("/_ping").catch(() => ({ status: 0, body: "" }));
      if (r.status !== 200) await new Promise((w) => setTimeout(w, 20));
    }
    expect(r).toEqual({ status: 200, body: "OK" });
  });
});

describe("slow clients are closed after a bounded time, not minutes", () => {
  const limits = { headersTimeoutMs: 300, requestTimeoutMs: 600, timeoutCheckMs: 50 };

  test("a connection that sends nothing, and a half-sent head, get 408 and are closed", async () => {
    server = await EngineServer.listen({ socketPath: sock, backend: swarm, limits });
    const idle = await open();
    const half = await open();
    half.socket.write("GET /_ping HTTP/1.1\r\nHost: shoal\r\n");
    await within(Promise.all([idle.closed, half.closed]), 10_000, "slow heads are closed");
    expect(idle.received()).toMatch(/^HTTP\/1\.1 408 Request Timeout/);
    expect(half.received()).toMatch(/^HTTP\/1\.1 408 Request Timeout/);
  });

  test("a half-sent body is closed, and nothing reaches the backend", async () => {
    let inits = 0;
    const backend = { ...swarm, swarmInit: async () => `${++inits}` } as unknown as SwarmBackend;
    server = await EngineServer.listen({ socketPath: sock, backend, limits });
    const c = await open();
    c.socket.write(
      "POST /v1.50/swarm/init HTTP/1.1\r\nHost: shoal\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    );
    await within(c.closed, 10_000, "a half-sent body is closed");
    expect(inits).toBe(0);
  });
});

describe("a body refused before its end", () => {
  /** POST through Node's HTTP client, which writes the whole body before it reads the answer. */
  function post(path: string, body: string): Promise<{ status: number; body: string }> {
    return new Promise((resolve, reject) => {
      const req = httpRequest(
        {
          socketPath: sock,
          method: "POST",
          path,
          agent: false,
          headers: { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(body) },
        },
        (res) => {
          let text = "";
          res.on("data", (c: Buffer) => {
            text += c.toString();
          });
          res.on("end", () => resolve({ status: res.statusCode ?? 0, body: text }));
        },
      );
      req.on("error", reject);
      req.end(body);
    });
  }

  test("is still answered to a client that writes it all before reading (no broken pipe), and the rest is dropped", async () => {
    let inits = 0;
    const backend = { ...swarm, swarmInit: async () => `${++inits}` } as unknown as SwarmBackend;
    server = await EngineServer.listen({ socketPath: sock, backend });
    // Refused at its first bytes (too deep; too large), while the client still has megabytes to write.
    const deep = `{"ListenAddr":${"[".repeat(4_000_000)}`;
    const large = `{"ListenAddr":"${"1".repeat(4_000_000)}"}`;
    for (let i = 0; i < 10; i++) {
      const r = await post("/v1.50/swarm/init", i % 2 ? large : deep);
      expect(r.status, r.body).toBe(i % 2 ? 413 : 400);
      expect(r.body).toContain(i % 2 ? "request body is too large" : "nests deeper than");
    }
    expect(inits).toBe(0);
    expect(await post("/v1.50/swarm/init", "{}")).toEqual({ status: 200, body: '"1"\n' });
  });

  test.each([
    ["", "keeps the connection"],
    ["Connection: close\r\n", "asked to close it after the answer"],
  ])("a raw client whose write is still going gets the answer, not a broken pipe (%#: %s)", async (header) => {
    server = await EngineServer.listen({ socketPath: sock, backend: swarm });
    const body = `{"ListenAddr":${"[".repeat(4_000_000)}`;
    for (let i = 0; i < 10; i++) {
      const c = await open();
      let writeError = "";
      c.socket.on("error", (e: NodeJS.ErrnoException) => {
        writeError = e.code ?? e.message;
      });
      c.socket.write(
        `POST /v1.50/swarm/init HTTP/1.1\r\nHost: shoal\r\n${header}Content-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
      );
      await until(
        () => c.received().includes("nests deeper than") || c.socket.destroyed,
        "an answer or a closed connection",
      );
      expect(`${writeError} ${c.received()}`).toMatch(/^ HTTP\/1\.1 400 Bad Request\r\n/);
      c.socket.destroy();
    }
  });
});

describe("hijacked connections (attach, exec start) are held no longer than other requests", () => {
  const upgradeHead = (path: string, length: number): string =>
    `POST ${path} HTTP/1.1\r\nHost: shoal\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n` +
    `Content-Type: application/json\r\nContent-Length: ${length}\r\n\r\n`;

  test("an upgrade request whose body never arrives gets 408 and is closed", async () => {
    server = await EngineServer.listen({
      socketPath: sock,
      backend: swarm,
      limits: { headersTimeoutMs: 300, requestTimeoutMs: 600, timeoutCheckMs: 50 },
    });
    const c = await open();
    c.socket.write(`${upgradeHead("/v1.50/exec/e1/start", 100)}{"Detach":`);
    await within(c.closed, 10_000, "the upgrade request with a half-sent body is closed");
    expect(c.received()).toMatch(/^HTTP\/1\.1 408 /);
    expect(c.received()).toContain('{"message":"the request body did not arrive within 600 ms"}');
  });

  test("a client that keeps its side open after the answer to an upgrade request does not keep its slot", async () => {
    server = await EngineServer.listen({ socketPath: sock, backend: swarm, limits: { maxConnections: 1 } });
    const socket = connect({ path: sock, allowHalfOpen: true });
    sockets.push(socket);
    socket.on("error", () => undefined);
    let text = "";
    socket.on("data", (d: Buffer) => {
      text += d.toString("utf8");
    });
    const ended = new Promise<void>((r) => socket.once("end", () => r()));
    socket.write(upgradeHead("/v1.50/no/such/route", 0));
    await within(ended, 10_000, "the answer to the upgrade request");
    expect(text).toMatch(/^HTTP\/1\.1 404 /);
    // The client never closes; the server has, so the one connection allowed serves the next client.
    let r = { status: 0, body: "" };
    for (let i = 0; i < 100 && r.status !== 200; i++) {
      r = await get("/_ping").catch(() => ({ status: 0, body: "" }));
      if (r.status !== 200) await new Promise((w) => setTimeout(w, 50));
    }
    expect(r).toEqual({ status: 200, body: "OK" });
  });
});

describe("memory held per request", () => {
  test("bodies being read share one budget: past it a request is refused (503) and later ones are served", async () => {
    const backend = { ...swarm, swarmInit: async () => "id" } as unknown as SwarmBackend;
    server = await EngineServer.listen({
      socketPath: sock,
      backend,
      limits: { bodyBudgetBytes: 64 * 1024, maxBodyBytes: 48 * 1024 },
    });
    const head = (n: number): string =>
      `POST /v1.50/swarm/init HTTP/1.1\r\nHost: shoal\r\nContent-Type: application/json\r\nContent-Length: ${n}\r\n\r\n`;
    const body = `{"ListenAddr":"${"1".repeat(40 * 1024)}"}`;
    // A holds 40 KiB of the budget while it keeps the rest of its body back.
    const a = await open();
    a.socket.write(head(body.length) + body.slice(0, 40 * 1024));
    await new Promise((w) => setTimeout(w, 200));
    const b = await open();
    b.socket.write(head(body.length) + body);
    await until(() => b.received().includes("try again in a moment"), "the request past the budget is answered");
    expect(b.received()).toMatch(/^HTTP\/1\.1 503 /);
    expect(b.received()).toContain("shoald is reading too many large requests at once: try again in a moment");
    a.socket.write(body.slice(40 * 1024));
    await until(() => a.received().includes("\r\n\r\n"), "A's answer");
    // Its body was too big for the schema's bound on ListenAddr: refused, but read and answered.
    expect(a.received()).toMatch(/^HTTP\/1\.1 400 /);
    const c = await open();
    c.socket.write(`${head(2)}{}`);
    await until(() => c.received().includes('"id"'), "a later request is served");
    expect(c.received()).toMatch(/^HTTP\/1\.1 200 /);
  });

  test("logs wait for a client that does not read: what the server pulls from the log stays bounded", async () => {
    let pulled = 0;
    const chunk = Buffer.alloc(64 * 1024, 0x61);
    const containers = {
      containerCounts: () => ({ total: 0, running: 0, paused: 0, stopped: 0 }),
      async containerLogs(_ref: string, _opts: LogsOptions): Promise<OutputStream> {
        async function* chunks(): AsyncGenerator<OutputChunk> {
          // 256 MiB if nothing held it back.
          for (let i = 0; i < 4096; i++) {
            pulled += chunk.length;
            yield { stream: 1, data: chunk };
          }
        }
        return { tty: true, chunks: chunks(), cancel: () => undefined };
      },
    } as unknown as ContainerBackend;
    server = await EngineServer.listen({ socketPath: sock, backend: swarm, containers });
    const c = await open();
    c.socket.pause(); // read nothing
    c.socket.write("GET /v1.50/containers/c1/logs?stdout=1&follow=1 HTTP/1.1\r\nHost: shoal\r\n\r\n");
    // Wait until the server stops pulling (the pipe and socket buffers are full).
    let last = -1;
    for (let i = 0; i < 100 && pulled !== last; i++) {
      last = pulled;
      await new Promise((w) => setTimeout(w, 100));
    }
    expect(pulled).toBeGreaterThan(0);
    expect(pulled).toBeLessThan(32 * 1024 * 1024);
  });
});
