import { describe, expect, it } from "vitest";
import { formatIpv4 } from "../../src/api/ipv4.js";
import { ApiError } from "../../src/engine/errors.js";
import { IpamError, MSG_IP_IN_USE, MSG_POOL_EXHAUSTED, MSG_POOL_OVERLAP } from "../../src/store/allocator/errors.js";
import {
  allocateIp,
  allocateNetwork,
  allocateSubnet,
  allocateVni,
  canonicalCidr,
  cidrContains,
  cidrOverlaps,
  defaultPoolConfig,
  FIRST_VNI,
  freeAddresses,
  gatewayOf,
  INGRESS_VNI,
  ipToInt,
  MAX_VNI,
  macFromIp,
  type NetworkAlloc,
  newNetworkAlloc,
  normalizePoolConfig,
  parseCidr,
  parseVxlanIdList,
  releaseIp,
} from "../../src/store/allocator/ipam.js";

/** Runs fn, expects an IpamError, returns it. */
function ipamError(fn: () => unknown): IpamError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(IpamError);
    expect(e).toBeInstanceOf(ApiError);
    return e as IpamError;
  }
  throw new Error("expected an IpamError");
}

/** Carves `n` subnets one after another, as successive network creations would. */
function carve(n: number, cfg?: Parameters<typeof allocateSubnet>[1], start: string[] = []): string[] {
  const existing = [...start];
  for (let i = 0; i < n; i++) existing.push(allocateSubnet(existing, cfg));
  return existing.slice(start.length);
}

const net = (subnet: string, gateway?: string): NetworkAlloc =>
  newNetworkAlloc(subnet, gatewayOf(subnet, gateway), 4097);

describe("addresses and CIDRs", () => {
  it("converts addresses both ways", () => {
    expect(ipToInt("10.0.1.2")).toBe(167772418);
    expect(ipToInt("255.255.255.255")).toBe(0xffffffff);
    expect(ipToInt("0.0.0.0")).toBe(0);
    expect(formatIpv4(167772418)).toBe("10.0.1.2");
    expect(formatIpv4(0xffffffff)).toBe("255.255.255.255");
    for (const bad of ["10.0.1", "10.0.1.256", "010.0.0.1", "10.0.0.1 ", "a.b.c.d", "::1", "", "10..0.1"]) {
      const e = ipamError(() => ipToInt(bad));
      expect(e.status).toBe(400);
      expect(e.message).toBe(`invalid IPv4 address: ${bad}`);
    }
  });

  it("parses CIDRs, strictly unless asked not to", () => {
    expect(parseCidr("10.0.1.0/24")).toEqual({
      base: ipToInt("10.0.1.0"),
      prefix: 24,
      size: 256,
      last: ipToInt("10.0.1.255"),
    });
    expect(parseCidr("0.0.0.0/0").size).toBe(2 ** 32);
    expect(canonicalCidr("10.0.1.7/24")).toBe("10.0.1.0/24");
    const e = ipamError(() => parseCidr("10.0.1.7/24"));
    expect(e.status).toBe(400);
    expect(e.message).toBe("invalid subnet 10.0.1.7/24: it should be 10.0.1.0/24");
    for (const bad of ["10.0.0.0", "10.0.0.0/33", "10.0.0.0/", "10.0.0.0/024", "10.0.0/8", "fd00::/64"]) {
      expect(ipamError(() => parseCidr(bad)).message).toBe(`invalid CIDR address: ${bad}`);
    }
  });

  it("tells overlap and containment", () => {
    expect(cidrOverlaps("10.0.0.0/8", "10.200.3.0/24")).toBe(true);
    expect(cidrOverlaps("10.0.1.0/24", "10.0.0.0/24")).toBe(false);
    expect(cidrOverlaps("10.0.0.0/23", "10.0.1.0/24")).toBe(true);
    expect(cidrOverlaps("10.0.1.0/24", "10.0.2.0/23")).toBe(false);
    expect(cidrContains("10.0.1.0/24", "10.0.1.255")).toBe(true);
    expect(cidrContains("10.0.1.0/24", "10.0.2.0")).toBe(false);
  });

  it("derives the MAC from the address", () => {
    expect(macFromIp("10.0.1.2")).toBe("02:42:0a:00:01:02");
    expect(macFromIp("172.18.255.254")).toBe("02:42:ac:12:ff:fe");
    expect(macFromIp("0.0.0.0")).toBe("02:42:00:00:00:00");
    expect(ipamError(() => macFromIp("10.0.1")).status).toBe(400);
  });
});

