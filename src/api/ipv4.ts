// IPv4 addresses as numbers, the one parser every layer uses (IPAM, the data plane's subnet checks, the
// embedded DNS): a strict dotted quad, as Go's net.ParseIP and Node's net.isIPv4 read it (four decimal
// octets 0-255, no leading zeros, no spaces).

const OCTET = /^(?:0|[1-9][0-9]{0,2})$/;

/** "10.0.1.2" -> 167772418, or undefined if `s` is not a strict dotted quad. */
export function parseIpv4(s: string): number | undefined {
  if (typeof s !== "string") return undefined;
  const parts = s.split(".");
  if (parts.length !== 4) return undefined;
  let n = 0;
  for (const p of parts) {
    if (!OCTET.test(p)) return undefined;
    const v = Number(p);
    if (v > 255) return undefined;
    n = n * 256 + v;
  }
  return n;
}

/** 167772418 -> "10.0.1.2". */
export function formatIpv4(n: number): string {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new RangeError(`not an IPv4 address: ${n}`);
  return `${Math.floor(n / 0x1000000)}.${Math.floor(n / 0x10000) % 256}.${Math.floor(n / 0x100) % 256}.${n % 256}`;
}

/** The four bytes of a dotted quad, network order; throws if `s` is not one. */
export function ipv4Bytes(s: string): Buffer {
  const n = parseIpv4(s);
  if (n === undefined) throw new Error(`invalid IPv4 address ${JSON.stringify(s)}`);
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n, 0);
  return b;
}
