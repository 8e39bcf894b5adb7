// The DNS wire codec of the embedded DNS server: hand-written packets in, exact layouts out, and no
// malformed input that makes it throw.

import { describe, expect, it } from "vitest";
import {
  buildErrorResponse,
  buildQuery,
  buildResponse,
  canonicalName,
  type DnsQuery,
  encodeName,
  parseMessage,
  parseQuery,
  RCODE_FORMERR,
  RCODE_NOTIMP,
  RCODE_NXDOMAIN,
  RCODE_SERVFAIL,
  readName,
  TYPE_A,
  TYPE_AAAA,
  TYPE_CNAME,
  TYPE_OPT,
  withId,
} from "../../src/dataplane/dns-codec.js";

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ""), "hex");

// id 0xbeef, RD, 1 question: "Web.Example" A IN.
const QUERY = hex(`
  beef 0100 0001 0000 0000 0000
  03 576562 07 4578616d706c65 00
  0001 0001`);

function query(buf: Buffer): DnsQuery {
  const p = parseQuery(buf);
  if (p.kind !== "query") throw new Error(`not a query: ${JSON.stringify(p)}`);
  return p.query;
}

describe("parsing queries", () => {
  it("reads id, flags and the one question of a hand-written query", () => {
    const q = query(QUERY);
    expect(q.header).toMatchObject({ id: 0xbeef, qr: false, opcode: 0, rd: true, qdcount: 1, ancount: 0 });
    expect(q.question).toMatchObject({ name: "Web.Example", type: TYPE_A, class: 1 });
    expect(q.question.labels.map((l) => l.toString())).toEqual(["Web", "Example"]);
    expect(q.edns).toBeUndefined();
    expect(canonicalName(q.question.name)).toBe("web.example");
  });

  it("builds the same bytes as the hand-written query", () => {
    expect(buildQuery(0xbeef, "Web.Example", TYPE_A).equals(QUERY)).toBe(true);
    expect(buildQuery(0xbeef, "Web.Example.", TYPE_A).equals(QUERY)).toBe(true);
  });

  it("reads the EDNS0 UDP payload size of an OPT record", () => {
    const q = query(buildQuery(7, "web", TYPE_AAAA, { ednsUdpSize: 4096 }));
    expect(q.question.type).toBe(TYPE_AAAA);
    expect(q.edns).toEqual({ udpSize: 4096, version: 0 });
  });

  it("lower-cases ASCII only", () => {
    expect(canonicalName("WeB-01.My_Net")).toBe("web-01.my_net");
    expect(canonicalName("\\200X")).toBe("\\200x");
  });

  it("escapes label bytes that are not printable, dots and backslashes", () => {
    const buf = Buffer.concat([
      hex("0001 0000 0001 0000 0000 0000"),
      Buffer.from([3, 0x61, 0x2e, 0x00, 2, 0x5c, 0xff, 0]),
      hex("0001 0001"),
    ]);
    expect(query(buf).question.name).toBe("a\\046\\000.\\092\\255");
  });

  it("parses the root name", () => {
    const q = query(hex("0001 0000 0001 0000 0000 0000 00 0002 0001"));
    expect(q.question).toMatchObject({ name: "", labels: [], type: 2 });
  });
});

