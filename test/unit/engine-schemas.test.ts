// src/engine/schemas: Docker's request types decoded as dockerd's Go decoder does (messages included), the
// fields shoal refuses unless zero, the bounds, and the conversion to what the daemon stores.

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, test } from "vitest";
import { ApiError } from "../../src/api/errors.js";
import { DEFAULT_SWARM_SPEC } from "../../src/api/objects.js";
import { parseFilters } from "../../src/engine/filters.js";
import {
  ContainerCreateBody,
  containerCreateFromRequest,
  ExecCreateBody,
  ExecStartBody,
} from "../../src/engine/schemas/container.js";
import { decode } from "../../src/engine/schemas/decode.js";
import { goInt, goMap, goSlice, goString, goStruct, ROOT, strSlice } from "../../src/engine/schemas/go.js";
import {
  NetworkConnectBody,
  NetworkCreateBody,
  NetworkDisconnectBody,
  networkSpecFromRequest,
} from "../../src/engine/schemas/network.js";
import { NodeSpecBody, nodeSpecFromRequest } from "../../src/engine/schemas/node.js";
import { decodeQuery } from "../../src/engine/schemas/query.js";
import {
  SwarmInitBody,
  SwarmJoinBody,
  SwarmSpecBody,
  SwarmUnlockBody,
  SwarmUpdateQuery,
  swarmInitFromRequest,
  swarmSpecFromRequest,
} from "../../src/engine/schemas/swarm.js";
import { parseGoDuration, parseTimestampMs } from "../../src/engine/timestamps.js";

/** The 400 message `decode` throws, or "ok". */
function refusal(schema: Parameters<typeof decode>[0], body: unknown, what = "request"): string {
  try {
    decode(schema, body, what);
    return "ok";
  } catch (e) {
    expect(e).toBeInstanceOf(ApiError);
    expect((e as ApiError).status).toBe(400);
    return (e as ApiError).message;
  }
}

function refused(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(ApiError);
    return (e as ApiError).message;
  }
  return "ok";
}

