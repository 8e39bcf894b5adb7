// The Raft members table: which node holds which Raft id, and where its cluster listener is. Written when a
// membership change is applied (and at bootstrap), so it follows Raft's own configuration.

import type { Command } from "./commands.js";
import { type ApplyContext, type Outcome, ok, type State } from "./state.js";

type MemberCommand = Extract<Command, { op: "member.add" | "member.remove" }>;

export function applyMember(s: State, c: MemberCommand, ctx: ApplyContext): Outcome {
  if (c.op === "member.add") {
    s.members.set(c.member.raftId, { ...c.member });
    ctx.emit({ kind: "member", action: "add", member: { ...c.member } });
    return ok(ctx.index);
  }
  const m = s.members.get(c.raftId);
  if (!m) return ok(ctx.index);
  s.members.delete(c.raftId);
  ctx.emit({ kind: "member", action: "remove", member: m });
  return ok(ctx.index);
}
