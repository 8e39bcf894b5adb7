// Sending a case to the live cluster, and judging the answer on its own: an Engine API request over a raw
// HTTP/1.1 connection (so method, path, headers and framing can be anything), a gRPC call with the raw
// bytes of its message, or a connection-level case. A case that gets no answer in time, an Engine API
// error that the docker CLI could not read, or an answer that leaks an internal error is a finding.

import { connect as netConnect, type Socket } from "node:net";
import * as grpc from "@grpc/grpc-js";
import type { Case } from "./cases.js";
import type { BurstCase, SlowCase, TcpCase } from "./conn-cases.js";
import type { ByteMut, EngineCase, QVal } from "./engine-cases.js";
import type { GrpcCase, Identity } from "./grpc-cases.js";
import { type Resolve, serialize } from "./json.js";
import type { LagProbe } from "./lag.js";
import { encode, type PbResolve } from "./protobuf.js";
import { type FuzzContext, resolveJson, resolveRef, resolveString } from "./refs.js";
import { makeSafe, segValue } from "./safety.js";

export interface Outcome {
  /** e.g. "HTTP 400", "grpc PERMISSION_DENIED", "closed". */
  summary: string;
  /** The error message or status details, when there is one. */
  detail?: string;
  /** Set when the answer itself shows a bug. */
  finding?: string;
}

