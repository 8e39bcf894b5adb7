// What the cluster shows its users, in the Docker Engine API's shapes (the swarm with its join tokens, the
// Swarm section of /info, a network as docker network inspect shows it, node list filters and swarm update
// options). They are shoal's own presentation of its objects, so the manager builds them without importing
// the Engine API; src/engine serves them unchanged.

import type { ClusterInfo, LocalNodeState } from "./objects.js";

/** GET /swarm: the cluster plus its join tokens (managers only). */
export interface Swarm extends ClusterInfo {
  JoinTokens: { Worker: string; Manager: string };
}

export interface SwarmUpdateOptions {
  version: number;
  rotateWorkerToken: boolean;
  rotateManagerToken: boolean;
  rotateManagerUnlockKey: boolean;
}

/** The Swarm section of GET /info. */
export interface SwarmInfo {
  NodeID: string;
  NodeAddr: string;
  LocalNodeState: LocalNodeState;
  ControlAvailable: boolean;
  Error: string;
  RemoteManagers: { NodeID: string; Addr: string }[] | null;
  Nodes?: number;
  Managers?: number;
  Cluster?: ClusterInfo;
}

export interface NodeListFilters {
  id?: string[];
  label?: string[];
  "node.label"?: string[];
  membership?: string[];
  name?: string[];
  role?: string[];
}

export interface IPAMConfigEntry {
  Subnet?: string;
  Gateway?: string;
  IPRange?: string;
}

export interface NetworkContainer {
  Name: string;
  EndpointID: string;
  MacAddress: string;
  IPv4Address: string;
  IPv6Address: string;
}

/** GET /networks/{id}: Docker's NetworkResource. */
export interface NetworkResource {
  Name: string;
  Id: string;
  Created: string;
  Scope: "swarm" | "local";
  Driver: string;
  EnableIPv4: boolean;
  EnableIPv6: boolean;
  IPAM: { Driver: string; Options: Record<string, string> | null; Config: IPAMConfigEntry[] };
  Internal: boolean;
  Attachable: boolean;
  Ingress: boolean;
  ConfigFrom: { Network: string };
  ConfigOnly: boolean;
  /** This host's containers on the network. */
  Containers: Record<string, NetworkContainer>;
  Options: Record<string, string>;
  Labels: Record<string, string>;
  /** The nodes that hold the network now (overlay only). */
  Peers?: { Name: string; IP: string }[];
  /** shoal: for encrypted networks, what this host has installed (never keys). */
  Encryption?: unknown;
}
