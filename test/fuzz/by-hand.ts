// Engine API cases written by hand (the named cases of fuzz.test.ts, the fuzzer's unit tests), in the
// shape the generator draws: JSON body, no extra headers, API v1.50.

import type { EngineCase, PathSeg, QVal } from "./engine-cases.js";
import type { J } from "./json.js";
import type { Ref } from "./refs.js";

/** A path segment: a literal, or a reference resolved (and percent-encoded) at send time. */
export const seg = (x: string | Ref): PathSeg =>
  typeof x === "string" ? { lit: x, enc: false } : { ref: x, enc: true };

export function engineCase(
  route: string,
  daemon: number,
  method: string,
  path: (string | Ref)[],
  body?: J,
  query: [string, QVal][] = [],
): EngineCase {
  return {
    kind: "engine",
    route,
    daemon,
    method,
    version: "v1.50",
    path: path.map(seg),
    query,
    contentType: "application/json",
    headers: [],
    chunked: false,
    upgrade: false,
    body: body ? { b: "json", v: body } : { b: "none" },
  };
}