describe("Go's decoder, in its words", () => {
  test("a wrong type names the innermost struct, the field path, and the Go type", () => {
    expect(refusal(NetworkCreateBody, { Name: "t3", Labels: { a: 1 } })).toBe(
      "invalid JSON: json: cannot unmarshal number into Go struct field NetworkCreateRequest.Labels of type string",
    );
    expect(refusal(NetworkCreateBody, { Name: "t3", Internal: "yes" })).toBe(
      "invalid JSON: json: cannot unmarshal string into Go struct field NetworkCreateRequest.Internal of type bool",
    );
    expect(refusal(NetworkCreateBody, { Name: "t3", Attachable: 1 })).toBe(
      "invalid JSON: json: cannot unmarshal number into Go struct field NetworkCreateRequest.Attachable of type bool",
    );
    expect(refusal(NetworkCreateBody, { Name: "t3", IPAM: { Config: "x" } })).toBe(
      "invalid JSON: json: cannot unmarshal string into Go struct field IPAM.IPAM.Config of type []network.IPAMConfig",
    );
    expect(refusal(NetworkCreateBody, { Name: "t3", IPAM: { Config: [{ Subnet: 5 }] } })).toBe(
      "invalid JSON: json: cannot unmarshal number into Go struct field IPAMConfig.IPAM.Config.Subnet of type string",
    );
    expect(refusal(NodeSpecBody, { Labels: { n: 5 }, Role: "worker", Availability: "active" })).toBe(
      "invalid JSON: json: cannot unmarshal number into Go struct field NodeSpec.Labels of type string",
    );
    expect(refusal(SwarmSpecBody, { Dispatcher: { HeartbeatPeriod: "5s" } })).toBe(
      "invalid JSON: json: cannot unmarshal string into Go struct field DispatcherConfig.Dispatcher.HeartbeatPeriod of type time.Duration",
    );
    expect(
      refusal(ContainerCreateBody, { Image: "x", NetworkingConfig: { EndpointsConfig: { n: { Aliases: [5] } } } }),
    ).toBe(
      "invalid JSON: json: cannot unmarshal number into Go struct field EndpointSettings.NetworkingConfig.EndpointsConfig.Aliases of type string",
    );
    expect(refusal(ContainerCreateBody, { Env: "A=1" })).toBe(
      "invalid JSON: json: cannot unmarshal string into Go struct field CreateRequest.Env of type []string",
    );
  });

  test("the body itself of the wrong kind is a Go value of the request's type", () => {
    expect(refusal(NetworkCreateBody, [1])).toBe(
      "invalid JSON: json: cannot unmarshal array into Go value of type types.NetworkCreateRequest",
    );
    expect(refusal(SwarmJoinBody, "x")).toBe(
      "invalid JSON: json: cannot unmarshal string into Go value of type swarm.JoinRequest",
    );
  });

  test("integers: whole, in range, within what a JSON number holds exactly", () => {
    const t = goStruct("t.T", { N: goInt("uint32"), D: goInt("time.Duration"), B: goInt("uint16") });
    const s = t.at(ROOT);
    const msg = (v: unknown) => s.safeParse(v).error?.issues[0]?.message ?? "ok";
    expect(msg({ N: 1.5 })).toBe("json: cannot unmarshal number 1.5 into Go struct field T.N of type uint32");
    expect(msg({ N: -1 })).toBe("json: cannot unmarshal number -1 into Go struct field T.N of type uint32");
    expect(msg({ N: 2 ** 32 })).toBe(
      "json: cannot unmarshal number 4294967296 into Go struct field T.N of type uint32",
    );
    expect(msg({ B: 65536 })).toBe("json: cannot unmarshal number 65536 into Go struct field T.B of type uint16");
    expect(msg({ D: 2 ** 60 })).toMatch(/^json: cannot unmarshal number 1152921504606847000 into Go struct field T.D/);
    expect(msg({ N: 7, D: -5, B: 0 })).toBe("ok");
  });

  test("an unknown field is refused as DisallowUnknownFields does; names match in any case, the last wins", () => {
    expect(refusal(NetworkCreateBody, { Name: "t3", Junk: 1 })).toBe('invalid JSON: json: unknown field "Junk"');
    expect(refusal(ContainerCreateBody, { HostConfig: { Bogus: true } })).toBe(
      'invalid JSON: json: unknown field "Bogus"',
    );
    expect(refusal(NetworkCreateBody, { Name: "x", __proto__x: 1 })).toBe(
      'invalid JSON: json: unknown field "__proto__x"',
    );
    expect(refusal(NetworkCreateBody, JSON.parse('{"Name":"x","__proto__":{"Internal":true}}'))).toBe(
      'invalid JSON: json: unknown field "__proto__"',
    );
    const r = decode(NetworkCreateBody, { name: "a", NAME: "b", labels: { k: "v" }, ATTACHABLE: true }, "x");
    expect(r).toEqual({ Name: "b", Labels: { k: "v" }, Attachable: true });
  });

  test("null and absent are the zero value; a map keeps a key such as __proto__", () => {
    expect(decode(NetworkCreateBody, { Name: "n", Labels: null, Internal: null, IPAM: null }, "x")).toEqual({
      Name: "n",
      Internal: false,
    });
    const m = goMap(goString(), 8).at(ROOT).parse(JSON.parse('{"__proto__":"x","a":null}')) as Record<string, string>;
    expect(Object.keys(m)).toEqual(["__proto__", "a"]);
    expect(Object.getPrototypeOf(m)).toBe(Object.prototype);
    expect(m.a).toBe("");
  });

  test("Docker's strslice takes one string or a list", () => {
    const s = strSlice(4).at(ROOT);
    expect(s.parse("echo hi")).toEqual(["echo hi"]);
    expect(s.parse(["a", "b"])).toEqual(["a", "b"]);
    expect(s.parse(null)).toBeUndefined();
    expect(s.safeParse(["a", 1]).error?.issues[0]?.message).toBe(
      "json: cannot unmarshal number into Go value of type string",
    );
    expect(goSlice(goString(), 2).at(ROOT).safeParse(["a", "b", "c"]).error?.issues[0]?.message).toBe(
      "at most 2 entries (3 given)",
    );
  });

  test("a Go type error comes before any other problem, as Go decodes before anything is checked", () => {
    expect(
      refusal(NetworkCreateBody, { Name: "x".repeat(300), IPAM: { Config: [{ IPRange: "10.0.0.0/8" }] }, Ingress: 1 }),
    ).toBe(
      "invalid JSON: json: cannot unmarshal number into Go struct field NetworkCreateRequest.Ingress of type bool",
    );
  });
});

