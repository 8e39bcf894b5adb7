// The Engine API's request bodies are Go structs that dockerd decodes with encoding/json. This module
// describes those Go types and builds, for each, a zod schema that decodes a JSON value the way Go does:
//
//   - a field may be absent or null: it keeps its zero value ("", 0, false, nil);
//   - field names match case-insensitively (an exact match wins), the last duplicate wins;
//   - a value of the wrong JSON kind is refused in Go's words, naming the innermost struct and the path of
//     struct fields: `json: cannot unmarshal number into Go struct field NetworkCreateRequest.Labels of
//     type string` (map keys and slice indexes are not part of Go's path);
//   - a field the Go struct does not have is refused as Go's DisallowUnknownFields does:
//     `json: unknown field "Junk"`;
//   - integers must be whole and within their Go type's range (`number 1.5`, `number -1`).
//
// On top of that, what shoal adds: bounds on sizes, and fields that Docker defines but shoal does not
// carry out, which are accepted only with their zero value (unsupported()).

import { z } from "zod";

/** Where a value sits, as encoding/json reports it: the innermost struct and the struct fields leading to it. */
export interface GoPlace {
  readonly struct: string;
  readonly fields: readonly string[];
}

export const ROOT: GoPlace = { struct: "", fields: [] };

/** A Go type: its name in Go's messages, its zero test, and the zod schema that decodes it at a place. */
export interface GoType<T> {
  readonly goName: string;
  at(place: GoPlace): z.ZodType<T>;
  isZero(v: T | undefined): boolean;
}

export type GoOut<G> = G extends GoType<infer T> ? T : never;

/** The kind of a JSON value, as encoding/json names it ("number", "bool", "array"...). */
function jsonKind(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "array";
  switch (typeof v) {
    case "boolean":
      return "bool";
    case "number":
      return "number";
    case "string":
      return "string";
    default:
      return "object";
  }
}

/** encoding/json's UnmarshalTypeError text. */
function unmarshalError(place: GoPlace, value: string, goName: string): string {
  if (place.fields.length === 0) return `json: cannot unmarshal ${value} into Go value of type ${goName}`;
  return `json: cannot unmarshal ${value} into Go struct field ${place.struct}.${place.fields.join(".")} of type ${goName}`;
}

/** An issue in Go's words: what the formatter puts first and prefixes as dockerd does ("invalid JSON: ..."). */
export function isGoDecodeMessage(message: string): boolean {
  return message.startsWith("json: ");
}

function fail(ctx: z.core.ParsePayload<unknown>, input: unknown, message: string): never {
  ctx.issues.push({ code: "custom", message, input });
  return z.NEVER;
}

// ------------------------------------------------------------------ scalars

/** A Go string (or a named string type: `swarm.NodeRole`). null decodes to "". */
export function goString(goName = "string"): GoType<string> {
  return {
    goName,
    isZero: (v) => v === undefined || v === "",
    at: (place) =>
      z.unknown().transform((v, ctx): string => {
        if (v === null || v === undefined) return "";
        if (typeof v !== "string") return fail(ctx, v, unmarshalError(place, jsonKind(v), goName));
        return v;
      }),
  };
}

/** A Go bool. null decodes to false. */
export function goBool(goName = "bool"): GoType<boolean> {
  return {
    goName,
    isZero: (v) => v === undefined || v === false,
    at: (place) =>
      z.unknown().transform((v, ctx): boolean => {
        if (v === null || v === undefined) return false;
        if (typeof v !== "boolean") return fail(ctx, v, unmarshalError(place, jsonKind(v), goName));
        return v;
      }),
  };
}

type IntKind = "int" | "int32" | "int64" | "uint" | "uint8" | "uint16" | "uint32" | "uint64" | "time.Duration";

const INT_RANGE: Record<IntKind, [number, number]> = {
  int: [Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER],
  int64: [Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER],
  "time.Duration": [Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER],
  int32: [-(2 ** 31), 2 ** 31 - 1],
  uint: [0, Number.MAX_SAFE_INTEGER],
  uint64: [0, Number.MAX_SAFE_INTEGER],
  uint32: [0, 2 ** 32 - 1],
  uint16: [0, 65535],
  uint8: [0, 255],
};

/**
 * A Go integer. A number that is not whole or out of range is refused as Go does ("number 1.5"); 64-bit
 * values beyond 2^53 are refused too (they cannot be held exactly, and nothing shoal stores needs them).
 */
