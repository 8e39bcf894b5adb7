// POST /networks/create, /networks/{id}/connect and /networks/{id}/disconnect: Docker's
// NetworkCreateRequest, NetworkConnect (with its EndpointSettings) and NetworkDisconnect, every field of API
// 1.24 to 1.50, and their conversion to shoal's NetworkSpec and endpoint settings.
//
// shoal makes swarm-scoped overlay networks with one IPv4 subnet; what Docker offers beyond that (IPv6,
// IP ranges, auxiliary addresses, config-only networks, IPAM drivers) is refused when asked for.

import { z } from "zod";
import { badRequest } from "../../api/errors.js";
import { MAX_ALIASES, MAX_LIST_ENTRIES, MAX_NAME_LENGTH, MAX_OPTIONS } from "../../api/limits.js";
import { Aliases, type NetworkSpec } from "../../api/objects.js";
import { Ipv4Address, NAME_RE } from "../../api/schema.js";
import { labels, options, text } from "./common.js";
import { bodySchema } from "./decode.js";
import {
  checked,
  type GoOut,
  goBool,
  goInt,
  goMap,
  goPointer,
  goSlice,
  goString,
  goStruct,
  piped,
  unsupported,
} from "./go.js";
import { filtersParam, strictBool, textParam } from "./query.js";

export const MTU_OPTION = "com.docker.network.driver.mtu";

const ipv4OrEmpty = checked(text(64), (v) =>
  v === "" || Ipv4Address.safeParse(v).success ? undefined : "must be an IPv4 address",
);
const cidrOrEmpty = checked(text(64), (v) => (v === "" || cidrProblem(v) === undefined ? undefined : cidrProblem(v)));

function cidrProblem(v: string): string | undefined {
  const m = /^([0-9.]+)\/([0-9]{1,2})$/.exec(v);
  if (!m || !Ipv4Address.safeParse(m[1]).success || Number(m[2]) > 32) return "must be an IPv4 CIDR (a.b.c.d/n)";
  return undefined;
}

const NetworkCreateType = goStruct("types.NetworkCreateRequest", {
  Name: goString(),
  CheckDuplicate: goPointer(goBool()),
  Driver: text(MAX_NAME_LENGTH),
  Scope: unsupported(text(64), "--scope", (v) => v === "swarm"),
  EnableIPv4: unsupported(goPointer(goBool()), "--ipv4=false", (v) => v === true),
  EnableIPv6: goPointer(goBool()),
  IPAM: goStruct("network.IPAM", {
    Driver: unsupported(text(MAX_NAME_LENGTH), "--ipam-driver", (v) => v === "default"),
    Options: unsupported(options(), "--ipam-opt"),
    Config: goSlice(
      goStruct("network.IPAMConfig", {
        Subnet: cidrOrEmpty,
        IPRange: unsupported(text(64), "--ip-range"),
        Gateway: ipv4OrEmpty,
        AuxiliaryAddresses: unsupported(options(), "--aux-address"),
      }),
      MAX_LIST_ENTRIES,
    ),
  }),
  Internal: goBool(),
  Attachable: goBool(),
  Ingress: goBool(),
  ConfigOnly: unsupported(goBool(), "--config-only"),
  ConfigFrom: unsupported(goStruct("network.ConfigReference", { Network: text(MAX_NAME_LENGTH) }), "--config-from"),
  Options: options(MAX_OPTIONS),
  Labels: labels(),
});
export const NetworkCreateBody = bodySchema(NetworkCreateType);
export type NetworkCreateRequest = NonNullable<GoOut<typeof NetworkCreateType>>;

/** The network spec shoal stores for a create request (nothing is allocated here). */
export function networkSpecFromRequest(req: NetworkCreateRequest): NetworkSpec {
  const name = req.Name ?? "";
  if (name.trim() === "") throw badRequest("network name must not be empty");
  if (name.length > MAX_NAME_LENGTH) {
    throw badRequest(`invalid network name: it must be at most ${MAX_NAME_LENGTH} characters (${name.length} given)`);
  }
  if (!NAME_RE.test(name)) {
    throw badRequest(`invalid network name "${name}": only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed`);
  }
  const driver = req.Driver || "overlay";
  if (driver !== "overlay") {
    throw badRequest(
      `network driver "${driver}" is not supported: shoal creates swarm-scoped overlay networks (-d overlay)`,
    );
  }
  if (req.EnableIPv6) throw badRequest("IPv6 is not supported on shoal overlay networks yet");
  const opts = { ...(req.Options ?? {}) };
  if (opts[MTU_OPTION] !== undefined) {
    const mtu = Number(opts[MTU_OPTION]);
    if (!/^[0-9]+$/.test(opts[MTU_OPTION]!) || mtu < 1280 || mtu > 65535) {
      throw badRequest(`invalid value for ${MTU_OPTION}: "${opts[MTU_OPTION]}" (an MTU between 1280 and 65535)`);
    }
  }
  const cfgs = req.IPAM?.Config ?? [];
  if (cfgs.length > 1) throw badRequest("shoal overlay networks take a single IPv4 subnet");
  const cfg = cfgs[0];
  if (cfg?.Gateway && !cfg.Subnet) throw badRequest("a gateway needs a subnet (--subnet)");
  return {
    name,
    driver: "overlay",
    internal: req.Internal ?? false,
    attachable: req.Attachable ?? false,
    ingress: req.Ingress ?? false,
    options: opts,
    labels: { ...(req.Labels ?? {}) },
    ...(cfg?.Subnet ? { subnet: cfg.Subnet } : {}),
    ...(cfg?.Gateway ? { gateway: cfg.Gateway } : {}),
  };
}