describe("every field of Docker's API is known (API 1.25 to 1.50)", () => {
  const zero = JSON.parse(
    readFileSync(join(import.meta.dirname, "fixtures/engine-api-zero-bodies.json"), "utf8"),
  ) as Record<string, unknown>;
  const schemas: [string, Parameters<typeof decode>[0], Record<string, unknown>][] = [
    // Fields of the Go types the specs leave out: init/join's Availability and AutoLockManagers, exec's
    // Detach (docker CLI) and Container (Docker's Python SDK).
    ["POST /swarm/init", SwarmInitBody, { Availability: "", AutoLockManagers: false }],
    ["POST /swarm/join", SwarmJoinBody, { Availability: "" }],
    ["POST /swarm/update", SwarmSpecBody, {}],
    ["POST /swarm/unlock", SwarmUnlockBody, {}],
    ["POST /nodes/{id}/update", NodeSpecBody, {}],
    ["POST /networks/create", NetworkCreateBody, {}],
    ["POST /networks/{id}/connect", NetworkConnectBody, {}],
    ["POST /networks/{id}/disconnect", NetworkDisconnectBody, {}],
    ["POST /containers/create", ContainerCreateBody, {}],
    ["POST /containers/{id}/exec", ExecCreateBody, { Detach: false, Container: "c1" }],
    ["POST /exec/{id}/start", ExecStartBody, {}],
  ];
  for (const [route, schema, extra] of schemas) {
    test(route, () => {
      const body = { ...(zero[route] as Record<string, unknown>), ...extra };
      expect(Object.keys(body).length).toBeGreaterThan(0);
      const r = schema.safeParse(body);
      const goIssues = (r.error?.issues ?? []).filter((i) => i.message.startsWith("json: "));
      expect(goIssues).toEqual([]);
    });
  }
});

