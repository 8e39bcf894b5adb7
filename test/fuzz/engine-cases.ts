// Engine API requests over the unix socket: every route shoald serves, starting from the bodies and
// queries the docker CLI sends (docs: /work/shared/reference/docker-cli-api.md), then mutated (wrong
// types, missing and extra fields, huge and deep values, odd numbers and unicode, broken JSON, wrong
// content types, odd methods and API versions), plus paths no route serves.

import fc from "fast-check";
import { applyMutations, arbFraction, arbMutation, arbWeird, type J, j, refOf, sometimes } from "./json.js";
import {
  arbNetRef,
  arbNodeRef,
  arbNodeVersion,
  arbSwarmVersion,
  arbToken,
  DAEMONS,
  MANAGERS,
  type Ref,
} from "./refs.js";

export type PathSeg = { lit: string; enc: boolean } | { ref: Ref; enc: boolean };
export type QVal = { lit: string } | { ref: Ref } | { json: J };

export type ByteMut =
  | { how: "truncate"; frac: number }
  | { how: "flip"; positions: number[] }
  | { how: "append"; text: string }
  | { how: "prepend"; text: string };

export type Body =
  | { b: "none" }
  | { b: "json"; v: J; mut?: ByteMut }
  | { b: "text"; text: string }
  | { b: "bytes"; bytes: number[] };

export interface EngineCase {
  kind: "engine";
  /** The route the case was built from (for the statistics). */
  route: string;
  daemon: number;
  method: string;
  /** "" (unversioned) or the version segment without the leading slash, e.g. "v1.50". */
  version: string;
  path: PathSeg[];
  query: [string, QVal][];
  contentType: string | null;
  headers: [string, string][];
  chunked: boolean;
  /** An upgrade request (attach, exec start). */
  upgrade: boolean;
  body: Body;
}

// ---------------------------------------------------------------------------------------------------
// Valid bodies, as the docker CLI 28 sends them

const SPEC = {
  Name: "default",
  Labels: {},
  Orchestration: { TaskHistoryRetentionLimit: 5 },
  Raft: {
    SnapshotInterval: 10000,
    KeepOldSnapshots: 0,
    LogEntriesForSlowFollowers: 500,
    ElectionTick: 10,
    HeartbeatTick: 1,
  },
  Dispatcher: { HeartbeatPeriod: 1_000_000_000 },
  CAConfig: { NodeCertExpiry: 7_776_000_000_000_000 },
  TaskDefaults: {},
  EncryptionConfig: { AutoLockManagers: false },
};

const NET_NAMES = ["fz-a", "fz-b", "fz-c", "fz-d", "fz-enc", "fz-int", "ingress", "fz.dot", "fz_under"];

const arbNetCreateBody: fc.Arbitrary<J> = fc
  .record({
    name: fc.oneof(fc.constantFrom(...NET_NAMES), fc.stringMatching(/^fz-[a-z0-9]{1,8}$/)),
    subnet: fc.option(fc.nat(15), { nil: undefined }),
    encrypted: fc.boolean(),
    attachable: fc.boolean(),
    internal: fc.boolean(),
    labels: fc.dictionary(fc.stringMatching(/^[a-z]{1,5}$/), fc.string({ maxLength: 8 }), { maxKeys: 3 }),
  })
  .map((r) =>
    j({
      Name: r.name,
      CheckDuplicate: true,
      Driver: "overlay",
      Scope: "swarm",
      EnableIPv6: false,
      IPAM: {
        Driver: "default",
        Options: {},
        Config: r.subnet === undefined ? [] : [{ Subnet: `10.77.${r.subnet}.0/24`, Gateway: `10.77.${r.subnet}.1` }],
      },
      Internal: r.internal,
      Attachable: r.attachable,
      Ingress: false,
      ConfigOnly: false,
      Options: r.encrypted ? { encrypted: "" } : {},
      Labels: r.labels,
    }),
  );

