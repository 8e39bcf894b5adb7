// POST /swarm/init, /swarm/join, /swarm/update and /swarm/unlock: Docker's swarm.InitRequest, JoinRequest,
// Spec and UnlockRequest, every field of API 1.24 to 1.50, and their conversion to what the daemon acts on.
//
// A swarm spec is decoded as dockerd decodes it: a field that is missing or null is its zero value, and a
// zero value means the default. So `{}` (what Docker's Python SDK sends to rotate a token) is the default
// spec, and the spec shoal stores is always complete. shoal carries out the name, the labels, the
// dispatcher's heartbeat period, the node certificate expiry, autolock and root CA rotation (a signing
// certificate and key, or ForceRotate); the other settings are accepted at zero or at their default value
// (the docker CLI sends back the whole spec it read) and refused otherwise, never stored and then ignored.

import { z } from "zod";
import { badRequest } from "../../api/errors.js";
import {
  MAX_ADDR_POOLS,
  MAX_LIST_ENTRIES,
  MAX_NAME_LENGTH,
  MAX_PEM_BYTES,
  MAX_REMOTE_ADDRS,
  MAX_TOKEN_LENGTH,
} from "../../api/limits.js";
import { Cidr, DEFAULT_SWARM_SPEC, type NodeAvailability, type SwarmSpec } from "../../api/objects.js";
import { compareApiVersions } from "../versions.js";
import { labels, matching, options, text } from "./common.js";
import { bodySchema } from "./decode.js";
import {
  checked,
  type GoOut,
  type GoType,
  goBool,
  goInt,
  goPointer,
  goSlice,
  goString,
  goStruct,
  unsupported,
} from "./go.js";
import { lenientBool, parseUintError, strictBool, uintParam } from "./query.js";

const ADDR_LENGTH = MAX_NAME_LENGTH + 8;

/** A setting shoal does not carry out: zero and the default are accepted (the CLI sends back what it read). */
function fixedSetting(t: GoType<number>, defaultValue: number, flag: string): GoType<number>;
function fixedSetting(t: GoType<number | undefined>, defaultValue: number, flag: string): GoType<number | undefined>;
function fixedSetting(t: GoType<number | undefined>, defaultValue: number, flag: string): GoType<number | undefined> {
  return unsupported(t, flag, (v) => v === defaultValue);
}

const D = DEFAULT_SWARM_SPEC;

const specFields = {
  Name: text(MAX_NAME_LENGTH),
  Labels: labels(),
  Orchestration: goStruct("swarm.OrchestrationConfig", {
    TaskHistoryRetentionLimit: fixedSetting(
      goPointer(goInt("int64")),
      D.Orchestration.TaskHistoryRetentionLimit,
      "--task-history-limit",
    ),
  }),
  Raft: goStruct("swarm.RaftConfig", {
    SnapshotInterval: fixedSetting(goInt("uint64"), D.Raft.SnapshotInterval, "--snapshot-interval"),
    KeepOldSnapshots: fixedSetting(goPointer(goInt("uint64")), D.Raft.KeepOldSnapshots, "--max-snapshots"),
    LogEntriesForSlowFollowers: fixedSetting(goInt("uint64"), D.Raft.LogEntriesForSlowFollowers, ""),
    ElectionTick: fixedSetting(goInt("int"), D.Raft.ElectionTick, ""),
    HeartbeatTick: fixedSetting(goInt("int"), D.Raft.HeartbeatTick, ""),
  }),
  Dispatcher: goStruct("swarm.DispatcherConfig", {
    HeartbeatPeriod: checked(goInt("time.Duration"), heartbeatProblem),
  }),
  CAConfig: goStruct("swarm.CAConfig", {
    NodeCertExpiry: checked(goInt("time.Duration"), (ns) =>
      ns < 0 ? "node certificate expiry cannot be a negative duration" : undefined,
    ),
    ExternalCAs: unsupported(
      goSlice(
        goStruct("swarm.ExternalCA", {
          Protocol: text(64, "swarm.ExternalCAProtocol"),
          URL: text(4096),
          Options: options(),
          CACert: text(MAX_PEM_BYTES),
        }),
        MAX_LIST_ENTRIES,
      ),
      "--external-ca",
    ),
    // Root CA rotation (docker swarm ca --rotate [--ca-cert --ca-key]).
    SigningCACert: text(MAX_PEM_BYTES),
    SigningCAKey: text(MAX_PEM_BYTES),
    ForceRotate: goInt("uint64"),
  }),
  TaskDefaults: goStruct("swarm.TaskDefaults", {
    LogDriver: unsupported(
      goStruct("swarm.Driver", { Name: text(MAX_NAME_LENGTH), Options: options() }),
      "--log-driver",
    ),
  }),
  EncryptionConfig: goStruct("swarm.EncryptionConfig", {
    AutoLockManagers: goBool(),
  }),
};

