// gRPC requests to the cluster port (TCP 2377) of a manager: every RPC of the cluster protocol (CA,
// RaftMembership, Dispatcher) and of the Raft service, with generated field values, as a worker, as a
// manager demoted during setup (its old manager certificate), and with no certificate; field-level
// protobuf mutations (wrong wire types, unknown and repeated fields, varints up to 2^64-1) and byte-level
// ones (truncated, flipped, appended); and methods no service has.

import fc from "fast-check";
import type { ByteMut } from "./engine-cases.js";
import { applyMutations, arbFraction, arbMutation, type J, j, refOf, sometimes } from "./json.js";
import type { PbField, PbText } from "./protobuf.js";
import { arbNetRef, arbNodeRef, arbRaftId, arbToken, MANAGERS, type Ref } from "./refs.js";

export type Identity = "worker" | "exManager" | "none";

export interface GrpcCase {
  kind: "grpc";
  identity: Identity;
  daemon: number;
  /** The method's path, e.g. /shoal.cluster.CA/IssueNodeCertificate. */
  rpc: string;
  style: "unary" | "serverStream" | "clientStream";
  /** One message, or several for a client stream. */
  messages: PbField[][];
  /** Applied to each encoded message. */
  bytes?: ByteMut;
  metadata: [string, string][];
  /** How long a server stream is kept open (it is cancelled after its first message or this). */
  holdMs: number;
}

const CA = "/shoal.cluster.CA/";
const MEMBERSHIP = "/shoal.cluster.RaftMembership/";
const DISPATCHER = "/shoal.cluster.Dispatcher/";
const RAFT = "/shoal.raft.Raft/";

// ---------------------------------------------------------------------------------------------------
// Field values

const s = (x: string): PbText => ({ s: x });
const ref = (r: Ref): PbText => ({ ref: r });
const text = (f: number, v: PbText): PbField => ({ f, t: "text", v });
const uv = (f: number, v: bigint): PbField => ({ f, t: "varint", v });

const arbOddText: fc.Arbitrary<PbText> = fc.oneof(
  fc.constantFrom(
    s(""),
    s(" "),
    s("\u0000"),
    s("null"),
    s("{}"),
    s("[]"),
    s("x".repeat(300)),
    s("x".repeat(70_000)),
    s("x".repeat(5_000_000)),
    s("127.0.0.1:2377"),
    s("0.0.0.0:0"),
    s("224.0.0.1"),
    s("::1"),
    s("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"),
    s("SWMTKN-1-"),
    s("../etc"),
  ),
  fc.string({ maxLength: 40 }).map(s),
  fc.string({ unit: "binary", maxLength: 40 }).map(s),
  fc.uint8Array({ maxLength: 64 }).map((u): PbText => ({ bytes: [...u] })),
);

/** Mostly the valid value, sometimes an odd one. */
const or = (valid: fc.Arbitrary<PbText>, w = 4): fc.Arbitrary<PbText> =>
  fc.oneof({ arbitrary: valid, weight: w }, { arbitrary: arbOddText, weight: 1 });

const U64MAX = (1n << 64n) - 1n;
const arbOddU64: fc.Arbitrary<bigint> = fc.oneof(
  fc.constantFrom(
    0n,
    1n,
    2n,
    3n,
    10n,
    1000n,
    (1n << 31n) - 1n,
    1n << 32n,
    (1n << 53n) - 1n,
    1n << 53n,
    1n << 63n,
    U64MAX,
  ),
  fc.bigInt({ min: 0n, max: U64MAX }),
  fc.bigInt({ min: 0n, max: 50n }),
);

// ---------------------------------------------------------------------------------------------------
// The cluster protocol

const VALID_DESCRIPTION = {
  Hostname: "node4",
  Platform: { Architecture: "x86_64", OS: "linux" },
  Resources: { NanoCPUs: 2_000_000_000, MemoryBytes: 8_000_000_000 },
  Engine: { EngineVersion: "0.1.0", Plugins: [{ Type: "Network", Name: "overlay" }] },
};

const arbDescription: fc.Arbitrary<PbText> = fc.oneof(
  {
    arbitrary: fc
      .array(arbMutation, { maxLength: 3 })
      .map((m): PbText => ({ json: applyMutations(j(VALID_DESCRIPTION), m) })),
    weight: 6,
  },
  { arbitrary: fc.constantFrom(s(""), s("null"), s("{}"), s("{"), s("[]"), s('"x"')), weight: 1 },
  { arbitrary: fc.jsonValue({ maxDepth: 3 }).map((v): PbText => ({ json: j(v) })), weight: 1 },
);

const arbHostname = or(fc.constantFrom(s("fz-joiner"), s("node4"), s("node1")));
const arbAvailability = or(fc.constantFrom(s(""), s("active"), s("drain"), s("pause")));