export function goInt(kind: IntKind = "int"): GoType<number> {
  const [min, max] = INT_RANGE[kind];
  return {
    goName: kind,
    isZero: (v) => v === undefined || v === 0,
    at: (place) =>
      z.unknown().transform((v, ctx): number => {
        if (v === null || v === undefined) return 0;
        if (typeof v !== "number") return fail(ctx, v, unmarshalError(place, jsonKind(v), kind));
        if (!Number.isInteger(v) || v < min || v > max) {
          return fail(ctx, v, unmarshalError(place, `number ${String(v)}`, kind));
        }
        return v;
      }),
  };
}

// ------------------------------------------------------------------ containers

/** A Go slice. null decodes to nil (undefined). Elements sit at the slice's place (Go names no index). */
export function goSlice<T>(elem: GoType<T>, maxItems: number, goName = `[]${elem.goName}`): GoType<T[] | undefined> {
  return {
    goName,
    isZero: (v) => v === undefined || v.length === 0,
    at: (place) => {
      const item = elem.at(place);
      return z
        .unknown()
        .transform((v, ctx): unknown[] | undefined => {
          if (v === null || v === undefined) return undefined;
          if (!Array.isArray(v)) return fail(ctx, v, unmarshalError(place, jsonKind(v), goName));
          if (v.length > maxItems) return fail(ctx, v, `at most ${maxItems} entries (${v.length} given)`);
          return v;
        })
        .pipe(z.array(item).optional()) as unknown as z.ZodType<T[] | undefined>;
    },
  };
}

/** A fixed-size Go array ([2]uint): a JSON array of at most `size` elements, the rest zero. */
export function goArray(elem: GoType<number>, size: number): GoType<number[] | undefined> {
  const goName = `[${size}]${elem.goName}`;
  return {
    goName,
    isZero: (v) => v === undefined || v.every((x) => x === 0),
    at: (place) =>
      goSlice(elem, size, goName)
        .at(place)
        .transform((v) => (v === undefined ? undefined : [...v, ...new Array<number>(size - v.length).fill(0)])),
  };
}

/**
 * A Go map with string keys. null decodes to nil (undefined). Built with own properties only, so a key
 * such as "__proto__" stays a key.
 */
export function goMap<T>(value: GoType<T>, maxEntries: number): GoType<Record<string, T> | undefined> {
  const goName = `map[string]${value.goName}`;
  return {
    goName,
    isZero: (v) => v === undefined || Object.keys(v).length === 0,
    at: (place) => {
      const item = value.at(place);
      return z.unknown().transform((v, ctx): Record<string, T> | undefined => {
        if (v === null || v === undefined) return undefined;
        if (typeof v !== "object" || Array.isArray(v)) return fail(ctx, v, unmarshalError(place, jsonKind(v), goName));
        const entries = Object.entries(v);
        if (entries.length > maxEntries) return fail(ctx, v, `at most ${maxEntries} entries (${entries.length} given)`);
        const out: [string, T][] = [];
        for (const [k, x] of entries) {
          const r = item.safeParse(x);
          if (r.success) out.push([k, r.data]);
          else for (const iss of r.error.issues) ctx.issues.push(reissue(iss, [k, ...iss.path], x));
        }
        return Object.fromEntries(out);
      }) as unknown as z.ZodType<Record<string, T> | undefined>;
    },
  };
}

/** An issue of a nested parse, carried into the outer one at `path`. */
function reissue(iss: z.core.$ZodIssue, path: PropertyKey[], input: unknown): z.core.$ZodRawIssue {
  const params = (iss as { params?: Record<string, unknown> }).params;
  // A record's bad key is reported as "Invalid key in record" with the key's own issue inside.
  const inner = iss.code === "invalid_key" ? iss.issues[0]?.message : undefined;
  return { code: "custom", message: inner ?? iss.message, path, input, ...(params ? { params } : {}) };
}

/**
 * Docker's strslice.StrSlice (Cmd, Entrypoint, Shell, Healthcheck.Test): a JSON array of strings, or one
 * string (older clients). null decodes to nil.
 */
export function strSlice(maxItems: number): GoType<string[] | undefined> {
  const goName = "strslice.StrSlice";
  const list = goSlice(goString(), maxItems, goName);
  return {
    goName,
    isZero: (v) => v === undefined || v.length === 0,
    at: (place) =>
      z
        .unknown()
        .transform((v) => (typeof v === "string" ? [v] : v))
        .pipe(list.at(place)),
  };
}

type Fields = Record<string, GoType<unknown>>;
export type StructOut<F extends Fields> = { [K in keyof F]?: GoOut<F[K]> };