const CONTAINER_BASE = {
  Hostname: "",
  Domainname: "",
  User: "",
  AttachStdin: false,
  AttachStdout: true,
  AttachStderr: true,
  Tty: false,
  OpenStdin: false,
  StdinOnce: false,
  Env: [],
  Cmd: ["true"],
  Image: "fuzz-no-such-image",
  Volumes: {},
  WorkingDir: "",
  Entrypoint: null,
  OnBuild: null,
  Labels: {},
  HostConfig: { NetworkMode: "default", RestartPolicy: { Name: "no", MaximumRetryCount: 0 }, AutoRemove: false },
  NetworkingConfig: { EndpointsConfig: {} },
};

/** What shoal's runtime carries out of a container's config (-u, -v, --memory, --cpus, --restart), valid or not. */
const arbContainerBody: fc.Arbitrary<J> = fc
  .record({
    user: fc.constantFrom("", "1000", "1000:1000", "nobody", "root:root", "www", "x:y:z", "-1", "4294967296", ":"),
    binds: fc.constantFrom(
      [],
      ["/tmp:/mnt"],
      ["/tmp:/mnt:ro"],
      ["/tmp:/mnt:rw,z"],
      ["/no/such/dir:/x"],
      ["relative:/x"],
      ["/tmp:relative"],
      ["/tmp:/mnt:bogus"],
      ["/tmp"],
      [""],
      ["/a:/b:/c:/d"],
      ["/tmp:/mnt", "/tmp:/mnt"],
    ),
    memory: fc.constantFrom(0, 67_108_864, 1, -1, 2 ** 62, 2 ** 63),
    nanoCpus: fc.constantFrom(0, 500_000_000, 1, -1, 1e18),
    restart: fc.constantFrom("", "no", "always", "on-failure", "unless-stopped", "bogus", "Always"),
    retries: fc.constantFrom(0, 3, -1, 2 ** 40),
  })
  .map((r) =>
    j({
      ...CONTAINER_BASE,
      User: r.user,
      HostConfig: {
        ...CONTAINER_BASE.HostConfig,
        Binds: r.binds,
        Memory: r.memory,
        NanoCpus: r.nanoCpus,
        RestartPolicy: { Name: r.restart, MaximumRetryCount: r.retries },
      },
    }),
  );

/** Image names: none of them exists in the fuzz cluster (no image is ever loaded there, see safety.ts). */
const arbImageName: fc.Arbitrary<string> = fc.oneof(
  fc.constantFrom(
    "fuzz-no-such-image",
    "busybox",
    "busybox:latest",
    "fuzz/img:1",
    "127.0.0.1:9/fuzz/img:1",
    "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "x@sha256:zz",
    "UPPER",
    "a:b:c",
    "0123456789ab",
    "-x",
    "a".repeat(300),
  ),
  fc.stringMatching(/^[a-z0-9]{1,8}(\/[a-z0-9]{1,8})?(:[a-z0-9.]{1,8})?$/),
);
const imageSeg: fc.Arbitrary<PathSeg> = arbImageName.map((lit) => ({ lit, enc: true }));

/** `docker load` bodies: a tar header that ends early, junk, gzip magic, an empty archive, a manifest with no blobs. */
const arbLoadBody: fc.Arbitrary<Body> = fc.oneof(
  fc.constant<Body>({ b: "none" }),
  fc.constant<Body>({ b: "bytes", bytes: Array.from({ length: 1024 }, () => 0) }),
  fc.constant<Body>({ b: "bytes", bytes: [0x1f, 0x8b, 8, 0, 0, 0, 0, 0] }),
  fc.uint8Array({ maxLength: 600 }).map((u): Body => ({ b: "bytes", bytes: [...u] })),
  fc
    .constantFrom("manifest.json", "index.json", "oci-layout", "../etc/x", "/abs")
    .chain((name) =>
      fc
        .oneof(
          fc.jsonValue({ maxDepth: 3 }),
          fc.constant([{ Config: "x.json", RepoTags: ["a:b"], Layers: ["l/layer.tar"] }]),
        )
        .map((v): Body => ({ b: "bytes", bytes: [...tarOne(name, Buffer.from(JSON.stringify(v)))] })),
    ),
);