const arbCsrRef = or(
  fc.nat(2).map((i) => ref({ r: "csr", i })),
  6,
);

const arbAddr = or(
  fc.oneof(
    fc.constantFrom(...MANAGERS, 4, 5).map((d) => ref({ r: "clusterAddr", daemon: d })),
    fc.constant(s("127.0.0.9:2377")),
  ),
);
const arbIp = or(
  fc.oneof(
    fc.constantFrom(4, 5, 1).map((d) => ref({ r: "ip", daemon: d })),
    fc.constant(s("")),
  ),
);

const arbNodeIdText = or(arbNodeRef.map((r) => ref({ ...(r as Extract<Ref, { r: "node" }>), form: "id" })));

interface RpcSpec {
  rpc: string;
  style: GrpcCase["style"];
  fields: fc.Arbitrary<PbField[]>;
  weight: number;
}

const f = (...xs: fc.Arbitrary<PbField>[]) => fc.tuple(...xs).map((t) => [...t]);
const tf = (n: number, a: fc.Arbitrary<PbText>) => a.map((v) => text(n, v));

const CLUSTER_RPCS: RpcSpec[] = [
  { rpc: `${CA}GetRootCACertificate`, style: "unary", fields: fc.constant([]), weight: 1 },
  {
    rpc: `${CA}IssueNodeCertificate`,
    style: "unary",
    fields: f(
      tf(1, arbCsrRef),
      tf(2, or(arbToken.map(ref), 6)),
      tf(3, arbAvailability),
      tf(4, arbHostname),
      tf(5, or(fc.constantFrom(s(""), s("127.0.0.9:2377")))),
      tf(6, or(fc.constant(s("")), 8)),
    ),
    weight: 5,
  },
  { rpc: `${CA}RenewNodeCertificate`, style: "unary", fields: f(tf(1, arbCsrRef)), weight: 3 },
  {
    rpc: `${CA}RecoverNodeCertificate`,
    style: "unary",
    fields: f(
      tf(1, arbCsrRef),
      tf(2, or(fc.constantFrom(ref({ r: "certPem", who: "worker" }), ref({ r: "certPem", who: "exManager" })))),
    ),
    weight: 1,
  },
  { rpc: `${MEMBERSHIP}Join`, style: "unary", fields: f(tf(1, arbAddr)), weight: 3 },
  {
    rpc: `${MEMBERSHIP}Leave`,
    style: "unary",
    fields: f(tf(1, or(fc.oneof(arbNodeIdText, fc.constant(s("")))))),
    weight: 3,
  },
  { rpc: `${DISPATCHER}Session`, style: "serverStream", fields: f(tf(1, arbDescription), tf(2, arbIp)), weight: 6 },
  {
    rpc: `${DISPATCHER}Heartbeat`,
    style: "unary",
    fields: f(tf(1, or(fc.nat(5).map((i) => ref({ r: "session", i }))))),
    weight: 3,
  },
  {
    rpc: `${DISPATCHER}Attach`,
    style: "unary",
    fields: fc
      .tuple(
        tf(1, or(arbNetRef.map(ref))),
        tf(2, or(fc.stringMatching(/^[0-9a-f]{64}$/).map(s))),
        tf(3, or(fc.constantFrom(s("fz-ctr"), s("")))),
        fc.array(tf(4, or(fc.constantFrom(s("alias"), s("a.b")))), { maxLength: 3 }),
        tf(5, or(fc.constantFrom(s(""), s("10.77.0.9")))),
      )
      .map(([a, b, c, aliases, e]) => [a, b, c, ...aliases, e]),
    weight: 4,
  },
  {
    rpc: `${DISPATCHER}Detach`,
    style: "unary",
    fields: f(tf(1, or(fc.nat(5).map((i) => ref({ r: "endpoint", i }))))),
    weight: 3,
  },
  {
    rpc: `${DISPATCHER}Rename`,
    style: "unary",
    fields: fc
      .tuple(
        fc.array(tf(1, or(fc.nat(5).map((i) => ref({ r: "endpoint", i })))), { maxLength: 3 }),
        tf(2, or(fc.constantFrom(s("fz-renamed"), s("fz-ctr"), s("")))),
      )
      .map(([ids, name]) => [...ids, name]),
    weight: 2,
  },
];

// ---------------------------------------------------------------------------------------------------
// Raft messages (proto/raft.proto)

const arbRaftIdField = (n: number): fc.Arbitrary<PbField> =>
  fc.oneof(
    { arbitrary: arbRaftId.map((r): PbField => ({ f: n, t: "varint", v: { ref: r } })), weight: 4 },
    { arbitrary: arbOddU64.map((v) => uv(n, v)), weight: 1 },
  );

const arbU64Field = (n: number) => arbOddU64.map((v) => uv(n, v));

