// Docker's `filters` query parameter: a JSON object of key → values. Two encodings are in use and both are
// accepted, as dockerd does:
//   current: {"role":{"manager":true},"name":{"a":true,"b":true}}   (key → map of value → bool)
//   legacy:  {"role":["manager"],"name":["a","b"]}                 (key → array of values)
// As in dockerd, a value in the map form counts whatever its bool says; the bool must still be a bool.
// Both are schemas (zod); the text is bounded in length, keys and values before and after it is parsed.

import { z } from "zod";
import { MAX_FILTER_KEYS, MAX_FILTER_VALUES, MAX_FILTERS_LENGTH, MAX_JSON_DEPTH } from "../api/limits.js";
import { parseJsonText } from "../api/schema.js";
import { ApiError, badRequest } from "./errors.js";

export type Filters = Record<string, string[]>;

const Values = z.union([
  z.array(z.string()).max(MAX_FILTER_VALUES),
  z.record(z.string(), z.boolean()).refine((m) => Object.keys(m).length <= MAX_FILTER_VALUES),
]);

/** The filters as entries (a record would lose a key such as "__proto__"). */
const FiltersJson = z
  .custom<Record<string, unknown>>((v) => typeof v === "object" && v !== null && !Array.isArray(v))
  .transform((m): unknown => Object.entries(m))
  .pipe(z.array(z.tuple([z.string(), Values])).max(MAX_FILTER_KEYS))
  .transform((entries): Filters => {
    const out: [string, string[]][] = [];
    for (const [key, value] of entries) {
      const values = Array.isArray(value) ? [...new Set(value)] : Object.keys(value);
      out.push([key, values]);
    }
    // fromEntries defines own properties, so a key like "__proto__" stays a plain key.
    return Object.fromEntries(out);
  });

/** Parses a `filters` query value ("" or undefined → no filters). Throws ApiError 400 `invalid filter '...'`. */
export function parseFilters(raw: string | null | undefined): Filters {
  if (raw === null || raw === undefined || raw.trim() === "") return {};
  if (raw.length > MAX_FILTERS_LENGTH) {
    throw badRequest(`invalid filter: the filters are longer than ${MAX_FILTERS_LENGTH} characters`);
  }
  let parsed: unknown;
  try {
    parsed = parseJsonText(raw, "filter", MAX_FILTERS_LENGTH, MAX_JSON_DEPTH);
  } catch (e) {
    if (e instanceof ApiError) throw badRequest(`invalid filter '${raw}'`);
    throw e;
  }
  const r = FiltersJson.safeParse(parsed);
  if (!r.success) throw badRequest(`invalid filter '${raw}'`);
  return r.data;
}

/** Throws ApiError 400 `invalid filter 'key'` for the first key not in `accepted` (dockerd's Validate). */
export function validateFilterKeys(filters: Filters, accepted: readonly string[]): void {
  for (const key of Object.keys(filters)) {
    if (!accepted.includes(key)) throw badRequest(`invalid filter '${key}'`);
  }
}

/** dockerd's MatchKVList: every `key` or `key=value` of `values` holds in `labels` (no values: true). */
export function matchKVList(values: readonly string[] | undefined, labels: Record<string, string>): boolean {
  if (!values || values.length === 0) return true;
  if (Object.keys(labels).length === 0) return false;
  for (const v of values) {
    const eq = v.indexOf("=");
    const k = eq < 0 ? v : v.slice(0, eq);
    if (!Object.hasOwn(labels, k)) return false;
    if (eq >= 0 && labels[k] !== v.slice(eq + 1)) return false;
  }
  return true;
}
