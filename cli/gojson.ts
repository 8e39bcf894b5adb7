// Go-shaped values and Go's encoding/json output, so that what shoal prints and sends is byte-for-byte what
// the docker CLI prints and sends. Docker decodes the daemon's JSON into its Go structs and encodes those
// again: field order is the struct's, `omitempty` fields drop out when zero, structs never do, map keys are
// sorted, and <, >, & are escaped as \u003c, \u003e, \u0026. This module models just enough of that.

/** A Go struct: fields in declaration order. `omit` marks an `omitempty` field whose value is zero. */
export class GoStruct {
  constructor(
    readonly typeName: string,
    readonly fields: readonly GoField[],
    /** A MarshalJSON method: what encoding/json writes instead of the fields. */
    readonly marshal?: () => GoValue,
    /** A String method: what fmt prints instead of the fields. */
    readonly stringer?: () => string,
  ) {}
  /** A field by name, including the promoted fields of embedded structs. */
  get(name: string): GoField | undefined {
    const own = this.fields.find((f) => f.name === name && !f.embedded);
    if (own) return own;
    for (const f of this.fields) {
      if (f.embedded && f.value instanceof GoStruct) {
        const inner = f.value.get(name);
        if (inner) return inner;
      }
    }
    return undefined;
  }
  /** The fields encoding/json writes: embedded structs' fields inline, zero `omitempty` fields left out. */
  jsonFields(): [string, GoValue][] {
    return this.fields.flatMap((f): [string, GoValue][] => {
      if (f.embedded && f.value instanceof GoStruct) return f.value.jsonFields();
      return f.omit ? [] : [[f.name, f.value]];
    });
  }
}

export interface GoField {
  name: string;
  value: GoValue;
  omit: boolean;
  /** For a pointer field: the type pointed to (text/template names it when the pointer is nil). */
  ptrType?: string;
  /** An embedded struct (swarm.Meta in Node, Annotations in NodeSpec): its fields are promoted. */
  embedded?: boolean;
}

/** A Go map[string]T: entries sorted by key, as encoding/json and text/template order them. */
export class GoMap {
  readonly entries: readonly [string, GoValue][];
  constructor(entries: Iterable<[string, GoValue]>) {
    this.entries = [...entries].sort((a, b) => Buffer.compare(Buffer.from(a[0]), Buffer.from(b[0])));
  }
  get(key: string): GoValue | undefined {
    return this.entries.find(([k]) => k === key)?.[1];
  }
}

/** A time.Time, kept as its RFC 3339 text (what encoding/json writes). */
export class GoTime {
  constructor(readonly rfc3339: string) {}
}

/** A []byte: encoding/json writes it as base64, fmt as a list of numbers. */
export class GoBytes {
  constructor(readonly base64: string) {}
}

export type GoValue = string | number | boolean | null | GoValue[] | GoStruct | GoMap | GoTime | GoBytes;

/** True for the values `omitempty` drops: false, 0, "", nil, and empty slices and maps. Structs never. */
export function isEmptyValue(v: GoValue): boolean {
  if (v === null || v === false || v === 0 || v === "") return true;
  if (Array.isArray(v)) return v.length === 0;
  if (v instanceof GoMap) return v.entries.length === 0;
  if (v instanceof GoBytes) return v.base64 === "";
  return false;
}

/** A field; `omitempty` fields are marked to be left out when their value is zero. */
export function field(name: string, value: GoValue, omitempty = false, ptrType?: string): GoField {
  // A pointer is empty only when nil: a *int64 holding 0 is still written.
  const empty = ptrType ? value === null : isEmptyValue(value);
  const f: GoField = { name, value, omit: omitempty && empty };
  if (ptrType) f.ptrType = ptrType;
  return f;
}

/** An embedded struct field. */
export function embed(value: GoStruct): GoField {
  return { name: value.typeName.replace(/^.*\./, ""), value, omit: false, embedded: true };
}

// ---- encoding ------------------------------------------------------------------------------------------

