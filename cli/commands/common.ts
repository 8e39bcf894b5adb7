// What the network and container commands share with docker's CLI: request bodies encoded the way Go's
// encoding/json writes docker's structs, `inspect` output (the daemon's JSON re-indented, as docker prints
// it byte for byte), list output (tables, json, templates), and the streams of logs, attach and exec:
// hijacked connections and Docker's multiplexed framing.

import http from "node:http";
import type { Duplex } from "node:stream";
import { VERSION } from "../../src/version.js";
import { CliError, type EngineClient, encodeQuery, pathEscape } from "../client.js";
import type { FlagSpec, Invocation } from "../command.js";
import { parseFilter } from "../flags.js";
import { executeTemplate, parseTemplate, type Template, TemplateError, table } from "../format.js";
import { encodeGo, GoMap, GoStruct, type GoValue } from "../gojson.js";

export type Json = Record<string, unknown>;
export const obj = (v: unknown): Json => (typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Json) : {});
export const str = (v: unknown): string => (typeof v === "string" ? v : "");
export const bytewise = (a: string, b: string): number => Buffer.compare(Buffer.from(a), Buffer.from(b));

// ---- request bodies -------------------------------------------------------------------------------------

/** Plain values as Go's encoding/json writes them; objects keep their key order (build them in Go's field order). */
export function encodePlain(v: unknown): string {
  if (v === null || v === undefined) return "null";
  if (typeof v === "string" || typeof v === "number" || typeof v === "boolean") return encodeGo(v);
  if (Array.isArray(v)) return `[${v.map(encodePlain).join(",")}]`;
  return `{${Object.entries(v as Json)
    .map(([k, x]) => `${encodeGo(k)}:${encodePlain(x)}`)
    .join(",")}}`;
}

/** A request body as the docker CLI's json.Encoder writes it. */
export function goBody(v: unknown): string {
  return `${encodePlain(v)}\n`;
}

/** A Go map[string]string: keys sorted. */
export function sortedMap(m: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(m).sort(([a], [b]) => bytewise(a, b)));
}

// ---- inspect -----------------------------------------------------------------------------------------------

/** Go's json.Indent: whitespace between tokens dropped, every element on its own line, {} and [] kept short. */
export function goIndent(src: string, indent: string): string {
  let out = "";
  let depth = 0;
  let needIndent = false;
  let inString = false;
  let escaped = false;
  const newline = (): string => `\n${indent.repeat(depth)}`;
  for (const c of src) {
    if (inString) {
      out += c;
      if (escaped) escaped = false;
      else if (c === "\\") escaped = true;
      else if (c === '"') inString = false;
      continue;
    }
    if (c === " " || c === "\t" || c === "\n" || c === "\r") continue;
    if (needIndent && c !== "}" && c !== "]") {
      needIndent = false;
      depth++;
      out += newline();
    }
    switch (c) {
      case "{":
      case "[":
        needIndent = true;
        out += c;
        break;
      case ",":
        out += c + newline();
        break;
      case ":":
        out += ": ";
        break;
      case "}":
      case "]":
        if (needIndent) needIndent = false;
        else {
          depth--;
          out += newline();
        }
        out += c;
        break;
      case '"':
        inString = true;
        out += c;
        break;
      default:
        out += c;
    }
  }
  return out;
}

/** Go's json.Compact: whitespace between tokens dropped. */
export function goCompact(src: string): string {
  let out = "";
  let inString = false;
  let escaped = false;
  for (const c of src) {
    if (inString) {
      if (escaped) escaped = false;
      else if (c === "\\") escaped = true;
      else if (c === '"') inString = false;
    } else if (c === " " || c === "\t" || c === "\n" || c === "\r") continue;
    else if (c === '"') inString = true;
    out += c;
  }
  return out;
}

/** JSON as a value templates can walk (objects become maps). */
export function toGoValue(v: unknown): GoValue {
  if (v === null || v === undefined) return null;
  if (typeof v === "string" || typeof v === "number" || typeof v === "boolean") return v;
  if (Array.isArray(v)) return v.map(toGoValue);
  return new GoMap(Object.entries(v as Json).map(([k, x]) => [k, toGoValue(x)]));
}

export const INSPECT_FORMAT_FLAG = {
  long: "format",
  short: "f",
  type: "string",
  kind: "string" as const,
  description: "Format output using a custom template: 'json' (JSON format), 'TEMPLATE' (a Go template; see below)",
};