describe("what real clients send is accepted", () => {
  test("docker CLI 28.2.2: run, network create/connect, swarm init/update, node update", () => {
    const run = JSON.parse(
      '{"Hostname":"hh","Domainname":"","User":"","AttachStdin":true,"AttachStdout":true,"AttachStderr":true,"Tty":true,"OpenStdin":true,"StdinOnce":true,"Env":["X=1"],"Cmd":["-c","x"],"Image":"alpine","Volumes":{},"WorkingDir":"/tmp","Entrypoint":["/bin/sh"],"OnBuild":null,"Labels":{"k":"v"},"StopSignal":"SIGTERM","StopTimeout":3,"HostConfig":{"Binds":null,"ContainerIDFile":"","LogConfig":{"Type":"","Config":{}},"NetworkMode":"nn","PortBindings":{},"RestartPolicy":{"Name":"no","MaximumRetryCount":0},"AutoRemove":true,"VolumeDriver":"","VolumesFrom":null,"ConsoleSize":[24,80],"CapAdd":null,"CapDrop":null,"CgroupnsMode":"","Dns":[],"DnsOptions":[],"DnsSearch":[],"ExtraHosts":null,"GroupAdd":null,"IpcMode":"","Cgroup":"","Links":null,"OomScoreAdj":0,"PidMode":"","Privileged":false,"PublishAllPorts":false,"ReadonlyRootfs":false,"SecurityOpt":null,"UTSMode":"","UsernsMode":"","ShmSize":0,"Isolation":"","CpuShares":0,"Memory":0,"NanoCpus":0,"CgroupParent":"","BlkioWeight":0,"BlkioWeightDevice":[],"BlkioDeviceReadBps":[],"BlkioDeviceWriteBps":[],"BlkioDeviceReadIOps":[],"BlkioDeviceWriteIOps":[],"CpuPeriod":0,"CpuQuota":0,"CpuRealtimePeriod":0,"CpuRealtimeRuntime":0,"CpusetCpus":"","CpusetMems":"","Devices":[],"DeviceCgroupRules":null,"DeviceRequests":null,"MemoryReservation":0,"MemorySwap":0,"MemorySwappiness":-1,"OomKillDisable":false,"PidsLimit":0,"Ulimits":[],"CpuCount":0,"CpuPercent":0,"IOMaximumIOps":0,"IOMaximumBandwidth":0,"MaskedPaths":null,"ReadonlyPaths":null},"NetworkingConfig":{"EndpointsConfig":{"nn":{"IPAMConfig":{"IPv4Address":"10.0.0.5"},"Links":null,"Aliases":["a1"],"MacAddress":"","DriverOpts":null,"GwPriority":0,"NetworkID":"","EndpointID":"","Gateway":"","IPAddress":"","IPPrefixLen":0,"IPv6Gateway":"","GlobalIPv6Address":"","GlobalIPv6PrefixLen":0,"DNSNames":null}}}}',
    );
    expect(containerCreateFromRequest(decode(ContainerCreateBody, run, "x"))).toEqual({
      Hostname: "hh",
      Tty: true,
      OpenStdin: true,
      StdinOnce: true,
      Env: ["X=1"],
      Cmd: ["-c", "x"],
      Image: "alpine",
      WorkingDir: "/tmp",
      Entrypoint: ["/bin/sh"],
      Labels: { k: "v" },
      StopSignal: "SIGTERM",
      StopTimeout: 3,
      HostConfig: { NetworkMode: "nn", AutoRemove: true },
      NetworkingConfig: { EndpointsConfig: { nn: { IPAMConfig: { IPv4Address: "10.0.0.5" }, Aliases: ["a1"] } } },
    });
    const net = JSON.parse(
      '{"Driver":"overlay","Scope":"","IPAM":{"Driver":"default","Options":{},"Config":[{"Subnet":"10.1.0.0/24","Gateway":"10.1.0.1"}]},"Internal":false,"Attachable":true,"Ingress":false,"ConfigOnly":false,"ConfigFrom":null,"Options":{"encrypted":""},"Labels":{"a":"b"},"Name":"nn"}',
    );
    expect(networkSpecFromRequest(decode(NetworkCreateBody, net, "x"))).toEqual({
      name: "nn",
      driver: "overlay",
      internal: false,
      attachable: true,
      ingress: false,
      options: { encrypted: "" },
      labels: { a: "b" },
      subnet: "10.1.0.0/24",
      gateway: "10.1.0.1",
    });
    const connect = JSON.parse(
      '{"Container":"c1","EndpointConfig":{"IPAMConfig":{"IPv4Address":"10.1.0.9"},"Links":null,"Aliases":["x"],"MacAddress":"","DriverOpts":{},"GwPriority":0,"NetworkID":"","EndpointID":"","Gateway":"","IPAddress":"","IPPrefixLen":0,"IPv6Gateway":"","GlobalIPv6Address":"","GlobalIPv6PrefixLen":0,"DNSNames":null}}',
    );
    expect(refusal(NetworkConnectBody, connect)).toBe("ok");
    const init = JSON.parse(
      '{"ListenAddr":"0.0.0.0:2377","AdvertiseAddr":"127.0.0.1","DataPathAddr":"","DataPathPort":0,"ForceNewCluster":false,"Spec":{"Labels":null,"Orchestration":{},"Raft":{"ElectionTick":0,"HeartbeatTick":0},"Dispatcher":{},"CAConfig":{},"TaskDefaults":{},"EncryptionConfig":{"AutoLockManagers":false}},"AutoLockManagers":false,"Availability":"","DefaultAddrPool":[],"SubnetSize":24}',
    );
    expect(swarmInitFromRequest(decode(SwarmInitBody, init, "x"), "1.50").spec).toEqual(DEFAULT_SWARM_SPEC);
    const update = JSON.parse(
      '{"Name":"default","Labels":{},"Orchestration":{"TaskHistoryRetentionLimit":5},"Raft":{"SnapshotInterval":10000,"KeepOldSnapshots":0,"LogEntriesForSlowFollowers":500,"ElectionTick":10,"HeartbeatTick":1},"Dispatcher":{"HeartbeatPeriod":5000000000},"CAConfig":{"NodeCertExpiry":7776000000000000},"TaskDefaults":{},"EncryptionConfig":{"AutoLockManagers":false}}',
    );
    expect(swarmSpecFromRequest(decode(SwarmSpecBody, update, "x"))).toEqual(DEFAULT_SWARM_SPEC);
    expect(
      nodeSpecFromRequest(decode(NodeSpecBody, { Labels: { a: "b" }, Role: "worker", Availability: "active" }, "x")),
    ).toEqual({
      Labels: { a: "b" },
      Role: "worker",
      Availability: "active",
    });
  });

  test("Docker's Python SDK: partial specs, exec's Container, nulls", () => {
    expect(swarmSpecFromRequest(decode(SwarmSpecBody, {}, "x"))).toEqual(DEFAULT_SWARM_SPEC);
    expect(
      swarmSpecFromRequest(decode(SwarmSpecBody, { CAConfig: { NodeCertExpiry: 7776000000000000 } }, "x")),
    ).toEqual(DEFAULT_SWARM_SPEC);
    const init = {
      AdvertiseAddr: "127.0.0.1",
      ListenAddr: "0.0.0.0:2377",
      ForceNewCluster: false,
      Spec: {
        Raft: {
          SnapshotInterval: 10000,
          KeepOldSnapshots: null,
          LogEntriesForSlowFollowers: null,
          HeartbeatTick: null,
          ElectionTick: null,
        },
        Name: "default",
      },
    };
    expect(swarmInitFromRequest(decode(SwarmInitBody, init, "x"), "1.50").spec).toEqual(DEFAULT_SWARM_SPEC);
    expect(
      refusal(ExecCreateBody, {
        Container: "c2",
        User: "",
        Privileged: false,
        Tty: false,
        AttachStdin: false,
        AttachStdout: true,
        AttachStderr: true,
        Cmd: ["ls"],
      }),
    ).toBe("ok");
    expect(
      refusal(NetworkCreateBody, {
        Name: "n1",
        Driver: "overlay",
        IPAM: {
          Driver: "default",
          Config: [{ Subnet: "10.2.0.0/24", IPRange: null, Gateway: null, AuxiliaryAddresses: null }],
        },
        Labels: { a: "b" },
        Attachable: true,
      }),
    ).toBe("ok");
    expect(
      refusal(ContainerCreateBody, {
        Tty: false,
        OpenStdin: false,
        StdinOnce: false,
        AttachStdin: false,
        AttachStdout: true,
        AttachStderr: true,
        Cmd: ["sleep", "1"],
        Image: "alpine",
        NetworkDisabled: false,
        HostConfig: { NetworkMode: "n1" },
        NetworkingConfig: { EndpointsConfig: { n1: { Aliases: ["y"] } } },
      }),
    ).toBe("ok");
  });
});

