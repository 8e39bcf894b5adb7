// The building blocks every boundary's schema is made of (zod), and the one way to parse an untrusted
// value: parse() either returns a typed value or throws an ApiError naming the field that is wrong.
//
// Why zod: it is the most used and best kept of the schema libraries that run on Node 20, its types are
// derived from the schemas (z.infer), so a schema and the type it guards cannot drift apart, and its
// issues carry the path of the offending field, which is what a clear refusal needs.

import { isIP } from "node:net";
import { z } from "zod";
import { type ApiError, badRequest } from "./errors.js";
import {
  MAX_LABEL_KEY_BYTES,
  MAX_LABEL_VALUE_BYTES,
  MAX_LABELS,
  MAX_LABELS_BYTES,
  MAX_NAME_LENGTH,
  utf8Bytes,
} from "./limits.js";

/** Docker's object names (networks, containers): a letter or digit, then letters, digits, `_`, `.`, `-`. */
export const NAME_RE = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;

/** A network or container name. */
export const ObjectName = z
  .string()
  .max(MAX_NAME_LENGTH, `must be at most ${MAX_NAME_LENGTH} characters`)
  .regex(NAME_RE, "only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed");

/** A host name as a node reports it: printable, no spaces, bounded. */
export const HostName = z
  .string()
  .max(MAX_NAME_LENGTH, `must be at most ${MAX_NAME_LENGTH} characters`)
  .regex(/^[^\s\p{Cc}]*$/u, "must not contain spaces or control characters");

/** A string of bounded length with no control characters. */
export function shortText(max: number) {
  return z
    .string()
    .max(max, `must be at most ${max} characters`)
    .regex(/^[^\p{Cc}]*$/u, "must not contain control characters");
}

/** A map of string to string (labels, driver options), bounded in count and size. */
export function stringMap(maxEntries = MAX_LABELS, maxBytes = MAX_LABELS_BYTES) {
  return z
    .record(
      z
        .string()
        .refine((k) => utf8Bytes(k) <= MAX_LABEL_KEY_BYTES, `keys must be at most ${MAX_LABEL_KEY_BYTES} bytes`),
      z
        .string()
        .refine((v) => utf8Bytes(v) <= MAX_LABEL_VALUE_BYTES, `values must be at most ${MAX_LABEL_VALUE_BYTES} bytes`),
    )
    .superRefine((m, ctx) => {
      const keys = Object.keys(m);
      if (keys.length > maxEntries) ctx.addIssue({ code: "custom", message: `at most ${maxEntries} entries` });
      let bytes = 0;
      for (const k of keys) bytes += utf8Bytes(k) + utf8Bytes(m[k]!);
      if (bytes > maxBytes) ctx.addIssue({ code: "custom", message: `at most ${maxBytes} bytes in all (${bytes})` });
    });
}

export const Labels = stringMap();
export type Labels = z.infer<typeof Labels>;

/** An IPv4 or IPv6 address (no port). */
export const IpAddress = z.string().refine((s) => isIP(s) !== 0, "must be an IP address");

/** An IPv4 address in dotted quad. */
export const Ipv4Address = z.string().refine((s) => isIP(s) === 4, "must be an IPv4 address");

/** host:port with a port in 1-65535 (host: an IP, [IPv6], or a DNS name). */
export const HostPort = z
  .string()
  .max(MAX_NAME_LENGTH + 8)
  .refine((s) => splitHostPortStrict(s) !== undefined, "must be host:port with a port between 1 and 65535");

/** "host:port" -> [host, port], or undefined when it is not one. */
function splitHostPortStrict(s: string): [string, number] | undefined {
  const m = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})$/.exec(s);
  if (!m) return undefined;
  const port = Number(m[2]);
  if (port < 1 || port > 65535) return undefined;
  const host = m[1]!.startsWith("[") ? m[1]!.slice(1, -1) : m[1]!;
  if (m[1]!.startsWith("[") && isIP(host) !== 6) return undefined;
  return [host, port];
}

/** An RFC 3339 timestamp as Date.toISOString writes it. */
export const IsoTime = z
  .string()
  .max(64)
  .refine((s) => !Number.isNaN(Date.parse(s)), "must be an RFC 3339 time");

/** A non-negative safe integer (indexes, counts, nanoseconds). */
export const Count = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);

/** The path of a zod issue as a field name: `Spec.Labels.a`, `IPAM.Config[0]`. */
export function fieldPath(path: readonly PropertyKey[]): string {
  let out = "";
  for (const p of path) {
    if (typeof p === "number") out += `[${p}]`;
    else out += out ? `.${String(p)}` : String(p);
  }
  return out;
}

/** One line naming the first thing that is wrong. */
export function describeIssues(err: z.ZodError): string {
  const first = err.issues[0];
  if (!first) return "invalid value";
  const field = fieldPath(first.path);
  return field ? `${field}: ${first.message}` : first.message;
}

/** Parse `value` against `schema`; throws 400 "invalid <what>: <field>: <problem>". */
export function parse<S extends z.ZodType>(schema: S, value: unknown, what: string): z.infer<S> {
  const r = schema.safeParse(value);
  if (!r.success) throw invalid(what, r.error);
  return r.data;
}

export function invalid(what: string, err: z.ZodError): ApiError {
  return badRequest(`invalid ${what}: ${describeIssues(err)}`);
}

/**
 * JSON.parse for untrusted text, bounded: refuses text over `maxBytes` and nesting deeper than `maxDepth`
 * before parsing (a deep document is refused cheaply, never by running out of stack later).
 */
export function parseJsonText(text: string, what: string, maxBytes: number, maxDepth = 32): unknown {
  if (text.length > maxBytes) throw badRequest(`invalid ${what}: larger than ${maxBytes} bytes`);
  let depth = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c) i++;
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x7b || c === 0x5b) {
      if (++depth > maxDepth) throw badRequest(`invalid ${what}: nested deeper than ${maxDepth} levels`);
    } else if (c === 0x7d || c === 0x5d) depth--;
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (e) {
    throw badRequest(`invalid ${what}: ${e instanceof Error ? e.message : String(e)}`);
  }
}