/** The template of an inspect --format ("" and "json" have none); a bad one is docker's exit-64 error. */
export function inspectTemplate(format: string): Template | undefined {
  if (format === "" || format === "json") return undefined;
  try {
    return parseTemplate(format);
  } catch (e) {
    if (e instanceof TemplateError) throw new CliError(`template parsing error: ${e.message}`, 64);
    throw e;
  }
}

/**
 * docker's inspect: each object as the daemon sent it, re-indented, in one JSON array; or a template per
 * object. What was found is printed before the errors; any error makes the exit status 1.
 */
export async function inspectRaw(inv: Invocation, fetch: (ref: string) => Promise<string>): Promise<void> {
  const format = inv.flag<string | undefined>("format") ?? "";
  const tmpl = inspectTemplate(format);
  const raws: string[] = [];
  const errors: string[] = [];
  let text = "";
  for (const ref of inv.args) {
    let raw: string;
    try {
      raw = (await fetch(ref)).trim();
    } catch (e) {
      if (!(e instanceof CliError)) throw e;
      errors.push(e.message);
      continue;
    }
    if (!tmpl) {
      raws.push(raw);
      continue;
    }
    try {
      text += `${executeTemplate(tmpl, toGoValue(JSON.parse(raw)))}\n`;
    } catch (e) {
      if (!(e instanceof TemplateError)) throw e;
      errors.push(`template parsing error: ${e.message}`);
    }
  }
  if (tmpl) inv.out(text === "" ? "\n" : text);
  else if (raws.length === 0) inv.out("[]\n");
  else if (format === "json") inv.out(`${goCompact(`[${raws.join(",")}]`)}\n`);
  else inv.out(`${goIndent(`[${raws.join(",")}]`, "    ")}\n`);
  if (errors.length > 0) throw new CliError(errors.join("\n"));
}

// ---- lists ---------------------------------------------------------------------------------------------

export const LIST_FORMAT_NOTES =
  "Go templates: shoal supports field lookups ({{.ID}}, {{.Name}}), {{.}} and {{json .Field}}; " +
  "if/range/with, pipes and other functions are not supported.";

/** A list's --format (table by default). */
export const LIST_FORMAT_FLAG: FlagSpec = {
  long: "format",
  type: "string",
  kind: "string",
  description:
    "Format output using a custom template: 'table' (default), 'table TEMPLATE', 'json', 'TEMPLATE' (see below)",
};

/** A list's --filter/-f: key=value conditions, repeatable. */
export function filterFlag(description = "Filter output based on conditions provided"): FlagSpec {
  return { long: "filter", short: "f", type: "filter", kind: "list", description, parse: parseFilter };
}

/** A list row: template fields in order; `{{json .}}` writes them as a map with sorted keys (docker's MarshalJSON). */
export function row(typeName: string, fields: [string, GoValue][]): GoStruct {
  return new GoStruct(
    typeName,
    fields.map(([name, value]) => ({ name, value, omit: false })),
    () => new GoMap(fields),
  );
}

export { humanDuration } from "../../src/api/humanize.js";

function templateError(e: unknown): never {
  if (e instanceof TemplateError) throw new CliError(`template parsing error: ${e.message}`);
  throw e;
}

/**
 * docker's list formatting: "table" (the default table), "table TEMPLATE", "json", "TEMPLATE", and -q
 * (the quiet field of every row).
 */
export function renderList(
  inv: Invocation,
  rows: GoStruct[],
  opts: { headers: Record<string, string>; defaultTable: string; quietField: string; format: string; quiet: boolean },
): void {
  let src = opts.format || "table";
  if (src === "json" || src === "{{json .}}") {
    // docker's rows marshal themselves with json.Marshal, which escapes <, > and & (its template's json
    // function would not).
    inv.out(rows.map((r) => `${encodeGo(r.marshal!(), { escapeHTML: true })}\n`).join(""));
    return;
  }
  if (opts.quiet && (src === "table" || src === "")) src = `{{.${opts.quietField}}}`;
  else if (src === "table") src = opts.defaultTable;
  else if (src === "json") src = "{{json .}}";
  renderTemplate(inv, rows, src, opts.headers);
}

/**
 * Rows through a docker format template: "table TEMPLATE" also prints the header row (the template run on
 * `headers`) and aligns the columns; "\t" and "\n" as typed are a tab and a newline.
 */
