// A container's output to clients: `logs` (read from its json-file log, followed while it runs) and
// `attach` (the live output, optionally after what it printed before, and input to its stdin).

import { Writable } from "node:stream";
import { conflict } from "../api/errors.js";
import type { Container } from "./container.js";
import { type LogRecord, readLogRecords, recordMatches, toChunk } from "./jsonlog.js";
import type { AttachOptions, AttachSession, LogsOptions, OutputChunk, OutputStream } from "./types.js";

/** Bytes an attached client may fall behind a container's output before its stream is ended. */
const MAX_ATTACH_BACKLOG_BYTES = 8 * 1024 * 1024;

/**
 * An async iterable fed by pushes, ended by end(); for output streams. A consumer that falls more than
 * `maxBytes` behind is cut off (the stream ends): the container is never slowed by one slow client, and
 * the daemon never holds more than that for it.
 */
export class ChunkQueue implements AsyncIterable<OutputChunk> {
  /** Chunks, each with the bytes it counts against the limit (a replay of the log does not). */
  private items: { c: OutputChunk; counted: number }[] = [];
  private bytes = 0;
  private done = false;
  private wake: (() => void) | undefined;
  constructor(private readonly maxBytes = MAX_ATTACH_BACKLOG_BYTES) {}
  /** Live output; `replay`: what the container printed before (read from its log, not counted). */
  push(c: OutputChunk, replay = false): void {
    if (this.done) return;
    const counted = replay ? 0 : c.data.length;
    if (this.bytes + counted > this.maxBytes) {
      this.items = [];
      this.bytes = 0;
      this.end();
      return;
    }
    this.items.push({ c, counted });
    this.bytes += counted;
    this.wake?.();
  }
  end(): void {
    this.done = true;
    this.wake?.();
  }
  async *[Symbol.asyncIterator](): AsyncIterator<OutputChunk> {
    for (;;) {
      while (this.items.length > 0) {
        const { c, counted } = this.items.shift()!;
        this.bytes -= counted;
        yield c;
      }
      if (this.done) return;
      await new Promise<void>((resolve) => {
        this.wake = resolve;
      });
      this.wake = undefined;
    }
  }
}

/** --tail: "all" (or "", or anything not a count) is every line. */
function tailCount(tail: string): number {
  if (tail === "" || tail === "all") return Number.POSITIVE_INFINITY;
  const n = Number(tail);
  return Number.isInteger(n) && n >= 0 ? n : Number.POSITIVE_INFINITY;
}

export function containerLogs(c: Container, opts: LogsOptions): OutputStream {
  const path = c.logPath;
  const filter = { stdout: opts.stdout, stderr: opts.stderr, since: opts.since, until: opts.until };
  const tail = tailCount(opts.tail);
  let cancelled = false;
  let wake: (() => void) | undefined;
  const poke = (): void => wake?.();
  async function* chunks(): AsyncGenerator<OutputChunk> {
    const first = await readLogRecords(path);
    let next = first.next;
    const matching = first.records.filter((r) => recordMatches(r, filter));
    const start = Number.isFinite(tail) ? Math.max(0, matching.length - tail) : 0;
    for (const r of matching.slice(start)) yield toChunk(r, opts.timestamps);
    if (!opts.follow) return;
    c.outputListeners.add(poke);
    c.exitListeners.add(poke);
    c.removeListeners.add(poke);
    try {
      for (;;) {
        const wasRunning = c.running && !c.removed;
        const more = await readLogRecords(path, next);
        next = more.next;
        for (const r of more.records) if (recordMatches(r, filter)) yield toChunk(r, opts.timestamps);
        if (cancelled || !wasRunning) return;
        await new Promise<void>((resolve) => {
          wake = resolve;
          setTimeout(resolve, 1000).unref();
        });
        wake = undefined;
      }
    } finally {
      c.outputListeners.delete(poke);
      c.exitListeners.delete(poke);
      c.removeListeners.delete(poke);
    }
  }
  return {
    tty: c.rec.config.Tty,
    chunks: chunks(),
    cancel: () => {
      cancelled = true;
      wake?.();
    },
  };
}

const recordKey = (r: LogRecord): string => `${r.time}|${r.stream}|${r.data.toString("base64")}`;

export async function containerAttach(c: Container, opts: AttachOptions): Promise<AttachSession> {
  if (c.rec.state.status === "exited" && opts.stream) {
    throw conflict("You cannot attach to a stopped container, start it first");
  }
  const queue = new ChunkQueue();
  const wanted = (stream: 1 | 2): boolean => (stream === 1 ? opts.stdout : opts.stderr);
  const buffered: LogRecord[] = [];
  let replaying = opts.logs;
  const listener = (r: LogRecord): void => {
    if (!wanted(r.stream)) return;
    if (replaying) buffered.push(r);
    else queue.push({ stream: r.stream, data: r.data, time: r.time });
  };
  const finish = (): void => {
    c.outputListeners.delete(listener);
    c.exitListeners.delete(finish);
    c.removeListeners.delete(finish);
    queue.end();
  };
  if (opts.stream) {
    c.outputListeners.add(listener);
    c.exitListeners.add(finish);
    c.removeListeners.add(finish);
  }
  if (opts.logs) {
    const { records } = await readLogRecords(c.logPath);
    const matching = records.filter((r) => wanted(r.stream));
    for (const r of matching) queue.push({ stream: r.stream, data: r.data, time: r.time }, true);
    // What was logged while the file was read is in both: skip the copies.
    const seen = new Set(matching.slice(-buffered.length).map(recordKey));
    for (const r of buffered) {
      if (!seen.has(recordKey(r))) queue.push({ stream: r.stream, data: r.data, time: r.time }, true);
    }
    replaying = false;
  }
  if (!opts.stream) queue.end();
  const stdin = opts.stdin && c.rec.config.OpenStdin ? stdinOf(c) : undefined;
  return { tty: c.rec.config.Tty, chunks: queue, stdin, cancel: finish };
}

/** Where an attached client's input goes: the process's stdin, or kept until the process is there. */
function stdinOf(c: Container): Writable {
  return new Writable({
    write: (chunk: Buffer, _enc, cb) => {
      const target = c.proc?.stdin;
      if (target) target.write(chunk, () => cb());
      else {
        c.pendingStdin.push(chunk);
        cb();
      }
    },
    final: (cb) => {
      if (c.rec.config.StdinOnce) {
        if (c.proc) {
          void c.proc.closeStdin().then(() => cb());
          return;
        }
        c.pendingStdinEnd = true;
      }
      cb();
    },
  });
}
