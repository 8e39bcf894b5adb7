// What the fuzzer must not do, because it would be a valid, destructive request rather than an attack:
// make a daemon leave the swarm, force a new cluster, demote or promote one of the cluster's own nodes,
// force-remove one of them, rotate the root CA, start a container, or reach outside the machine (a pull
// from a registry on the internet). No image is ever in the fuzz cluster (no pull can succeed and no load
// body is a whole image), so no container can be created, let alone started. Each rule rewrites the one field that would do it, after references are resolved
// (a path segment "self" or a hostname names a node as well as its id does), and leaves the rest of the
// request as generated. Everything else a valid request can do (create and remove networks, update the
// swarm's settings, join a node that never comes, drain a node, ask to remove a manager) stays in.

import type { EngineCase, PathSeg, QVal } from "./engine-cases.js";
import type { J } from "./json.js";
import { type ContextNode, DAEMONS, type FuzzContext, MANAGERS, resolveString } from "./refs.js";

/** The path segment as the server will see it (decoded). */
export function segValue(ctx: FuzzContext, seg: PathSeg): string {
  if ("ref" in seg) return resolveString(ctx, seg.ref);
  if (seg.enc) return seg.lit;
  try {
    return decodeURIComponent(seg.lit);
  } catch {
    return seg.lit;
  }
}

/** Every node a reference could mean: by id, id prefix, hostname, any case, trimmed, or "self". */
export function nodesMatching(ctx: FuzzContext, value: string, daemon: number): ContextNode[] {
  const v = value.trim().toLowerCase();
  if (v === "self") {
    const own = ctx.nodes[daemon - 1];
    return own ? [own] : [];
  }
  if (v === "") return [];
  return ctx.nodes.filter(
    (n) => n.id.toLowerCase() === v || n.hostname.trim().toLowerCase() === v || n.id.toLowerCase().startsWith(v),
  );
}

const isDaemonNode = (ctx: FuzzContext, n: ContextNode): boolean =>
  ctx.nodes.slice(0, DAEMONS.length).some((d) => d.id === n.id);

function topEntries(body: J, key: RegExp): [string, J][] {
  return body.k === "obj" ? body.entries.filter(([k]) => key.test(k)) : [];
}

function setLit(entry: [string, J], v: string | number): void {
  entry[1] = { k: "lit", v };
}

const litString = (v: J): string | undefined => (v.k === "lit" && typeof v.v === "string" ? v.v : undefined);

/** The request with every destructive field made harmless. The case itself is not changed. */
export function makeSafe(ctx: FuzzContext, c: EngineCase): EngineCase {
  const out: EngineCase = structuredClone(c);
  const segs = out.path.map((s) => segValue(ctx, s));
  const route = segs.join("/");
  const dropForce = () => {
    out.query = out.query.filter(([k]) => k.trim().toLowerCase() !== "force");
  };
  if (route === "swarm/leave") {
    dropForce();
    // A worker leaves without force: ask a manager instead, which refuses.
    if (!MANAGERS.includes(out.daemon as 1 | 2 | 3)) out.daemon = MANAGERS[out.daemon % MANAGERS.length]!;
  }
  if (segs[0] === "nodes" && segs.length === 2) {
    const own = nodesMatching(ctx, segs[1]!, out.daemon).filter((n) => isDaemonNode(ctx, n));
    // `node rm --force` takes a manager out of Raft (when quorum survives): without force it is refused,
    // and that refusal stays tested. A worker of the cluster that a heartbeat missed under load could be
    // removed even without force: name a node that does not exist instead.
    if (own.length > 0) dropForce();
    if (own.some((n) => n.role !== "manager")) out.path[1] = { lit: "fuzz-kept-node", enc: true };
  }
  if (route === "images/create") keepPullsLocal(ctx, out);
  if (out.body.b !== "json") return out;
  const body = out.body.v;
  if (route === "swarm/init") {
    if (body.k === "obj") body.entries = body.entries.filter(([k]) => !/^forcenewcluster$/i.test(k));
  } else if (segs[0] === "nodes" && segs.length === 3 && segs[2] === "update") {
    keepRole(ctx, body, nodesMatching(ctx, segs[1]!, out.daemon));
  } else if (route === "swarm/update") {
    for (const [, ca] of topEntries(body, /^caconfig$/i)) {
      for (const e of topEntries(ca, /^forcerotate$/i))
        if (e[1].k !== "lit" || typeof e[1].v !== "boolean") setLit(e, 0);
      if (ca.k === "obj") ca.entries = ca.entries.filter(([k]) => !/^signingca(cert|key)$/i.test(k));
    }
  } else if (route === "containers/create") {
    for (const e of topEntries(body, /^image$/i)) {
      const v = litString(e[1])?.trim().toLowerCase();
      if (v?.startsWith("host")) setLit(e, "fuzz-no-such-image");
    }
  }
  return out;
}

/** A node update may not change the role of one of the cluster's own nodes. */
function keepRole(ctx: FuzzContext, body: J, targets: ContextNode[]): void {
  const own = targets.filter((n) => isDaemonNode(ctx, n));
  if (own.length === 0) return;
  const roles = new Set(own.map((n) => n.role));
  for (const e of topEntries(body, /^role$/i)) {
    const v = litString(e[1])?.trim().toLowerCase();
    if (v === undefined || !/manager|worker/.test(v)) continue;
    // Several of the cluster's nodes with different roles: no role is safe, so none is valid.
    setLit(e, roles.size === 1 ? [...roles][0]! : "fuzz-no-such-role");
  }
}

/** The registry an image would be pulled from that nothing listens on (the discard port on loopback). */
export const LOCAL_REGISTRY = "127.0.0.1:9";

/**
 * A pull goes to LOCAL_REGISTRY whatever was generated: every fromImage is prefixed with it (the first path
 * component is the registry), fromSrc only reads the body or loopback, and a value that would add a query
 * parameter of its own ("&fromImage=...") is dropped.
 */
function keepPullsLocal(ctx: FuzzContext, out: EngineCase): void {
  out.query = out.query
    .filter(([, v]) => !("lit" in v && /[&#]/.test(v.lit)))
    .map(([k, v]): [string, QVal] => {
      const value = "lit" in v ? v.lit : "ref" in v ? resolveString(ctx, v.ref) : "";
      if (k === "fromImage") return [k, { lit: `${LOCAL_REGISTRY}/fuzz/${value}` }];
      if (k === "fromSrc" && value !== "-" && !value.startsWith(`http://${LOCAL_REGISTRY}/`)) return [k, { lit: "-" }];
      return [k, v];
    });
}