export interface SendEnv {
  ctx: FuzzContext;
  /** Measures the fuzzer's own delays, for the evidence a hang finding carries. */
  lag?: LagProbe;
  sock: (daemon: number) => string;
  cluster: (daemon: number) => { host: string; port: number };
  clients: GrpcPool;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** How long any one case may take before it counts as hung. */
export const CASE_TIMEOUT_MS = 20_000;
const MAX_RESPONSE_BYTES = 1 << 20;

/** Messages of JavaScript's own errors: an answer carrying one leaked an unhandled exception. */
export const INTERNAL_ERROR_RE =
  /Cannot read propert|Cannot set propert|is not a function|is not iterable|is not defined|Maximum call stack|Invalid array length|Invalid string length|Cannot convert|Do not know how to serialize|Unexpected token|Unexpected end of JSON|in JSON at position|BigInt|out of memory|undefined \(reading|RangeError|TypeError|ReferenceError|SyntaxError/;

export function applyByteMut(buf: Buffer, m: ByteMut | undefined): Buffer {
  if (!m) return buf;
  switch (m.how) {
    case "truncate":
      return buf.subarray(0, Math.floor(buf.length * m.frac));
    case "flip": {
      if (buf.length === 0) return buf;
      const out = Buffer.from(buf);
      for (const p of m.positions) out[p % out.length]! ^= 1 << (p % 8);
      return out;
    }
    case "append":
      return Buffer.concat([buf, Buffer.from(m.text, "utf8")]);
    case "prepend":
      return Buffer.concat([Buffer.from(m.text, "utf8"), buf]);
  }
}

// ---------------------------------------------------------------------------------------------------
// Engine API

/** Percent-encode every byte but the unreserved ones (lone surrogates become U+FFFD, as UTF-8 does). */
export function pct(s: string): string {
  let out = "";
  for (const b of Buffer.from(s, "utf8")) {
    const c = String.fromCharCode(b);
    out += /[A-Za-z0-9\-._~]/.test(c) ? c : `%${b.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

/** A literal the generator meant raw (%zz, &, =): only what would end the request line is encoded. */
const rawish = (s: string): string => s.replace(/[\s#\u0080-\uffff]/g, (ch) => pct(ch));

function queryValue(ctx: FuzzContext, v: QVal, json: Resolve): string {
  if ("lit" in v) return rawish(v.lit);
  if ("ref" in v) return pct(resolveString(ctx, v.ref));
  return pct(serialize(v.json, json));
}

export function renderTarget(ctx: FuzzContext, c: EngineCase): string {
  const json: Resolve = (r) => resolveJson(ctx, r);
  const segs = c.path.map((s) => {
    if ("ref" in s) return pct(resolveString(ctx, s.ref));
    return s.enc ? pct(s.lit) : s.lit;
  });
  const path = `/${c.version ? `${c.version}/` : ""}${segs.join("/")}`;
  const query = c.query.map(([k, v]) => `${rawish(k)}=${queryValue(ctx, v, json)}`).join("&");
  return query ? `${path}?${query}` : path;
}

export function engineBody(ctx: FuzzContext, c: EngineCase): Buffer | undefined {
  const b = c.body;
  switch (b.b) {
    case "none":
      return undefined;
    case "json":
      return applyByteMut(
        Buffer.from(
          serialize(b.v, (r) => resolveJson(ctx, r)),
          "utf8",
        ),
        b.mut,
      );
    case "text":
      return Buffer.from(b.text, "utf8");
    case "bytes":
      return Buffer.from(b.bytes);
  }
}

function requestBytes(ctx: FuzzContext, c: EngineCase): Buffer {
  const body = engineBody(ctx, c);
  const lines = [
    `${c.method} ${renderTarget(ctx, c)} HTTP/1.1`,
    "Host: api.moby.localhost",
    "User-Agent: Docker-Client/28.2.2 (linux)",
  ];
  if (c.contentType !== null && body !== undefined) lines.push(`Content-Type: ${c.contentType}`);
  if (c.chunked) lines.push("Transfer-Encoding: chunked");
  else if (body !== undefined || c.method === "POST") lines.push(`Content-Length: ${body?.length ?? 0}`);
  if (c.upgrade) lines.push("Connection: Upgrade", "Upgrade: tcp");
  else lines.push("Connection: close");
  for (const [k, v] of c.headers) lines.push(`${k}: ${v}`);
  const head = Buffer.from(`${lines.join("\r\n")}\r\n\r\n`, "utf8");
  if (!c.chunked) return body ? Buffer.concat([head, body]) : head;
  const data = body ?? Buffer.alloc(0);
  const half = Math.floor(data.length / 2);
  const chunk = (b: Buffer) => (b.length ? [Buffer.from(`${b.length.toString(16)}\r\n`), b, Buffer.from("\r\n")] : []);
  return Buffer.concat([
    head,
    ...chunk(data.subarray(0, half)),
    ...chunk(data.subarray(half)),
    Buffer.from("0\r\n\r\n"),
  ]);
}

interface HttpAnswer {
  status: number;
  headers: Map<string, string>;
  body: Buffer;
}

function dechunk(b: Buffer): Buffer {
  const parts: Buffer[] = [];
  let at = 0;
  for (;;) {
    const eol = b.indexOf("\r\n", at);
    if (eol < 0) break;
    const size = Number.parseInt(b.subarray(at, eol).toString("latin1"), 16);
    if (!Number.isFinite(size) || size === 0) break;
    parts.push(b.subarray(eol + 2, eol + 2 + size));
    at = eol + 2 + size + 2;
  }
  return Buffer.concat(parts);
}

export function parseHttp(raw: Buffer): HttpAnswer | undefined {
  const end = raw.indexOf("\r\n\r\n");
  if (end < 0) return undefined;
  const lines = raw.subarray(0, end).toString("latin1").split("\r\n");
  const m = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? "");
  if (!m) return undefined;
  // An interim answer (100 Continue): the real one follows.
  if (/^1(00|02|03)$/.test(m[1]!)) return parseHttp(raw.subarray(end + 4));
  const headers = new Map<string, string>();
  for (const l of lines.slice(1)) {
    const i = l.indexOf(":");
    if (i > 0) headers.set(l.slice(0, i).trim().toLowerCase(), l.slice(i + 1).trim());
  }
  let body = raw.subarray(end + 4);
  if (headers.get("transfer-encoding")?.toLowerCase() === "chunked") body = dechunk(body);
  return { status: Number(m[1]), headers, body };
}

/** Write `data` on a new unix-socket connection; collect what comes back until the server closes. */
function exchange(
  sockPath: string,
  data: Buffer,
  timeoutMs: number,
  stopEarly?: (got: Buffer) => boolean,
  lag?: LagProbe,
): Promise<{ raw: Buffer; timedOut: boolean; error?: string }> {
  const started = Date.now();
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    const sock = netConnect(sockPath);
    const finish = (timedOut: boolean, error?: string) => {
      if (done) return;
      done = true;
      sock.destroy();
      resolve({ raw: Buffer.concat(chunks), timedOut, ...(error ? { error } : {}) });
    };
    void (lag ? lag.waitAwake(started, timeoutMs) : sleep(timeoutMs)).then(() => finish(true));
    sock.on("connect", () => sock.write(data, () => undefined));
    sock.on("data", (d: Buffer) => {
      if (size < MAX_RESPONSE_BYTES) chunks.push(d);
      size += d.length;
      if (stopEarly?.(Buffer.concat(chunks))) finish(false);
    });
    sock.on("end", () => finish(false));
    sock.on("close", () => finish(false));
    sock.on("error", (e: NodeJS.ErrnoException) => {
      // The server may answer and close before it read a large body: keep what it said.
      if (chunks.length > 0) finish(false);
      else finish(false, e.code ?? e.message);
    });
  });
}

/** The Engine API's rules for an answer, as the docker CLI reads it. */
export function judgeHttp(a: HttpAnswer, method: string): string | undefined {
  const ct = a.headers.get("content-type");
  // An answer to HEAD has no body, whatever its type says.
  if (method.toUpperCase() === "HEAD") return a.status >= 500 ? `HEAD answered ${a.status}` : undefined;
  if (a.status >= 400) {
    // Node's HTTP parser refuses a malformed request before any route sees it: no body, no type.
    if (ct === undefined && a.body.length === 0) return undefined;
    if (ct !== "application/json")
      return `error ${a.status} with Content-Type ${JSON.stringify(ct)} (the docker CLI needs application/json)`;
    let msg: unknown;
    try {
      msg = (JSON.parse(a.body.toString("utf8")) as { message?: unknown }).message;
    } catch {
      return `error ${a.status} whose body is not JSON: ${JSON.stringify(a.body.toString("utf8").slice(0, 200))}`;
    }
    if (typeof msg !== "string") return `error ${a.status} without a message: ${a.body.toString("utf8").slice(0, 200)}`;
    if (a.status >= 500 && INTERNAL_ERROR_RE.test(msg))
      return `error ${a.status} leaks an internal error: ${msg.slice(0, 300)}`;
    return undefined;
  }
  if (ct === "application/json" && a.body.length > 0 && a.status !== 101) {
    try {
      JSON.parse(a.body.toString("utf8"));
    } catch {
      return `answer ${a.status} is not the JSON it says it is: ${a.body.toString("utf8").slice(0, 200)}`;
    }
  }
  return undefined;
}

/** How long a /_ping probe after a hang may take. */
export const PROBE_TIMEOUT_MS = 10_000;

/**
 * Evidence for a case that got no answer in time: the fuzzer's own delays while it waited, and how long a
 * /_ping to the same daemon takes right after (a daemon that answers it at once was not stalled).
 */
export async function hangEvidence(env: SendEnv, daemon: number, since: number): Promise<string> {
  const t0 = Date.now();
  const r = await exchange(
    env.sock(daemon),
    Buffer.from("GET /_ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    PROBE_TIMEOUT_MS,
  );
  const a = parseHttp(r.raw);
  const ping = a ? `answered ${a.status} in ${Date.now() - t0} ms` : `got no answer in ${PROBE_TIMEOUT_MS} ms`;
  return `${env.lag ? `${env.lag.describe(since)}; ` : ""}a /_ping to daemon ${daemon} right after ${ping}`;
}

export async function sendEngine(env: SendEnv, generated: EngineCase): Promise<Outcome> {
  const started = Date.now();
  const c = makeSafe(env.ctx, generated);
  const data = requestBytes(env.ctx, c);
  const upgrade = c.upgrade;
  const r = await exchange(
    env.sock(c.daemon),
    data,
    CASE_TIMEOUT_MS,
    (got) => (upgrade ? /^HTTP\/1\.1 101/.test(got.toString("latin1", 0, 16)) : false),
    env.lag,
  );
  const a = parseHttp(r.raw);
  if (!a) {
    if (r.timedOut) {
      const evidence = await hangEvidence(env, c.daemon, started);
      return { summary: "hang", finding: `no answer within ${CASE_TIMEOUT_MS} ms\n    evidence: ${evidence}` };
    }
    return { summary: r.error ? `conn ${r.error}` : r.raw.length ? "garbled" : "closed" };
  }
  const finding = judgeHttp(a, c.method);
  const detail = a.status >= 400 ? a.body.toString("utf8", 0, Math.min(a.body.length, 300)) : undefined;
  return { summary: `HTTP ${a.status}`, ...(detail ? { detail } : {}), ...(finding ? { finding } : {}) };
}

/** The route a case is sent to, for statistics ("swarm/update"). */
export function engineRoute(ctx: FuzzContext, c: EngineCase): string {
  return c.path.map((s) => segValue(ctx, s)).join("/");
}

// ---------------------------------------------------------------------------------------------------
// gRPC

export interface Credentials {
  rootPem: string;
  worker: { certPem: string; keyPem: string };
  exManager: { certPem: string; keyPem: string };
  make: (rootPem: string, certPem?: string, keyPem?: string) => grpc.ChannelCredentials;
  channelOptions: grpc.ChannelOptions;
}

/** One client per identity and manager, reused across cases (a call's failure does not close it). */
export class GrpcPool {
  private readonly clients = new Map<string, grpc.Client>();

  constructor(
    private readonly creds: Credentials,
    private readonly addr: (daemon: number) => string,
  ) {}

  client(identity: Identity, daemon: number): grpc.Client {
    const key = `${identity}@${daemon}`;
    let c = this.clients.get(key);
    if (!c) {
      const k = this.creds;
      const cred = identity === "none" ? k.make(k.rootPem) : k.make(k.rootPem, k[identity].certPem, k[identity].keyPem);
      c = new grpc.Client(this.addr(daemon), cred, {
        ...k.channelOptions,
        "grpc.max_send_message_length": 64 << 20,
        "grpc.max_receive_message_length": 64 << 20,
      });
      this.clients.set(key, c);
    }
    return c;
  }

  close(): void {
    for (const c of this.clients.values()) c.close();
    this.clients.clear();
  }
}

const id = (b: Buffer): Buffer => b;

/** The first length-delimited field `no` of a protobuf message, as text (enough for session ids). */
export function pbString(buf: Buffer, no: number): string | undefined {
  let at = 0;
  const readVarint = (): bigint => {
    let v = 0n;
    let shift = 0n;
    for (;;) {
      if (at >= buf.length) throw new Error("truncated");
      const b = buf[at++]!;
      v |= BigInt(b & 0x7f) << shift;
      if ((b & 0x80) === 0) return v;
      shift += 7n;
    }
  };
  try {
    while (at < buf.length) {
      const tag = Number(readVarint());
      const wire = tag & 7;
      if (wire === 0) readVarint();
      else if (wire === 1) at += 8;
      else if (wire === 5) at += 4;
      else if (wire === 2) {
        const len = Number(readVarint());
        if (tag >> 3 === no) return buf.toString("utf8", at, at + len);
        at += len;
      } else return undefined;
    }
  } catch {
    return undefined;
  }
  return undefined;
}

/** gRPC answers that carry a bug rather than a refusal. */
export function judgeGrpc(code: grpc.status, details: string): string | undefined {
  if ((code === grpc.status.UNKNOWN || code === grpc.status.INTERNAL) && INTERNAL_ERROR_RE.test(details)) {
    // grpc-js's own words for bytes that do not decode as the request message: a refusal, not a bug.
    if (/^Error deserializing request|^Request message serialization failure|^Failed to parse/i.test(details))
      return undefined;
    return `${grpc.status[code]} leaks an internal error: ${details.slice(0, 300)}`;
  }
  return undefined;
}

function pbResolver(ctx: FuzzContext): PbResolve {
  return {
    string: (r) => resolveString(ctx, r),
    bigint: (r) => {
      const v = resolveRef(ctx, r);
      return typeof v === "bigint" ? v : BigInt(typeof v === "number" ? Math.trunc(v) : 0);
    },
    json: (r) => resolveJson(ctx, r),
  };
}

const statusOf = (e: grpc.ServiceError | null): Outcome => {
  if (!e) return { summary: "grpc OK" };
  const finding = judgeGrpc(e.code, e.details ?? "");
  return {
    summary: `grpc ${grpc.status[e.code] ?? e.code}`,
    detail: (e.details ?? "").slice(0, 300),
    ...(finding ? { finding } : {}),
  };
};

export function sendGrpc(env: SendEnv, c: GrpcCase): Promise<Outcome> {
  const r = pbResolver(env.ctx);
  const msgs = c.messages.map((m) => applyByteMut(encode(m, r), c.bytes));
  const client = env.clients.client(c.identity, c.daemon);
  const md = new grpc.Metadata();
  for (const [k, v] of c.metadata) {
    try {
      md.add(k, v);
    } catch {
      // grpc-js refuses some keys and values itself: they are not sent.
    }
  }
  const opts = { deadline: new Date(Date.now() + CASE_TIMEOUT_MS - 2000) };
  return new Promise<Outcome>((resolve) => {
    if (c.style === "unary") {
      client.makeUnaryRequest(c.rpc, id, id, msgs[0] ?? Buffer.alloc(0), md, opts, (err, res) => {
        if (!err && res) noteAnswer(env, c, res);
        resolve(statusOf(err));
      });
    } else if (c.style === "clientStream") {
      const call = client.makeClientStreamRequest(c.rpc, id, id, md, opts, (err) => resolve(statusOf(err)));
      call.on("error", () => undefined);
      for (const m of msgs) call.write(m);
      call.end();
    } else {
      const call = client.makeServerStreamRequest(c.rpc, id, id, msgs[0] ?? Buffer.alloc(0), md, opts);
      let settled = false;
      const settle = (o: Outcome) => {
        if (settled) return;
        settled = true;
        clearTimeout(hold);
        call.cancel();
        resolve(o);
      };
      const hold = setTimeout(() => settle({ summary: "grpc stream held" }), c.holdMs);
      call.on("data", (m: Buffer) => {
        noteAnswer(env, c, m);
        settle({ summary: "grpc stream message" });
      });
      call.on("error", (e: grpc.ServiceError) => settle(statusOf(e)));
      call.on("end", () => settle({ summary: "grpc stream end" }));
    }
  });
}

/** Remember what a successful call made: a session id, an endpoint to detach at the end of the batch. */
function noteAnswer(env: SendEnv, c: GrpcCase, res: Buffer): void {
  if (c.rpc.endsWith("/Session")) {
    const s = pbString(res, 1);
    if (s && !env.ctx.sessions.includes(s)) env.ctx.sessions.push(s);
  } else if (c.rpc.endsWith("/Attach")) {
    try {
      const ep = JSON.parse(pbString(res, 1) ?? "") as { id?: unknown };
      if (typeof ep.id === "string") env.ctx.endpoints.push({ id: ep.id, identity: c.identity, daemon: c.daemon });
    } catch {
      // not an endpoint
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Connections

const SLOW_BODY = Buffer.from('{"Name":"fz-slow","Driver":"overlay"}');
const slowHead = (len: number) =>
  Buffer.from(
    `POST /v1.50/networks/create HTTP/1.1\r\nHost: api.moby.localhost\r\nContent-Type: application/json\r\nContent-Length: ${len}\r\nConnection: close\r\n\r\n`,
  );

async function sendSlow(env: SendEnv, c: SlowCase, note: (s: string) => void): Promise<Outcome> {
  const started = Date.now();
  const at = (what: string) => note(`${what} +${Date.now() - started} ms`);
  const sock = netConnect(env.sock(c.daemon));
  const got: Buffer[] = [];
  let closed = false;
  sock.on("data", (d: Buffer) => got.push(d));
  sock.on("error", () => undefined);
  const closedP = new Promise<void>((r) =>
    sock.on("close", () => {
      closed = true;
      r();
    }),
  );
  await new Promise<void>((r) => {
    sock.once("connect", () => r());
    sock.once("error", () => r());
  });
  at("connected");
  const full = Buffer.concat([slowHead(SLOW_BODY.length), SLOW_BODY]);
  const headLen = full.length - SLOW_BODY.length;
  let sent = 0;
  const send = (n: number) => {
    if (!closed) sock.write(full.subarray(sent, sent + n));
    sent += n;
  };
  switch (c.variant) {
    case "partialHead":
      send(Math.floor(headLen / 2));
      await sleep(c.holdMs);
      break;
    case "noCrlf":
      send(headLen - 2);
      await sleep(c.holdMs);
      break;
    case "bodyShort":
      send(headLen + 5);
      await sleep(c.holdMs);
      break;
    case "trickle":
      for (const step = Math.ceil(full.length / 10); sent < full.length && !closed; ) {
        send(step);
        await sleep(c.holdMs / 10);
      }
      break;
  }
  if (!c.finish) {
    sock.destroy();
    return { summary: closed ? "slow closed by server" : "slow abandoned" };
  }
  if (sent < full.length) send(full.length - sent);
  at("request sent");
  const waitFrom = Date.now();
  const answered = await Promise.race([
    closedP.then(() => true),
    (env.lag ? env.lag.waitAwake(waitFrom, CASE_TIMEOUT_MS) : sleep(CASE_TIMEOUT_MS)).then(() => false),
  ]);
  sock.destroy();
  const a = parseHttp(Buffer.concat(got));
  if (!answered && !a) {
    const evidence = await hangEvidence(env, c.daemon, started);
    return {
      summary: "hang",
      finding: `a slow request finished got no answer within ${CASE_TIMEOUT_MS} ms\n    evidence: ${evidence}`,
    };
  }
  return { summary: a ? `slow HTTP ${a.status}` : "slow closed" };
}

function openConn(env: SendEnv, c: { daemon: number }, target: "engine" | "cluster"): Socket {
  if (target === "engine") return netConnect(env.sock(c.daemon));
  const { host, port } = env.cluster(c.daemon);
  return netConnect(port, host);
}

async function sendBurst(env: SendEnv, c: BurstCase): Promise<Outcome> {
  let answered = 0;
  const one = () =>
    new Promise<void>((resolve) => {
      const sock = openConn(env, c, c.target);
      const timer = setTimeout(() => sock.destroy(), c.holdMs + CASE_TIMEOUT_MS / 2);
      sock.on("error", () => undefined);
      sock.on("close", () => {
        clearTimeout(timer);
        resolve();
      });
      sock.on("data", () => {
        answered++;
        if (c.mode === "ping") sock.destroy();
      });
      sock.on("connect", () => {
        if (c.mode === "ping" && c.target === "engine")
          sock.write("GET /_ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        else if (c.mode !== "idle") sock.write("\u0016\u0003\u0001\u0000\u0005junk");
        if (c.mode !== "ping" || c.target !== "engine") setTimeout(() => sock.destroy(), c.holdMs);
      });
    });
  await Promise.all(Array.from({ length: c.n }, one));
  return { summary: `burst ${c.mode} answered ${answered}/${c.n}` };
}

function tcpPayload(c: TcpCase): Buffer {
  const rnd = Buffer.from(c.bytes);
  switch (c.payload) {
    case "random":
      return rnd;
    case "http1":
      return Buffer.from("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    case "h2preface":
      return Buffer.concat([Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), rnd]);
    case "tlsJunk":
      return Buffer.concat([Buffer.from([0x16, 0x03, 0x01, (rnd.length >> 8) & 0xff, rnd.length & 0xff]), rnd]);
    case "empty":
      return Buffer.alloc(0);
  }
}

function sendTcp(env: SendEnv, c: TcpCase): Promise<Outcome> {
  return new Promise((resolve) => {
    const sock = openConn(env, c, "cluster");
    let got = 0;
    const done = (summary: string) => {
      clearTimeout(timer);
      sock.destroy();
      resolve({ summary });
    };
    const timer = setTimeout(() => done(`tcp held, ${got} bytes back`), c.holdMs);
    sock.on("data", (d: Buffer) => {
      got += d.length;
    });
    sock.on("error", (e: NodeJS.ErrnoException) => done(`tcp ${e.code ?? "error"}`));
    sock.on("close", () => done(`tcp closed by server, ${got} bytes back`));
    sock.on("connect", () => sock.write(tcpPayload(c)));
  });
}

/**
 * Send one case; never throws (a failure to send is an outcome). `note` hears how far a slow case got
 * (for the evidence of a case that does not finish).
 */
export async function sendCase(env: SendEnv, c: Case, note: (s: string) => void = () => undefined): Promise<Outcome> {
  try {
    switch (c.kind) {
      case "engine":
        return await sendEngine(env, c);
      case "grpc":
        return await sendGrpc(env, c);
      case "slow":
        return await sendSlow(env, c, note);
      case "burst":
        return await sendBurst(env, c);
      case "tcp":
        return await sendTcp(env, c);
    }
  } catch (e) {
    return { summary: `fuzzer error: ${e instanceof Error ? e.message : String(e)}` };
  }
}
