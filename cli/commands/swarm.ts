// shoal swarm init | join | join-token | leave | update | unlock | unlock-key | ca — docker swarm's
// requests and output, with "shoal swarm ..." in the commands it suggests.

import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import type { Command } from "commander";
import { CLUSTER_PORT } from "../../src/api/ports.js";
import { CliError, type EngineClient } from "../client.js";
import { type FlagSpec, group, type Invocation, leaf } from "../command.js";
import { checkAvailability, parseCIDRList, parseDuration, parseInt64, parseNodeAddr, parseUint } from "../flags.js";
import { field, GoStruct, goSwarmSpec, requestBody } from "../gojson.js";

type Json = Record<string, unknown>;
const obj = (v: unknown): Json => (typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Json) : {});
const str = (v: unknown): string => (typeof v === "string" ? v : "");

const DEFAULT_LISTEN_ADDR = `0.0.0.0:${CLUSTER_PORT}`;

/** The commands shoal suggests to users ("docker swarm join" in docker's texts). */
const BIN = "shoal";

// ---- flags shared by init and update (docker's swarmOptions) ----------------------------------------------

const SWARM_FLAGS: FlagSpec[] = [
  {
    long: "task-history-limit",
    type: "int",
    kind: "custom",
    description: "Task history retention limit",
    defaultText: "5",
    parse: parseInt64,
  },
  {
    long: "dispatcher-heartbeat",
    type: "duration",
    kind: "custom",
    description: "Dispatcher heartbeat period (ns|us|ms|s|m|h)",
    defaultText: "5s",
    parse: parseDuration,
  },
  {
    long: "max-snapshots",
    type: "uint",
    kind: "custom",
    description: "Number of additional Raft snapshots to retain",
    parse: (v) => parseUint(v, 64),
  },
  {
    long: "snapshot-interval",
    type: "uint",
    kind: "custom",
    description: "Number of log entries between Raft snapshots",
    defaultText: "10000",
    parse: (v) => parseUint(v, 64),
  },
  {
    long: "cert-expiry",
    type: "duration",
    kind: "custom",
    description: "Validity period for node certificates (ns|us|ms|s|m|h)",
    defaultText: "2160h0m0s",
    parse: parseDuration,
  },
];

/** docker's mergeSwarmSpec: only the flags given change the spec. */
function mergeSwarmSpec(inv: Invocation, spec: Json): void {
  const sub = (k: string): Json => {
    spec[k] = { ...obj(spec[k]) };
    return spec[k] as Json;
  };
  if (inv.changed("task-history-limit"))
    sub("Orchestration").TaskHistoryRetentionLimit = inv.flag("task-history-limit");
  if (inv.changed("dispatcher-heartbeat")) sub("Dispatcher").HeartbeatPeriod = inv.flag("dispatcher-heartbeat");
  if (inv.changed("max-snapshots")) sub("Raft").KeepOldSnapshots = inv.flag("max-snapshots");
  if (inv.changed("snapshot-interval")) sub("Raft").SnapshotInterval = inv.flag("snapshot-interval");
  if (inv.changed("autolock")) sub("EncryptionConfig").AutoLockManagers = inv.flag("autolock");
  if (inv.changed("cert-expiry")) sub("CAConfig").NodeCertExpiry = inv.flag("cert-expiry");
}

function availabilityOf(inv: Invocation): string {
  if (!inv.changed("availability")) return "";
  const value = inv.flag<string>("availability");
  const a = checkAvailability(value);
  if (!a)
    throw new CliError(`invalid availability ${JSON.stringify(value)}, only active, pause and drain are supported`);
  return a;
}

/** docker's printJoinCommand: the join command for workers and/or managers, if this node is a manager. */
async function printJoinCommand(
  inv: Invocation,
  client: EngineClient,
  nodeID: string,
  worker: boolean,
  manager: boolean,
): Promise<void> {
  const node = obj(await client.get(`/nodes/${nodeID}`));
  const sw = obj(await client.get("/swarm"));
  const tokens = obj(sw.JoinTokens);
  if (node.ManagerStatus === undefined || node.ManagerStatus === null) return;
  const addr = str(obj(node.ManagerStatus).Addr);
  if (worker) {
    inv.out(
      `To add a worker to this swarm, run the following command:\n\n    ${BIN} swarm join --token ${str(tokens.Worker)} ${addr}\n\n`,
    );
  }
  if (manager) {
    inv.out(
      `To add a manager to this swarm, run the following command:\n\n    ${BIN} swarm join --token ${str(tokens.Manager)} ${addr}\n\n`,
    );
  }
}

