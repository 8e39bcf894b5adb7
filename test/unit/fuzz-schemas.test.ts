// The boundary fuzzer's Engine API bodies, in process: every body the fuzzer makes for a route (valid, mutated,
// or of another kind) is decoded by that route's schema and converted as the server does. Whatever the body,
// the outcome is a value or a 400 in Docker's words: never a TypeError or RangeError (a 500 on the socket).
// The same cases go to live daemons in test/fuzz; here thousands run in a second, on a fixed seed.

import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { ApiError } from "../../src/api/errors.js";
import { MAX_JSON_DEPTH } from "../../src/api/limits.js";
import { parseJsonText } from "../../src/api/schema.js";
import {
  ContainerCreateBody,
  containerCreateFromRequest,
  ExecCreateBody,
  ExecStartBody,
  execCreateFromRequest,
} from "../../src/engine/schemas/container.js";
import { decode } from "../../src/engine/schemas/decode.js";
import {
  endpointFromRequest,
  NetworkConnectBody,
  NetworkCreateBody,
  NetworkDisconnectBody,
  networkSpecFromRequest,
} from "../../src/engine/schemas/network.js";
import { NodeSpecBody, nodeSpecFromRequest } from "../../src/engine/schemas/node.js";
import {
  SwarmInitBody,
  SwarmJoinBody,
  SwarmSpecBody,
  SwarmUnlockBody,
  swarmInitFromRequest,
  swarmJoinFromRequest,
  swarmSpecFromRequest,
} from "../../src/engine/schemas/swarm.js";
import { arbRouteCase, type EngineCase } from "../fuzz/engine-cases.js";
import { serialize } from "../fuzz/json.js";
import { type FuzzContext, resolveJson } from "../fuzz/refs.js";
import { fuzzContext } from "./fuzz-fixtures.js";

const ctx: FuzzContext = fuzzContext();

/** Each route's body: decoded by its schema, then converted as src/engine/server.ts does. */
const HANDLERS: Record<string, (v: unknown) => unknown> = {
  "ctr-create": (v) => containerCreateFromRequest(decode(ContainerCreateBody, v, "container config")),
  "exec-create": (v) => execCreateFromRequest(decode(ExecCreateBody, v, "exec config")),
  "exec-start": (v) => decode(ExecStartBody, v, "exec start config"),
  "net-create": (v) => networkSpecFromRequest(decode(NetworkCreateBody, v, "network config")),
  "net-connect": (v) => endpointFromRequest(decode(NetworkConnectBody, v, "network connect").EndpointConfig),
  "net-disconnect": (v) => decode(NetworkDisconnectBody, v, "network disconnect"),
  "node-update": (v) => nodeSpecFromRequest(decode(NodeSpecBody, v, "node spec")),
  "swarm-update": (v) => swarmSpecFromRequest(decode(SwarmSpecBody, v, "swarm spec")),
  "swarm-init": (v) => swarmInitFromRequest(decode(SwarmInitBody, v, "swarm init request"), "1.50"),
  "swarm-join": (v) => swarmJoinFromRequest(decode(SwarmJoinBody, v, "swarm join request")),
  "swarm-unlock": (v) => decode(SwarmUnlockBody, v, "swarm unlock request"),
};

/**
 * The body as the server would parse it; undefined when it is not JSON (the server's 400 before any schema)
 * is too deep (the server's 400 while reading it), or is one of the fuzzer's huge bodies (those go to live
 * daemons only).
 */
function parsedBody(c: EngineCase): { v: unknown } | undefined {
  if (c.body.b !== "json" || c.body.mut) return undefined;
  try {
    const text = serialize(c.body.v, (r) => resolveJson(ctx, r));
    // Bounded in size and depth as the server bounds a body while reading it (src/engine/http.ts).
    return text.length > 100_000 ? undefined : { v: parseJsonText(text, "JSON", 100_000, MAX_JSON_DEPTH) };
  } catch {
    return undefined;
  }
}

describe("the fuzzer's Engine API bodies, decoded in process", () => {
  for (const [route, handle] of Object.entries(HANDLERS)) {
    it(`${route}: a value or a 400, never a crash`, () => {
      let decoded = 0;
      fc.assert(
        fc.property(arbRouteCase(route), (c) => {
          const body = parsedBody(c);
          if (!body) return;
          decoded++;
          try {
            handle(body.v);
          } catch (e) {
            if (!(e instanceof ApiError) || e.status !== 400) throw e;
            expect(e.message.length).toBeGreaterThan(0);
          }
        }),
        { seed: 9, numRuns: 400 },
      );
      expect(decoded).toBeGreaterThan(100);
    });
  }
});