describe("subnets", () => {
  it("carves the default pool in order: ingress first, then 10.0.1.0/24, ...", () => {
    expect(allocateSubnet([])).toBe("10.0.0.0/24");
    expect(carve(4)).toEqual(["10.0.0.0/24", "10.0.1.0/24", "10.0.2.0/24", "10.0.3.0/24"]);
    expect(carve(300).at(-1)).toBe("10.1.43.0/24");
  });

  it("fills gaps left by removed networks, lowest first", () => {
    expect(allocateSubnet(["10.0.0.0/24", "10.0.2.0/24", "10.0.3.0/24"])).toBe("10.0.1.0/24");
    // the order of `existing` does not matter
    expect(allocateSubnet(["10.0.3.0/24", "10.0.0.0/24", "10.0.2.0/24"])).toBe("10.0.1.0/24");
  });

  it("steps round explicit subnets of any size in the middle of the pool", () => {
    // 10.0.2.0/23 covers .2 and .3; a /25 inside .5; a /16 over 10.1.0.0
    const start = ["10.0.0.0/24", "10.0.2.0/23", "10.0.5.128/25", "10.1.0.0/16"];
    expect(carve(3, undefined, start)).toEqual(["10.0.1.0/24", "10.0.4.0/24", "10.0.6.0/24"]);
    // 10.0.0.0/16 has 252 free /24s around them; the 253rd network skips 10.1.0.0/16 entirely
    const after = carve(253, undefined, start);
    expect(after.at(-2)).toBe("10.0.255.0/24");
    expect(after.at(-1)).toBe("10.2.0.0/24");
    expect(after).not.toContain("10.0.5.0/24");
    const all = [...start, ...after];
    const clashes: string[] = [];
    for (let i = 0; i < all.length; i++) {
      for (let j = i + 1; j < all.length; j++) if (cidrOverlaps(all[i]!, all[j]!)) clashes.push(`${all[i]} ${all[j]}`);
    }
    expect(clashes).toEqual([]);
  });

  it("does not carve inside an explicit subnet that is larger than the pool", () => {
    const e = ipamError(() => allocateSubnet(["10.0.0.0/8"]));
    expect(e.code).toBe("pool-exhausted");
  });

  it("runs out with a small pool: 10.0.0.0/22 in /24s holds 4 networks", () => {
    const cfg = { pools: ["10.0.0.0/22"], subnetSize: 24 };
    const four = carve(4, cfg);
    expect(four).toEqual(["10.0.0.0/24", "10.0.1.0/24", "10.0.2.0/24", "10.0.3.0/24"]);
    const e = ipamError(() => allocateSubnet(four, cfg));
    expect(e.code).toBe("pool-exhausted");
    expect(e.status).toBe(404);
    expect(e.message).toBe(MSG_POOL_EXHAUSTED);
    expect(e.message).toBe(
      "could not find an available, non-overlapping IPv4 address pool among the defaults to assign to the network",
    );
    // freeing one makes room again
    expect(allocateSubnet([four[0]!, four[1]!, four[3]!], cfg)).toBe("10.0.2.0/24");
  });

  it("moves on to the next pool when one is full", () => {
    const cfg = { pools: ["10.0.0.0/23", "192.168.0.0/16"], subnetSize: 24 };
    expect(carve(4, cfg)).toEqual(["10.0.0.0/24", "10.0.1.0/24", "192.168.0.0/24", "192.168.1.0/24"]);
  });

  it("honours a custom mask length", () => {
    expect(carve(3, { pools: ["10.0.0.0/8"], subnetSize: 16 })).toEqual(["10.0.0.0/16", "10.1.0.0/16", "10.2.0.0/16"]);
    expect(carve(3, { pools: ["10.20.0.0/16"], subnetSize: 29 })).toEqual([
      "10.20.0.0/29",
      "10.20.0.8/29",
      "10.20.0.16/29",
    ]);
    // a /29 pool carve next to an explicit /24: jumps to the first /29 after it
    expect(allocateSubnet(["10.20.0.0/24"], { pools: ["10.20.0.0/16"], subnetSize: 29 })).toBe("10.20.1.0/29");
    expect(carve(2, { pools: ["172.16.0.0/12"], subnetSize: 20 })).toEqual(["172.16.0.0/20", "172.16.16.0/20"]);
  });

  it("checks the pool configuration like swarm init does", () => {
    expect(normalizePoolConfig({})).toEqual(defaultPoolConfig());
    expect(normalizePoolConfig({ pools: [], subnetSize: 0 })).toEqual({ pools: ["10.0.0.0/8"], subnetSize: 24 });
    expect(normalizePoolConfig({ pools: [" 10.1.2.3/16 "] })).toEqual({ pools: ["10.1.0.0/16"], subnetSize: 24 });
    let e = ipamError(() => normalizePoolConfig({ subnetSize: 30 }));
    expect([e.status, e.code, e.message]).toEqual([400, "invalid-pool-config", "subnet size is out of range: 30"]);
    e = ipamError(() => normalizePoolConfig({ pools: ["10.0.0.0/16"], subnetSize: 12 }));
    expect(e.message).toBe('invalid CIDR: "10.0.0.0/16". Subnet size is too small for pool: 12');
    e = ipamError(() => normalizePoolConfig({ pools: ["10.0.0.0/99"] }));
    expect(e.message).toBe("invalid base pool 10.0.0.0/99: invalid CIDR address: 10.0.0.0/99");
    expect(ipamError(() => allocateSubnet([], { subnetSize: 31 })).code).toBe("invalid-pool-config");
  });

  it("takes an explicit subnet anywhere that overlaps no network, and refuses one that does", () => {
    const existing = ["10.0.0.0/24", "10.0.1.0/24"];
    expect(allocateSubnet(existing, undefined, "10.0.7.0/24")).toBe("10.0.7.0/24");
    expect(allocateSubnet(existing, undefined, "192.168.50.0/28")).toBe("192.168.50.0/28");
    for (const overlapping of ["10.0.1.0/24", "10.0.0.0/16", "10.0.1.128/25", "10.0.0.0/8"]) {
      const e = ipamError(() => allocateSubnet(existing, undefined, overlapping));
      expect([e.status, e.code, e.message]).toEqual([403, "pool-overlap", MSG_POOL_OVERLAP]);
    }
    expect(MSG_POOL_OVERLAP).toBe("Pool overlaps with other one on this address space");
  });

  it("checks an explicit subnet's form and prefix length", () => {
    expect(ipamError(() => allocateSubnet([], undefined, "10.0.1.1/24")).message).toBe(
      "invalid subnet 10.0.1.1/24: it should be 10.0.1.0/24",
    );
    expect(ipamError(() => allocateSubnet([], undefined, "10.0.0.0/31")).code).toBe("invalid-subnet");
    expect(ipamError(() => allocateSubnet([], undefined, "8.0.0.0/7")).code).toBe("invalid-subnet");
    expect(ipamError(() => allocateSubnet([], undefined, "banana")).code).toBe("invalid-cidr");
    expect(allocateSubnet([], undefined, "10.0.0.0/30")).toBe("10.0.0.0/30");
    expect(allocateSubnet([], undefined, "11.0.0.0/8")).toBe("11.0.0.0/8");
  });
});