async function printUnlockKey(inv: Invocation, client: EngineClient): Promise<void> {
  let key: string;
  try {
    key = str(obj(await client.get("/swarm/unlockkey")).UnlockKey);
  } catch (e) {
    if (e instanceof CliError) throw new CliError(`could not fetch unlock key: ${e.message}`);
    throw e;
  }
  if (key === "") return;
  inv.out(
    `To unlock a swarm manager after it restarts, run the \`${BIN} swarm unlock\`\ncommand and provide the following key:\n\n    ${key}\n\nRemember to store this key in a password manager, since without it you\nwill not be able to restart the manager.\n`,
  );
}

// ---- init -----------------------------------------------------------------------------------------------

async function runInit(inv: Invocation): Promise<void> {
  const availability = availabilityOf(inv);
  const spec: Json = {};
  mergeSwarmSpec(inv, spec);
  const autolock = inv.flag<boolean | undefined>("autolock") === true;
  const body = new GoStruct("swarm.InitRequest", [
    field("ListenAddr", inv.flag<string | undefined>("listen-addr") ?? DEFAULT_LISTEN_ADDR),
    field("AdvertiseAddr", inv.flag<string | undefined>("advertise-addr") ?? ""),
    field("DataPathAddr", inv.flag<string | undefined>("data-path-addr") ?? ""),
    field("DataPathPort", inv.flag<number | undefined>("data-path-port") ?? 0),
    field("ForceNewCluster", inv.flag<boolean | undefined>("force-new-cluster") === true),
    field("Spec", goSwarmSpec(spec)),
    field("AutoLockManagers", autolock),
    field("Availability", availability),
    field("DefaultAddrPool", (inv.flag<string[][] | undefined>("default-addr-pool") ?? []).flat()),
    field("SubnetSize", inv.flag<number | undefined>("default-addr-pool-mask-length") ?? 24),
  ]);
  const client = inv.client();
  let nodeID: unknown;
  try {
    nodeID = await client.json("POST", "/swarm/init", { body: requestBody(body) });
  } catch (e) {
    if (
      e instanceof CliError &&
      (e.message.includes("could not choose an IP address to advertise") ||
        e.message.includes("could not find the system's IP address"))
    ) {
      throw new CliError(`${e.message} - specify one with --advertise-addr`);
    }
    throw e;
  }
  const id = str(nodeID);
  inv.out(`Swarm initialized: current node (${id}) is now a manager.\n\n`);
  await printJoinCommand(inv, client, id, true, false);
  inv.out(`To add a manager to this swarm, run '${BIN} swarm join-token manager' and follow the instructions.\n`);
  if (autolock) await printUnlockKey(inv, client);
}

// ---- join -----------------------------------------------------------------------------------------------

async function runJoin(inv: Invocation): Promise<void> {
  const availability = availabilityOf(inv);
  const body = new GoStruct("swarm.JoinRequest", [
    field("ListenAddr", inv.flag<string | undefined>("listen-addr") ?? DEFAULT_LISTEN_ADDR),
    field("AdvertiseAddr", inv.flag<string | undefined>("advertise-addr") ?? ""),
    field("DataPathAddr", inv.flag<string | undefined>("data-path-addr") ?? ""),
    field("RemoteAddrs", [inv.args[0]!]),
    field("JoinToken", inv.flag<string | undefined>("token") ?? ""),
    field("Availability", availability),
  ]);
  const client = inv.client();
  await client.call("POST", "/swarm/join", { body: requestBody(body) });
  const info = obj(await client.get("/info"));
  inv.out(
    obj(info.Swarm).ControlAvailable === true
      ? "This node joined a swarm as a manager.\n"
      : "This node joined a swarm as a worker.\n",
  );
}

// ---- join-token -----------------------------------------------------------------------------------------

async function runJoinToken(inv: Invocation): Promise<void> {
  const role = inv.args[0]!;
  const worker = role === "worker";
  const manager = role === "manager";
  if (!worker && !manager) throw new CliError(`unknown role ${role}`);
  const quiet = inv.flag<boolean>("quiet") === true;
  const client = inv.client();
  if (inv.flag<boolean>("rotate") === true) {
    const sw = obj(await client.get("/swarm"));
    await updateSwarm(client, sw, sw.Spec, { manager, worker });
    if (!quiet) inv.out(`Successfully rotated ${role} join token.\n\n`);
  }
  const sw = obj(await client.get("/swarm"));
  if (quiet) {
    inv.out(`${str(obj(sw.JoinTokens)[worker ? "Worker" : "Manager"])}\n`);
    return;
  }
  const info = obj(await client.get("/info"));
  await printJoinCommand(inv, client, str(obj(info.Swarm).NodeID), worker, manager);
}