/** One file in a ustar archive (and the two zero blocks that end it). */
function tarOne(name: string, data: Buffer): Buffer {
  const h = Buffer.alloc(512);
  h.write(name.slice(0, 99), 0, "utf8");
  h.write("0000644\0", 100);
  h.write("0000000\0", 108);
  h.write("0000000\0", 116);
  h.write(`${data.length.toString(8).padStart(11, "0")}\0`, 124);
  h.write("00000000000\0", 136);
  h.write("        ", 148);
  h.write("0", 156);
  h.write("ustar\u000000", 257);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148);
  const pad = Buffer.alloc((512 - (data.length % 512)) % 512);
  return Buffer.concat([h, data, pad, Buffer.alloc(1024)]);
}

// ---------------------------------------------------------------------------------------------------
// Query values

const bools = fc.oneof(
  { arbitrary: fc.constantFrom("0", "1", "true", "false"), weight: 4 },
  { arbitrary: fc.constantFrom("True", "yes", "", "2", "-1", "on", "t", "FALSE"), weight: 1 },
);
const q = (lit: string): QVal => ({ lit });
const qArb = (a: fc.Arbitrary<string>): fc.Arbitrary<QVal> => a.map(q);

const NODE_FILTERS = [
  { role: { manager: true } },
  { role: { worker: true } },
  { membership: { accepted: true } },
  { name: { node1: true } },
  { label: { a: true } },
  { "node.label": { "a=b": true } },
  { id: { abc: true } },
  { role: ["manager"] },
  { bogus: { x: true } },
  { role: { manager: "yes" } },
];
const NET_FILTERS = [
  { driver: { overlay: true } },
  { type: { custom: true } },
  { type: { builtin: true } },
  { type: { other: true } },
  { scope: { swarm: true } },
  { dangling: { true: true } },
  { dangling: { maybe: true } },
  { name: { "fz-": true } },
  { label: { "a=b": true } },
  { driver: ["overlay"] },
  { bogus: { x: true } },
];

const arbFilters = (choices: object[]): fc.Arbitrary<QVal> =>
  fc.oneof(
    { arbitrary: fc.constantFrom(...choices).map((f) => ({ json: j(f) })), weight: 5 },
    {
      arbitrary: fc
        .tuple(fc.constantFrom(...choices), fc.array(arbMutation, { minLength: 1, maxLength: 2 }))
        .map(([f, m]) => ({ json: applyMutations(j(f), m) })),
      weight: 3,
    },
    { arbitrary: qArb(fc.constantFrom("", "{", "null", "[]", "{}", '{"a":', "%7B")), weight: 1 },
  );

interface QuerySpec {
  [key: string]: fc.Arbitrary<QVal>;
}

/** The route's known keys, each present or not; then, sometimes, odd values and keys. */
function arbQuery(spec: QuerySpec): fc.Arbitrary<[string, QVal][]> {
  const keys = Object.keys(spec);
  const known = fc.tuple(
    ...keys.map((k) =>
      fc.option(
        spec[k]!.map((v): [string, QVal] => [k, v]),
        { nil: undefined, freq: 3 },
      ),
    ),
  );
  const extra = fc.array(
    fc.tuple(
      fc.oneof(fc.constantFrom(...keys, "force", "version", "filters", "X"), fc.string({ maxLength: 6 })),
      fc.oneof(
        qArb(fc.string({ maxLength: 20 })),
        qArb(fc.constantFrom("%", "%zz", "%00", "a%20b", "&", "=", "9007199254740993", "-1", "1e3", "0x10")),
        fc.constant(q("x".repeat(9000))),
      ),
    ),
    { maxLength: 2 },
  );
  return fc
    .tuple(known, sometimes(extra, 15))
    .map(([k, e]) => [...(k.filter((x) => x !== undefined) as [string, QVal][]), ...(e ?? [])]);
}

// ---------------------------------------------------------------------------------------------------
// Routes

/** A fixed segment, or a generated one (a reference to the cluster, or a container name). */
type SegSpec = string | fc.Arbitrary<PathSeg>;

interface RouteSpec {
  name: string;
  method: string;
  path: SegSpec[];
  query?: QuerySpec;
  body?: fc.Arbitrary<J>;
  /** A body that is not JSON (an image archive). */
  rawBody?: fc.Arbitrary<Body>;
  upgrade?: boolean;
  weight: number;
}

