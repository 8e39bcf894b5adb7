// Docker's `filters` query parameter: a JSON object of key → values. Two encodings are in use and both are
// accepted, as dockerd does:
//   current: {"role":{"manager":true},"name":{"a":true,"b":true}}   (key → map of value → bool)
//   legacy:  {"role":["manager"],"name":["a","b"]}                 (key → array of values)
// As in dockerd, a value in the map form counts whatever its bool says; the bool must still be a bool.

import { badRequest } from "./errors.js";

export type Filters = Record<string, string[]>;

/** Parses a `filters` query value ("" or undefined → no filters). Throws ApiError 400 `invalid filter '...'`. */
export function parseFilters(raw: string | null | undefined): Filters {
  const out: [string, string[]][] = [];
  if (raw === null || raw === undefined || raw.trim() === "") return {};
  const invalid = () => badRequest(`invalid filter '${raw}'`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    throw invalid();
  }
  if (!isPlainObject(parsed)) throw invalid();
  for (const [key, value] of Object.entries(parsed)) {
    const values: string[] = [];
    if (Array.isArray(value)) {
      for (const v of value) {
        if (typeof v !== "string") throw invalid();
        if (!values.includes(v)) values.push(v);
      }
    } else if (isPlainObject(value)) {
      for (const [v, on] of Object.entries(value)) {
        if (typeof on !== "boolean") throw invalid();
        values.push(v);
      }
    } else {
      throw invalid();
    }
    out.push([key, values]);
  }
  // fromEntries defines own properties, so a key like "__proto__" stays a plain key.
  return Object.fromEntries(out);
}

/** Throws ApiError 400 `invalid filter 'key'` for the first key not in `accepted` (dockerd's Validate). */
export function validateFilterKeys(filters: Filters, accepted: readonly string[]): void {
  for (const key of Object.keys(filters)) {
    if (!accepted.includes(key)) throw badRequest(`invalid filter '${key}'`);
  }
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