// ---- leave, update --------------------------------------------------------------------------------------

async function runLeave(inv: Invocation): Promise<void> {
  const force = inv.flag<boolean>("force") === true;
  await inv.client().call("POST", "/swarm/leave", force ? { query: { force: "1" } } : {});
  inv.out("Node left the swarm.\n");
}

async function runUpdate(inv: Invocation): Promise<void> {
  const given = ["autolock", ...SWARM_FLAGS.map((f) => f.long)].some((f) => inv.changed(f));
  if (!given) {
    inv.out(inv.help());
    return;
  }
  const client = inv.client();
  const sw = obj(await client.get("/swarm"));
  const spec: Json = { ...obj(sw.Spec) };
  const before = obj(spec.EncryptionConfig).AutoLockManagers === true;
  mergeSwarmSpec(inv, spec);
  const after = obj(spec.EncryptionConfig).AutoLockManagers === true;
  await updateSwarm(client, sw, spec, {});
  inv.out("Swarm updated.\n");
  if (after && !before) await printUnlockKey(inv, client);
}

// ---- unlock, unlock-key ---------------------------------------------------------------------------------

async function readKey(): Promise<string> {
  const chunks: Buffer[] = [];
  if (process.stdin.isTTY) process.stdout.write("Enter unlock key: ");
  for await (const c of process.stdin) {
    chunks.push(c as Buffer);
    if (Buffer.concat(chunks).includes(10)) break;
  }
  return Buffer.concat(chunks).toString("utf8").split("\n")[0]!.trim();
}

async function runUnlock(inv: Invocation): Promise<void> {
  const client = inv.client();
  const state = str(obj(obj(await client.get("/info")).Swarm).LocalNodeState);
  if (state === "inactive") throw new CliError("Error: This node is not part of a swarm");
  if (state !== "locked") throw new CliError("Error: swarm is not locked");
  const key = await readKey();
  await client.call("POST", "/swarm/unlock", {
    body: requestBody(new GoStruct("swarm.UnlockRequest", [field("UnlockKey", key)])),
  });
}

async function runUnlockKey(inv: Invocation): Promise<void> {
  const client = inv.client();
  const quiet = inv.flag<boolean>("quiet") === true;
  if (inv.flag<boolean>("rotate") === true) {
    const sw = obj(await client.get("/swarm"));
    if (obj(obj(sw.Spec).EncryptionConfig).AutoLockManagers !== true) {
      throw new CliError("cannot rotate because autolock is not turned on");
    }
    await updateSwarm(client, sw, sw.Spec, { unlockKey: true });
    if (!quiet) inv.out("Successfully rotated manager unlock key.\n");
  }
  let key: string;
  try {
    key = str(obj(await client.get("/swarm/unlockkey")).UnlockKey);
  } catch (e) {
    if (e instanceof CliError) throw new CliError(`could not fetch unlock key: ${e.message}`);
    throw e;
  }
  if (key === "") throw new CliError("no unlock key is set");
  if (quiet) inv.out(`${key}\n`);
  else await printUnlockKey(inv, client);
}

// ---- ca -------------------------------------------------------------------------------------------------

function pemFile(path: string): string {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    throw new CliError(
      `open ${path}: ${(e as NodeJS.ErrnoException).code === "ENOENT" ? "no such file or directory" : (e as Error).message}`,
    );
  }
  if (!/-----BEGIN [A-Z ]+-----/.test(text)) throw new CliError(`file contents must be in PEM format`);
  return text;
}

/**
 * What `docker swarm ca --rotate` prints while it waits when its output is not a terminal: the three
 * progress names, then the desired root's digest on every poll (200 ms) until every node has a certificate
 * from the new issuer and trusts the new root.
 */