describe("gateways", () => {
  it("is the first host address by default", () => {
    expect(gatewayOf("10.0.0.0/24")).toBe("10.0.0.1");
    expect(gatewayOf("10.0.4.0/22")).toBe("10.0.4.1");
    expect(gatewayOf("10.20.0.8/29")).toBe("10.20.0.9");
  });

  it("takes --gateway when it is a host address of the subnet", () => {
    expect(gatewayOf("10.0.0.0/24", "10.0.0.254")).toBe("10.0.0.254");
    let e = ipamError(() => gatewayOf("10.0.0.0/24", "10.0.1.1"));
    expect([e.status, e.code, e.message]).toEqual([400, "invalid-gateway", "no matching subnet for gateway 10.0.1.1"]);
    e = ipamError(() => gatewayOf("10.0.0.0/24", "10.0.0.0"));
    expect(e.message).toBe("invalid gateway 10.0.0.0: it is the network address of subnet 10.0.0.0/24");
    expect(ipamError(() => gatewayOf("10.0.0.0/24", "10.0.0.255")).code).toBe("invalid-gateway");
    expect(ipamError(() => gatewayOf("10.0.0.0/24", "x")).code).toBe("invalid-address");
  });
});

describe("VXLAN ids", () => {
  it("gives ingress 4096 and then the lowest free id from 4097", () => {
    expect(allocateVni([], { requested: INGRESS_VNI })).toBe(4096);
    expect(allocateVni([4096])).toBe(FIRST_VNI);
    expect(allocateVni([4096, 4097, 4098])).toBe(4099);
    // gaps are filled, lowest first; order of `used` does not matter
    expect(allocateVni([4099, 4096, 4097, 4100])).toBe(4098);
    expect(allocateVni([4096, 4097, 5000])).toBe(4098);
    expect(allocateVni([], { first: 10 })).toBe(10);
  });

  it("honours a requested id when free and refuses one in use", () => {
    expect(allocateVni([4096, 4097], { requested: 9000 })).toBe(9000);
    const e = ipamError(() => allocateVni([4096, 4097], { requested: 4097, pool: "10.0.1.0/24" }));
    expect([e.status, e.code, e.message]).toEqual([
      403,
      "vni-in-use",
      "could not assign vxlan id 4097 to pool 10.0.1.0/24: requested bit is already allocated",
    ]);
    for (const bad of [0, -1, MAX_VNI + 1, 1.5, Number.NaN]) {
      expect(ipamError(() => allocateVni([], { requested: bad })).code).toBe("invalid-vni");
    }
  });

  it("runs out above 16777215", () => {
    expect(allocateVni([MAX_VNI - 1], { first: MAX_VNI - 1 })).toBe(MAX_VNI);
    const e = ipamError(() => allocateVni([MAX_VNI - 1, MAX_VNI], { first: MAX_VNI - 1, pool: "10.0.9.0/24" }));
    expect([e.status, e.code, e.message]).toEqual([
      500,
      "vni-exhausted",
      "could not obtain vxlan id for pool 10.0.9.0/24: no bit available",
    ]);
  });

  it("parses the vxlanid_list driver option", () => {
    expect(parseVxlanIdList("4097")).toEqual([4097]);
    expect(parseVxlanIdList("4097, 5000")).toEqual([4097, 5000]);
    expect(ipamError(() => parseVxlanIdList("40x")).message).toBe('invalid vxlan id value "40x" passed');
    expect(ipamError(() => parseVxlanIdList("16777216")).code).toBe("invalid-vni");
  });
});