// ------------------------------------------------------------------ endpoints: connect, disconnect, run

/** Docker's network.EndpointSettings: what a client may ask of an attachment (the rest is output only). */
const EndpointSettingsType = goStruct("network.EndpointSettings", {
  IPAMConfig: goStruct("network.EndpointIPAMConfig", {
    IPv4Address: ipv4OrEmpty,
    IPv6Address: unsupported(text(64), "--ip6"),
    LinkLocalIPs: unsupported(goSlice(text(64), MAX_LIST_ENTRIES), "--link-local-ip"),
  }),
  Links: unsupported(goSlice(text(MAX_NAME_LENGTH), MAX_LIST_ENTRIES), "--link"),
  Aliases: piped(goSlice(goString(), MAX_ALIASES), Aliases.optional()),
  MacAddress: unsupported(text(64), "--mac-address"),
  DriverOpts: unsupported(options(), "--driver-opt"),
  GwPriority: unsupported(goInt("int"), "--gw-priority"),
  NetworkID: unsupported(text(MAX_NAME_LENGTH)),
  EndpointID: unsupported(text(MAX_NAME_LENGTH)),
  Gateway: unsupported(text(64)),
  IPAddress: unsupported(text(64)),
  IPPrefixLen: unsupported(goInt("int")),
  IPv6Gateway: unsupported(text(64)),
  GlobalIPv6Address: unsupported(text(64)),
  GlobalIPv6PrefixLen: unsupported(goInt("int")),
  DNSNames: unsupported(goSlice(text(MAX_NAME_LENGTH), MAX_LIST_ENTRIES)),
});
export type EndpointSettingsRequestIn = GoOut<typeof EndpointSettingsType>;

/** What shoal takes from an endpoint's settings: a fixed address and aliases. */
export interface EndpointRequest {
  IPAMConfig?: { IPv4Address?: string };
  Aliases?: string[];
}

export function endpointFromRequest(v: EndpointSettingsRequestIn | null | undefined): EndpointRequest {
  const out: EndpointRequest = {};
  const ip = v?.IPAMConfig?.IPv4Address;
  if (ip) out.IPAMConfig = { IPv4Address: ip };
  const aliases = (v?.Aliases ?? []).filter((a) => a !== "");
  if (aliases.length > 0) out.Aliases = aliases;
  return out;
}

const containerRef = text(MAX_NAME_LENGTH + 64);

const NetworkConnectType = goStruct("types.NetworkConnect", {
  Container: containerRef,
  EndpointConfig: EndpointSettingsType,
});
export const NetworkConnectBody = bodySchema(NetworkConnectType);

const NetworkDisconnectType = goStruct("types.NetworkDisconnect", {
  Container: containerRef,
  Force: goBool(),
});
export const NetworkDisconnectBody = bodySchema(NetworkDisconnectType);

/** EndpointsConfig of a container create: network name -> settings. */
export const EndpointsConfigType = goMap(EndpointSettingsType, MAX_LIST_ENTRIES);

// ------------------------------------------------------------------ query parameters

const NETWORK_FILTERS = ["dangling", "driver", "id", "label", "name", "scope", "type"] as const;
const NETWORK_PRUNE_FILTERS = ["label", "label!", "until"] as const;

export const NetworkListQuery = z.object({ filters: filtersParam(NETWORK_FILTERS) }).superRefine((q, ctx) => {
  for (const t of q.filters.type ?? []) {
    if (t !== "custom" && t !== "builtin") ctx.addIssue({ code: "custom", message: `invalid filter: 'type'='${t}'` });
  }
});

export const NetworkInspectQuery = z.object({
  verbose: strictBool("verbose"),
  scope: textParam("scope", 16),
});

export const NetworkPruneQuery = z.object({ filters: filtersParam(NETWORK_PRUNE_FILTERS) });