/** swarm.Spec, the body of POST /swarm/update. */
const SwarmSpecType = goStruct("swarm.Spec", specFields);
export type SwarmSpecRequest = NonNullable<GoOut<typeof SwarmSpecType>>;
export const SwarmSpecBody = bodySchema(SwarmSpecType);

function heartbeatProblem(ns: number): string | undefined {
  if (ns < 0) return "heartbeat time period cannot be a negative duration";
  if (ns === 0) return undefined;
  if (ns < MIN_HEARTBEAT_NS || ns > MAX_HEARTBEAT_NS) {
    return `must be between ${MIN_HEARTBEAT_NS / 1e6}ms and ${MAX_HEARTBEAT_NS / 3.6e12}h (or 0 for the default)`;
  }
  return undefined;
}

/** The dispatcher's heartbeat period: below 100 ms nodes would flood the managers; timers cap at ~24 days. */
const MIN_HEARTBEAT_NS = 100_000_000;
const MAX_HEARTBEAT_NS = 24 * 3600 * 1e9;

/**
 * The spec shoal stores for a requested one: every zero field is its default (so the result is complete
 * and valid whatever was left out), and the name must be "default" as in dockerd.
 */
export function swarmSpecFromRequest(s: SwarmSpecRequest): SwarmSpec {
  const name = s.Name || "default";
  if (name !== "default") throw badRequest('swarm spec must be named "default"');
  const spec = structuredClone(DEFAULT_SWARM_SPEC);
  spec.Labels = { ...(s.Labels ?? {}) };
  if (s.Dispatcher?.HeartbeatPeriod) spec.Dispatcher.HeartbeatPeriod = s.Dispatcher.HeartbeatPeriod;
  const ca = s.CAConfig;
  if (ca?.NodeCertExpiry) spec.CAConfig.NodeCertExpiry = ca.NodeCertExpiry;
  if (ca?.SigningCACert) spec.CAConfig.SigningCACert = ca.SigningCACert;
  if (ca?.SigningCAKey) spec.CAConfig.SigningCAKey = ca.SigningCAKey;
  if (ca?.ForceRotate) spec.CAConfig.ForceRotate = ca.ForceRotate;
  spec.EncryptionConfig = { AutoLockManagers: s.EncryptionConfig?.AutoLockManagers === true };
  return spec;
}

// ------------------------------------------------------------------ init, join, unlock

const availability = goString("swarm.NodeAvailability");

/** "" (the default, active) or one of active, pause, drain, in any case, as dockerd's conversion takes it. */
export function availabilityOf(v: string): NodeAvailability {
  const a = v.toLowerCase();
  if (a === "") return "active";
  if (a === "active" || a === "pause" || a === "drain") return a;
  throw badRequest(`invalid Availability: ${JSON.stringify(v)}`);
}

const SwarmInitType = goStruct("swarm.InitRequest", {
  ListenAddr: text(ADDR_LENGTH),
  AdvertiseAddr: text(ADDR_LENGTH),
  DataPathAddr: text(ADDR_LENGTH),
  DataPathPort: goInt("uint32"),
  ForceNewCluster: goBool(),
  Spec: SwarmSpecType,
  AutoLockManagers: goBool(),
  Availability: availability,
  DefaultAddrPool: goSlice(matching(Cidr), MAX_ADDR_POOLS),
  SubnetSize: goInt("uint32"),
});
export const SwarmInitBody = bodySchema(SwarmInitType);

