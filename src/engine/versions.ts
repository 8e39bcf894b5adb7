// Engine API versions: how dockerd compares them, and the range shoal announces.

import { API_VERSION, MIN_API_VERSION } from "../version.js";
import { badRequest } from "./errors.js";

/** Compares dotted versions numerically, as dockerd's versions.Compare does ("1.9" < "1.24"). */
export function compareApiVersions(a: string, b: string): number {
  const pa = a.split(".");
  const pb = b.split(".");
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = Number.parseInt(pa[i] ?? "0", 10) || 0;
    const y = Number.parseInt(pb[i] ?? "0", 10) || 0;
    if (x !== y) return x < y ? -1 : 1;
  }
  return 0;
}

/** A request path's version must be within what shoal announces; dockerd's words otherwise. */
export function checkApiVersion(v: string): void {
  if (compareApiVersions(v, API_VERSION) > 0) {
    throw badRequest(`client version ${v} is too new. Maximum supported API version is ${API_VERSION}`);
  }
  if (compareApiVersions(v, MIN_API_VERSION) < 0) {
    throw badRequest(
      `client version ${v} is too old. Minimum supported API version is ${MIN_API_VERSION}, please upgrade your client to a newer version`,
    );
  }
}
