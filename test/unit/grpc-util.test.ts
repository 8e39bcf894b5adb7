// withoutCallerStack: a call started through it fails with the same status, details and metadata, but
// grpc-js has no caller's stack to format into its error. A real gRPC server on loopback (plaintext)
// refuses the session, naming a leader, as a follower does.

import { credentials, Metadata, Server, type ServerWritableStream, type ServiceError, status } from "@grpc/grpc-js";
import { afterAll, beforeAll, expect, test } from "vitest";
import { DispatcherClient, DispatcherService, type SessionMessage } from "../../src/gen/cluster.js";
import { LEADER_ADDR_KEY, leaderHint, withoutCallerStack } from "../../src/manager/grpc-util.js";
import { listenPlaintext } from "./agent-fixtures.js";

let server: Server;
let client: InstanceType<typeof DispatcherClient>;

beforeAll(async () => {
  server = new Server();
  server.addService(DispatcherService, {
    session: (call: ServerWritableStream<unknown, SessionMessage>) => {
      const md = new Metadata();
      md.set(LEADER_ADDR_KEY, "127.0.0.3:2377");
      call.emit("error", Object.assign(new Error("not the leader"), { code: status.UNAVAILABLE, metadata: md }));
    },
    heartbeat: (_c: unknown, cb: (e: Error) => void) => cb(new Error("no")),
    attach: (_c: unknown, cb: (e: Error) => void) => cb(new Error("no")),
    detach: (_c: unknown, cb: (e: Error) => void) => cb(new Error("no")),
  });
  client = new DispatcherClient(await listenPlaintext(server), credentials.createInsecure());
});

afterAll(() => {
  client?.close();
  server?.forceShutdown();
});

function refused(start: () => ReturnType<typeof client.session>): Promise<ServiceError> {
  return new Promise((resolve) => {
    const stream = start();
    stream.on("data", () => {});
    stream.on("error", (e: ServiceError) => resolve(e));
  });
}

/** The frames grpc-js appended after "for call at" (the caller's stack when the call started). */
const callerFrames = (e: Error) =>
  (e.stack?.split("for call at\n")[1] ?? "").split("\n").filter((l) => /^\s+at /.test(l));

test("a call started without the caller's stack fails with the same status, details and leader, and no caller frames", async () => {
  const req = { descriptionJson: "", addr: "", acceptsDeltas: true };
  const limit = Error.stackTraceLimit;
  const plain = await refused(() => client.session(req));
  const bare = await refused(() => withoutCallerStack(() => client.session(req)));
  expect(Error.stackTraceLimit).toBe(limit);
  for (const e of [plain, bare]) {
    expect(e.code).toBe(status.UNAVAILABLE);
    expect(e.details).toBe("not the leader");
    expect(leaderHint(e)).toBe("127.0.0.3:2377");
  }
  expect(callerFrames(plain).length).toBeGreaterThan(0);
  expect(callerFrames(bare)).toEqual([]);
});

test("withoutCallerStack puts the stack trace limit back even when the start throws", () => {
  const limit = Error.stackTraceLimit;
  expect(() =>
    withoutCallerStack(() => {
      throw new Error("start failed");
    }),
  ).toThrow("start failed");
  expect(Error.stackTraceLimit).toBe(limit);
});