describe("networks", () => {
  it("creates ingress at swarm init: first /24 of the pool, first host as gateway, VNI 4096", () => {
    const ingress = allocateNetwork({ subnets: [], vnis: [] }, undefined, { vni: INGRESS_VNI });
    expect(ingress).toEqual({ subnet: "10.0.0.0/24", gateway: "10.0.0.1", vni: 4096, nextHost: 1, used: {} });
    const next = allocateNetwork({ subnets: [ingress.subnet], vnis: [ingress.vni] });
    expect(next).toMatchObject({ subnet: "10.0.1.0/24", gateway: "10.0.1.1", vni: 4097 });
    const custom = allocateNetwork(
      { subnets: [ingress.subnet, next.subnet], vnis: [4096, 4097] },
      { pools: ["192.168.0.0/16"], subnetSize: 24 },
    );
    expect(custom).toMatchObject({ subnet: "192.168.0.0/24", gateway: "192.168.0.1", vni: 4098 });
  });

  it("checks everything before choosing anything", () => {
    const existing = { subnets: ["10.0.0.0/24"], vnis: [4096] };
    const snapshot = JSON.stringify(existing);
    expect(
      ipamError(() => allocateNetwork(existing, undefined, { subnet: "10.5.0.0/24", gateway: "10.6.0.1" })).code,
    ).toBe("invalid-gateway");
    expect(ipamError(() => allocateNetwork(existing, undefined, { vni: 4096 })).code).toBe("vni-in-use");
    expect(ipamError(() => allocateNetwork(existing, undefined, { subnet: "10.0.0.0/23" })).code).toBe("pool-overlap");
    expect(JSON.stringify(existing)).toBe(snapshot);
    expect(allocateNetwork(existing, undefined, { subnet: "10.5.0.0/24", gateway: "10.5.0.254", vni: 7000 })).toEqual({
      subnet: "10.5.0.0/24",
      gateway: "10.5.0.254",
      vni: 7000,
      nextHost: 1,
      used: {},
    });
  });
});

