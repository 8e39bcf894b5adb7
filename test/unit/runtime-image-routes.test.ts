// The image routes' queries, parsed by their schemas before the image service is reached: a bad parameter
// is a 400 in docker's words and reaches nothing; good ones reach the service as docker means them (the
// lenient booleans of dockerd's BoolValue, every `names` of a save). The service here records the calls it
// gets (the routes are what is tested; test/unit/images.test.ts drives the real one through containerd).

import { mkdtemp, rm } from "node:fs/promises";
import { request as httpRequest } from "node:http";
import os from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, test } from "vitest";
import { EngineServer } from "../../src/engine/server.js";
import type { SwarmBackend } from "../../src/engine/types.js";
import type { PullProgress } from "../../src/runtime/images/pull.js";
import { ImageService, type ImageSummary } from "../../src/runtime/images/service.js";
import type { ImageStore } from "../../src/runtime/images/store.js";

const swarm = {
  hostname: () => "testhost",
  swarmInfo: async () => ({
    NodeID: "",
    NodeAddr: "",
    LocalNodeState: "inactive",
    ControlAvailable: false,
    Error: "",
    RemoteManagers: null,
  }),
} as unknown as SwarmBackend;

/** An image service that says what it was asked (two images listed). */
class Recording extends ImageService {
  calls: unknown[][] = [];
  constructor() {
    super(undefined as unknown as ImageStore, { insecureRegistries: [] }, () => undefined);
  }
  override async list(): Promise<ImageSummary[]> {
    this.calls.push(["list"]);
    const img = (tags: string[], labels: Record<string, string>): ImageSummary => ({
      Id: `sha256:${tags.length}`,
      ParentId: "",
      RepoTags: tags,
      RepoDigests: [],
      Created: 0,
      Size: 1,
      SharedSize: -1,
      Labels: labels,
      Containers: -1,
    });
    return [img(["busybox:latest", "tools/bb:1"], { tier: "base" }), img(["tools/web:2"], {})];
  }
  override async remove(ref: string, force: boolean) {
    this.calls.push(["remove", ref, force]);
    return [{ Untagged: ref }];
  }
  override async tag(source: string, repo: string, tag: string): Promise<void> {
    this.calls.push(["tag", source, repo, tag]);
  }
  override async save(refs: string[]): Promise<Buffer> {
    this.calls.push(["save", ...refs]);
    return Buffer.alloc(1024);
  }
  override async pull(ref: string, _opts: unknown, say: (p: PullProgress) => void): Promise<void> {
    this.calls.push(["pull", ref]);
    say({ status: "Status: Image is up to date for busybox:latest" });
  }
}

let dir: string;
let server: EngineServer | undefined;
let images: Recording;

beforeEach(async () => {
  dir = await mkdtemp(join(os.tmpdir(), "shoal-image-routes-"));
  images = new Recording();
  server = await EngineServer.listen({ socketPath: join(dir, "shoald.sock"), backend: swarm, images });
});

afterEach(async () => {
  await server?.close();
  server = undefined;
  await rm(dir, { recursive: true, force: true });
});

function call(method: string, path: string): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ socketPath: join(dir, "shoald.sock"), method, path: `/v1.50${path}`, agent: false });
    req.on("response", (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => {
        text += d;
      });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, text }));
    });
    req.on("error", reject);
    req.end();
  });
}

async function refused(method: string, path: string, message: string): Promise<void> {
  const r = await call(method, path);
  expect({ status: r.status, body: JSON.parse(r.text) }).toEqual({ status: 400, body: { message } });
}

describe("image routes parse their queries", () => {
  test("bad parameters are refused in docker's words and reach nothing", async () => {
    await refused("GET", "/images/json?filters=%7Bnope", "invalid filter '{nope'");
    await refused("GET", `/images/json?filters=${encodeURIComponent('{"colour":["red"]}')}`, "invalid filter 'colour'");
    await refused(
      "POST",
      "/images/create?fromImage=busybox&platform=windows/amd64",
      'image with reference for platform "windows/amd64" is not available: shoal runs linux/amd64 images only',
    );
    await refused(
      "POST",
      `/images/create?fromImage=${"a".repeat(1100)}`,
      "invalid value for fromImage: longer than 1024 characters",
    );
    await refused(
      "POST",
      "/images/create?fromImage=Bad:Ref",
      "invalid reference format: repository name must be lowercase",
    );
    await refused("POST", "/images/create?tag=latest", "fromImage is required: name the image to pull");
    await refused(
      "POST",
      "/images/busybox/tag?repo=tools/bb&tag=" + "t".repeat(1100),
      "invalid value for tag: longer than 1024 characters",
    );
    await refused("POST", "/images/busybox/tag", "repository name must have at least one component");
    await refused(
      "GET",
      `/images/get?names=a&names=${"b".repeat(1100)}`,
      "invalid value for names: a name is too long",
    );
    await refused("GET", "/images/get", "no images to save: name at least one");
    expect(images.calls).toEqual([]);
  });

  test("good parameters reach the service as docker means them", async () => {
    const listed = await call(
      "GET",
      `/images/json?all=1&filters=${encodeURIComponent('{"label":{"tier=base":true}}')}`,
    );
    expect(listed.status).toBe(200);
    expect((JSON.parse(listed.text) as ImageSummary[]).map((i) => i.RepoTags[0])).toEqual(["busybox:latest"]);
    // A reference filter shows only the names that match (busybox's other tag is left out).
    const byRef = await call("GET", `/images/json?filters=${encodeURIComponent('{"reference":["tools/*"]}')}`);
    expect((JSON.parse(byRef.text) as ImageSummary[]).map((i) => i.RepoTags)).toEqual([
      ["tools/bb:1"],
      ["tools/web:2"],
    ]);
    const byTag = await call("GET", `/images/json?filters=${encodeURIComponent('{"reference":["busybox:lat*"]}')}`);
    expect((JSON.parse(byTag.text) as ImageSummary[]).map((i) => i.RepoTags)).toEqual([["busybox:latest"]]);
    // dockerd's BoolValue: "yes" is true, "0" and "no" are false.
    expect((await call("DELETE", "/images/busybox?force=yes")).status).toBe(200);
    expect((await call("DELETE", "/images/busybox?force=no&noprune=1")).status).toBe(200);
    expect((await call("POST", "/images/busybox/tag?repo=tools/bb&tag=2")).status).toBe(201);
    expect((await call("GET", "/images/get?names=a&names=b%3A1")).status).toBe(200);
    const pull = await call("POST", "/images/create?fromImage=busybox&tag=latest&platform=linux/amd64");
    expect(pull.status).toBe(200);
    expect(JSON.parse(pull.text)).toEqual({ status: "Status: Image is up to date for busybox:latest" });
    expect(images.calls).toEqual([
      ["list"],
      ["list"],
      ["list"],
      ["remove", "busybox", true],
      ["remove", "busybox", false],
      ["tag", "busybox", "tools/bb", "2"],
      ["save", "a", "b:1"],
      ["pull", "busybox:latest"],
    ]);
  });
});