/** No container ever exists in the fuzz cluster (see safety.ts): these name ones that do not. */
const arbContainerRef = fc.oneof(fc.stringMatching(/^[0-9a-f]{1,64}$/), fc.constantFrom("c1", "fuzz", "self", "host"));
const containerSeg: fc.Arbitrary<PathSeg> = arbContainerRef.map((lit) => ({ lit, enc: true }));
const refSeg = (a: fc.Arbitrary<Ref>): fc.Arbitrary<PathSeg> => a.map((ref) => ({ ref, enc: true }));
const nodeSeg = refSeg(arbNodeRef);
const netSeg = refSeg(arbNetRef);

const t = (v: unknown): fc.Arbitrary<J> => fc.constant(j(v));

export const ROUTES: RouteSpec[] = [
  { name: "ping", method: "GET", path: ["_ping"], weight: 2 },
  { name: "ping-head", method: "HEAD", path: ["_ping"], weight: 1 },
  { name: "version", method: "GET", path: ["version"], weight: 1 },
  { name: "info", method: "GET", path: ["info"], weight: 2 },
  { name: "swarm-inspect", method: "GET", path: ["swarm"], weight: 2 },
  {
    name: "swarm-init",
    method: "POST",
    path: ["swarm", "init"],
    body: t({
      ListenAddr: "0.0.0.0:2377",
      AdvertiseAddr: refOf({ r: "clusterAddr", daemon: 1 }),
      DataPathAddr: "",
      DataPathPort: 0,
      Spec: SPEC,
      DefaultAddrPool: [],
      SubnetSize: 0,
      Availability: "active",
    }),
    weight: 3,
  },
  {
    name: "swarm-join",
    method: "POST",
    path: ["swarm", "join"],
    body: arbToken.map((tok) =>
      j({
        ListenAddr: "0.0.0.0:2377",
        AdvertiseAddr: "",
        DataPathAddr: "",
        RemoteAddrs: [refOf({ r: "clusterAddr", daemon: 1 })],
        JoinToken: refOf(tok),
        Availability: "active",
      }),
    ),
    weight: 3,
  },
  { name: "swarm-leave", method: "POST", path: ["swarm", "leave"], query: { force: qArb(bools) }, weight: 2 },
  {
    name: "swarm-update",
    method: "POST",
    path: ["swarm", "update"],
    query: {
      version: fc.oneof(
        arbSwarmVersion.map((r): QVal => ({ ref: r })),
        qArb(fc.constantFrom("", "-1", "abc", "1.5")),
      ),
      rotateWorkerToken: qArb(bools),
      rotateManagerToken: qArb(bools),
      rotateManagerUnlockKey: qArb(bools),
    },
    body: t(SPEC),
    weight: 8,
  },
  {
    name: "swarm-unlock",
    method: "POST",
    path: ["swarm", "unlock"],
    body: fc.constantFrom(
      j({ UnlockKey: refOf({ r: "unlockKey" }) }),
      j({ UnlockKey: "SWMKEY-1-abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG" }),
    ),
    weight: 1,
  },
  { name: "swarm-unlockkey", method: "GET", path: ["swarm", "unlockkey"], weight: 1 },
  { name: "node-ls", method: "GET", path: ["nodes"], query: { filters: arbFilters(NODE_FILTERS) }, weight: 3 },
  { name: "node-inspect", method: "GET", path: ["nodes", nodeSeg], weight: 3 },
  { name: "node-rm", method: "DELETE", path: ["nodes", nodeSeg], query: { force: qArb(bools) }, weight: 2 },
  { name: "net-ls", method: "GET", path: ["networks"], query: { filters: arbFilters(NET_FILTERS) }, weight: 3 },
  { name: "net-ls-slash", method: "GET", path: ["networks", ""], weight: 1 },
  { name: "net-create", method: "POST", path: ["networks", "create"], body: arbNetCreateBody, weight: 12 },
  {
    name: "net-prune",
    method: "POST",
    path: ["networks", "prune"],
    query: { filters: arbFilters(NET_FILTERS) },
    weight: 1,
  },
  {
    name: "net-inspect",
    method: "GET",
    path: ["networks", netSeg],
    query: { verbose: qArb(bools), scope: qArb(fc.constantFrom("swarm", "local", "global", "x")) },
    weight: 3,
  },
  { name: "net-rm", method: "DELETE", path: ["networks", netSeg], weight: 4 },
  {
    name: "net-connect",
    method: "POST",
    path: ["networks", netSeg, "connect"],
    body: arbContainerRef.map((c) =>
      j({ Container: c, EndpointConfig: { IPAMConfig: { IPv4Address: "10.77.0.5" }, Aliases: ["a1"] } }),
    ),
    weight: 2,
  },
  {
    name: "net-disconnect",
    method: "POST",
    path: ["networks", netSeg, "disconnect"],
    body: arbContainerRef.map((c) => j({ Container: c, Force: false })),
    weight: 2,
  },
  {
    name: "ctr-create",
    method: "POST",
    path: ["containers", "create"],
    query: { name: qArb(fc.constantFrom("c1", "fz-ctr", "", "/x", "a b", "..")) },
    body: fc.oneof(t(CONTAINER_BASE), arbContainerBody),
    weight: 3,
  },
  {
    name: "ctr-ls",
    method: "GET",
    path: ["containers", "json"],
    query: {
      all: qArb(bools),
      limit: qArb(fc.constantFrom("-1", "0", "5", "x", "9007199254740993")),
      filters: arbFilters([{ status: { running: true } }, { name: { c1: true } }, { bogus: { x: true } }]),
    },
    weight: 1,
  },
  { name: "ctr-inspect", method: "GET", path: ["containers", containerSeg, "json"], weight: 1 },
  { name: "ctr-start", method: "POST", path: ["containers", containerSeg, "start"], weight: 1 },
  {
    name: "ctr-stop",
    method: "POST",
    path: ["containers", containerSeg, "stop"],
    query: {
      t: qArb(fc.constantFrom("1", "-1", "x", "99999999999")),
      signal: qArb(fc.constantFrom("TERM", "X", "99")),
    },
    weight: 1,
  },
  { name: "ctr-restart", method: "POST", path: ["containers", containerSeg, "restart"], weight: 1 },
  {
    name: "ctr-kill",
    method: "POST",
    path: ["containers", containerSeg, "kill"],
    query: { signal: qArb(fc.constantFrom("KILL", "SIGTERM", "0", "99", "")) },
    weight: 1,
  },
  {
    name: "ctr-wait",
    method: "POST",
    path: ["containers", containerSeg, "wait"],
    query: { condition: qArb(fc.constantFrom("not-running", "next-exit", "removed", "bogus")) },
    weight: 1,
  },
  {
    name: "ctr-resize",
    method: "POST",
    path: ["containers", containerSeg, "resize"],
    query: { h: qArb(fc.constantFrom("24", "-1", "x", "70000")), w: qArb(fc.constantFrom("80", "0")) },
    weight: 1,
  },
  {
    name: "ctr-rm",
    method: "DELETE",
    path: ["containers", containerSeg],
    query: { force: qArb(bools), v: qArb(bools), link: qArb(bools) },
    weight: 1,
  },
  {
    name: "ctr-logs",
    method: "GET",
    path: ["containers", containerSeg, "logs"],
    query: {
      stdout: qArb(bools),
      stderr: qArb(bools),
      follow: qArb(fc.constantFrom("0", "false")),
      tail: qArb(fc.constantFrom("all", "10", "-5", "x")),
      since: qArb(fc.constantFrom("0", "1700000000.5", "x", "-1")),
      timestamps: qArb(bools),
    },
    weight: 1,
  },
  {
    name: "ctr-attach",
    method: "POST",
    path: ["containers", containerSeg, "attach"],
    query: { stream: qArb(bools), stdin: qArb(bools), stdout: qArb(bools), stderr: qArb(bools), logs: qArb(bools) },
    upgrade: true,
    weight: 1,
  },
  {
    name: "exec-create",
    method: "POST",
    path: ["containers", containerSeg, "exec"],
    body: t({ AttachStdin: false, AttachStdout: true, AttachStderr: true, Tty: false, Cmd: ["true"], Env: [] }),
    weight: 1,
  },
  {
    name: "exec-start",
    method: "POST",
    path: ["exec", containerSeg, "start"],
    body: t({ Detach: false, Tty: false }),
    upgrade: true,
    weight: 1,
  },
  { name: "exec-resize", method: "POST", path: ["exec", containerSeg, "resize"], weight: 1 },
  { name: "exec-inspect", method: "GET", path: ["exec", containerSeg, "json"], weight: 1 },
  { name: "services", method: "GET", path: ["services"], weight: 1 },
  { name: "service-create", method: "POST", path: ["services", "create"], body: t({ Name: "s" }), weight: 1 },
  { name: "tasks", method: "GET", path: ["tasks"], weight: 1 },
  { name: "secrets", method: "GET", path: ["secrets"], weight: 1 },
  { name: "configs", method: "POST", path: ["configs", "create"], body: t({ Name: "c", Data: "" }), weight: 1 },
  {
    name: "images-ls",
    method: "GET",
    path: ["images", "json"],
    query: {
      all: qArb(bools),
      filters: arbFilters([
        { reference: { busybox: true } },
        { reference: { "b*:1*": true } },
        { dangling: { true: true } },
        { label: { "a=b": true } },
        { before: { x: true } },
        { bogus: { x: true } },
      ]),
    },
    weight: 2,
  },
  { name: "image-inspect", method: "GET", path: ["images", imageSeg, "json"], weight: 2 },
  {
    name: "image-tag",
    method: "POST",
    path: ["images", imageSeg, "tag"],
    query: {
      repo: qArb(fc.constantFrom("fuzz/tagged", "", "UPPER", "a b", "x".repeat(300))),
      tag: qArb(fc.constantFrom("1", "", "latest", "-x", "a:b")),
    },
    weight: 1,
  },
  {
    name: "image-rm",
    method: "DELETE",
    path: ["images", imageSeg],
    query: { force: qArb(bools), noprune: qArb(bools) },
    weight: 1,
  },
  { name: "image-save", method: "GET", path: ["images", imageSeg, "get"], weight: 1 },
  {
    name: "images-save",
    method: "GET",
    path: ["images", "get"],
    query: { names: qArb(arbImageName) },
    weight: 1,
  },
  {
    name: "images-load",
    method: "POST",
    path: ["images", "load"],
    query: { quiet: qArb(bools) },
    rawBody: arbLoadBody,
    weight: 2,
  },
  {
    name: "images-create",
    method: "POST",
    path: ["images", "create"],
    query: {
      fromImage: qArb(arbImageName),
      tag: qArb(fc.constantFrom("latest", "", "1", "sha256:00", "a/b")),
      fromSrc: qArb(fc.constantFrom("-", "http://127.0.0.1:9/x")),
    },
    weight: 2,
  },
  { name: "system-df", method: "GET", path: ["system", "df"], weight: 1 },
  { name: "plugins", method: "GET", path: ["plugins"], weight: 1 },
];