async function rotationProgress(inv: Invocation, client: EngineClient, quiet: boolean): Promise<void> {
  const say = (t: string) => {
    if (!quiet) inv.out(t);
  };
  say("desired root digest: \n  rotated TLS certificates: \n  rotated CA certificates:  \n");
  let done = false;
  for (;;) {
    const sw = obj(await client.get("/swarm"));
    if (done) return;
    const tls = obj(sw.TLSInfo);
    const nodes = await client.get("/nodes");
    say(`desired root digest: sha256:${createHash("sha256").update(str(tls.TrustRoot)).digest("hex")}\n`);
    const list = Array.isArray(nodes) ? nodes.map(obj) : [];
    const nodeTls = (n: Json) => obj(obj(n.Description).TLSInfo);
    const certs = list.filter(
      (n) =>
        nodeTls(n).CertIssuerPublicKey === tls.CertIssuerPublicKey &&
        nodeTls(n).CertIssuerSubject === tls.CertIssuerSubject,
    ).length;
    const roots = list.filter((n) => nodeTls(n).TrustRoot === tls.TrustRoot).length;
    done = certs === list.length && sw.RootRotationInProgress !== true && roots === list.length;
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function runCA(inv: Invocation): Promise<void> {
  const client = inv.client();
  const sw = obj(await client.get("/swarm"));
  if (inv.flag<boolean>("rotate") !== true) {
    for (const f of ["ca-cert", "ca-key", "cert-expiry", "external-ca"]) {
      if (inv.changed(f)) throw new CliError(`\`--${f}\` flag requires the \`--rotate\` flag to update the CA`);
    }
    return displayTrustRoot(inv, sw);
  }
  if (inv.changed("ca-cert") && !inv.changed("ca-key")) {
    throw new CliError(
      "the --ca-cert flag requires that a --ca-key flag and/or --external-ca flag be provided as well",
    );
  }
  const spec: Json = { ...obj(sw.Spec) };
  const ca: Json = { ...obj(spec.CAConfig) };
  const cert = inv.changed("ca-cert") ? pemFile(inv.flag<string>("ca-cert")) : "";
  const key = inv.changed("ca-key") ? pemFile(inv.flag<string>("ca-key")) : "";
  if (inv.changed("cert-expiry")) ca.NodeCertExpiry = inv.flag("cert-expiry");
  if (inv.changed("external-ca")) ca.ExternalCAs = [parseExternalCA(inv.flag<string>("external-ca"))];
  ca.SigningCACert = cert;
  ca.SigningCAKey = key;
  if (cert === "" && key === "") ca.ForceRotate = (typeof ca.ForceRotate === "number" ? ca.ForceRotate : 0) + 1;
  spec.CAConfig = ca;
  await updateSwarm(client, sw, spec, {});
  if (inv.flag<boolean>("detach") === true) return;
  await rotationProgress(inv, client, inv.flag<boolean>("quiet") === true);
  displayTrustRoot(inv, obj(await client.get("/swarm")));
}

/** --external-ca protocol=cfssl,url=https://...: passed on for the daemon to answer (shoal refuses external CAs). */
function parseExternalCA(text: string): Json {
  const out: Json = { Protocol: "", URL: "" };
  for (const part of text.split(",")) {
    const i = part.indexOf("=");
    const k = (i < 0 ? part : part.slice(0, i)).toLowerCase();
    const v = i < 0 ? "" : part.slice(i + 1);
    if (k === "protocol") out.Protocol = v.toLowerCase();
    else if (k === "url") out.URL = v;
  }
  return out;
}

function displayTrustRoot(inv: Invocation, sw: Json): void {
  const root = str(obj(sw.TLSInfo).TrustRoot);
  if (root === "") throw new CliError("No CA information available");
  inv.out(`${root.trim()}\n`);
}

// ---- wiring ---------------------------------------------------------------------------------------------

const ADVERTISE: FlagSpec = {
  long: "advertise-addr",
  type: "string",
  kind: "string",
  description: 'Advertised address (format: "<ip|interface>[:port]")',
};
const AVAILABILITY: FlagSpec = {
  long: "availability",
  type: "string",
  kind: "string",
  description: 'Availability of the node ("active", "pause", "drain")',
  defaultText: '"active"',
};
const DATA_PATH_ADDR: FlagSpec = {
  long: "data-path-addr",
  type: "string",
  kind: "string",
  description: 'Address or interface to use for data path traffic (format: "<ip|interface>")',
};
const LISTEN: FlagSpec = {
  long: "listen-addr",
  type: "node-addr",
  kind: "custom",
  description: 'Listen address (format: "<ip|interface>[:port]")',
  defaultText: DEFAULT_LISTEN_ADDR,
  parse: (v) => parseNodeAddr(v, DEFAULT_LISTEN_ADDR),
};

export function addSwarmCommands(program: Command): void {
  const swarm = group(program, "swarm", "Manage Swarm");
  leaf(swarm, {
    name: "init",
    use: "[OPTIONS]",
    short: "Initialize a swarm",
    args: { kind: "none" },
    flags: [
      ADVERTISE,
      {
        long: "autolock",
        kind: "optbool",
        description: "Enable manager autolocking (requiring an unlock key to start a stopped manager)",
      },
      AVAILABILITY,
      DATA_PATH_ADDR,
      {
        long: "data-path-port",
        type: "uint32",
        kind: "custom",
        description:
          "Port number to use for data path traffic (1024 - 49151). If no value is set or is set to 0, the default port (4789) is used.",
        parse: (v) => parseUint(v, 32),
      },
      {
        long: "default-addr-pool",
        type: "ipNetSlice",
        kind: "list",
        description: "default address pool in CIDR format",
        defaultText: "[]",
        parse: parseCIDRList,
      },
      {
        long: "default-addr-pool-mask-length",
        type: "uint32",
        kind: "custom",
        description: "default address pool subnet mask length",
        defaultText: "24",
        parse: (v) => parseUint(v, 32),
      },
      { long: "force-new-cluster", kind: "bool", description: "Force create a new cluster from current state" },
      LISTEN,
      ...SWARM_FLAGS,
    ],
    run: runInit,
  });
  leaf(swarm, {
    name: "join",
    use: "[OPTIONS] HOST:PORT",
    short: "Join a swarm as a node and/or manager",
    args: { kind: "exact", n: 1 },
    flags: [
      ADVERTISE,
      AVAILABILITY,
      DATA_PATH_ADDR,
      LISTEN,
      { long: "token", type: "string", kind: "string", description: "Token for entry into the swarm" },
    ],
    run: runJoin,
  });
  leaf(swarm, {
    name: "join-token",
    use: "[OPTIONS] (worker|manager)",
    short: "Manage join tokens",
    args: { kind: "exact", n: 1 },
    flags: [
      { long: "quiet", short: "q", kind: "bool", description: "Only display token" },
      { long: "rotate", kind: "bool", description: "Rotate join token" },
    ],
    run: runJoinToken,
  });
  leaf(swarm, {
    name: "leave",
    use: "[OPTIONS]",
    short: "Leave the swarm",
    args: { kind: "none" },
    flags: [
      { long: "force", short: "f", kind: "bool", description: "Force this node to leave the swarm, ignoring warnings" },
    ],
    run: runLeave,
  });
  leaf(swarm, {
    name: "update",
    use: "[OPTIONS]",
    short: "Update the swarm",
    args: { kind: "none" },
    flags: [
      { long: "autolock", kind: "optbool", description: "Change manager autolocking setting (true|false)" },
      ...SWARM_FLAGS,
    ],
    run: runUpdate,
  });
  leaf(swarm, {
    name: "unlock",
    use: "",
    short: "Unlock swarm",
    args: { kind: "none" },
    run: runUnlock,
  });
  leaf(swarm, {
    name: "unlock-key",
    use: "[OPTIONS]",
    short: "Manage the unlock key",
    args: { kind: "none" },
    flags: [
      { long: "quiet", short: "q", kind: "bool", description: "Only display token" },
      { long: "rotate", kind: "bool", description: "Rotate unlock key" },
    ],
    run: runUnlockKey,
  });
  leaf(swarm, {
    name: "ca",
    use: "[OPTIONS]",
    short: "Display and rotate the root CA",
    args: { kind: "none" },
    flags: [
      {
        long: "ca-cert",
        type: "pem-file",
        kind: "string",
        description: "Path to the PEM-formatted root CA certificate to use for the new cluster",
      },
      {
        long: "ca-key",
        type: "pem-file",
        kind: "string",
        description: "Path to the PEM-formatted root CA key to use for the new cluster",
      },
      SWARM_FLAGS.find((f) => f.long === "cert-expiry")!,
      {
        long: "detach",
        short: "d",
        kind: "bool",
        description: "Exit immediately instead of waiting for the root rotation to converge",
      },
      {
        long: "external-ca",
        type: "external-ca",
        kind: "string",
        description: "Specifications of one or more certificate signing endpoints",
      },
      { long: "quiet", short: "q", kind: "bool", description: "Suppress progress output" },
      {
        long: "rotate",
        kind: "bool",
        description: "Rotate the swarm CA - if no certificate or key are provided, new ones will be generated",
      },
    ],
    run: runCA,
  });
}

/** POST /swarm/update of `spec` at the swarm's current version, rotating what `rotate` names, as docker sends it. */
async function updateSwarm(
  client: EngineClient,
  sw: Record<string, unknown>,
  spec: unknown,
  rotate: { manager?: boolean; unlockKey?: boolean; worker?: boolean },
): Promise<void> {
  const version = obj(sw.Version).Index;
  await client.call("POST", "/swarm/update", {
    query: {
      rotateManagerToken: String(rotate.manager === true),
      rotateManagerUnlockKey: String(rotate.unlockKey === true),
      rotateWorkerToken: String(rotate.worker === true),
      version: String(typeof version === "number" ? version : 0),
    },
    body: requestBody(goSwarmSpec(spec)),
  });
}
