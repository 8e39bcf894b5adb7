// Images and containers from images, end to end on one machine: shoal's Engine API over a real containerd,
// driven by the real docker CLI, with images built here from busybox-static and served by a real registry
// (Debian's docker-registry) on loopback. Networks come from the veth test attacher. Root only; run under
// the heavy lock. Nothing is left behind: containers, images, containerd, the registry, temp dirs.

import { type ChildProcess, execFile, spawn } from "node:child_process";
import { createHash, createPrivateKey, sign } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { createServer as createHttpServer } from "node:http";
import { createServer } from "node:net";
import os from "node:os";
import { join } from "node:path";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { buildImage, dockerArchive, ociArchive, randomLayer } from "../../deploy/busybox-image.js";
import { createRootCA } from "../../src/ca/rootca.js";
import { EngineServer } from "../../src/engine/server.js";
import type { SwarmBackend } from "../../src/engine/types.js";
import { blobPath, ingestDir } from "../../src/runtime/containerd/blobfile.js";
import { SNAPSHOTTER } from "../../src/runtime/containerd/client.js";
import { ContentStore } from "../../src/runtime/containerd/content.js";
import { ContainerRuntime } from "../../src/runtime/runtime.js";
import { ensureApplierBuilt } from "./applier-worker.js";
import { CAN_RUN_CONTAINERS, TestNetworkBackend, testContainerd, VethAttacher } from "./runtime-fixtures.js";

const DOCKER = ["/usr/local/bin/docker", "/usr/bin/docker"].find((p) => existsSync(p));
const REGISTRY = "/usr/bin/docker-registry";
const SKOPEO = "/usr/bin/skopeo";
const READY = CAN_RUN_CONTAINERS && DOCKER !== undefined && existsSync(REGISTRY) && existsSync(SKOPEO);

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function run(argv: string[], env: NodeJS.ProcessEnv = {}, timeoutMs = 60_000): Promise<Run> {
  return new Promise((resolve, reject) => {
    execFile(
      argv[0]!,
      argv.slice(1),
      { timeout: timeoutMs, env: { PATH: process.env.PATH ?? "/usr/bin:/bin", ...env } },
      (err, stdout, stderr) => {
        if (err && typeof err.code !== "number") reject(err);
        else resolve({ code: err ? (err.code as number) : 0, stdout, stderr });
      },
    );
  });
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const a = s.address();
      s.close(() => (typeof a === "object" && a ? resolve(a.port) : reject(new Error("no port"))));
    });
  });
}

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