/**
 * Node update: the version in the query is the version of the node in the path (until mutated). The
 * role is the node's own (safety.ts keeps it so): a valid demotion is not an attack.
 */
const arbNodeUpdate: fc.Arbitrary<EngineCase> = fc
  .record({
    i: fc.nat(6),
    form: arbNodeRef,
    delta: arbNodeVersion(fc.constant(0)),
    role: fc.constantFrom("manager", "worker", "Manager", "MANAGER", ""),
    availability: fc.constantFrom("active", "active", "pause", "drain", "Drain", "", "bogus"),
    labels: fc.dictionary(fc.stringMatching(/^[a-z.]{1,6}$/), fc.string({ maxLength: 10 }), { maxKeys: 3 }),
  })
  .chain((r) => {
    const nodeRef = { ...(r.form as Extract<Ref, { r: "node" }>), i: r.i };
    const versionRef = { ...(r.delta as Extract<Ref, { r: "nodeVersion" }>), i: r.i };
    const route: RouteSpec = {
      name: "node-update",
      method: "POST",
      path: ["nodes", fc.constant<PathSeg>({ ref: nodeRef, enc: true }), "update"],
      query: {
        version: fc.oneof(
          { arbitrary: fc.constant<QVal>({ ref: versionRef }), weight: 8 },
          { arbitrary: qArb(fc.constantFrom("", "-1", "x", "9007199254740993")), weight: 1 },
        ),
      },
      body: fc.constant(j({ Name: "", Labels: r.labels, Role: r.role, Availability: r.availability })),
      weight: 0,
    };
    return arbFromRoute(route);
  });

