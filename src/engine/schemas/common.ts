// Go types the Engine API's requests share: labels, driver options, environments, commands.

import type { z } from "zod";
import {
  MAX_ARGS,
  MAX_ARGS_BYTES,
  MAX_ENV,
  MAX_ENV_BYTES,
  MAX_LABEL_VALUE_BYTES,
  MAX_LABELS,
  MAX_OPTIONS,
  utf8Bytes,
} from "../../api/limits.js";
import { Labels, stringMap } from "../../api/schema.js";
import { checked, type GoType, goMap, goSlice, goString, piped, strSlice } from "./go.js";

/** map[string]string labels, bounded as every stored object's labels are. */
export function labels(): GoType<Record<string, string> | undefined> {
  return piped(goMap(goString(), MAX_LABELS), Labels.optional());
}

/** map[string]string driver options, bounded. */
export function options(max = MAX_OPTIONS): GoType<Record<string, string> | undefined> {
  return piped(goMap(goString(), max), stringMap(max).optional());
}

function totalBytes(list: string[] | undefined): number {
  let n = 0;
  for (const s of list ?? []) n += utf8Bytes(s);
  return n;
}

/** []string of KEY=value entries. */
export function env(): GoType<string[] | undefined> {
  return checked(goSlice(goString(), MAX_ENV), (v) => {
    const n = totalBytes(v);
    return n > MAX_ENV_BYTES ? `at most ${MAX_ENV_BYTES} bytes in all (${n})` : undefined;
  });
}

/** A command (strslice or []string), bounded in number and in bytes. */
export function command(asStrSlice = true): GoType<string[] | undefined> {
  const t = asStrSlice ? strSlice(MAX_ARGS) : goSlice(goString(), MAX_ARGS);
  return checked(t, (v) => {
    const n = totalBytes(v);
    return n > MAX_ARGS_BYTES ? `at most ${MAX_ARGS_BYTES} bytes in all (${n})` : undefined;
  });
}

/** A short string a request may carry but shoal stores only briefly (checked for size only). */
export function text(max = MAX_LABEL_VALUE_BYTES, goName = "string"): GoType<string> {
  return checked(goString(goName), (v) => (v.length > max ? `must be at most ${max} characters` : undefined));
}

/** Checks a decoded string against a zod schema of src/api (an address, a name), naming what is wrong. */
export function matching(schema: z.ZodType<string>, goName = "string"): GoType<string> {
  return checked(goString(goName), (v) => {
    if (v === "") return undefined;
    const r = schema.safeParse(v);
    return r.success ? undefined : (r.error.issues[0]?.message ?? "invalid value");
  });
}
