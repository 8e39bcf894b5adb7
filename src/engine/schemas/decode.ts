// Decoding a request against its schema, and the one message a refusal gets:
//   - a value Go's decoder would refuse: dockerd's words, `invalid JSON: json: cannot unmarshal ...`;
//   - a Docker field shoal does not carry out, given a value: `HostConfig.Privileged (--privileged) is not
//     supported by shoal: leave it unset`;
//   - anything else: `invalid <what>: <field>: <problem>`.

import type { z } from "zod";
import { badRequest } from "../../api/errors.js";
import { type GoType, isGoDecodeMessage, ROOT, UNSUPPORTED } from "./go.js";

/** The schema of a request body of Go type `t`: an absent or null body is the zero struct. */
export function bodySchema<T extends object>(t: GoType<T | undefined>): z.ZodType<T> {
  return t.at(ROOT).transform((v) => v ?? ({} as T)) as unknown as z.ZodType<T>;
}

/** The path of an issue as a field name (`Labels.a`, `IPAM.Config[0]`); an over-long key is cut short. */
function fieldPath(path: readonly PropertyKey[]): string {
  let out = "";
  for (const p of path) {
    if (typeof p === "number") out += `[${p}]`;
    else {
      const name = String(p);
      const shown = name.length > 64 ? `${name.slice(0, 32)}...(${name.length} characters)` : name;
      out += out ? `.${shown}` : shown;
    }
  }
  return out;
}

/** One line for the first thing that is wrong, as the user should read it. */
export function describe(err: z.ZodError, what: string): string {
  const issues = [...err.issues].sort(
    (a, b) => Number(isGoDecodeMessage(b.message)) - Number(isGoDecodeMessage(a.message)),
  );
  const first = issues[0];
  if (!first) return `invalid ${what}`;
  if (isGoDecodeMessage(first.message)) return `invalid JSON: ${first.message}`;
  const field = fieldPath(first.path);
  if (first.message === UNSUPPORTED) {
    const flag = (first as { params?: { flag?: string } }).params?.flag;
    return `${field}${flag ? ` (${flag})` : ""} is not supported by shoal: leave it unset`;
  }
  return field ? `invalid ${what}: ${field}: ${first.message}` : `invalid ${what}: ${first.message}`;
}

/** Parses `value` against `schema`, or throws a 400 that names the field. */
export function decode<S extends z.ZodType>(schema: S, value: unknown, what: string): z.infer<S> {
  const r = schema.safeParse(value);
  if (!r.success) throw badRequest(describe(r.error, what));
  return r.data;
}