describe.skipIf(!READY)("images and containers from images (containerd, registry, docker CLI)", () => {
  let dir: string;
  let cd: Awaited<ReturnType<typeof testContainerd>>;
  let runtime: ContainerRuntime;
  let server: EngineServer;
  let registry: ChildProcess;
  let reg: string;
  const logLines: string[] = [];
  /** Who applied the layers unpacked since the last call, in order ("shoald", "containerd"). */
  const appliedBy = (): string[] =>
    logLines
      .splice(0)
      .map((l) => JSON.parse(l) as { msg: string; by?: string })
      .filter((l) => l.msg === "layer applied" && l.by !== undefined)
      .map((l) => l.by!);
  const docker = (...args: string[]): Promise<Run> =>
    run([DOCKER!, ...args], {
      HOME: dir,
      DOCKER_HOST: `unix://${join(dir, "shoald.sock")}`,
      DOCKER_CONFIG: join(dir, "docker-config"),
    });
  const ok = (r: Run): Run => {
    if (r.code !== 0) throw new Error(`exited ${r.code}: ${r.stderr}`);
    return r;
  };
  /**
   * A second registry, on a free port, whose config says `auth` (the lines under "auth:"): busybox pushed
   * to `repo` with alice's credentials; a pull without credentials is refused, one with them (the docker
   * CLI's config.json) succeeds. The registry is stopped and the credentials removed afterwards.
   */
  async function pullNeedsCredentials(name: string, auth: string, repo: string): Promise<void> {
    const port = await freePort();
    const secured = `127.0.0.1:${port}`;
    const config = join(dir, `${name}.yml`);
    await writeFile(
      config,
      `version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: ${join(dir, name)}\nhttp:\n  addr: ${secured}\nauth:\n${auth}`,
    );
    const second = spawn(REGISTRY, ["serve", config], { stdio: "ignore" });
    const image = `${secured}/${repo}`;
    try {
      for (let i = 0; i < 100 && (await run(["bash", "-c", `exec 3<>/dev/tcp/127.0.0.1/${port}`])).code !== 0; i++) {
        await new Promise((r) => setTimeout(r, 50));
      }
      ok(
        await run([
          SKOPEO,
          "copy",
          "--dest-tls-verify=false",
          "--dest-creds",
          "alice:s3cret",
          `oci-archive:${join(dir, "busybox.tar")}`,
          `docker://${image}`,
        ]),
      );
      const denied = await docker("pull", image);
      expect(denied.code).toBe(1);
      expect(denied.stderr).toContain(`pull access denied for ${image.slice(0, image.lastIndexOf(":"))}`);
      await writeFile(
        join(dir, "docker-config", "config.json"),
        JSON.stringify({ auths: { [secured]: { auth: Buffer.from("alice:s3cret").toString("base64") } } }),
      );
      expect(ok(await docker("pull", image)).stdout).toContain(`Status: Downloaded newer image for ${image}`);
      ok(await docker("rmi", image));
    } finally {
      second.kill();
      await rm(join(dir, "docker-config", "config.json"), { force: true });
    }
  }

  beforeAll(async () => {
    // Pulls unpack their layers with shoald's applier, whose worker runs compiled JS.
    ensureApplierBuilt();
    dir = await mkdtemp(join(os.tmpdir(), "shoal-images-"));
    await mkdir(join(dir, "docker-config"));
    cd = await testContainerd(join(dir, "cd"));
    const port = await freePort();
    reg = `127.0.0.1:${port}`;
    const config = join(dir, "registry.yml");
    await writeFile(
      config,
      `version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: ${join(dir, "registry")}\n  delete:\n    enabled: true\nhttp:\n  addr: ${reg}\n`,
    );
    registry = spawn(REGISTRY, ["serve", config], { stdio: "ignore" });
    for (let i = 0; i < 100 && (await run(["bash", "-c", `exec 3<>/dev/tcp/127.0.0.1/${port}`])).code !== 0; i++) {
      await new Promise((r) => setTimeout(r, 50));
    }
    const attacher = new VethAttacher();
    const networks = new TestNetworkBackend(attacher);
    runtime = await ContainerRuntime.open({
      execRoot: join(dir, "run"),
      stateDir: join(dir, "containers"),
      attacher,
      containerd: cd.containerd,
      // As shoald runs its own containerd: a pull puts its layers' blobs in place in containerd's root.
      containerdRoot: cd.root,
      // Its debug lines say who applied each layer (shoald's applier, or containerd).
      logger: pino({ level: "debug" }, { write: (line: string) => void logLines.push(line) }),
    });
    networks.containers = runtime;
    server = await EngineServer.listen({
      socketPath: join(dir, "shoald.sock"),
      backend: swarm,
      networks,
      containers: runtime,
      images: runtime.imageService,
    });
    // Images built here: busybox, a configured one, and one to push to the registry.
    await writeFile(join(dir, "busybox.tar"), ociArchive(buildImage()));
    await writeFile(
      join(dir, "cfg.tar"),
      dockerArchive(
        buildImage({
          name: "shoal/cfg:1",
          entrypoint: ["/bin/sh", "-c"],
          cmd: ['echo "$GREETING from $(pwd) as $(id -u):$(id -g)"'],
          env: ["PATH=/bin", "GREETING=hello"],
          workingDir: "/var/www",
          user: "www",
          labels: { "org.shoal.test": "cfg" },
        }),
      ),
    );
    await writeFile(
      join(dir, "web.tar"),
      ociArchive(buildImage({ name: "web:latest", extraLayers: [randomLayer("blob", 200_000)] })),
    );
    ok(
      await run([
        SKOPEO,
        "copy",
        "--dest-tls-verify=false",
        `oci-archive:${join(dir, "web.tar")}`,
        `docker://${reg}/shoal/web:latest`,
      ]),
    );
  }, 120_000);

  afterAll(async () => {
    for (const c of (await runtime?.containerList({ all: true, filters: {} })) ?? []) {
      await runtime.containerRemove(c.Id, { force: true });
    }
    await server?.close();
    await runtime?.shutdown();
    registry?.kill();
    await cd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test("docker load (OCI layout and docker save archives), images, inspect, tag, save, rmi", async () => {
    expect(ok(await docker("load", "-i", join(dir, "busybox.tar"))).stdout).toBe("Loaded image: busybox:latest\n");
    expect(ok(await docker("load", "-i", join(dir, "cfg.tar"))).stdout).toBe("Loaded image: shoal/cfg:1\n");
    const ls = ok(await docker("images", "--format", "{{.Repository}}:{{.Tag}}"))
      .stdout.split("\n")
      .filter(Boolean)
      .sort();
    expect(ls).toEqual(["busybox:latest", "shoal/cfg:1"]);
    const inspect = JSON.parse(ok(await docker("image", "inspect", "shoal/cfg:1")).stdout) as {
      Id: string;
      Config: { Entrypoint: string[]; Labels: Record<string, string> };
      RootFS: { Layers: string[] };
    }[];
    expect(inspect[0]!.Config.Entrypoint).toEqual(["/bin/sh", "-c"]);
    expect(inspect[0]!.Config.Labels).toEqual({ "org.shoal.test": "cfg" });
    expect(inspect[0]!.RootFS.Layers).toHaveLength(1);

    ok(await docker("tag", "busybox", "tools/bb:2"));
    ok(await docker("save", "-o", join(dir, "saved.tar"), "tools/bb:2"));
    expect(ok(await docker("rmi", "tools/bb:2")).stdout).toBe("Untagged: tools/bb:2\n");
    // The saved archive loads back under its name.
    expect(ok(await docker("load", "-i", join(dir, "saved.tar"))).stdout).toBe("Loaded image: tools/bb:2\n");
    ok(await docker("rmi", "tools/bb:2"));
    const missing = await docker("image", "inspect", "nope:1");
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain("No such image: nope:1");
  });

  test("a corrupt or truncated archive imports nothing", async () => {
    const before = ok(await docker("images", "-q")).stdout;
    const good = await readFile(join(dir, "web.tar"));
    const corrupt = Buffer.from(good);
    // A byte inside the random layer: its digest no longer matches.
    corrupt[good.length - 100_000] = corrupt[good.length - 100_000]! ^ 0xff;
    await writeFile(join(dir, "corrupt.tar"), corrupt);
    const bad = await docker("load", "-i", join(dir, "corrupt.tar"));
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/invalid archive: .*(digest mismatch|does not match)/);
    await writeFile(join(dir, "short.tar"), good.subarray(0, 50_000));
    const short = await docker("load", "-i", join(dir, "short.tar"));
    expect(short.stderr).toContain("invalid archive: unexpected EOF");
    expect(ok(await docker("images", "-q")).stdout).toBe(before);
  });

  test("docker run applies the image's Entrypoint, Cmd, Env, WorkingDir and User; -e, -w, -u, -v override", async () => {
    ok(await docker("load", "-i", join(dir, "cfg.tar")));
    expect(ok(await docker("run", "--rm", "shoal/cfg:1")).stdout).toBe("hello from /var/www as 33:33\n");
    const r = ok(await docker("run", "--rm", "-e", "GREETING=hi", "-w", "/tmp", "-u", "0:0", "shoal/cfg:1"));
    expect(r.stdout).toBe("hi from /tmp as 0:0\n");
    await writeFile(join(dir, "shared.txt"), "from the host\n");
    const v = ok(
      await docker(
        "run",
        "--rm",
        "-v",
        `${dir}:/mnt/host:ro`,
        "--entrypoint",
        "cat",
        "busybox",
        "/mnt/host/shared.txt",
      ),
    );
    expect(v.stdout).toBe("from the host\n");
    const ro = await docker("run", "--rm", "-v", `${dir}:/mnt/host:ro`, "busybox", "touch", "/mnt/host/x");
    expect(ro.code).toBe(1);
    expect(ro.stderr).toContain("Read-only file system");
  });

  test("docker run of an image whose unpacked layers are gone unpacks it again", async () => {
    ok(await docker("load", "-i", join(dir, "busybox.tar")));
    // The image's committed snapshot (one layer: its chain id is its diff id) removed behind shoal's back.
    const layers = JSON.parse(ok(await docker("image", "inspect", "busybox")).stdout)[0].RootFS.Layers as string[];
    expect(layers).toHaveLength(1);
    const c = cd.containerd;
    await c.call(c.snapshots, c.snapshots.remove, { snapshotter: SNAPSHOTTER, key: layers[0]! });
    await expect(c.call(c.snapshots, c.snapshots.stat, { snapshotter: SNAPSHOTTER, key: layers[0]! })).rejects.toThrow(
      /not found/,
    );
    expect(ok(await docker("run", "--rm", "busybox", "echo", "unpacked again")).stdout).toBe("unpacked again\n");
  });

  test("a name given to another image runs that one (not the root file system prepared on the one it had); a removed name is refused and leaves no snapshot", async () => {
    // Counted through containerd's API: a removed snapshot's directory goes later, with its garbage collection.
    const c = cd.containerd;
    const snapshots = async () =>
      (await c.collect(c.snapshots.list({ snapshotter: SNAPSHOTTER, filters: [] }, c.metadata()), "List")).flatMap(
        (r) => r.info,
      ).length;
    const web = `${reg}/shoal/web:latest`;
    ok(await docker("load", "-i", join(dir, "busybox.tar")));
    ok(await docker("pull", web));
    ok(await docker("tag", "busybox", "shoal/moving:1"));
    // Run once: the create learns the name's top snapshot, and the next create prepares on it early.
    expect(ok(await docker("run", "--rm", "shoal/moving:1", "echo", "busybox")).stdout).toBe("busybox\n");
    ok(await docker("tag", web, "shoal/moving:1"));
    const r = ok(await docker("run", "--rm", "shoal/moving:1", "cat", "/var/www/index.html"));
    expect(r.stdout).toBe("hello from shoal's busybox\n");
    // Gone: refused in docker's words, and the snapshot begun before the lookup said so is removed.
    const before = await snapshots();
    ok(await docker("rmi", "shoal/moving:1"));
    await expect(runtime.containerCreate(undefined, { Image: "shoal/moving:1", Cmd: ["true"] })).rejects.toThrow(
      "No such image: shoal/moving:1",
    );
    expect(await snapshots()).toBe(before);
    ok(await docker("rmi", web));
  });

  test("a missing image is pulled from the registry first, in docker's words; pull shows progress", async () => {
    const image = `${reg}/shoal/web:latest`;
    const r = ok(await docker("run", "--rm", image, "cat", "/var/www/index.html"));
    expect(r.stderr).toContain(`Unable to find image '${image}' locally`);
    expect(r.stdout).toBe("hello from shoal's busybox\n");
    const pull = ok(await docker("pull", image));
    expect(pull.stdout).toContain(`Status: Image is up to date for ${image}`);
    ok(await docker("rmi", image));
    appliedBy();
    const again = ok(await docker("pull", image));
    expect(again.stdout).toMatch(/Pull complete/);
    expect(again.stdout).toContain(`Status: Downloaded newer image for ${image}`);
    // Its layers (the busybox one only if no image before had it unpacked) were applied by shoald while
    // they downloaded, each staged in a directory of its own: none is left.
    const by = appliedBy();
    expect(by.length).toBeGreaterThan(0);
    expect(by.every((b) => b === "shoald")).toBe(true);
    expect(await readdir(ingestDir(cd.root))).toEqual([]);
    const unknown = await docker("pull", `${reg}/shoal/nothing:1`);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain(`manifest for ${reg}/shoal/nothing:1 not found`);
  });

  test("two pulls of the same image at once both succeed (each layer unpacked once, kept by both)", async () => {
    const image = `${reg}/shoal/web:latest`;
    await docker("rmi", "-f", image);
    const pulls = await Promise.all([docker("pull", image), docker("pull", image)]);
    for (const p of pulls) expect(ok(p).stdout).toMatch(/Status: (Downloaded newer image|Image is up to date) for /);
    expect(ok(await docker("run", "--rm", image, "cat", "/var/www/index.html")).stdout).toBe(
      "hello from shoal's busybox\n",
    );
    expect(await readdir(ingestDir(cd.root))).toEqual([]);
  });

  test("a registry that asks for credentials: refused without, pulled with (basic auth from the docker CLI's config)", async () => {
    const hash = (await run(["perl", "-e", 'print crypt("s3cret", q($2b$05$abcdefghijklmnopqrstuu))'])).stdout;
    await writeFile(join(dir, "htpasswd"), `alice:${hash}\n`);
    await pullNeedsCredentials(
      "registry-auth",
      `  htpasswd:\n    realm: shoal-test\n    path: ${join(dir, "htpasswd")}\n`,
      "private/bb:1",
    );
  });

  test("a registry with token auth (a token server that grants by user): refused anonymously, pulled with credentials", async () => {
    const ca = await createRootCA();
    const certDer = Buffer.from(ca.certPem.replace(/-----[^-]+-----|\s/g, ""), "base64");
    await writeFile(join(dir, "token-ca.pem"), ca.certPem);
    const b64 = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString("base64url");
    const tokenPort = await freePort();
    // The token server: alice:s3cret gets the scope she asks for; anyone else gets a token without access.
    const tokens = createHttpServer((req, res) => {
      const url = new URL(req.url ?? "/", "http://x");
      const authorized = req.headers.authorization === `Basic ${Buffer.from("alice:s3cret").toString("base64")}`;
      const scope = url.searchParams.get("scope") ?? "";
      const [type, name, actions] = scope.split(":");
      const now = Math.floor(Date.now() / 1000);
      const claims = {
        iss: "shoal-test",
        sub: authorized ? "alice" : "",
        aud: url.searchParams.get("service"),
        exp: now + 300,
        nbf: now - 10,
        iat: now,
        jti: String(Math.random()),
        access: authorized && type ? [{ type, name, actions: (actions ?? "").split(",") }] : [],
      };
      const input = `${b64({ alg: "ES256", typ: "JWT", x5c: [certDer.toString("base64")] })}.${b64(claims)}`;
      const sig = sign("sha256", Buffer.from(input), { key: createPrivateKey(ca.keyPem), dsaEncoding: "ieee-p1363" });
      res.writeHead(200, { "Content-Type": "application/json" });
      res.end(JSON.stringify({ token: `${input}.${sig.toString("base64url")}` }));
    });
    await new Promise<void>((r) => tokens.listen(tokenPort, "127.0.0.1", r));
    try {
      await pullNeedsCredentials(
        "registry-token",
        `  token:\n    realm: http://127.0.0.1:${tokenPort}/token\n    service: shoal-registry\n    issuer: shoal-test\n    rootcertbundle: ${join(dir, "token-ca.pem")}\n`,
        "team/bb:1",
      );
    } finally {
      tokens.close();
    }
  });

  test("a blob whose bytes do not match its digest is refused, and nothing is named", async () => {
    ok(
      await run([
        SKOPEO,
        "copy",
        "--dest-tls-verify=false",
        `oci-archive:${join(dir, "web.tar")}`,
        `docker://${reg}/shoal/tampered:1`,
      ]),
    );
    // Tamper with the registry's copy of the big layer.
    const blobs = join(dir, "registry/docker/registry/v2/blobs/sha256");
    let biggest = "";
    let size = 0;
    for (const prefix of await readdir(blobs)) {
      for (const d of await readdir(join(blobs, prefix))) {
        const data = await readFile(join(blobs, prefix, d, "data"));
        if (data.length > size) {
          size = data.length;
          biggest = join(blobs, prefix, d, "data");
        }
      }
    }
    const data = await readFile(biggest);
    data[1000] = data[1000]! ^ 0xff;
    await writeFile(biggest, data);
    // The layer is in the content store from the run above: remove that image so it is fetched.
    await docker("rmi", "-f", `${reg}/shoal/web:latest`);
    // The image's documents (written while its layers download) are not in the content store, before or after.
    const res = await fetch(`http://${reg}/v2/shoal/tampered/manifests/1`, {
      headers: { Accept: "application/vnd.oci.image.manifest.v1+json" },
    });
    const manifest = Buffer.from(await res.arrayBuffer());
    const documents = [
      `sha256:${createHash("sha256").update(manifest).digest("hex")}`,
      (JSON.parse(manifest.toString("utf8")) as { config: { digest: string } }).config.digest,
    ];
    const store = new ContentStore(cd.containerd);
    const present = async (): Promise<boolean[]> => Promise.all(documents.map((d) => store.has(d)));
    expect(await present()).toEqual([false, false]);
    const r = await docker("pull", `${reg}/shoal/tampered:1`);
    expect(r.code).toBe(1);
    expect(r.stderr + r.stdout).toMatch(/digest mismatch/);
    expect((await docker("image", "inspect", `${reg}/shoal/tampered:1`)).code).toBe(1);
    // A failed pull leaves nothing behind: neither its documents nor a half-written layer.
    expect(await present()).toEqual([false, false]);
    expect(await readdir(join(dir, "cd", "data", "containerd", "io.containerd.content.v1.content", "ingest"))).toEqual(
      [],
    );
    // Nor the tampered layer's bytes: neither being written in shoald's directory nor put in place.
    expect(await readdir(ingestDir(cd.root)).catch(() => [])).toEqual([]);
    const layers = (JSON.parse(manifest.toString("utf8")) as { layers: { digest: string; size: number }[] }).layers;
    const tampered = layers.find((l) => l.size === size)!;
    expect(existsSync(blobPath(cd.root, tampered.digest))).toBe(false);
  });

  test("restart policies, top, --memory and --cpus", async () => {
    ok(await docker("load", "-i", join(dir, "busybox.tar")));
    ok(await docker("run", "-d", "--name", "flaky", "--restart", "on-failure:2", "busybox", "sh", "-c", "exit 3"));
    let info = { RestartCount: 0, State: { Status: "" } };
    for (let i = 0; i < 100; i++) {
      info = JSON.parse(ok(await docker("inspect", "flaky")).stdout)[0];
      if (info.RestartCount === 2 && info.State.Status === "exited") break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(info).toMatchObject({ RestartCount: 2, State: { Status: "exited", ExitCode: 3 } });
    ok(await docker("rm", "flaky"));

    const id = ok(
      await docker("run", "-d", "--name", "limited", "--memory", "64m", "--cpus", "0.5", "busybox", "sleep", "1000"),
    ).stdout.trim();
    const top = ok(await docker("top", "limited")).stdout;
    expect(top).toMatch(/^UID +PID +PPID/);
    expect(top).toContain("sleep 1000");
    const limit = await readFile(`/sys/fs/cgroup/memory/shoal/${id}/memory.limit_in_bytes`, "utf8").catch(() => "");
    if (limit !== "") expect(Number(limit)).toBe(64 * 1024 * 1024);
    const hc = JSON.parse(ok(await docker("inspect", "limited")).stdout)[0].HostConfig;
    expect(hc).toMatchObject({ Memory: 64 * 1024 * 1024, NanoCpus: 500_000_000 });
    ok(await docker("rm", "-f", "limited"));
    const rmi = await docker("rmi", "busybox");
    expect(rmi.code).toBe(0);
  });
});
