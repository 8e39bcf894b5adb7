// The cluster table: one record (the swarm's info and spec, and the secrets only managers hold).

import { applySecretsChange } from "./ca.js";
import type { Command } from "./commands.js";
import { type ApplyContext, clone, fail, type Outcome, ok, type State } from "./state.js";

type ClusterCommand = Extract<Command, { op: "cluster.create" | "cluster.update" }>;

export function applyCluster(s: State, c: ClusterCommand, ctx: ApplyContext): Outcome {
  if (c.op === "cluster.create") {
    if (s.cluster) return fail(409, "the cluster already exists");
    const info = clone(c.info);
    info.Version = { Index: ctx.index };
    info.CreatedAt = ctx.at;
    info.UpdatedAt = ctx.at;
    s.cluster = { info, secrets: clone(c.secrets) };
  } else {
    if (!s.cluster) return fail(503, "the cluster does not exist");
    if (s.cluster.info.Version.Index !== c.version) return fail(500, "update out of sequence");
    s.cluster.info.Spec = clone(c.spec);
    if (c.workerToken) s.cluster.secrets.workerToken = c.workerToken;
    if (c.managerToken) s.cluster.secrets.managerToken = c.managerToken;
    applySecretsChange(s.cluster, c);
    s.cluster.info.Version = { Index: ctx.index };
    s.cluster.info.UpdatedAt = ctx.at;
  }
  ctx.emit({ kind: "cluster", cluster: clone(s.cluster) });
  return ok(ctx.index);
}