export function renderTemplate(
  inv: Invocation,
  rows: GoStruct[],
  format: string,
  headers: Record<string, string>,
): void {
  let src = format;
  const isTable = src.startsWith("table");
  if (isTable) src = src.slice("table".length);
  src = src
    .replace(/^ +| +$/g, "")
    .replace(/\\t/g, "\t")
    .replace(/\\n/g, "\n");
  let tmpl: Template;
  let body = "";
  try {
    tmpl = parseTemplate(src);
    for (const r of rows) body += `${executeTemplate(tmpl, r)}\n`;
  } catch (e) {
    templateError(e);
  }
  if (!isTable) {
    inv.out(body);
    return;
  }
  let header = "";
  try {
    header = executeTemplate(tmpl, new GoMap(Object.entries(headers)));
  } catch (e) {
    templateError(e);
  }
  inv.out(table(`${header}\n${body}`));
}

// ---- text as docker shows it ----------------------------------------------------------------------------

/** Go's strconv.Quote (for the ASCII and printable text commands hold). */
export function goQuote(s: string): string {
  let out = '"';
  for (const ch of s) {
    const c = ch.codePointAt(0)!;
    if (ch === '"' || ch === "\\") out += `\\${ch}`;
    else if (c >= 0x20 && c < 0x7f) out += ch;
    else if (ch === "\n") out += "\\n";
    else if (ch === "\t") out += "\\t";
    else if (ch === "\r") out += "\\r";
    else if (c === 7) out += "\\a";
    else if (c === 8) out += "\\b";
    else if (c === 12) out += "\\f";
    else if (c === 11) out += "\\v";
    else if (c < 0x20 || c === 0x7f) out += `\\x${c.toString(16).padStart(2, "0")}`;
    else out += ch;
  }
  return `${out}"`;
}

/** docker's formatter.Ellipsis: at most `max` columns, "…" marking a cut. */
export function ellipsis(s: string, max: number): string {
  const chars = [...s];
  if (chars.length <= max) return s;
  return `${chars.slice(0, max - 1).join("")}…`;
}

/** Go's time.Time.String() of a Unix time in the local zone ("2025-05-30 12:07:27 +0000 UTC"). */
export function unixTimeString(seconds: number): string {
  const d = new Date(seconds * 1000);
  const off = -d.getTimezoneOffset();
  const p2 = (n: number): string => String(n).padStart(2, "0");
  const local = new Date(d.getTime() + off * 60_000);
  const date = `${local.getUTCFullYear()}-${p2(local.getUTCMonth() + 1)}-${p2(local.getUTCDate())}`;
  const time = `${p2(local.getUTCHours())}:${p2(local.getUTCMinutes())}:${p2(local.getUTCSeconds())}`;
  const sign = off < 0 ? "-" : "+";
  const zone = `${sign}${p2(Math.trunc(Math.abs(off) / 60))}${p2(Math.abs(off) % 60)}`;
  return `${date} ${time} ${zone} ${off === 0 ? "UTC" : zone}`;
}

// ---- streams ----------------------------------------------------------------------------------------------

/** The error docker makes of an answer with status >= 400 (see EngineClient). */
export function answerError(status: number, contentType: string | undefined, body: string): CliError {
  if (body.length === 0) {
    return new CliError(`Error response from daemon: ${http.STATUS_CODES[status] ?? status}`);
  }
  if (contentType === "application/json") {
    try {
      const message = (JSON.parse(body) as { message?: unknown } | null)?.message;
      if (typeof message === "string" && message !== "")
        return new CliError(`Error response from daemon: ${message.trim()}`);
    } catch {
      // fall through to the raw text
    }
    return new CliError(
      `Error response from daemon: API returned a ${status} (${http.STATUS_CODES[status] ?? ""}) but provided no error-message`,
    );
  }
  return new CliError(`Error response from daemon: ${body.trim()}`);
}

export function versionedPath(client: EngineClient, path: string, query?: Record<string, string | undefined>): string {
  const q = query ? encodeQuery(query) : "";
  return `/v${client.apiVersion}${pathEscape(path)}${q ? `?${q}` : ""}`;
}

function headersFor(body: string | undefined): http.OutgoingHttpHeaders {
  const headers: http.OutgoingHttpHeaders = { "User-Agent": `Shoal-Client/${VERSION} (${process.platform})` };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    headers["Content-Length"] = Buffer.byteLength(body);
  }
  return headers;
}

function cannotConnect(client: EngineClient): CliError {
  return new CliError(`Cannot connect to the shoal daemon at ${client.host}. Is the shoal daemon running?`);
}