/** A store command the way the managers propose one: a 16-byte header, then the JSON. */
const arbEntryData: fc.Arbitrary<PbText> = fc.oneof(
  fc.uint8Array({ maxLength: 64 }).map((u): PbText => ({ bytes: [...u] })),
  fc
    .constantFrom<J>(
      j({ op: "cluster.update", version: 1, spec: {} }),
      j({ op: "network.remove", id: "x".repeat(25) }),
      j({ op: "node.remove", id: refOf({ r: "node", i: 0, form: "id" }) }),
      j({ op: "member.remove", raftId: 1 }),
    )
    .map((cmd): PbText => ({ framed: cmd })),
);

const arbEntry: fc.Arbitrary<PbField> = fc
  .tuple(
    arbU64Field(1),
    arbU64Field(2),
    fc.constantFrom(0n, 1n, 7n).map((v) => uv(3, v)),
    tf(4, arbEntryData),
  )
  .map((xs): PbField => ({ f: 7, t: "msg", v: xs }));

const arbConfState: fc.Arbitrary<PbField> = fc
  .tuple(fc.array(arbOddU64, { maxLength: 4 }), fc.array(arbOddU64, { maxLength: 2 }))
  .map(
    ([voters, learners]): PbField => ({
      f: 3,
      t: "msg",
      v: [
        { f: 1, t: "packed", v: voters },
        { f: 2, t: "packed", v: learners },
      ],
    }),
  );

const arbSnapshotChunk: fc.Arbitrary<PbField> = fc
  .tuple(
    arbU64Field(1),
    arbU64Field(2),
    arbConfState,
    arbU64Field(2),
    arbU64Field(3),
    fc.uint8Array({ maxLength: 128 }),
  )
  .map(
    ([idx, term, cs, off, total, data]): PbField => ({
      f: 12,
      t: "msg",
      v: [{ f: 1, t: "msg", v: [idx, term, cs] }, off, total, { f: 4, t: "text", v: { bytes: [...data] } }],
    }),
  );

/** Raft message types: the ones peers send, the local ones, and values no type has. */
const arbMsgType: fc.Arbitrary<bigint> = fc.oneof(
  { arbitrary: fc.constantFrom(3n, 4n, 5n, 6n, 7n, 8n, 9n, 10n, 11n, 12n, 13n, 14n, 15n, 16n, 19n, 20n), weight: 8 },
  { arbitrary: fc.constantFrom(0n, 1n, 2n, 17n, 18n), weight: 1 },
  { arbitrary: fc.constantFrom(21n, 1n << 31n, U64MAX), weight: 1 },
);

const arbRaftMessage: fc.Arbitrary<PbField[]> = fc
  .record({
    type: arbMsgType,
    from: arbRaftIdField(2),
    to: fc.oneof(arbRaftIdField(3), fc.constant(uv(3, 0n))),
    term: arbU64Field(4),
    logTerm: arbU64Field(5),
    index: arbU64Field(6),
    entries: fc.array(arbEntry, { maxLength: 3 }),
    commit: arbU64Field(8),
    reject: fc.boolean(),
    hint: sometimes(arbU64Field(10), 30),
    context: sometimes(tf(11, arbOddText), 20),
    snapshot: sometimes(arbSnapshotChunk, 20),
  })
  .map((m) => {
    const fields: PbField[] = [uv(1, m.type), m.from, m.to, m.term, m.logTerm, m.index, ...m.entries, m.commit];
    if (m.reject) fields.push(uv(9, 1n));
    if (m.hint) fields.push(m.hint);
    if (m.context) fields.push(m.context);
    if (m.snapshot) fields.push(m.snapshot);
    return fields;
  });

const raftRequest = arbRaftMessage.map((m): PbField[] => [{ f: 1, t: "msg", v: m }]);

const RAFT_RPCS: RpcSpec[] = [
  {
    rpc: `${RAFT}Ping`,
    style: "unary",
    fields: fc.tuple(arbRaftIdField(1), arbRaftIdField(2)).map((t) => [...t]),
    weight: 2,
  },
  { rpc: `${RAFT}ProcessRaftMessage`, style: "unary", fields: raftRequest, weight: 5 },
  { rpc: `${RAFT}StreamRaftMessage`, style: "clientStream", fields: raftRequest, weight: 5 },
];

// ---------------------------------------------------------------------------------------------------
// Field-level mutations of a message

type PbMut =
  | { op: "drop"; at: number }
  | { op: "dup"; at: number }
  | { op: "unknown"; field: PbField }
  | { op: "retype"; at: number; to: PbField["t"] };

