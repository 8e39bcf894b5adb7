// The overlay encryption keys a node holds, as the managers push them (agentView JSON, in the Attach answer
// and down the session stream at each rotation): whether a push is taken, kept or dropped, and the ring in
// the shape xfrm wants. Only tags and times are ever logged or shown, never keys.

import type { Key } from "../dataplane/xfrm.js";
import type { AgentKeys } from "../store/keyring.js";

/** Go's time.Duration text for whole milliseconds ("12h0m0s", "1m30s", "2s", "1.5s"). */
export function goDuration(ms: number): string {
  const h = Math.floor(ms / 3_600_000);
  const m = Math.floor((ms % 3_600_000) / 60_000);
  const sec = `${(ms % 60_000) / 1000}s`;
  return h > 0 ? `${h}h${m}m${sec}` : m > 0 ? `${m}m${sec}` : sec;
}

/**
 * What to do with a key push (agentView JSON; "" when the managers see this node holding no encrypted
 * network), given the ring held and whether a local container is on an encrypted network:
 *   take      a different, valid ring that is not older than the one held;
 *   keep      the same ring, or an older one (a new leader that has not applied the latest rotation yet
 *             may push the ring before it; a ring made afresh - a new swarm - has lower tags but a later
 *             rotation time, and is taken), or "" while a container here still uses the keys;
 *   drop      "" and nothing here needs keys: forget them (an attach in flight is not hurt: the push
 *             that follows its endpoint carries the keys again);
 *   malformed not a keyring of 3 keys with 16-byte keys and 4-byte salts, ascending tags.
 */
export function keyPush(
  cur: AgentKeys | undefined,
  json: string,
  holding: boolean,
):
  | { action: "take"; keys: AgentKeys }
  | { action: "keep" }
  | { action: "drop" }
  | { action: "malformed"; why: string } {
  if (json === "") return cur && !holding ? { action: "drop" } : { action: "keep" };
  let next: AgentKeys;
  try {
    next = JSON.parse(json) as AgentKeys;
  } catch {
    return { action: "malformed", why: "not JSON" };
  }
  const why = keyringProblem(next);
  if (why) return { action: "malformed", why };
  if (cur) {
    const newest = (k: AgentKeys) => k.keys.at(-1)!.tag;
    if (newest(next) < newest(cur) && next.lastRotation <= cur.lastRotation) return { action: "keep" };
    if (newest(next) === newest(cur) && next.lastRotation === cur.lastRotation) return { action: "keep" };
  }
  return { action: "take", keys: next };
}

function keyringProblem(k: AgentKeys): string | undefined {
  if (typeof k !== "object" || k === null || !Array.isArray(k.keys)) return "no keys";
  if (k.keys.length !== 3) return `${k.keys.length} keys, not 3`;
  for (const [i, x] of k.keys.entries()) {
    if (!Number.isInteger(x.tag) || x.tag < 0) return "a key without a valid tag";
    if (i > 0 && x.tag <= k.keys[i - 1]!.tag) return "tags not ascending";
    if (typeof x.key !== "string" || Buffer.from(x.key, "base64").length !== 16) return `key ${x.tag} is not 16 bytes`;
    if (typeof x.salt !== "string" || Buffer.from(x.salt, "base64").length !== 4)
      return `salt of key ${x.tag} is not 4 bytes`;
  }
  if (typeof k.lastRotation !== "string") return "no rotation time";
  if (!k.keys.some((x) => x.tag === k.primaryTag)) return "the primary is not in the ring";
  return undefined;
}

/** The keyring as xfrm wants it: ascending, raw bytes. */
export function keysOf(k: AgentKeys): Key[] {
  return [...k.keys]
    .sort((a, b) => a.tag - b.tag)
    .map((x) => ({ tag: x.tag, key: Buffer.from(x.key, "base64"), salt: Buffer.from(x.salt, "base64") }));
}

/** Tags and times of the keys held (what may be shown). */
export function keyInfo(k: AgentKeys | undefined): {
  tags: number[];
  primaryTag: number | null;
  lastRotation: string | null;
  intervalMs: number | null;
} {
  return {
    tags: k ? k.keys.map((x) => x.tag) : [],
    primaryTag: k?.primaryTag ?? null,
    lastRotation: k?.lastRotation ?? null,
    intervalMs: k?.intervalMs ?? null,
  };
}