describe("malformed input", () => {
  const header = (id: number, flags: number, qd: number) =>
    hex([id, flags, qd, 0, 0, 0].map((n) => n.toString(16).padStart(4, "0")).join(""));

  it("drops packets too short for a header, and responses", () => {
    expect(parseQuery(Buffer.alloc(0)).kind).toBe("drop");
    expect(parseQuery(Buffer.alloc(11)).kind).toBe("drop");
    const response = Buffer.from(QUERY);
    response[2]! |= 0x80;
    expect(parseQuery(response)).toMatchObject({ kind: "drop", reason: "not a query (QR set)" });
  });

  it("answers FORMERR (with the id) when the question is missing, doubled or broken", () => {
    const cases: Buffer[] = [
      header(0x1234, 0x0100, 0), // no question
      Buffer.concat([QUERY.subarray(0, 4), hex("0002"), QUERY.subarray(6)]), // qdcount 2, one question
      QUERY.subarray(0, QUERY.length - 1), // type/class cut short
      QUERY.subarray(0, 16), // label runs past the end
      Buffer.concat([header(1, 0, 1), hex("03 616263")]), // no terminating root label
      Buffer.concat([header(1, 0, 1), hex("40 00 0001 0001")]), // label type 01 (EDNS0 extended)
      Buffer.concat([header(1, 0, 1), hex("80 00 0001 0001")]), // label type 10 (reserved)
      Buffer.concat([header(1, 0, 1), hex("c0")]), // truncated pointer
    ];
    for (const buf of cases) {
      const p = parseQuery(buf);
      expect(p.kind, buf.toString("hex")).toBe("error");
      if (p.kind === "error") {
        expect(p.rcode).toBe(RCODE_FORMERR);
        expect(p.header.id).toBe(buf.readUInt16BE(0));
      }
    }
  });

  it("rejects compression pointers that loop or point forwards", () => {
    // A pointer to itself (offset 12), and one pointing past itself.
    for (const name of ["c00c", "c00e 00"]) {
      const p = parseQuery(Buffer.concat([header(9, 0, 1), hex(name), hex("0001 0001")]));
      expect(p).toMatchObject({ kind: "error", rcode: RCODE_FORMERR });
    }
    // Two pointers pointing at each other: the second one points backwards, the first forwards.
    const loop = Buffer.concat([header(9, 0, 1), hex("01 61 c0 10 01 62 c0 0c"), hex("0001 0001")]);
    expect(parseQuery(loop)).toMatchObject({ kind: "error", rcode: RCODE_FORMERR });
  });

  it("rejects names longer than 255 octets, even when made of pointers", () => {
    const long = Buffer.concat([
      header(3, 0, 1),
      ...Array.from({ length: 5 }, () => Buffer.concat([Buffer.from([63]), Buffer.alloc(63, 0x61)])),
      hex("00 0001 0001"),
    ]);
    expect(parseQuery(long)).toMatchObject({ kind: "error", rcode: RCODE_FORMERR });
    expect(() => encodeName(`${"a".repeat(63)}.`.repeat(5))).toThrow(/255/);
    expect(() => encodeName(`${"a".repeat(64)}.b`)).toThrow(/label/);
  });

  it("answers NOTIMP to opcodes other than QUERY", () => {
    const notify = Buffer.from(QUERY);
    notify.writeUInt16BE(4 << 11, 2);
    expect(parseQuery(notify)).toMatchObject({ kind: "error", rcode: RCODE_NOTIMP });
  });

  it("ignores a malformed additional section but keeps the question", () => {
    const q = parseQuery(Buffer.concat([QUERY.subarray(0, 10), hex("0001"), QUERY.subarray(12), hex("00 0029")]));
    expect(q.kind).toBe("query");
  });

  it("never throws, whatever the bytes", () => {
    let seed = 42;
    const rand = () => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed;
    };
    const valid = [QUERY, buildQuery(1, "a.b.c", TYPE_AAAA, { ednsUdpSize: 1232 })];
    for (let i = 0; i < 20_000; i++) {
      let buf: Buffer;
      if (i % 2 === 0) {
        buf = Buffer.alloc(rand() % 64);
        for (let j = 0; j < buf.length; j++) buf[j] = rand() & 0xff;
        if (buf.length > 5) buf[5] = 1; // usually claim one question
      } else {
        buf = Buffer.from(valid[i % valid.length]!);
        const flips = 1 + (rand() % 4);
        for (let j = 0; j < flips; j++) buf[rand() % buf.length] = rand() & 0xff;
        buf = buf.subarray(0, buf.length - (rand() % 3));
      }
      parseQuery(buf); // a throw fails the test
      parseMessage(buf);
    }
  });
});