describe("what shoal does not carry out is refused when asked for, never stored and ignored", () => {
  test("what the runtime carries out reaches it: user, binds, memory, CPUs, restart policy", () => {
    const req = containerCreateFromRequest(
      decode(
        ContainerCreateBody,
        {
          User: "nobody",
          Image: "busybox",
          HostConfig: {
            Binds: ["/srv:/data:ro"],
            Memory: 64 << 20,
            NanoCpus: 5e8,
            RestartPolicy: { Name: "on-failure", MaximumRetryCount: 3 },
          },
        },
        "x",
      ),
    );
    expect(req.User).toBe("nobody");
    expect(req.HostConfig).toEqual({
      AutoRemove: false,
      Binds: ["/srv:/data:ro"],
      Memory: 64 << 20,
      NanoCpus: 5e8,
      RestartPolicy: { Name: "on-failure", MaximumRetryCount: 3 },
    });
  });

  test("container features, naming the field and the flag", () => {
    expect(refusal(ContainerCreateBody, { HostConfig: { Privileged: true } })).toBe(
      "HostConfig.Privileged (--privileged) is not supported by shoal: leave it unset",
    );
    expect(refusal(ContainerCreateBody, { HostConfig: { PortBindings: { "80/tcp": [{ HostPort: "8080" }] } } })).toBe(
      "HostConfig.PortBindings (-p) is not supported by shoal: leave it unset",
    );
    expect(refusal(ContainerCreateBody, { HostConfig: { CpuShares: 512 } })).toBe(
      "HostConfig.CpuShares (--cpu-shares) is not supported by shoal: leave it unset",
    );
    expect(refusal(ContainerCreateBody, { HostConfig: { Memory: -1 } })).toBe(
      "invalid request: HostConfig.Memory: --memory cannot be negative",
    );
    expect(
      refusal(ContainerCreateBody, {
        NetworkingConfig: { EndpointsConfig: { n: { IPAMConfig: { IPv6Address: "::1" } } } },
      }),
    ).toBe(
      "NetworkingConfig.EndpointsConfig.n.IPAMConfig.IPv6Address (--ip6) is not supported by shoal: leave it unset",
    );
    // The zero values, and the CLI's own "unset" values, are fine.
    expect(
      refusal(ContainerCreateBody, {
        HostConfig: {
          MemorySwappiness: -1,
          PidsLimit: -1,
          RestartPolicy: { Name: "no" },
          LogConfig: { Type: "json-file" },
        },
      }),
    ).toBe("ok");
  });

  test("network features", () => {
    expect(
      refusal(NetworkCreateBody, { Name: "n", IPAM: { Config: [{ Subnet: "10.0.0.0/24", IPRange: "10.0.0.0/25" }] } }),
    ).toBe("IPAM.Config[0].IPRange (--ip-range) is not supported by shoal: leave it unset");
    expect(refusal(NetworkCreateBody, { Name: "n", ConfigOnly: true })).toBe(
      "ConfigOnly (--config-only) is not supported by shoal: leave it unset",
    );
    expect(refusal(NetworkCreateBody, { Name: "n", IPAM: { Driver: "dhcp" } })).toBe(
      "IPAM.Driver (--ipam-driver) is not supported by shoal: leave it unset",
    );
    expect(refusal(NetworkConnectBody, { Container: "c", EndpointConfig: { Links: ["a:b"] } })).toBe(
      "EndpointConfig.Links (--link) is not supported by shoal: leave it unset",
    );
  });

  test("swarm settings shoal carries out: cert expiry, autolock, root CA rotation", () => {
    const spec = swarmSpecFromRequest(
      decode(
        SwarmSpecBody,
        { CAConfig: { NodeCertExpiry: 3600e9, ForceRotate: 2 }, EncryptionConfig: { AutoLockManagers: true } },
        "x",
      ),
    );
    expect(spec.CAConfig).toEqual({ NodeCertExpiry: 3600e9, ForceRotate: 2 });
    expect(spec.EncryptionConfig).toEqual({ AutoLockManagers: true });
    const init = swarmInitFromRequest(decode(SwarmInitBody, { AutoLockManagers: true }, "x"), "1.50");
    expect(init.spec.EncryptionConfig).toEqual({ AutoLockManagers: true });
  });

  test("swarm settings: the defaults the CLI sends back pass, others are refused until shoal carries them out", () => {
    expect(refusal(SwarmSpecBody, { Raft: { SnapshotInterval: 5000 } })).toBe(
      "Raft.SnapshotInterval (--snapshot-interval) is not supported by shoal: leave it unset",
    );
    expect(refusal(SwarmSpecBody, { CAConfig: { NodeCertExpiry: -1 } })).toBe(
      "invalid request: CAConfig.NodeCertExpiry: node certificate expiry cannot be a negative duration",
    );
    expect(refusal(SwarmSpecBody, { CAConfig: { ExternalCAs: [{ Protocol: "cfssl", URL: "https://ca" }] } })).toBe(
      "CAConfig.ExternalCAs (--external-ca) is not supported by shoal: leave it unset",
    );
    expect(refusal(SwarmSpecBody, { Orchestration: { TaskHistoryRetentionLimit: 0 } })).toBe(
      "Orchestration.TaskHistoryRetentionLimit (--task-history-limit) is not supported by shoal: leave it unset",
    );
  });
});