/**
 * A Go struct: an object whose keys match the fields case-insensitively (as encoding/json does; an exact
 * match wins, a later duplicate replaces an earlier one) and that may have no other keys. null decodes to
 * the zero struct (undefined). `goName` is the qualified type ("network.IPAM"); fields name the short one.
 */
export function goStruct<F extends Fields>(goName: string, fields: F): GoType<StructOut<F> | undefined> {
  const short = goName.slice(goName.lastIndexOf(".") + 1);
  const names = Object.keys(fields);
  const nameSet = new Set(names);
  const byLower = new Map(names.map((n) => [n.toLowerCase(), n]));
  return {
    goName,
    isZero: (v) => v === undefined || names.every((n) => fields[n]!.isZero(v[n] as never)),
    at: (place) => {
      const shape: Record<string, z.ZodType> = {};
      for (const n of names) {
        shape[n] = fields[n]!.at({ struct: short, fields: [...place.fields, n] }).optional();
      }
      const obj = z.strictObject(shape, {
        error: (iss) =>
          iss.code === "unrecognized_keys"
            ? `json: unknown field ${JSON.stringify(iss.keys[0])}`
            : unmarshalError(place, jsonKind(iss.input), goName),
      });
      return z
        .unknown()
        .transform((v) => {
          if (v === null || v === undefined) return undefined;
          if (typeof v !== "object" || Array.isArray(v)) return v;
          return foldKeys(v as Record<string, unknown>, nameSet, byLower);
        })
        .pipe(obj.optional()) as unknown as z.ZodType<StructOut<F> | undefined>;
    },
  };
}

/** Keys matched to field names as encoding/json matches them. Unknown keys are kept (and refused later). */
function foldKeys(
  v: Record<string, unknown>,
  names: Set<string>,
  byLower: Map<string, string>,
): Record<string, unknown> {
  const out = new Map<string, unknown>();
  for (const [k, x] of Object.entries(v)) {
    const name = names.has(k) ? k : (byLower.get(k.toLowerCase()) ?? k);
    out.set(name, x);
  }
  // fromEntries defines own properties, so "__proto__" stays a plain (unknown) key.
  return Object.fromEntries(out);
}

// ------------------------------------------------------------------ shoal's additions

/** Adds a check on the decoded value; `problem` returns what is wrong, or undefined. */
export function checked<T>(t: GoType<T>, problem: (v: T) => string | undefined): GoType<T> {
  return {
    goName: t.goName,
    isZero: t.isZero,
    at: (place) =>
      t.at(place).superRefine((v, ctx) => {
        const p = problem(v as T);
        if (p !== undefined) ctx.addIssue({ code: "custom", message: p });
      }) as unknown as z.ZodType<T>,
  };
}

/** Marks the issue of an unsupported field: the formatter names the field and the flag. */
export const UNSUPPORTED = "shoal:unsupported";

/**
 * A field Docker defines that shoal does not carry out: its zero value (or a value `alsoFine` accepts, such
 * as RestartPolicy "no") is accepted, anything else refused naming the field, never silently ignored.
 * `flag` is the docker CLI flag that sets it, for the message.
 */
export function unsupported<T>(t: GoType<T>, flag = "", alsoFine?: (v: T) => boolean): GoType<T> {
  return {
    goName: t.goName,
    isZero: t.isZero,
    at: (place) =>
      t.at(place).superRefine((v, ctx) => {
        if (t.isZero(v as T) || alsoFine?.(v as T)) return;
        ctx.addIssue({ code: "custom", message: UNSUPPORTED, params: { flag } });
      }) as unknown as z.ZodType<T>,
  };
}

/** Decodes as `t`, then checks the result against one of src/api's schemas (bounds, formats). */
export function piped<T>(t: GoType<T>, schema: z.ZodType): GoType<T> {
  return {
    goName: t.goName,
    isZero: t.isZero,
    at: (place) =>
      t.at(place).superRefine((v, ctx) => {
        const r = schema.safeParse(v);
        if (!r.success) for (const iss of r.error.issues) ctx.addIssue(reissue(iss, iss.path, v));
      }) as unknown as z.ZodType<T>,
  };
}

/** A Go pointer (*int64, *bool): null or absent stays undefined, so "not given" differs from zero. */
export function goPointer<T>(t: GoType<T>): GoType<T | undefined> {
  return {
    goName: t.goName,
    isZero: (v) => v === undefined,
    at: (place) => {
      const inner = t.at(place);
      return z
        .unknown()
        .transform((v): unknown => (v === null ? undefined : v))
        .pipe(inner.optional()) as unknown as z.ZodType<T | undefined>;
    },
  };
}