/**
 * A request whose body or answer is a stream (wait, logs, pull, load, save): resolves once the headers are
 * in, so the caller can go on while the body is still to come; a status >= 400 is thrown as docker words
 * it. `extraQuery` is appended as it is (docker save's repeated names=).
 */
export async function openStream(
  client: EngineClient,
  method: string,
  path: string,
  query?: Record<string, string | undefined>,
  opts: { body?: NodeJS.ReadableStream; headers?: http.OutgoingHttpHeaders; extraQuery?: string } = {},
): Promise<{ res: http.IncomingMessage; req: http.ClientRequest }> {
  await client.ping();
  let full = versionedPath(client, path, query);
  if (opts.extraQuery) full += `${full.includes("?") ? "&" : "?"}${opts.extraQuery}`;
  const headers = { ...headersFor(undefined), ...opts.headers };
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: client.socketPath, method, path: full, headers, agent: false }, (res) => {
      const status = res.statusCode ?? 0;
      if (status < 400) {
        resolve({ res, req });
        return;
      }
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => {
        text += d;
      });
      res.on("end", () => reject(answerError(status, res.headers["content-type"], text)));
    });
    req.on("error", () => reject(cannotConnect(client)));
    if (opts.body) opts.body.pipe(req);
    else req.end();
  });
}

/** Reads a whole stream's body as text. */
export function readAll(res: http.IncomingMessage): Promise<string> {
  return new Promise((resolve) => {
    let text = "";
    res.setEncoding("utf8");
    res.on("data", (d: string) => {
      text += d;
    });
    res.on("end", () => resolve(text));
    res.on("error", () => resolve(text));
  });
}

/** A POST that takes over the connection (attach, exec start): resolves to the connection once it is ours. */
export async function hijack(
  client: EngineClient,
  path: string,
  query: Record<string, string | undefined> | undefined,
  body: string | undefined,
): Promise<{ socket: Duplex; head: Buffer; mediaType: string }> {
  await client.ping();
  const full = versionedPath(client, path, query);
  return new Promise((resolve, reject) => {
    // (docker names a type even without a body)
    const headers = { "Content-Type": "text/plain", ...headersFor(body), Connection: "Upgrade", Upgrade: "tcp" };
    const req = http.request({ socketPath: client.socketPath, method: "POST", path: full, headers, agent: false });
    req.on("upgrade", (res, socket, head) => {
      resolve({ socket, head, mediaType: String(res.headers["content-type"] ?? "") });
    });
    req.on("response", (res) => {
      const status = res.statusCode ?? 0;
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => {
        text += d;
      });
      res.on("end", () => {
        if (status >= 400) reject(answerError(status, res.headers["content-type"], text));
        else
          reject(new CliError(`Error response from daemon: the daemon did not take over the connection (${status})`));
      });
    });
    req.on("error", () => reject(cannotConnect(client)));
    req.end(body);
  });
}

/** Splits Docker's multiplexed stream (8-byte headers) into stdout and stderr writes. */
export class Demuxer {
  private buf: Buffer = Buffer.alloc(0);
  constructor(private readonly write: (stream: number, data: Buffer) => void) {}
  push(chunk: Buffer): void {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    while (this.buf.length >= 8) {
      const size = this.buf.readUInt32BE(4);
      if (this.buf.length < 8 + size) break;
      const stream = this.buf[0]!;
      const data = this.buf.subarray(8, 8 + size);
      this.buf = this.buf.subarray(8 + size);
      this.write(stream, data);
    }
  }
}

/** Writes a stream to our stdout and stderr: raw when the container has a TTY, else de-multiplexed. */
export function copyOutput(source: NodeJS.ReadableStream, raw: boolean, initial?: Buffer): Promise<void> {
  const write = (stream: number, data: Buffer): void => {
    if (stream === 2) process.stderr.write(data);
    else process.stdout.write(data);
  };
  const demux = new Demuxer(write);
  const feed = (d: Buffer): void => {
    if (raw) process.stdout.write(d);
    else demux.push(d);
  };
  if (initial && initial.length > 0) feed(initial);
  return new Promise((resolve) => {
    source.on("data", (d: Buffer) => feed(d));
    source.on("end", () => resolve());
    source.on("close", () => resolve());
    source.on("error", () => resolve());
  });
}

/** Whether a response's media type is the raw stream (a TTY's) rather than frames. */
export function isRawStream(mediaType: string, tty: boolean): boolean {
  if (mediaType === "application/vnd.docker.multiplexed-stream") return false;
  return tty;
}