// ---------------------------------------------------------------------------------------------------
// Mutating a valid request

const arbMethod = (m: string): fc.Arbitrary<string> =>
  fc.oneof(
    { arbitrary: fc.constant(m), weight: 18 },
    {
      arbitrary: fc.constantFrom("GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "get", "FOO", "CONNECT"),
      weight: 2,
    },
  );

const arbVersion: fc.Arbitrary<string> = fc.oneof(
  { arbitrary: fc.constant("v1.50"), weight: 10 },
  { arbitrary: fc.constant(""), weight: 3 },
  { arbitrary: fc.constantFrom("v1.24", "v1.41", "v1.44", "v1.47", "v1.49"), weight: 3 },
  {
    arbitrary: fc.constantFrom(
      "v1.12",
      "v1.51",
      "v2.0",
      "v0",
      "v1",
      "v-1.24",
      "v1.50.1",
      "v01.50",
      "v1.999999999999999999999",
      "v9007199254740993.0",
      "v.",
      "v1..50",
    ),
    weight: 2,
  },
);

const arbWeirdSeg: fc.Arbitrary<PathSeg> = fc.oneof(
  fc.constantFrom(
    { lit: "", enc: false },
    { lit: "..", enc: false },
    { lit: "%2e%2e", enc: false },
    { lit: "%00", enc: false },
    { lit: "%zz", enc: false },
    { lit: "%", enc: false },
    { lit: "a%2Fb", enc: false },
    { lit: "self", enc: false },
    { lit: "x".repeat(300), enc: false },
    { lit: "x".repeat(20_000), enc: false },
    { lit: "é", enc: false },
    { lit: "\u{1f600}", enc: true },
    { lit: "a b", enc: false },
  ),
  fc.string({ unit: "grapheme", maxLength: 30 }).map((s) => ({ lit: s, enc: true })),
  fc.string({ unit: "binary", maxLength: 30 }).map((s) => ({ lit: s, enc: true })),
);

function arbSeg(spec: SegSpec): fc.Arbitrary<PathSeg> {
  if (typeof spec === "string") {
    return fc.oneof(
      { arbitrary: fc.constant({ lit: spec, enc: false }), weight: 30 },
      { arbitrary: arbWeirdSeg, weight: 1 },
    );
  }
  return fc.oneof({ arbitrary: spec, weight: 8 }, { arbitrary: arbWeirdSeg, weight: 2 });
}

const arbContentType: fc.Arbitrary<string | null> = fc.oneof(
  { arbitrary: fc.constant("application/json"), weight: 16 },
  {
    arbitrary: fc.constantFrom(
      null,
      "application/json; charset=utf-8",
      "text/plain",
      "application/x-www-form-urlencoded",
      "application/JSON",
      "multipart/form-data; boundary=x",
      "",
      "application/json, text/plain",
      "\u00e9",
    ),
    weight: 3,
  },
);

const arbHeaders: fc.Arbitrary<[string, string][]> = fc.oneof(
  { arbitrary: fc.constant([] as [string, string][]), weight: 20 },
  {
    arbitrary: fc.constantFrom<[string, string][]>(
      [["X-Junk", "x".repeat(8000)]],
      [["X-Junk", "x".repeat(70_000)]],
      [["Expect", "100-continue"]],
      [["Content-Type", "text/plain"]],
      [["Transfer-Encoding", "gzip"]],
      [["Content-Encoding", "gzip"]],
      [["Host", ""]],
      [["X-Registry-Auth", "e30="]],
      [["X-Registry-Auth", "!!notbase64"]],
    ),
    weight: 1,
  },
);

const arbByteMut: fc.Arbitrary<ByteMut> = fc.oneof(
  fc.record({ how: fc.constant("truncate" as const), frac: arbFraction }),
  fc.record({ how: fc.constant("flip" as const), positions: fc.array(fc.nat(), { minLength: 1, maxLength: 4 }) }),
  fc.record({ how: fc.constant("append" as const), text: fc.constantFrom("}", "{}", " x", "\u0000", ",", "]") }),
  fc.record({ how: fc.constant("prepend" as const), text: fc.constantFrom("\ufeff", " ", "[", "x") }),
);

function arbBody(template: fc.Arbitrary<J> | undefined): fc.Arbitrary<Body> {
  const base = template ?? fc.constant(j({}));
  const valid = base.map((v): Body => ({ b: "json", v }));
  const mutated = fc
    .tuple(base, fc.array(arbMutation, { minLength: 1, maxLength: 4 }), sometimes(arbByteMut, 12))
    .map(
      ([v, muts, mut]): Body =>
        mut ? { b: "json", v: applyMutations(v, muts), mut } : { b: "json", v: applyMutations(v, muts) },
    );
  const others = fc.oneof(
    fc.jsonValue({ maxDepth: 4 }).map((v): Body => ({ b: "json", v: j(v) })),
    arbWeird.map((v): Body => ({ b: "json", v })),
    fc.string({ maxLength: 200 }).map((text): Body => ({ b: "text", text })),
    fc.uint8Array({ maxLength: 200 }).map((u): Body => ({ b: "bytes", bytes: [...u] })),
    fc.constant<Body>({ b: "none" }),
  );
  if (template === undefined) {
    return fc.oneof({ arbitrary: fc.constant<Body>({ b: "none" }), weight: 10 }, { arbitrary: others, weight: 1 });
  }
  return fc.oneof({ arbitrary: valid, weight: 4 }, { arbitrary: mutated, weight: 6 }, { arbitrary: others, weight: 2 });
}

const arbDaemon: fc.Arbitrary<number> = fc.oneof(
  { arbitrary: fc.constantFrom(...MANAGERS), weight: 8 },
  { arbitrary: fc.constantFrom(...DAEMONS), weight: 2 },
);

function arbFromRoute(route: RouteSpec): fc.Arbitrary<EngineCase> {
  return fc
    .record({
      daemon: arbDaemon,
      method: arbMethod(route.method),
      version: arbVersion,
      path: fc.tuple(...route.path.map(arbSeg)),
      query: arbQuery(route.query ?? {}),
      contentType: arbContentType,
      headers: arbHeaders,
      chunked: fc.oneof({ arbitrary: fc.constant(false), weight: 9 }, { arbitrary: fc.constant(true), weight: 1 }),
      upgrade: route.upgrade ? fc.boolean() : fc.constant(false),
      body: route.rawBody ?? arbBody(route.body),
    })
    .map((r) => ({ kind: "engine" as const, route: route.name, ...r, path: [...r.path] }));
}

/** Requests built from the named route alone (valid, mutated, or another body), for in-process tests. */
export function arbRouteCase(name: string): fc.Arbitrary<EngineCase> {
  const route = ROUTES.find((r) => r.name === name);
  if (route) return arbFromRoute(route);
  if (name === "node-update") return arbNodeUpdate;
  throw new Error(`no route named ${name}`);
}

/** Paths no route serves (dockerd answers them 404 "page not found"). */
const arbUnknown: fc.Arbitrary<EngineCase> = fc
  .record({
    segs: fc.array(arbWeirdSeg, { minLength: 1, maxLength: 4 }),
    method: arbMethod("GET"),
  })
  .chain(({ segs, method }) =>
    arbFromRoute({ name: "unknown", method, path: segs.map((s) => fc.constant(s)), weight: 0 }),
  );

/** An Engine API request: from a route's valid request, mutated, or a path no route serves. */
export const arbEngineCase: fc.Arbitrary<EngineCase> = fc.oneof(
  ...ROUTES.map((r) => ({ arbitrary: arbFromRoute(r), weight: r.weight })),
  { arbitrary: arbNodeUpdate, weight: 8 },
  { arbitrary: arbUnknown, weight: 2 },
);