describe("endpoint addresses", () => {
  it("hands out addresses serially after the gateway", () => {
    const n = net("10.0.1.0/24");
    expect(allocateIp(n, "ep1")).toBe("10.0.1.2");
    expect(allocateIp(n, "ep2")).toBe("10.0.1.3");
    expect(allocateIp(n, "ep3")).toBe("10.0.1.4");
    expect(n.used).toEqual({ "10.0.1.2": "ep1", "10.0.1.3": "ep2", "10.0.1.4": "ep3" });
    expect(n.nextHost).toBe(5);
    expect(macFromIp(n.gateway)).toBe("02:42:0a:00:01:01");
  });

  it("does not reuse a released address until the pointer wraps", () => {
    const n = net("10.0.1.0/29"); // hosts .1-.6, gateway .1
    expect([allocateIp(n, "a"), allocateIp(n, "b"), allocateIp(n, "c")]).toEqual(["10.0.1.2", "10.0.1.3", "10.0.1.4"]);
    expect(releaseIp(n, "10.0.1.3")).toBe(true);
    expect(allocateIp(n, "d")).toBe("10.0.1.5"); // not .3
    expect(allocateIp(n, "e")).toBe("10.0.1.6"); // last host; the pointer wraps
    expect(n.nextHost).toBe(1);
    expect(allocateIp(n, "f")).toBe("10.0.1.3"); // skips the gateway .1 and held .2, finds the freed .3
    expect(releaseIp(n, "10.0.1.2")).toBe(true);
    expect(releaseIp(n, "10.0.1.5")).toBe(true);
    expect(allocateIp(n, "g")).toBe("10.0.1.5"); // search continues from after .3: .4 held, .5 free
    expect(allocateIp(n, "h")).toBe("10.0.1.2");
  });

  it("releases only what is held, and only for its holder when asked", () => {
    const n = net("10.0.1.0/24");
    const ip = allocateIp(n, "ep1");
    expect(releaseIp(n, "10.0.1.99")).toBe(false);
    expect(releaseIp(n, n.gateway)).toBe(false);
    expect(releaseIp(n, ip, "someone-else")).toBe(false);
    expect(n.used[ip]).toBe("ep1");
    expect(releaseIp(n, ip, "ep1")).toBe(true);
    expect(releaseIp(n, ip, "ep1")).toBe(false);
    expect(n.used).toEqual({});
  });

  it("honours --ip when free, without moving the pointer", () => {
    const n = net("10.0.1.0/24");
    expect(allocateIp(n, "fixed", "10.0.1.3")).toBe("10.0.1.3");
    expect(n.nextHost).toBe(1);
    expect(allocateIp(n, "a")).toBe("10.0.1.2");
    expect(allocateIp(n, "b")).toBe("10.0.1.4"); // .3 is held
    expect(allocateIp(n, "high", "10.0.1.254")).toBe("10.0.1.254");
    expect(n.used["10.0.1.254"]).toBe("high");
  });

  it("refuses --ip in use, the gateway's, outside the subnet, or reserved, changing nothing", () => {
    const n = net("10.0.1.0/24");
    allocateIp(n, "a");
    const before = JSON.stringify(n);
    let e = ipamError(() => allocateIp(n, "b", "10.0.1.2"));
    expect([e.status, e.code, e.message]).toEqual([403, "ip-in-use", MSG_IP_IN_USE]);
    expect(MSG_IP_IN_USE).toBe("Address already in use");
    e = ipamError(() => allocateIp(n, "b", "10.0.1.1"));
    expect(e.code).toBe("ip-in-use");
    e = ipamError(() => allocateIp(n, "b", "10.0.2.5"));
    expect([e.status, e.code, e.message]).toEqual([
      400,
      "ip-out-of-subnet",
      "invalid address 10.0.2.5: It does not belong to any of this network's subnets",
    ]);
    e = ipamError(() => allocateIp(n, "b", "10.0.1.0"));
    expect([e.status, e.code]).toEqual([400, "ip-reserved"]);
    e = ipamError(() => allocateIp(n, "b", "10.0.1.255"));
    expect(e.message).toBe("invalid address 10.0.1.255: it is the broadcast address of subnet 10.0.1.0/24");
    expect(ipamError(() => allocateIp(n, "b", "10.0.1.300")).code).toBe("invalid-address");
    expect(JSON.stringify(n)).toBe(before);
  });

  it("runs out on a /29: 6 hosts minus the gateway leave 5 endpoints", () => {
    const n = net("10.0.9.0/29");
    expect(freeAddresses(n)).toBe(5);
    const ips = ["a", "b", "c", "d", "e"].map((id) => allocateIp(n, id));
    expect(ips).toEqual(["10.0.9.2", "10.0.9.3", "10.0.9.4", "10.0.9.5", "10.0.9.6"]);
    expect(freeAddresses(n)).toBe(0);
    const before = JSON.stringify(n);
    let e = ipamError(() => allocateIp(n, "f", undefined, { name: "backend", id: "k2x9q0" }));
    expect([e.status, e.code, e.message]).toEqual([
      500,
      "ip-exhausted",
      "no available IPv4 addresses on this network's address pools: backend (k2x9q0)",
    ]);
    e = ipamError(() => allocateIp(n, "f"));
    expect(e.message).toBe("no available IPv4 addresses on this network's address pools: 10.0.9.0/29");
    expect(JSON.stringify(n)).toBe(before);
    releaseIp(n, "10.0.9.4");
    expect(allocateIp(n, "f")).toBe("10.0.9.4");
  });

  it("skips a custom gateway wherever it is", () => {
    const n = net("10.0.9.0/29", "10.0.9.3");
    expect(["a", "b", "c", "d", "e"].map((id) => allocateIp(n, id))).toEqual([
      "10.0.9.1",
      "10.0.9.2",
      "10.0.9.4",
      "10.0.9.5",
      "10.0.9.6",
    ]);
    expect(ipamError(() => allocateIp(n, "f")).code).toBe("ip-exhausted");
  });

  it("copes with a pointer out of range (restores to the first host)", () => {
    const n = { ...net("10.0.1.0/24"), nextHost: 9999 };
    expect(allocateIp(n, "a")).toBe("10.0.1.2");
  });
});

