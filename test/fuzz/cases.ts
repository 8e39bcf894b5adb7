// One fuzz case: an Engine API request, a gRPC call, or a connection-level case; how a case prints; and
// how a list of cases is saved and read back (for --replay-file).

import fc from "fast-check";
import { arbConnCase, type ConnCase } from "./conn-cases.js";
import { arbEngineCase, type Body, type EngineCase } from "./engine-cases.js";
import { arbGrpcCase, type GrpcCase } from "./grpc-cases.js";
import { show } from "./json.js";
import { showPb } from "./protobuf.js";

export type Case = EngineCase | GrpcCase | ConnCase;

export const arbCase: fc.Arbitrary<Case> = fc.oneof(
  { arbitrary: arbEngineCase, weight: 55 },
  { arbitrary: arbGrpcCase, weight: 38 },
  { arbitrary: arbConnCase, weight: 7 },
);

/** A batch of exactly `n` cases (a failing batch is shrunk separately, see runner.ts). */
export const arbBatch = (n: number): fc.Arbitrary<Case[]> => fc.array(arbCase, { minLength: n, maxLength: n });

function showBody(b: Body): string {
  switch (b.b) {
    case "none":
      return "";
    case "json":
      return ` ${show(b.v, 200)}${b.mut ? ` ${JSON.stringify(b.mut)}` : ""}`;
    case "text":
      return ` text${JSON.stringify(b.text.slice(0, 60))}`;
    case "bytes":
      return ` bytes(${b.bytes.length})`;
  }
}

/** One line per case, for failure reports. */
export function describeCase(c: Case): string {
  switch (c.kind) {
    case "engine": {
      const path = c.path.map((s) => ("ref" in s ? `{${JSON.stringify(s.ref)}}` : s.lit.slice(0, 40))).join("/");
      const query = c.query.map(
        ([k, v]) => `${k}=${"lit" in v ? v.lit.slice(0, 30) : "ref" in v ? JSON.stringify(v.ref) : show(v.json, 60)}`,
      );
      const extra = [
        c.contentType === "application/json" ? "" : ` ct=${JSON.stringify(c.contentType)}`,
        c.headers.length ? ` headers=${c.headers.map(([k, v]) => `${k}(${v.length})`).join(",")}` : "",
        c.chunked ? " chunked" : "",
        c.upgrade ? " upgrade" : "",
      ].join("");
      return `engine node${c.daemon} ${c.method} /${c.version ? `${c.version}/` : ""}${path}${query.length ? `?${query.join("&")}` : ""}${extra}${showBody(c.body)}`;
    }
    case "grpc":
      return `grpc ${c.identity}->node${c.daemon} ${c.rpc} ${c.messages.map((m) => showPb(m, 200)).join(" | ")}${c.bytes ? ` bytes:${JSON.stringify(c.bytes)}` : ""}${c.metadata.length ? ` md=${c.metadata.map(([k]) => k).join(",")}` : ""}`;
    case "slow":
      return `slow node${c.daemon} ${c.variant} hold=${c.holdMs}ms finish=${c.finish}`;
    case "burst":
      return `burst node${c.daemon} ${c.target} n=${c.n} ${c.mode} hold=${c.holdMs}ms`;
    case "tcp":
      return `tcp node${c.daemon} ${c.payload} bytes=${c.bytes.length} hold=${c.holdMs}ms`;
  }
}

/** Cases as JSON (bigints kept). */
export function casesToJson(cases: Case[]): string {
  return JSON.stringify(cases, (_k, v: unknown) => (typeof v === "bigint" ? { $bigint: v.toString() } : v));
}

export function casesFromJson(text: string): Case[] {
  return JSON.parse(text, (_k, v: unknown) =>
    v !== null && typeof v === "object" && "$bigint" in v ? BigInt((v as { $bigint: string }).$bigint) : v,
  ) as Case[];
}
