// Query parameters of the Engine API routes, each a zod schema over the parameter's text (the first value
// when repeated, as Go's r.Form.Get takes it). Parameters a route does not know are ignored, as dockerd
// ignores them; known ones are parsed as dockerd parses them, with dockerd's words when they are wrong.

import { z } from "zod";
import { badRequest } from "../../api/errors.js";
import { MAX_FILTERS_LENGTH, MAX_NAME_LENGTH } from "../../api/limits.js";
import { type Filters, parseFilters, validateFilterKeys } from "../filters.js";

type Param<T> = z.ZodType<T, string | undefined>;

/** What parsing one parameter gives: its value, or what is wrong with it. */
type Parsed<T> = { value: T } | { error: string };
const ok = <T>(value: T): Parsed<T> => ({ value });
const error = (message: string): { error: string } => ({ error: message });

function param<T>(parse: (v: string | undefined) => Parsed<T>): Param<T> {
  return z
    .string()
    .optional()
    .transform((v, ctx): T => {
      const r = parse(v);
      if ("error" in r) {
        ctx.issues.push({ code: "custom", message: r.error, input: v });
        return z.NEVER;
      }
      return r.value;
    }) as unknown as Param<T>;
}

/** httputils.BoolValue: anything but "", "0", "no", "false", "none" (in any case) is true. */
export function lenientBool(): Param<boolean> {
  return param((v) => {
    const s = (v ?? "").trim().toLowerCase();
    return ok(!(s === "" || s === "0" || s === "no" || s === "false" || s === "none"));
  });
}

const PARSE_BOOL: Record<string, boolean> = {
  "1": true,
  t: true,
  T: true,
  true: true,
  TRUE: true,
  True: true,
  "0": false,
  f: false,
  F: false,
  false: false,
  FALSE: false,
  False: false,
};

/** strconv.ParseBool; absent or "" is false; otherwise `invalid value for <name>: <v>`. */
export function strictBool(name: string): Param<boolean> {
  return param((v) => {
    if (v === undefined || v === "") return ok(false);
    const b = PARSE_BOOL[v];
    return b === undefined ? error(`invalid value for ${name}: ${v}`) : ok(b);
  });
}

/** strconv.ParseUint(v, 10, 64), within what a JavaScript number holds exactly. */
export function uintParam(onError: (v: string) => string): Param<number> {
  return param((v) => {
    const s = v ?? "";
    if (!/^[0-9]+$/.test(s) || !Number.isSafeInteger(Number(s))) return error(onError(s));
    return ok(Number(s));
  });
}

/** strconv.Atoi: an optional signed integer; absent or "" is undefined. */
export function intParam(onError: (v: string) => string): Param<number | undefined> {
  return param((v) => {
    if (v === undefined || v === "") return ok(undefined);
    if (!/^[+-]?[0-9]+$/.test(v) || !Number.isSafeInteger(Number(v))) return error(onError(v));
    return ok(Number(v));
  });
}

/** Go's strconv.ParseUint error text. */
export function parseUintError(v: string): string {
  const why = /^[0-9]+$/.test(v) ? "value out of range" : "invalid syntax";
  return `strconv.ParseUint: parsing ${JSON.stringify(v)}: ${why}`;
}

/** Go's strconv error text for a number that is not one. */
export function atoiError(v: string): string {
  return `strconv.Atoi: parsing ${JSON.stringify(v)}: invalid syntax`;
}

/** A text parameter of bounded length (names, signals, conditions). */
export function textParam(name: string, max = MAX_NAME_LENGTH): Param<string | undefined> {
  return param((v) => {
    if (v === undefined) return ok(undefined);
    return v.length > max ? error(`invalid value for ${name}: longer than ${max} characters`) : ok(v);
  });
}

/** The `filters` parameter: both encodings, bounded, with only the keys the route accepts. */
export function filtersParam(accepted: readonly string[]): Param<Filters> {
  return param((v) => {
    if (v !== undefined && v.length > MAX_FILTERS_LENGTH) {
      return error(`invalid filter: the filters are longer than ${MAX_FILTERS_LENGTH} characters`);
    }
    try {
      const f = parseFilters(v);
      validateFilterKeys(f, accepted);
      return ok(f);
    } catch (e) {
      return error((e as Error).message);
    }
  });
}

/** The first value of each parameter, as Go's r.Form.Get reads it. */
function firstValues(query: URLSearchParams): Record<string, string> {
  const out = new Map<string, string>();
  for (const [k, v] of query) if (!out.has(k)) out.set(k, v);
  return Object.fromEntries(out);
}

/** Parses a route's query parameters; the first wrong one is a 400 in its own words. */
export function decodeQuery<S extends z.ZodType>(schema: S, query: URLSearchParams): z.infer<S> {
  const r = schema.safeParse(firstValues(query));
  if (!r.success) throw badRequest(r.error.issues[0]?.message ?? "invalid query parameters");
  return r.data;
}