function quote(s: string, escapeHTML: boolean): string {
  let out = JSON.stringify(s)
    // Go decodes a lone surrogate to U+FFFD and writes that rune as it is.
    .replace(/\\ud[89a-f][0-9a-f]{2}/g, "\ufffd")
    .replace(/\u2028/g, "\\u2028")
    .replace(/\u2029/g, "\\u2029");
  if (escapeHTML) out = out.replace(/</g, "\\u003c").replace(/>/g, "\\u003e").replace(/&/g, "\\u0026");
  return out;
}

export interface EncodeOptions {
  /** Indent unit (json.MarshalIndent); compact when absent. */
  indent?: string;
  /** encoding/json escapes <, > and & unless an Encoder turns it off (docker's template `json` does). */
  escapeHTML?: boolean;
}

/** Encode like Go's encoding/json. */
export function encodeGo(value: GoValue, opts: EncodeOptions = {}): string {
  const escapeHTML = opts.escapeHTML ?? true;
  const indent = opts.indent;
  const enc = (v: GoValue, depth: number): string => {
    if (v === null) return "null";
    if (typeof v === "string") return quote(v, escapeHTML);
    if (typeof v === "number") return Number.isFinite(v) ? String(v) : "null";
    if (typeof v === "boolean") return v ? "true" : "false";
    if (v instanceof GoTime) return quote(v.rfc3339, escapeHTML);
    if (v instanceof GoBytes) return quote(v.base64, escapeHTML);
    if (v instanceof GoStruct && v.marshal) return enc(v.marshal(), depth);
    let pairs: string[];
    let open: string;
    let close: string;
    if (Array.isArray(v)) {
      if (v.length === 0) return "[]";
      pairs = v.map((x) => enc(x, depth + 1));
      open = "[";
      close = "]";
    } else {
      const entries: [string, GoValue][] = v instanceof GoMap ? [...v.entries] : v.jsonFields();
      if (entries.length === 0) return "{}";
      const sep = indent === undefined ? ":" : ": ";
      pairs = entries.map(([k, x]) => `${quote(k, escapeHTML)}${sep}${enc(x, depth + 1)}`);
      open = "{";
      close = "}";
    }
    if (indent === undefined) return open + pairs.join(",") + close;
    const inner = indent.repeat(depth + 1);
    return `${open}\n${inner}${pairs.join(`,\n${inner}`)}\n${indent.repeat(depth)}${close}`;
  };
  return enc(value, 0);
}

/** A request body as the docker CLI's json.Encoder writes it: compact, HTML-escaped, newline-terminated. */
export function requestBody(value: GoValue): string {
  return `${encodeGo(value)}\n`;
}

// ---- reading untyped JSON defensively -------------------------------------------------------------------

type Json = unknown;

function isObject(v: Json): v is Record<string, Json> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
const obj = (v: Json): Record<string, Json> => (isObject(v) ? v : {});
const str = (v: Json): string => (typeof v === "string" ? v : "");
const num = (v: Json): number => (typeof v === "number" ? v : 0);
const bool = (v: Json): boolean => v === true;
const arr = (v: Json): Json[] => (Array.isArray(v) ? v : []);
const optNum = (v: Json): number | null => (typeof v === "number" ? v : null);

/** map[string]string: null when absent (a nil map), sorted otherwise. */
function stringMap(v: Json): GoMap | null {
  if (!isObject(v)) return null;
  return new GoMap(Object.entries(v).map(([k, x]) => [k, str(x)]));
}

/**
 * time.Time from RFC 3339 text, written back the way Go writes it: up to nine fraction digits without
 * trailing zeros, and "Z" for a zero offset. The zero time when absent.
 */
export function goTime(v: Json): GoTime {
  const s = typeof v === "string" ? v : "0001-01-01T00:00:00Z";
  const m = /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|z|[+-]\d{2}:\d{2})$/.exec(s);
  if (!m) return new GoTime(s);
  const frac = (m[2] ?? "").slice(0, 9).replace(/0+$/, "");
  const zone = m[3] === "z" || m[3] === "+00:00" || m[3] === "-00:00" ? "Z" : m[3]!;
  return new GoTime(`${m[1]}${frac ? `.${frac}` : ""}${zone}`);
}

