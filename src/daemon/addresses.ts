// The addresses of a swarm member: where the manager listens (--listen-addr), what other nodes reach it at
// (--advertise-addr: an IP, IP:port or an interface name) and the interface of its data-path address (the
// VXLAN underlay). Errors are Docker's words.

import { networkInterfaces } from "node:os";
import { ApiError, badRequest } from "../api/errors.js";
import { parseIpv4 } from "../api/ipv4.js";
import { CLUSTER_PORT } from "../api/ports.js";
import { splitHostPort } from "../manager/listener.js";

export const DEFAULT_LISTEN_PORT = CLUSTER_PORT;

export interface ListenAddr {
  host: string;
  port: number;
}

export function parseListenAddr(a: string | undefined): ListenAddr {
  const text = a && a.length > 0 ? a : `0.0.0.0:${DEFAULT_LISTEN_PORT}`;
  const [host, portText] = text.includes(":") ? splitHostPort(text) : [text, String(DEFAULT_LISTEN_PORT)];
  const port = Number(portText);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw badRequest(`invalid listen address ${text}: bad port`);
  if (!isIpv4Text(host)) throw badRequest(`invalid listen address ${text}: shoal listens on an IPv4 address`);
  return { host, port };
}

/**
 * The address other nodes reach this one at: an IP, IP:port, or an interface name. Without one, the
 * listen address if it is specific, else the only non-loopback IPv4 address, else the address this host
 * uses to reach `remote`; with several candidates, the error Docker gives.
 */
export function resolveAdvertiseAddr(
  given: string | undefined,
  listen: ListenAddr,
  remote?: string,
): { ip: string; port: number } {
  if (given && given.length > 0) {
    const [h, p] = given.includes(":") ? splitHostPort(given) : [given, String(listen.port)];
    const port = Number(p);
    if (isIpv4Text(h)) return { ip: h, port };
    const iface = networkInterfaces()[h];
    const v4 = iface?.find((x) => x.family === "IPv4");
    if (!v4)
      throw badRequest(
        `advertise address must be a non-zero IP address or network interface (with optional port number)`,
      );
    return { ip: v4.address, port };
  }
  if (listen.host !== "0.0.0.0") return { ip: listen.host, port: listen.port };
  if (remote) {
    const [rh] = splitHostPort(remote);
    if (rh.startsWith("127.")) return { ip: "127.0.0.1", port: listen.port };
  }
  const cands: { name: string; ip: string }[] = [];
  for (const [name, addrs] of Object.entries(networkInterfaces())) {
    for (const a of addrs ?? []) if (a.family === "IPv4" && !a.internal) cands.push({ name, ip: a.address });
  }
  if (cands.length === 1) return { ip: cands[0]!.ip, port: listen.port };
  if (cands.length === 0)
    throw badRequest("could not find the system's IP address - specify one with --advertise-addr");
  throw badRequest(
    `could not choose an IP address to advertise since this system has multiple addresses on different interfaces (${cands
      .map((c) => `${c.ip} on ${c.name}`)
      .join(" and ")}) - specify one with --advertise-addr`,
  );
}

/** The interface that holds `ip` in this network namespace (the VXLAN underlay). */
export function interfaceOf(ip: string): string {
  for (const [name, addrs] of Object.entries(networkInterfaces())) {
    if (addrs?.some((a) => a.family === "IPv4" && a.address === ip)) return name;
  }
  throw new ApiError(
    500,
    `no interface of this host has the data-path address ${ip} (--data-path-addr / --advertise-addr)`,
  );
}

export function withPort(a: string, port: number): string {
  return /:\d+$/.test(a) ? a : `${a}:${port}`;
}

function isIpv4Text(s: string): boolean {
  return parseIpv4(s) !== undefined;
}