const SwarmJoinType = goStruct("swarm.JoinRequest", {
  ListenAddr: text(ADDR_LENGTH),
  AdvertiseAddr: text(ADDR_LENGTH),
  DataPathAddr: text(ADDR_LENGTH),
  RemoteAddrs: goSlice(text(ADDR_LENGTH), MAX_REMOTE_ADDRS),
  JoinToken: text(MAX_TOKEN_LENGTH),
  Availability: availability,
});
export const SwarmJoinBody = bodySchema(SwarmJoinType);

const SwarmUnlockType = goStruct("swarm.UnlockRequest", { UnlockKey: text(MAX_TOKEN_LENGTH) });
export const SwarmUnlockBody = bodySchema(SwarmUnlockType);

/** What swarm init asks for, complete: the daemon checks addresses and ranges against the host. */
export interface SwarmInit {
  listenAddr: string;
  advertiseAddr: string;
  dataPathAddr: string;
  /** 0: the default (4789). */
  dataPathPort: number;
  forceNewCluster: boolean;
  /** The spec, complete; its EncryptionConfig.AutoLockManagers is on for `swarm init --autolock` too. */
  spec: SwarmSpec;
  availability: NodeAvailability;
  defaultAddrPool: string[];
  /** 0: the default (24). */
  subnetSize: number;
}

export interface SwarmJoin {
  listenAddr: string;
  advertiseAddr: string;
  dataPathAddr: string;
  remoteAddrs: string[];
  joinToken: string;
  availability: NodeAvailability;
}

/** swarm init's request as the daemon takes it; fields newer than the client's API version are ignored, as dockerd does. */
export function swarmInitFromRequest(r: NonNullable<GoOut<typeof SwarmInitType>>, apiVersion: string): SwarmInit {
  const v139 = compareApiVersions(apiVersion, "1.39") >= 0;
  const v140 = compareApiVersions(apiVersion, "1.40") >= 0;
  return {
    listenAddr: r.ListenAddr ?? "",
    advertiseAddr: r.AdvertiseAddr ?? "",
    dataPathAddr: r.DataPathAddr ?? "",
    dataPathPort: v140 ? (r.DataPathPort ?? 0) : 0,
    forceNewCluster: r.ForceNewCluster ?? false,
    spec: withAutolock(swarmSpecFromRequest(r.Spec ?? {}), r.AutoLockManagers === true),
    availability: availabilityOf(r.Availability ?? ""),
    defaultAddrPool: v139 ? [...(r.DefaultAddrPool ?? [])] : [],
    subnetSize: v139 ? (r.SubnetSize ?? 0) : 0,
  };
}

function withAutolock(spec: SwarmSpec, autolock: boolean): SwarmSpec {
  if (autolock) spec.EncryptionConfig = { AutoLockManagers: true };
  return spec;
}

export function swarmJoinFromRequest(r: NonNullable<GoOut<typeof SwarmJoinType>>): SwarmJoin {
  return {
    listenAddr: r.ListenAddr ?? "",
    advertiseAddr: r.AdvertiseAddr ?? "",
    dataPathAddr: r.DataPathAddr ?? "",
    remoteAddrs: (r.RemoteAddrs ?? []).filter((a) => a !== ""),
    joinToken: r.JoinToken ?? "",
    availability: availabilityOf(r.Availability ?? ""),
  };
}

// ------------------------------------------------------------------ query parameters

export const SwarmLeaveQuery = z.object({ force: lenientBool() });

export const SwarmUpdateQuery = z.object({
  version: uintParam((v) => `invalid swarm version '${v}': ${parseUintError(v)}`),
  rotateWorkerToken: strictBool("rotateWorkerToken"),
  rotateManagerToken: strictBool("rotateManagerToken"),
  rotateManagerUnlockKey: strictBool("rotateManagerUnlockKey"),
});