describe("determinism", () => {
  /** A scripted run of network and endpoint operations, as a Raft log would replay them. */
  function replay(state: { cfg: ReturnType<typeof defaultPoolConfig>; nets: Record<string, NetworkAlloc> }): string[] {
    const out: string[] = [];
    const existing = () => ({
      subnets: Object.values(state.nets).map((n) => n.subnet),
      vnis: Object.values(state.nets).map((n) => n.vni),
    });
    state.nets.ingress = allocateNetwork(existing(), state.cfg, { vni: INGRESS_VNI });
    state.nets.front = allocateNetwork(existing(), state.cfg);
    state.nets.fixed = allocateNetwork(existing(), state.cfg, { subnet: "10.0.3.0/24" });
    state.nets.back = allocateNetwork(existing(), state.cfg);
    for (let i = 0; i < 20; i++) out.push(allocateIp(state.nets.front!, `ep${i}`));
    for (let i = 0; i < 20; i += 3) releaseIp(state.nets.front!, out[i]!);
    for (let i = 20; i < 30; i++) out.push(allocateIp(state.nets.front!, `ep${i}`));
    out.push(allocateIp(state.nets.back!, "vip", "10.0.2.200"));
    out.push(allocateIp(state.nets.back!, "lb"));
    return out;
  }

  it("gives the same result for the same operations, and the state round-trips through JSON", () => {
    const a = { cfg: defaultPoolConfig(), nets: {} as Record<string, NetworkAlloc> };
    const b = { cfg: defaultPoolConfig(), nets: {} as Record<string, NetworkAlloc> };
    const outA = replay(a);
    const outB = replay(b);
    expect(outA).toEqual(outB);
    expect(JSON.stringify(a)).toBe(JSON.stringify(b));
    expect(a.nets.back).toMatchObject({ subnet: "10.0.2.0/24", vni: 4099 });
    expect(a.nets.fixed).toMatchObject({ subnet: "10.0.3.0/24", vni: 4098 });

    // A new leader restores the state from a snapshot (JSON) and carries on exactly as the old one would.
    const restored = JSON.parse(JSON.stringify(a)) as typeof a;
    expect(restored).toEqual(a);
    const nextOld = [allocateIp(a.nets.front!, "x"), allocateIp(a.nets.front!, "y")];
    const nextNew = [allocateIp(restored.nets.front!, "x"), allocateIp(restored.nets.front!, "y")];
    expect(nextNew).toEqual(nextOld);
    expect(nextOld).toEqual(["10.0.1.32", "10.0.1.33"]); // serial: still not reusing the released .2, .5, ...
    expect(JSON.stringify(restored)).toBe(JSON.stringify(a));
    expect(
      allocateSubnet(
        Object.values(restored.nets).map((n) => n.subnet),
        restored.cfg,
      ),
    ).toBe("10.0.4.0/24");
  });

  it("does not mutate its inputs when it only computes", () => {
    const existing = ["10.0.2.0/24", "10.0.0.0/24"];
    const cfg = { pools: ["10.0.0.0/16"], subnetSize: 24 };
    const used = [4097, 4096];
    allocateSubnet(existing, cfg);
    allocateVni(used);
    expect(existing).toEqual(["10.0.2.0/24", "10.0.0.0/24"]);
    expect(cfg).toEqual({ pools: ["10.0.0.0/16"], subnetSize: 24 });
    expect(used).toEqual([4097, 4096]);
  });
});