describe("building responses", () => {
  it("answers A records after the echoed question, naming it by a pointer", () => {
    const q = query(QUERY);
    const r = buildResponse(q, { addresses: ["10.0.1.2", "10.0.1.3"], ttl: 10, aa: true });
    expect(r.toString("hex")).toBe(
      hex(`
        beef 8580 0001 0002 0000 0000
        03 576562 07 4578616d706c65 00 0001 0001
        c00c 0001 0001 0000000a 0004 0a000102
        c00c 0001 0001 0000000a 0004 0a000103`).toString("hex"),
    );
    const m = parseMessage(r);
    expect(m.ok).toBe(true);
    if (!m.ok) return;
    expect(m.value.header).toMatchObject({ id: 0xbeef, qr: true, aa: true, rd: true, ra: true, tc: false, rcode: 0 });
    expect(m.value.questions[0]!.name).toBe("Web.Example");
    expect(m.value.answers.map((a) => [a.name, a.type, a.ttl, a.data])).toEqual([
      ["Web.Example", TYPE_A, 10, "10.0.1.2"],
      ["Web.Example", TYPE_A, 10, "10.0.1.3"],
    ]);
  });

  it("answers an empty NOERROR, NXDOMAIN or SERVFAIL", () => {
    const q = query(buildQuery(5, "web", TYPE_AAAA));
    for (const rcode of [0, RCODE_NXDOMAIN, RCODE_SERVFAIL]) {
      const m = parseMessage(buildResponse(q, { rcode }));
      expect(m.ok && m.value.header.rcode).toBe(rcode);
      expect(m.ok && m.value.answers).toEqual([]);
      expect(m.ok && m.value.questions[0]).toMatchObject({ name: "web", type: TYPE_AAAA });
    }
  });

  it("does not answer RD when the query did not ask for recursion", () => {
    const noRd = Buffer.from(QUERY);
    noRd.writeUInt16BE(0, 2);
    const r = buildResponse(query(noRd));
    expect(r.readUInt16BE(2)).toBe(0x8080);
  });

  it("fits the records into 512 bytes, or the EDNS0 size, and sets TC when some are left out", () => {
    const addresses = Array.from({ length: 100 }, (_, i) => `10.0.${i >> 8}.${i & 0xff}`);
    const plain = buildResponse(query(buildQuery(1, "svc", TYPE_A)), { addresses, maxSize: 512 });
    expect(plain.length).toBeLessThanOrEqual(512);
    const m = parseMessage(plain);
    expect(m.ok && m.value.header.tc).toBe(true);
    expect(m.ok && m.value.answers.length).toBe(Math.floor((512 - 12 - 5 - 4) / 16));

    const edns = buildResponse(query(buildQuery(1, "svc", TYPE_A, { ednsUdpSize: 4096 })), {
      addresses,
      maxSize: 1232,
    });
    const e = parseMessage(edns);
    expect(edns.length).toBeLessThanOrEqual(1232);
    expect(e.ok && e.value.header.tc).toBe(true);
    expect(e.ok && e.value.additional.map((r) => [r.type, r.class])).toEqual([[TYPE_OPT, 1232]]);

    const tcp = parseMessage(buildResponse(query(buildQuery(1, "svc", TYPE_A)), { addresses, maxSize: 65535 }));
    expect(tcp.ok && tcp.value.header.tc).toBe(false);
    expect(tcp.ok && tcp.value.answers.length).toBe(100);
  });

  it("refuses to build a record from a bad address", () => {
    expect(() => buildResponse(query(QUERY), { addresses: ["10.0.1.256"] })).toThrow(/invalid IPv4/);
  });

  it("builds bare error replies and rewrites ids", () => {
    expect(buildErrorResponse({ id: 0x1234, opcode: 0, rd: true }, RCODE_FORMERR).toString("hex")).toBe(
      "123481810000000000000000",
    );
    const r = withId(QUERY, 0x0102);
    expect(r.readUInt16BE(0)).toBe(0x0102);
    expect(QUERY.readUInt16BE(0)).toBe(0xbeef); // a copy
  });
});

describe("compression pointers", () => {
  // A response as an upstream server would send it:
  //   question  www.example.com A
  //   answer    www.example.com CNAME cdn.example.com   (name: pointer to 12; rdata: "cdn" + pointer to 16)
  //   answer    cdn.example.com A 192.0.2.10           (name: pointer to the CNAME's rdata)
  const RESPONSE = hex(`
    0042 8180 0001 0002 0000 0000
    03 777777 07 6578616d706c65 03 636f6d 00 0001 0001
    c00c 0005 0001 0000012c 0006 03 63646e c010
    c02d 0001 0001 0000003c 0004 c000020a`);

  it("follows pointers in record names and rdata", () => {
    const m = parseMessage(RESPONSE);
    expect(m.ok).toBe(true);
    if (!m.ok) return;
    expect(m.value.questions[0]!.name).toBe("www.example.com");
    expect(m.value.answers.map((a) => [a.name, a.type, a.ttl, a.data])).toEqual([
      ["www.example.com", TYPE_CNAME, 300, "cdn.example.com"],
      ["cdn.example.com", TYPE_A, 60, "192.0.2.10"],
    ]);
  });

  it("ends a compressed name right after its first pointer", () => {
    const r = readName(RESPONSE, 45); // "cdn" + pointer, inside the CNAME rdata
    expect(r.value.name).toBe("cdn.example.com");
    expect(r.end).toBe(51);
  });

  it("reads a question whose name ends in a pointer back into the header bytes", () => {
    // Odd but legal: the id bytes 0x01 0x61 spell the label "a"... followed by flags 0x00 0x00 (the root).
    const buf = Buffer.concat([hex("0161 0000 0001 0000 0000 0000"), hex("01 62 c000 0001 0001")]);
    const p = parseQuery(buf);
    expect(p.kind === "query" && p.query.question.name).toBe("b.a");
  });

  it("echoes a compressed question uncompressed", () => {
    const buf = Buffer.concat([hex("0161 0000 0001 0000 0000 0000"), hex("01 62 c000 0001 0001")]);
    const r = parseMessage(buildResponse(query(buf), { addresses: ["10.0.0.1"] }));
    expect(r.ok && r.value.answers[0]).toMatchObject({ name: "b.a", data: "10.0.0.1" });
  });
});