const arbPbMut: fc.Arbitrary<PbMut> = fc.oneof(
  fc.record({ op: fc.constant("drop" as const), at: fc.nat() }),
  fc.record({ op: fc.constant("dup" as const), at: fc.nat() }),
  fc.record({
    op: fc.constant("unknown" as const),
    field: fc.oneof(
      fc.record({ f: fc.integer({ min: 13, max: 536_870_911 }), t: fc.constant("varint" as const), v: arbOddU64 }),
      fc.record({ f: fc.integer({ min: 13, max: 1000 }), t: fc.constant("text" as const), v: arbOddText }),
      fc.record({
        f: fc.integer({ min: 1, max: 20 }),
        t: fc.constant("badwire" as const),
        wire: fc.constantFrom(3 as const, 4 as const, 6 as const, 7 as const),
      }),
    ),
  }),
  fc.record({
    op: fc.constant("retype" as const),
    at: fc.nat(),
    to: fc.constantFrom("varint" as const, "text" as const, "fixed32" as const, "fixed64" as const),
  }),
);

function retype(x: PbField, to: PbField["t"]): PbField {
  switch (to) {
    case "varint":
      return { f: x.f, t: "varint", v: 7n };
    case "text":
      return { f: x.f, t: "text", v: { s: "retyped" } };
    case "fixed32":
      return { f: x.f, t: "fixed32", v: 7 };
    default:
      return { f: x.f, t: "fixed64", v: 7n };
  }
}

export function applyPbMuts(fields: PbField[], muts: PbMut[]): PbField[] {
  const out = [...fields];
  for (const m of muts) {
    if (m.op === "unknown") {
      out.push(m.field);
      continue;
    }
    if (out.length === 0) continue;
    const at = m.at % out.length;
    if (m.op === "drop") out.splice(at, 1);
    else if (m.op === "dup") out.push(out[at]!);
    else out[at] = retype(out[at]!, m.to);
  }
  return out;
}

const arbBytesMut: fc.Arbitrary<ByteMut> = fc.oneof(
  fc.record({ how: fc.constant("truncate" as const), frac: arbFraction }),
  fc.record({ how: fc.constant("flip" as const), positions: fc.array(fc.nat(), { minLength: 1, maxLength: 4 }) }),
  fc.record({ how: fc.constant("append" as const), text: fc.constantFrom("\u0000", "\u00ff\u00ff", "\u0008\u0080") }),
);

const arbIdentity: fc.Arbitrary<Identity> = fc.constantFrom("worker", "exManager", "none");

const arbMetadata: fc.Arbitrary<[string, string][]> = fc.oneof(
  { arbitrary: fc.constant([] as [string, string][]), weight: 12 },
  {
    arbitrary: fc.constantFrom<[string, string][]>(
      [["leader-addr", "127.0.0.9:1"]],
      [["x-junk", "x".repeat(7000)]],
      [["authorization", "Bearer x"]],
      [["grpc-timeout", "1n"]],
    ),
    weight: 1,
  },
);

function arbFromRpc(spec: RpcSpec): fc.Arbitrary<GrpcCase> {
  const message = fc
    .tuple(spec.fields, sometimes(fc.array(arbPbMut, { minLength: 1, maxLength: 3 }), 20))
    .map(([fields, muts]) => (muts ? applyPbMuts(fields, muts) : fields));
  return fc.record({
    kind: fc.constant("grpc" as const),
    identity: arbIdentity,
    daemon: fc.constantFrom(...MANAGERS),
    rpc: fc.constant(spec.rpc),
    style: fc.constant(spec.style),
    messages:
      spec.style === "clientStream" ? fc.array(message, { minLength: 1, maxLength: 5 }) : message.map((m) => [m]),
    bytes: sometimes(arbBytesMut, 12),
    metadata: arbMetadata,
    holdMs: fc.constantFrom(50, 200, 1000),
  });
}

/** A method no service has, with any bytes. */
const arbUnknownRpc: fc.Arbitrary<GrpcCase> = fc.record({
  kind: fc.constant("grpc" as const),
  identity: arbIdentity,
  daemon: fc.constantFrom(...MANAGERS),
  rpc: fc.constantFrom(
    "/shoal.cluster.Control/UpdateCluster",
    "/shoal.cluster.CA/Nope",
    "/grpc.health.v1.Health/Check",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/",
    "/x/y/z",
  ),
  style: fc.constant("unary" as const),
  messages: fc.uint8Array({ maxLength: 64 }).map((u): PbField[][] => [[{ f: 1, t: "text", v: { bytes: [...u] } }]]),
  metadata: arbMetadata,
  holdMs: fc.constant(50),
});

export const arbGrpcCase: fc.Arbitrary<GrpcCase> = fc.oneof(
  ...[...CLUSTER_RPCS, ...RAFT_RPCS].map((spec) => ({ arbitrary: arbFromRpc(spec), weight: spec.weight })),
  { arbitrary: arbUnknownRpc, weight: 1 },
);