describe("conversion to what the daemon stores", () => {
  test("a swarm spec: zero is the default; the heartbeat is carried out; the name must be default", () => {
    const spec = swarmSpecFromRequest(
      decode(SwarmSpecBody, { Labels: { a: "b" }, Dispatcher: { HeartbeatPeriod: 1e9 } }, "x"),
    );
    expect(spec).toEqual({ ...DEFAULT_SWARM_SPEC, Labels: { a: "b" }, Dispatcher: { HeartbeatPeriod: 1e9 } });
    expect(refusal(SwarmSpecBody, { Dispatcher: { HeartbeatPeriod: -1 } })).toBe(
      "invalid request: Dispatcher.HeartbeatPeriod: heartbeat time period cannot be a negative duration",
    );
    expect(refusal(SwarmSpecBody, { Dispatcher: { HeartbeatPeriod: 1000 } })).toMatch(
      /^invalid request: Dispatcher.HeartbeatPeriod: must be between 100ms and 24h/,
    );
    expect(refused(() => swarmSpecFromRequest(decode(SwarmSpecBody, { Name: "prod" }, "x")))).toBe(
      'swarm spec must be named "default"',
    );
  });

  test("init: fields newer than the client's API version are ignored, as dockerd does", () => {
    const body = decode(SwarmInitBody, { DefaultAddrPool: ["10.9.0.0/16"], SubnetSize: 26, DataPathPort: 4790 }, "x");
    expect(swarmInitFromRequest(body, "1.38")).toMatchObject({ defaultAddrPool: [], subnetSize: 0, dataPathPort: 0 });
    expect(swarmInitFromRequest(body, "1.40")).toMatchObject({
      defaultAddrPool: ["10.9.0.0/16"],
      subnetSize: 26,
      dataPathPort: 4790,
    });
    expect(refusal(SwarmInitBody, { DefaultAddrPool: ["10.9.0.0"] })).toBe(
      "invalid request: DefaultAddrPool[0]: must be an IPv4 CIDR (a.b.c.d/n)",
    );
    expect(refused(() => swarmInitFromRequest(decode(SwarmInitBody, { Availability: "away" }, "x"), "1.50"))).toBe(
      'invalid Availability: "away"',
    );
  });

  test("a node spec: role and availability required, in any case", () => {
    expect(refused(() => nodeSpecFromRequest(decode(NodeSpecBody, {}, "x")))).toBe('invalid Role: ""');
    expect(
      refused(() => nodeSpecFromRequest(decode(NodeSpecBody, { Role: "boss", Availability: "active" }, "x"))),
    ).toBe('invalid Role: "boss"');
    expect(refused(() => nodeSpecFromRequest(decode(NodeSpecBody, { Role: "worker" }, "x")))).toBe(
      'invalid Availability: ""',
    );
    expect(nodeSpecFromRequest(decode(NodeSpecBody, { Role: "MANAGER", Availability: "Drain" }, "x"))).toEqual({
      Labels: {},
      Role: "manager",
      Availability: "drain",
    });
  });

  test("a network: name, driver, one subnet, the MTU option", () => {
    const spec = (b: unknown) => networkSpecFromRequest(decode(NetworkCreateBody, b, "x"));
    expect(refused(() => spec({}))).toBe("network name must not be empty");
    expect(refused(() => spec({ Name: "x".repeat(10_000) }))).toBe(
      "invalid network name: it must be at most 255 characters (10000 given)",
    );
    expect(refused(() => spec({ Name: "-x" }))).toBe(
      'invalid network name "-x": only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed',
    );
    expect(refused(() => spec({ Name: "n", Driver: "bridge" }))).toMatch(/^network driver "bridge" is not supported/);
    expect(refused(() => spec({ Name: "n", EnableIPv6: true }))).toBe(
      "IPv6 is not supported on shoal overlay networks yet",
    );
    expect(refused(() => spec({ Name: "n", Options: { "com.docker.network.driver.mtu": "9x" } }))).toMatch(
      /^invalid value for com.docker.network.driver.mtu/,
    );
    expect(
      refused(() => spec({ Name: "n", IPAM: { Config: [{ Subnet: "10.0.0.0/24" }, { Subnet: "10.0.1.0/24" }] } })),
    ).toBe("shoal overlay networks take a single IPv4 subnet");
    expect(refusal(NetworkCreateBody, { Name: "n", IPAM: { Config: [{ Subnet: "10.0.0.0" }] } })).toBe(
      "invalid request: IPAM.Config[0].Subnet: must be an IPv4 CIDR (a.b.c.d/n)",
    );
  });
});