/**
 * Go's time.Time.String(): "2006-01-02 15:04:05.999999999 -0700 MST". A zero offset is UTC; other offsets
 * print as a nameless fixed zone ("+0200 +0200"), as Go does for offsets that are not the local zone's.
 */
export function goTimeString(t: GoTime): string {
  const m = /^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})$/.exec(t.rfc3339);
  if (!m) return t.rfc3339;
  const frac = m[3] ? `.${m[3]}` : "";
  const zone = m[4] === "Z" ? "+0000 UTC" : `${m[4]!.replace(":", "")} ${m[4]!.replace(":", "")}`;
  return `${m[1]} ${m[2]}${frac} ${zone}`;
}

// ---- the docker API structs shoal prints or sends -------------------------------------------------------

/** swarm.Version */
function version(v: Json): GoStruct {
  const index = num(obj(v).Index);
  return new GoStruct("swarm.Version", [field("Index", index, true)], undefined, () => String(index));
}

/** swarm.NodeSpec (Annotations embedded: Name, Labels). */
export function goNodeSpec(v: Json): GoStruct {
  const s = obj(v);
  return new GoStruct("swarm.NodeSpec", [
    embed(new GoStruct("swarm.Annotations", [field("Name", str(s.Name), true), field("Labels", stringMap(s.Labels))])),
    field("Role", str(s.Role), true),
    field("Availability", str(s.Availability), true),
  ]);
}

function tlsInfo(v: Json): GoStruct {
  const t = obj(v);
  return new GoStruct("swarm.TLSInfo", [
    field("TrustRoot", str(t.TrustRoot), true),
    field("CertIssuerSubject", new GoBytes(str(t.CertIssuerSubject)), true),
    field("CertIssuerPublicKey", new GoBytes(str(t.CertIssuerPublicKey)), true),
  ]);
}

/** Values shoal does not model are carried through as they came (maps sorted), so nothing is lost. */
function passthrough(v: Json): GoValue {
  if (v === null || v === undefined) return null;
  if (typeof v === "string" || typeof v === "number" || typeof v === "boolean") return v;
  if (Array.isArray(v)) return v.map(passthrough);
  return new GoMap(Object.entries(v as Record<string, Json>).map(([k, x]) => [k, passthrough(x)]));
}

/** swarm.Node, as the docker CLI holds it after decoding GET /nodes/{id}. */
export function goNode(v: Json): GoStruct {
  const n = obj(v);
  const d = obj(n.Description);
  const platform = obj(d.Platform);
  const resources = obj(d.Resources);
  const engine = obj(d.Engine);
  const status = obj(n.Status);
  const ms = isObject(n.ManagerStatus) ? n.ManagerStatus : null;
  const plugins = arr(engine.Plugins).map((p) => {
    const po = obj(p);
    return new GoStruct("swarm.PluginDescription", [
      field("Type", str(po.Type), true),
      field("Name", str(po.Name), true),
    ]);
  });
  const engineLabels = stringMap(engine.Labels);
  return new GoStruct("swarm.Node", [
    field("ID", str(n.ID)),
    embed(
      new GoStruct("swarm.Meta", [
        field("Version", version(n.Version)),
        field("CreatedAt", goTime(n.CreatedAt)),
        field("UpdatedAt", goTime(n.UpdatedAt)),
      ]),
    ),
    field("Spec", goNodeSpec(n.Spec)),
    field(
      "Description",
      new GoStruct("swarm.NodeDescription", [
        field("Hostname", str(d.Hostname), true),
        field(
          "Platform",
          new GoStruct("swarm.Platform", [
            field("Architecture", str(platform.Architecture), true),
            field("OS", str(platform.OS), true),
          ]),
        ),
        field(
          "Resources",
          new GoStruct("swarm.Resources", [
            field("NanoCPUs", num(resources.NanoCPUs), true),
            field("MemoryBytes", num(resources.MemoryBytes), true),
            field("GenericResources", arr(resources.GenericResources).map(passthrough), true),
          ]),
        ),
        field(
          "Engine",
          new GoStruct("swarm.EngineDescription", [
            field("EngineVersion", str(engine.EngineVersion), true),
            field("Labels", engineLabels, true),
            field("Plugins", plugins, true),
          ]),
        ),
        field("TLSInfo", tlsInfo(d.TLSInfo)),
        field("CSIInfo", arr(d.CSIInfo).map(passthrough), true),
      ]),
    ),
    field(
      "Status",
      new GoStruct("swarm.NodeStatus", [
        field("State", str(status.State), true),
        field("Message", str(status.Message), true),
        field("Addr", str(status.Addr), true),
      ]),
    ),
    field(
      "ManagerStatus",
      ms === null
        ? null
        : new GoStruct("swarm.ManagerStatus", [
            field("Leader", bool(ms.Leader), true),
            field("Reachability", str(ms.Reachability), true),
            field("Addr", str(ms.Addr), true),
          ]),
      true,
      "swarm.ManagerStatus",
    ),
  ]);
}

