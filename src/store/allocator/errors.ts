// Errors from network allocation (subnets, VNIs, endpoint addresses) and the network checks around it.
//
// Each is an ApiError, so it reaches the Engine API (and crosses gRPC through asGrpc/toApiError) with its
// HTTP status and message unchanged. The statuses and words follow moby/libnetwork and swarmkit where they
// have them (noted per error); `code` is for programs, `message` is what the docker CLI prints after
// "Error response from daemon: ".
//
// All of these are thrown before anything is changed: an allocation that fails leaves its state as it was.

import { ApiError } from "../../api/errors.js";

export type IpamErrorCode =
  | "invalid-address"
  | "invalid-cidr"
  | "invalid-subnet"
  | "invalid-pool-config"
  | "invalid-gateway"
  | "pool-exhausted"
  | "pool-overlap"
  | "ip-exhausted"
  | "ip-in-use"
  | "ip-out-of-subnet"
  | "ip-reserved"
  | "invalid-vni"
  | "vni-in-use"
  | "vni-exhausted"
  | "name-conflict"
  | "not-attachable"
  | "network-in-use";

export class IpamError extends ApiError {
  readonly code: IpamErrorCode;
  constructor(code: IpamErrorCode, status: number, message: string) {
    super(status, message);
    this.name = "IpamError";
    this.code = code;
  }
}

export const MSG_POOL_EXHAUSTED =
  "could not find an available, non-overlapping IPv4 address pool among the defaults to assign to the network";
export const MSG_POOL_OVERLAP = "Pool overlaps with other one on this address space";
export const MSG_IP_IN_USE = "Address already in use";

// --- bad input: 400 --------------------------------------------------------------------------------------

/** Not a dotted-quad IPv4 address (the docker CLI's `--ip` wording). */
export const invalidAddress = (s: string): IpamError =>
  new IpamError("invalid-address", 400, `invalid IPv4 address: ${s}`);

/** Not an IPv4 CIDR (Go's net.ParseCIDR wording, which the docker CLI prints). */
export const invalidCidr = (s: string): IpamError => new IpamError("invalid-cidr", 400, `invalid CIDR address: ${s}`);

/** A `--subnet` with host bits set. */
export const subnetNotCanonical = (given: string, canonical: string): IpamError =>
  new IpamError("invalid-subnet", 400, `invalid subnet ${given}: it should be ${canonical}`);

/** A `--subnet` whose prefix length is outside what an overlay can use. */
export const subnetPrefixOutOfRange = (subnet: string, min: number, max: number): IpamError =>
  new IpamError(
    "invalid-subnet",
    400,
    `invalid subnet ${subnet}: the prefix length must be between /${min} and /${max}`,
  );

/** `--default-addr-pool-mask-length` above 29 (moby daemon/cluster validateDefaultAddrPool). */
export const subnetSizeOutOfRange = (size: number): IpamError =>
  new IpamError("invalid-pool-config", 400, `subnet size is out of range: ${size}`);

/** A default pool that cannot be parsed (moby validateDefaultAddrPool). */
export const invalidBasePool = (pool: string): IpamError =>
  new IpamError("invalid-pool-config", 400, `invalid base pool ${pool}: invalid CIDR address: ${pool}`);

/** `--default-addr-pool-mask-length` shorter than a pool's own prefix (moby validateDefaultAddrPool). */
export const subnetSizeTooSmall = (pool: string, size: number): IpamError =>
  new IpamError("invalid-pool-config", 400, `invalid CIDR: "${pool}". Subnet size is too small for pool: ${size}`);

/** A `--gateway` outside the subnet (the docker CLI's wording). */
export const gatewayOutsideSubnet = (gateway: string): IpamError =>
  new IpamError("invalid-gateway", 400, `no matching subnet for gateway ${gateway}`);

/** A `--gateway` that is the subnet's network or broadcast address. */
export const gatewayReserved = (gateway: string, subnet: string, what: "network" | "broadcast"): IpamError =>
  new IpamError("invalid-gateway", 400, `invalid gateway ${gateway}: it is the ${what} address of subnet ${subnet}`);

/** An `--ip` outside the network's subnet (moby libnetwork endpoint.assignAddressVersion wording). */
export const ipOutOfSubnet = (ip: string): IpamError =>
  new IpamError("ip-out-of-subnet", 400, `invalid address ${ip}: It does not belong to any of this network's subnets`);

/** An `--ip` that is the subnet's network or broadcast address. */
export const ipReserved = (ip: string, subnet: string, what: "network" | "broadcast"): IpamError =>
  new IpamError("ip-reserved", 400, `invalid address ${ip}: it is the ${what} address of subnet ${subnet}`);

/** A VXLAN id that is not an integer in 1..16777215 (moby overlay driver wording). */
export const invalidVni = (v: unknown): IpamError =>
  new IpamError("invalid-vni", 400, `invalid vxlan id value ${JSON.stringify(String(v))} passed`);

// --- refused: 403 ----------------------------------------------------------------------------------------

/** An explicit subnet overlapping another network's (libnetwork ipamapi.ErrPoolOverlap, Forbidden). */
export const poolOverlap = (): IpamError => new IpamError("pool-overlap", 403, MSG_POOL_OVERLAP);

/** An `--ip` already held, or the gateway's (libnetwork ipamapi.ErrIPAlreadyAllocated, Forbidden). */
export const ipInUse = (): IpamError => new IpamError("ip-in-use", 403, MSG_IP_IN_USE);

/** A requested VXLAN id already used by another network (moby overlay driver + bitmap.ErrBitAllocated). */
export const vniInUse = (vni: number, pool?: string): IpamError =>
  new IpamError(
    "vni-in-use",
    403,
    `could not assign vxlan id ${vni}${pool ? ` to pool ${pool}` : ""}: requested bit is already allocated`,
  );

/**
 * A standalone container asking to join a network created without `--attachable` (swarmkit
 * resourceapi.AttachNetwork, PermissionDenied). dockerd prefixes it with "Could not attach to network <name>: ".
 */
export const notAttachable = (network: string): IpamError =>
  new IpamError("not-attachable", 403, `network ${network} not manually attachable`);

/** Removing a network that endpoints still use (libnetwork ActiveEndpointsError, Forbidden). */
export const networkInUse = (name: string, id: string): IpamError =>
  new IpamError("network-in-use", 403, `error while removing network: network ${name} id ${id} has active endpoints`);

// --- not found / conflict --------------------------------------------------------------------------------

/** No free subnet left in the default pools (libnetwork ipam, NotFound: dockerd answers 404). */
export const poolExhausted = (): IpamError => new IpamError("pool-exhausted", 404, MSG_POOL_EXHAUSTED);

/** A network name already taken (libnetwork NetworkNameError, Conflict). */
export const nameConflict = (name: string): IpamError =>
  new IpamError("name-conflict", 409, `network with name ${name} already exists`);

// --- exhausted: 500 (dockerd answers these with a plain error) -------------------------------------------

/** No free address left on the network (libnetwork endpoint.assignAddressVersion). */
export const ipExhausted = (network: { name: string; id: string } | string): IpamError =>
  new IpamError(
    "ip-exhausted",
    500,
    `no available IPv4 addresses on this network's address pools: ${
      typeof network === "string" ? network : `${network.name} (${network.id})`
    }`,
  );

/** No free VXLAN id left (moby overlay driver + bitmap.ErrNoBitAvailable). */
export const vniExhausted = (pool?: string): IpamError =>
  new IpamError("vni-exhausted", 500, `could not obtain vxlan id${pool ? ` for pool ${pool}` : ""}: no bit available`);