describe("sizes are bounded, each with its own error", () => {
  test("labels, options, aliases, env, commands", () => {
    const many = Object.fromEntries(Array.from({ length: 300 }, (_, i) => [`k${i}`, "v"]));
    expect(refusal(NetworkCreateBody, { Name: "n", Labels: many })).toBe(
      "invalid request: Labels: at most 256 entries (300 given)",
    );
    expect(refusal(NetworkCreateBody, { Name: "n", Labels: { big: "x".repeat(3_900_000) } })).toBe(
      "invalid request: Labels.big: values must be at most 16384 bytes",
    );
    expect(refusal(NodeSpecBody, { Labels: { ["k".repeat(2000)]: "v" } })).toBe(
      `invalid request: Labels.${"k".repeat(32)}...(2000 characters): keys must be at most 1024 bytes`,
    );
    expect(
      refusal(NetworkCreateBody, {
        Name: "n",
        Options: Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`o${i}`, ""])),
      }),
    ).toBe("invalid request: Options: at most 64 entries (65 given)");
    expect(
      refusal(NetworkConnectBody, {
        Container: "c",
        EndpointConfig: { Aliases: Array.from({ length: 65 }, (_, i) => `a${i}`) },
      }),
    ).toBe("invalid request: EndpointConfig.Aliases: at most 64 entries (65 given)");
    expect(refusal(NetworkConnectBody, { Container: "c", EndpointConfig: { Aliases: ["a b"] } })).toMatch(
      /^invalid request: EndpointConfig.Aliases\[0\]: must be a DNS name/,
    );
    expect(refusal(ContainerCreateBody, { Env: Array.from({ length: 1025 }, (_, i) => `V${i}=1`) })).toBe(
      "invalid request: Env: at most 1024 entries (1025 given)",
    );
    expect(refusal(ContainerCreateBody, { Cmd: ["x".repeat(300_000)] })).toBe(
      "invalid request: Cmd: at most 262144 bytes in all (300000)",
    );
    expect(refusal(ContainerCreateBody, { Image: "i".repeat(2000) })).toBe(
      "invalid request: Image: must be at most 1024 characters",
    );
  });
});

