// A container's output log in Docker's json-file format: one JSON object a line,
//   {"log":"hello\n","stream":"stdout","time":"2025-05-30T12:07:27.123456789Z"}
// Output is cut at newlines (and at 16 KiB without one, as Docker does); what a container printed last
// without a newline is written when it exits. Writes are synchronous appends, so what `logs` reads after
// a container has exited is all it printed.

import { closeSync, openSync, writeSync } from "node:fs";
import { open } from "node:fs/promises";
import { z } from "zod";
import type { OutputChunk } from "./types.js";

const MAX_LINE = 16 * 1024;

/** Time with nanosecond digits, as Go's RFC3339Nano writes it (trailing zeros dropped). */
export function nowRFC3339Nano(): string {
  const ms = Date.now();
  const ns = Number(process.hrtime.bigint() % 1_000_000n);
  const iso = new Date(ms).toISOString(); // ...ss.mmmZ
  const frac = `${iso.slice(20, 23)}${String(ns).padStart(6, "0")}`.replace(/0+$/, "");
  return `${iso.slice(0, 19)}${frac ? `.${frac}` : ""}Z`;
}

export interface LogRecord {
  stream: 1 | 2;
  data: Buffer;
  time: string;
}

export class JsonLogWriter {
  private fd: number | undefined;
  private readonly partial: Record<1 | 2, Buffer[]> = { 1: [], 2: [] };
  private readonly partialSize: Record<1 | 2, number> = { 1: 0, 2: 0 };

  constructor(
    readonly path: string,
    /** Called with every record written (for attached clients). */
    private readonly onRecord?: (r: LogRecord) => void,
  ) {
    this.fd = openSync(path, "a", 0o640);
  }

  write(stream: 1 | 2, chunk: Buffer): void {
    let rest = chunk;
    while (rest.length > 0) {
      const nl = rest.indexOf(10);
      if (nl < 0) {
        this.partial[stream].push(rest);
        this.partialSize[stream] += rest.length;
        if (this.partialSize[stream] >= MAX_LINE) this.flush(stream);
        return;
      }
      this.partial[stream].push(rest.subarray(0, nl + 1));
      this.partialSize[stream] += nl + 1;
      this.flush(stream);
      rest = rest.subarray(nl + 1);
    }
  }

  private flush(stream: 1 | 2): void {
    if (this.partialSize[stream] === 0) return;
    const data = Buffer.concat(this.partial[stream]);
    this.partial[stream] = [];
    this.partialSize[stream] = 0;
    const record: LogRecord = { stream, data, time: nowRFC3339Nano() };
    if (this.fd !== undefined) {
      const line = `${JSON.stringify({ log: data.toString("utf8"), stream: stream === 1 ? "stdout" : "stderr", time: record.time })}\n`;
      writeSync(this.fd, line);
    }
    this.onRecord?.(record);
  }

  /** Writes what is left of unterminated lines and closes the file. */
  close(): void {
    this.flush(1);
    this.flush(2);
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}

/** One line of a json-file log, as read back (a line that is not one is skipped, as dockerd skips it). */
const LogLineSchema = z.object({
  log: z.string(),
  stream: z.string().optional(),
  time: z.string().optional(),
});

function parseLine(line: string): LogRecord | undefined {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    // A torn or foreign line (a crash mid-write): skipped, the lines around it are still read.
    return undefined;
  }
  const v = LogLineSchema.safeParse(value);
  if (!v.success) return undefined;
  return {
    stream: v.data.stream === "stderr" ? 2 : 1,
    data: Buffer.from(v.data.log, "utf8"),
    time: v.data.time ?? "",
  };
}

/** Seconds since the epoch of an RFC 3339 time with up to nine fraction digits. */
export function timeSeconds(t: string): number {
  const m = /^(.*T\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})$/.exec(t);
  if (!m) return Number.NaN;
  const whole = Date.parse(`${m[1]}${m[3]}`) / 1000;
  return whole + Number(`0.${m[2] ?? "0"}`);
}

/**
 * The records of a log file from byte `offset` on (complete lines only); `next` is where the next read
 * starts. A missing file has no records.
 */
export async function readLogRecords(path: string, offset = 0): Promise<{ records: LogRecord[]; next: number }> {
  let fh: Awaited<ReturnType<typeof open>>;
  try {
    fh = await open(path, "r");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return { records: [], next: offset };
    throw err;
  }
  try {
    const { size } = await fh.stat();
    if (size <= offset) return { records: [], next: offset };
    const buf = Buffer.alloc(size - offset);
    let got = 0;
    while (got < buf.length) {
      const { bytesRead } = await fh.read(buf, got, buf.length - got, offset + got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    const text = buf.subarray(0, got);
    const end = text.lastIndexOf(10);
    if (end < 0) return { records: [], next: offset };
    const records: LogRecord[] = [];
    for (const line of text.subarray(0, end).toString("utf8").split("\n")) {
      const r = parseLine(line);
      if (r) records.push(r);
    }
    return { records, next: offset + end + 1 };
  } finally {
    await fh.close();
  }
}

export interface LogFilter {
  stdout: boolean;
  stderr: boolean;
  since: number;
  until: number;
}

export function recordMatches(r: LogRecord, f: LogFilter): boolean {
  if (r.stream === 1 && !f.stdout) return false;
  if (r.stream === 2 && !f.stderr) return false;
  if (f.since > 0 || f.until > 0) {
    const t = timeSeconds(r.time);
    if (f.since > 0 && t < f.since) return false;
    if (f.until > 0 && t > f.until) return false;
  }
  return true;
}

/** A record as the logs endpoint sends it (with the time in front when asked). */
export function toChunk(r: LogRecord, timestamps: boolean): OutputChunk {
  const data = timestamps ? Buffer.concat([Buffer.from(`${r.time} `), r.data]) : r.data;
  return { stream: r.stream, data, time: r.time };
}