function externalCA(v: Json): GoStruct {
  const e = obj(v);
  return new GoStruct("swarm.ExternalCA", [
    field("Protocol", str(e.Protocol)),
    field("URL", str(e.URL)),
    field("Options", stringMap(e.Options), true),
    field("CACert", str(e.CACert)),
  ]);
}

/** swarm.Spec, as the docker CLI sends it with POST /swarm/init and /swarm/update. */
export function goSwarmSpec(v: Json): GoStruct {
  const s = obj(v);
  const orch = obj(s.Orchestration);
  const raft = obj(s.Raft);
  const disp = obj(s.Dispatcher);
  const ca = obj(s.CAConfig);
  const td = obj(s.TaskDefaults);
  const enc = obj(s.EncryptionConfig);
  const logDriver = isObject(td.LogDriver)
    ? new GoStruct("swarm.Driver", [
        field("Name", str(td.LogDriver.Name), true),
        field("Options", stringMap(td.LogDriver.Options), true),
      ])
    : null;
  return new GoStruct("swarm.Spec", [
    embed(new GoStruct("swarm.Annotations", [field("Name", str(s.Name), true), field("Labels", stringMap(s.Labels))])),
    field(
      "Orchestration",
      new GoStruct("swarm.OrchestrationConfig", [
        field("TaskHistoryRetentionLimit", optNum(orch.TaskHistoryRetentionLimit), true, "int64"),
      ]),
    ),
    field(
      "Raft",
      new GoStruct("swarm.RaftConfig", [
        field("SnapshotInterval", num(raft.SnapshotInterval), true),
        field("KeepOldSnapshots", optNum(raft.KeepOldSnapshots), true, "uint64"),
        field("LogEntriesForSlowFollowers", num(raft.LogEntriesForSlowFollowers), true),
        field("ElectionTick", num(raft.ElectionTick)),
        field("HeartbeatTick", num(raft.HeartbeatTick)),
      ]),
    ),
    field(
      "Dispatcher",
      new GoStruct("swarm.DispatcherConfig", [field("HeartbeatPeriod", num(disp.HeartbeatPeriod), true)]),
    ),
    field(
      "CAConfig",
      new GoStruct("swarm.CAConfig", [
        field("NodeCertExpiry", num(ca.NodeCertExpiry), true),
        field("ExternalCAs", arr(ca.ExternalCAs).map(externalCA), true),
        field("SigningCACert", str(ca.SigningCACert), true),
        field("SigningCAKey", str(ca.SigningCAKey), true),
        field("ForceRotate", num(ca.ForceRotate), true),
      ]),
    ),
    field("TaskDefaults", new GoStruct("swarm.TaskDefaults", [field("LogDriver", logDriver, true, "swarm.Driver")])),
    field(
      "EncryptionConfig",
      new GoStruct("swarm.EncryptionConfig", [field("AutoLockManagers", bool(enc.AutoLockManagers))]),
    ),
  ]);
}