describe("query parameters", () => {
  test("the swarm update's version and flags, in dockerd's words", () => {
    const q = (s: string) => decodeQuery(SwarmUpdateQuery, new URLSearchParams(s));
    expect(q("version=7&rotateWorkerToken=True")).toEqual({
      version: 7,
      rotateWorkerToken: true,
      rotateManagerToken: false,
      rotateManagerUnlockKey: false,
    });
    expect(refused(() => q("version=x"))).toBe(
      `invalid swarm version 'x': strconv.ParseUint: parsing "x": invalid syntax`,
    );
    expect(refused(() => q("version=99999999999999999999"))).toBe(
      `invalid swarm version '99999999999999999999': strconv.ParseUint: parsing "99999999999999999999": value out of range`,
    );
    expect(refused(() => q("version=1&rotateManagerToken=yes"))).toBe("invalid value for rotateManagerToken: yes");
    // The first value counts, as Go's r.Form.Get takes it; unknown parameters are ignored, as in dockerd.
    expect(q("version=3&version=x&whatever=1").version).toBe(3);
  });

  test("filters: both encodings, bounded, a __proto__ key stays a key", () => {
    expect(parseFilters('{"label":["a"],"until":{"1h":true}}')).toEqual({ label: ["a"], until: ["1h"] });
    expect(Object.keys(parseFilters('{"__proto__":["x"]}'))).toEqual(["__proto__"]);
    const keys = Object.fromEntries(Array.from({ length: 40 }, (_, i) => [`k${i}`, ["v"]]));
    expect(refused(() => parseFilters(JSON.stringify(keys)))).toMatch(/^invalid filter '/);
    expect(refused(() => parseFilters(`{"a":[${'"v",'.repeat(3000)}"v"]}`))).toMatch(/^invalid filter/);
    expect(refused(() => parseFilters(`${"[".repeat(100)}${"]".repeat(100)}`))).toMatch(/^invalid filter/);
  });
});

describe("times, as dockerd reads them", () => {
  test("Go durations", () => {
    expect(parseGoDuration("1h30m")).toBe(5400e9);
    expect(parseGoDuration("1.5s")).toBe(1.5e9);
    expect(parseGoDuration("-2m")).toBe(-120e9);
    expect(parseGoDuration("10")).toBeUndefined();
    expect(parseGoDuration("h")).toBeUndefined();
  });

  test("a duration ago, RFC 3339, Unix seconds; anything else refused", () => {
    const now = Date.UTC(2030, 0, 2, 3, 4, 5);
    expect(parseTimestampMs("1h", now)).toBe(now - 3600_000);
    expect(parseTimestampMs("2030-01-02T03:04:05Z", now)).toBe(now);
    expect(parseTimestampMs("2030-01-02T03:04:05.5+01:00", now)).toBe(now - 3600_000 + 500);
    expect(parseTimestampMs("1893553445", now)).toBe(1893553445_000);
    expect(parseTimestampMs("1893553445.25", now)).toBe(1893553445_250);
    expect(refused(() => parseTimestampMs("yesterday", now))).toBe(
      'failed to parse value as time or duration: "yesterday"',
    );
  });
});
