// The docker CLI's container and image commands against shoald on the lab, as a user types them: run's
// flags (-e, --env-file, -w, -u, --entrypoint, --hostname, --label, --rm, -v, --memory, --cpus, -it),
// create/start/stop/kill/restart/rm/wait, logs, exec -it, inspect, ps --filter, top; docker load of both
// archive kinds, images, inspect, tag, save, rmi, pull with docker's progress stream from a registry on
// another lab host; bad input in docker's words that changes nothing; and restart policies across a
// containerd restart and a host restart (shoald, containerd, shims and containers all gone, the run
// directory wiped). Root only; run under the lock. The lab (and everything in it) is removed at the end.

import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { request } from "node:http";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildImage, dockerArchive, ociArchive, randomLayer } from "../../deploy/busybox-image.js";
import { killProcessesNaming, Lab, type LabHost, unmountBelow } from "../../deploy/lab.js";
import { build, docker, isRoot, run, shoal, waitFor } from "./lab-helpers.js";

const REGISTRY = "192.0.2.2:5000";

describe.skipIf(!isRoot)("the docker CLI's container and image commands (lab, containerd per shoald)", () => {
  const lab = new Lab({ name: "ctcli", raftTickMs: 50, daemonArgs: ["--insecure-registry", REGISTRY] });
  let h1: LabHost;
  let h2: LabHost;
  let bigLayer = { digest: "", size: 0 };

  /** docker against h1 that must succeed: its stdout. */
  const d = async (...args: string[]): Promise<string> => {
    const r = await docker(h1, ...args);
    if (r.code !== 0) throw new Error(`docker ${args.join(" ")} failed (${r.code}): ${r.stderr}${r.stdout}`);
    return r.stdout;
  };
  const inspect = async (name: string): Promise<Record<string, unknown> & { State: Record<string, unknown> }> =>
    (JSON.parse(await d("inspect", name)) as (Record<string, unknown> & { State: Record<string, unknown> })[])[0]!;
  /** A command under a pseudo-terminal (script(1)), `input` typed into it: docker's -it. */
  const withTty = (cmd: string, input: string) =>
    run("bash", ["-c", `printf %s "$INPUT" | script -qefc "$CMD" /dev/null; echo "rc=$?"`], {
      env: { ...process.env, INPUT: input, CMD: cmd, DOCKER_HOST: `unix://${h1.socket}` },
      timeout: 30_000,
    }).then((r) => r.stdout.replace(/\r/g, ""));

  /** The layers of an image in h2's registry, as its manifest names them. */
  const registryLayers = async (repo: string, tag: string): Promise<{ digest: string; size: number }[]> => {
    const accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
    const url = `http://${REGISTRY}/v2/${repo}/manifests/${tag}`;
    const r = await lab.exec(h2, ["curl", "-sSf", "-H", `Accept: ${accept}`, url]);
    return (JSON.parse(r.stdout) as { layers: { digest: string; size: number }[] }).layers;
  };

  beforeAll(async () => {
    await build();
    await lab.down();
    [h1, h2] = (await lab.up(2)) as [LabHost, LabHost];
    await lab.startRegistry(h2);
    const bb = join(lab.root, "busybox-oci.tar");
    writeFileSync(bb, ociArchive(buildImage({ name: "busybox:latest" })));
    await lab.pushImage(h2, bb, `${REGISTRY}/t/busybox:latest`);
    const big = buildImage({ name: "big:latest", extraLayers: [randomLayer("big", 3_000_000)] });
    writeFileSync(join(lab.root, "big.tar"), ociArchive(big));
    await lab.pushImage(h2, join(lab.root, "big.tar"), `${REGISTRY}/t/big:1`);
    const tampered = buildImage({ name: "tampered:latest", extraLayers: [randomLayer("t", 300_000)] });
    writeFileSync(join(lab.root, "tampered.tar"), ociArchive(tampered));
    await lab.pushImage(h2, join(lab.root, "tampered.tar"), `${REGISTRY}/t/tampered:1`);
    // skopeo compresses layers on their way to a registry: their digests are the registry's manifest's.
    bigLayer = (await registryLayers("t/big", "1"))[1]!;
    // The registry's copy of tampered's own layer gets one byte changed.
    const hex = (await registryLayers("t/tampered", "1"))[1]!.digest.slice(7);
    const blob = join(h2.dir, "registry", "docker/registry/v2/blobs/sha256", hex.slice(0, 2), hex, "data");
    const bytes = readFileSync(blob);
    bytes[1000] = bytes[1000]! ^ 0xff;
    writeFileSync(blob, bytes);
  }, 180_000);

  afterAll(async () => {
    await lab.down();
  }, 120_000);

  it("docker load takes a docker save archive and an OCI layout; images, image inspect, tag, save, rmi", async () => {
    writeFileSync(join(lab.root, "busybox-save.tar"), dockerArchive(buildImage({ name: "busybox:latest" })));
    const cfg = buildImage({
      name: "shoal/cfg:1",
      entrypoint: ["/bin/sh", "-c"],
      cmd: ['echo "$GREETING from $(pwd) as $(id -u):$(id -g)"'],
      env: ["PATH=/bin", "GREETING=hello"],
      workingDir: "/var/www",
      user: "www",
      labels: { "org.shoal.test": "cfg" },
    });
    writeFileSync(join(lab.root, "cfg-oci.tar"), ociArchive(cfg));
    expect(await d("load", "-i", join(lab.root, "busybox-save.tar"))).toBe("Loaded image: busybox:latest\n");
    expect(await d("load", "-i", join(lab.root, "cfg-oci.tar"))).toBe("Loaded image: shoal/cfg:1\n");
    const ls = (await d("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}")).trim().split("\n").sort();
    expect(ls.map((l) => l.split(" ")[0])).toEqual(["busybox:latest", "shoal/cfg:1"]);
    expect(ls[1]!.split(" ")[1]).toBe(cfg.configDigest.slice(7, 19));
    const img = JSON.parse(await d("image", "inspect", "shoal/cfg:1")) as {
      Id: string;
      Config: { Entrypoint: string[]; WorkingDir: string; User: string; Labels: Record<string, string> };
    }[];
    expect(img[0]).toMatchObject({
      Id: cfg.configDigest,
      Config: {
        Entrypoint: ["/bin/sh", "-c"],
        WorkingDir: "/var/www",
        User: "www",
        Labels: { "org.shoal.test": "cfg" },
      },
    });
    // The image's Entrypoint, Cmd, Env, WorkingDir and User apply.
    expect(await d("run", "--rm", "shoal/cfg:1")).toBe("hello from /var/www as 33:33\n");
    await d("tag", "shoal/cfg:1", "tools/cfg:2");
    await d("save", "-o", join(lab.root, "saved.tar"), "tools/cfg:2");
    expect(await d("rmi", "tools/cfg:2")).toBe("Untagged: tools/cfg:2\n");
    expect(await d("load", "-i", join(lab.root, "saved.tar"))).toBe("Loaded image: tools/cfg:2\n");
    expect((await d("images", "-q", "--no-trunc", "tools/cfg")).trim()).toBe(cfg.configDigest);
    // The last name of an image: it goes with its name.
    await d("rmi", "tools/cfg:2");
    const rmi = await d("rmi", "shoal/cfg:1");
    expect(rmi).toBe(`Untagged: shoal/cfg:1\nDeleted: ${cfg.configDigest}\n`);
    const gone = await docker(h1, "image", "inspect", "shoal/cfg:1");
    expect(gone.code).toBe(1);
    expect(gone.stderr).toContain("No such image: shoal/cfg:1");
  });

  it("a corrupt or truncated archive, or a digest mismatch from the registry, imports nothing", async () => {
    const before = await d("images", "-q", "--no-trunc");
    const good = readFileSync(join(lab.root, "big.tar"));
    const corrupt = Buffer.from(good);
    corrupt[good.length - 1_000_000] = corrupt[good.length - 1_000_000]! ^ 0xff;
    writeFileSync(join(lab.root, "corrupt.tar"), corrupt);
    const bad = await docker(h1, "load", "-i", join(lab.root, "corrupt.tar"));
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/invalid archive: .*(digest mismatch|does not match)/);
    writeFileSync(join(lab.root, "short.tar"), good.subarray(0, 1_500_000));
    const short = await docker(h1, "load", "-i", join(lab.root, "short.tar"));
    expect(short.code).toBe(1);
    expect(short.stderr).toContain("invalid archive: unexpected EOF");
    const tampered = await docker(h1, "pull", `${REGISTRY}/t/tampered:1`);
    expect(tampered.code).toBe(1);
    expect(tampered.stderr + tampered.stdout).toMatch(/failed to pull .*tampered:1: .*digest mismatch/);
    expect(await d("images", "-q", "--no-trunc")).toBe(before);
  });

  it("docker pull: docker's per-layer progress stream, the CLI's lines; unknown images and bad references", async () => {
    // The stream as the docker CLI reads it (it draws these as bars on a terminal).
    const messages = await new Promise<{ status?: string; id?: string; progressDetail?: { current?: number } }[]>(
      (resolve, reject) => {
        const req = request(
          {
            socketPath: h1.socket,
            method: "POST",
            path: `/v1.50/images/create?fromImage=${encodeURIComponent(`${REGISTRY}/t/big`)}&tag=1`,
          },
          (res) => {
            let text = "";
            res.setEncoding("utf8");
            res.on("data", (c: string) => {
              text += c;
            });
            res.on("end", () =>
              resolve(
                text
                  .trim()
                  .split("\n")
                  .map((l) => JSON.parse(l)),
              ),
            );
          },
        );
        req.on("error", reject);
        req.end();
      },
    );
    const big = bigLayer.digest.slice(7, 19);
    const ofBig = messages.filter((m) => m.id === big).map((m) => m.status);
    expect(ofBig[0]).toBe("Pulling fs layer");
    expect(ofBig.filter((s) => s === "Downloading").length).toBeGreaterThanOrEqual(3);
    expect(ofBig.slice(-5).filter((s) => s !== "Downloading")).toEqual([
      "Verifying Checksum",
      "Download complete",
      "Extracting",
      "Pull complete",
    ]);
    const currents = messages
      .filter((m) => m.id === big && m.status === "Downloading")
      .map((m) => m.progressDetail!.current!);
    expect(currents).toEqual([...currents].sort((a, b) => a - b));
    expect(currents.at(-1)).toBe(bigLayer.size);
    expect(messages.at(-1)).toEqual({ status: `Status: Downloaded newer image for ${REGISTRY}/t/big:1` });
    // The CLI's lines without a terminal; then the same pull again is up to date.
    const cli = await d("pull", `${REGISTRY}/t/busybox`);
    expect(cli).toMatch(
      new RegExp(
        `^Using default tag: latest\nlatest: Pulling from t/busybox\n([0-9a-f]{12}: (Already exists|Pulling fs layer|Verifying Checksum|Download complete|Extracting|Pull complete)\n)+Digest: sha256:[0-9a-f]{64}\nStatus: Downloaded newer image for ${REGISTRY}/t/busybox:latest\n${REGISTRY}/t/busybox:latest\n$`,
      ),
    );
    expect(await d("pull", `${REGISTRY}/t/busybox`)).toContain(
      `Status: Image is up to date for ${REGISTRY}/t/busybox:latest`,
    );
    const unknown = await docker(h1, "pull", `${REGISTRY}/t/nothing:1`);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain(`manifest for ${REGISTRY}/t/nothing:1 not found: manifest unknown`);
    const runUnknown = await docker(h1, "run", "--rm", `${REGISTRY}/t/nothing:1`, "true");
    expect(runUnknown.code).toBe(125);
    expect(runUnknown.stderr).toContain(`Unable to find image '${REGISTRY}/t/nothing:1' locally`);
    expect(runUnknown.stderr).toContain("manifest unknown");
    const badRef = await shoal(h1, "pull", "Bad:Ref");
    expect(badRef.code).toBe(1);
    expect(badRef.stderr).toContain("invalid reference format");
    // docker create reports a failed create with exit code 1 (only docker run uses 125).
    const noImage = await docker(h1, "create", "nosuch:1");
    expect(noImage.code).toBe(1);
    expect(noImage.stderr).toContain("Unable to find image 'nosuch:1' locally");
    await d("rmi", `${REGISTRY}/t/big:1`);
  });

  it("run: -e, --env-file, -w, -u, --entrypoint, --hostname, --label, -v HOST:CTR[:ro], --rm, --memory, --cpus, -it", async () => {
    writeFileSync(join(lab.root, "env.list"), "# a comment\nFROM_FILE=yes\nSHARED=file\n");
    const out = await d(
      "run",
      "--rm",
      "-e",
      "A=1",
      "--env-file",
      join(lab.root, "env.list"),
      "-e",
      "SHARED=flag",
      "-w",
      "/tmp",
      "-u",
      "33:33",
      "--hostname",
      "box1",
      "--entrypoint",
      "/bin/sh",
      "busybox",
      "-c",
      'echo "$A $FROM_FILE $SHARED $(pwd) $(id -u):$(id -g) $(hostname)"',
    );
    expect(out).toBe("1 yes flag /tmp 33:33 box1\n");
    expect(await d("ps", "-a", "-q")).toBe("");

    writeFileSync(join(lab.root, "shared.txt"), "from the host\n");
    const dir = join(lab.root, "vol");
    await run("mkdir", ["-p", dir]);
    await d("run", "--rm", "-v", `${dir}:/data`, "busybox", "sh", "-c", "echo from the container > /data/out");
    expect(readFileSync(join(dir, "out"), "utf8")).toBe("from the container\n");
    expect(await d("run", "--rm", "-v", `${lab.root}:/mnt:ro`, "busybox", "cat", "/mnt/shared.txt")).toBe(
      "from the host\n",
    );
    const ro = await docker(h1, "run", "--rm", "-v", `${lab.root}:/mnt:ro`, "busybox", "touch", "/mnt/x");
    expect(ro.code).toBe(1);
    expect(ro.stderr).toContain("Read-only file system");
    expect(existsSync(join(lab.root, "x"))).toBe(false);

    const id = (
      await d(
        "run",
        "-d",
        "--name",
        "limited",
        "--label",
        "tier=web",
        "--label",
        "team",
        "--memory",
        "64m",
        "--cpus",
        "0.5",
        "busybox",
        "sleep",
        "1000",
      )
    ).trim();
    const c = await inspect("limited");
    expect(c).toMatchObject({
      Config: { Labels: { tier: "web", team: "" } },
      HostConfig: { Memory: 64 * 1024 * 1024, NanoCpus: 500_000_000 },
    });
    // The limits are the kernel's: cgroup v1 (memory and cpu hierarchies) or v2.
    const cgroup = (...files: string[]): string =>
      files.map((f) => (existsSync(f) ? readFileSync(f, "utf8").trim() : "")).find((x) => x !== "") ?? "(none)";
    expect(
      cgroup(`/sys/fs/cgroup/memory/shoal/${id}/memory.limit_in_bytes`, `/sys/fs/cgroup/shoal/${id}/memory.max`),
    ).toBe(String(64 * 1024 * 1024));
    expect(
      cgroup(
        `/sys/fs/cgroup/cpu/shoal/${id}/cpu.cfs_quota_us`,
        `/sys/fs/cgroup/cpu,cpuacct/shoal/${id}/cpu.cfs_quota_us`,
        `/sys/fs/cgroup/shoal/${id}/cpu.max`,
      ),
    ).toMatch(/^50000( 100000)?$/);
    expect(await d("ps", "--filter", "label=tier=web", "--format", "{{.Names}}")).toBe("limited\n");
    await d("rm", "-f", "limited");

    // -it: a terminal inside, what is typed goes in, the exit code comes out.
    const tty = await withTty("docker run -it --rm busybox sh", "tty; echo in-$((40+2)); exit 5\n");
    expect(tty).toContain("/dev/pts/0\nin-42\n");
    expect(tty).toMatch(/rc=5\n$/);
    const noTty = await docker(h1, "run", "--rm", "busybox", "tty");
    expect(noTty.stdout).toBe("not a tty\n");
  });

  it("create, start, stop, kill, restart, rm [-f], wait; the exit codes docker says", async () => {
    const script = 'trap "echo got TERM; exit 7" TERM; echo up; while :; do sleep 0.1; done';
    await d("create", "--name", "life", "busybox", "sh", "-c", script);
    expect(await d("ps", "-a", "--filter", "name=life", "--format", "{{.Status}}")).toBe("Created\n");
    expect(await d("start", "life")).toBe("life\n");
    await waitFor("life's output", async () => ((await d("logs", "life")) === "up\n" ? true : undefined));
    const running = await inspect("life");
    expect(running.State).toMatchObject({ Status: "running", Running: true });
    const waiting = docker(h1, "wait", "life");
    expect(await d("stop", "-t", "5", "life")).toBe("life\n");
    expect((await waiting).stdout).toBe("7\n");
    expect((await inspect("life")).State).toMatchObject({ Status: "exited", ExitCode: 7 });
    expect(await d("logs", "life")).toBe("up\ngot TERM\n");

    await d("start", "life");
    const pid1 = (await inspect("life")).State.Pid as number;
    await d("restart", "-t", "5", "life");
    const after = (await inspect("life")).State;
    expect(after).toMatchObject({ Status: "running" });
    expect(after.Pid).not.toBe(pid1);
    const busy = await docker(h1, "rm", "life");
    expect(busy.code).toBe(1);
    expect(busy.stderr).toContain('cannot remove container "/life": container is running');
    expect(await d("kill", "life")).toBe("life\n");
    expect((await d("wait", "life")).trim()).toBe("137");
    expect((await inspect("life")).State).toMatchObject({ Status: "exited", ExitCode: 137 });
    await d("start", "life");
    expect(await d("rm", "-f", "life")).toBe("life\n");
    expect(await d("ps", "-aq")).toBe("");

    const quick = (await d("run", "-d", "busybox", "sh", "-c", "sleep 1; exit 3")).trim();
    expect((await d("wait", quick)).trim()).toBe("3");
    await d("rm", quick);
  });

  it("logs --tail, --since and -f; exec [-it]; inspect; ps -a --filter; top", async () => {
    await d(
      "run",
      "-d",
      "--name",
      "talker",
      "--label",
      "role=talk",
      "busybox",
      "sh",
      "-c",
      "echo line1; echo line2; while [ ! -f /tmp/err ]; do sleep 0.1; done; echo line3 >&2; " +
        "while [ ! -f /tmp/go ]; do sleep 0.1; done; echo late; exec sleep 1000",
    );
    // stdout and stderr are two pipes: line3 goes to stderr only once line2 is in the log, so their order
    // in the log is the one written.
    await waitFor("two lines", async () => ((await d("logs", "talker")).includes("line2\n") ? true : undefined));
    await d("exec", "talker", "touch", "/tmp/err");
    await waitFor("three lines", async () =>
      (await docker(h1, "logs", "talker")).stderr === "line3\n" ? true : undefined,
    );
    const tail = await docker(h1, "logs", "--tail", "2", "talker");
    expect(tail.stdout).toBe("line2\n");
    expect(tail.stderr).toBe("line3\n");
    await new Promise((r) => setTimeout(r, 50));
    const since = (Date.now() / 1000).toFixed(3);
    const follow: ChildProcess = spawn("docker", ["-H", `unix://${h1.socket}`, "logs", "-f", "talker"]);
    let followed = "";
    follow.stdout!.on("data", (b: Buffer) => {
      followed += b.toString();
    });
    const followEnd = new Promise<number | null>((r) => follow.on("exit", r));
    await waitFor("logs -f has the old lines", () => (followed.includes("line2\n") ? true : undefined));
    await d("exec", "talker", "touch", "/tmp/go");
    await waitFor("logs -f has the new line", () => (followed.includes("late\n") ? true : undefined));
    expect(await d("logs", "--since", since, "talker")).toBe("late\n");

    expect((await docker(h1, "exec", "talker", "tty")).stdout).toBe("not a tty\n");
    const it = await withTty("docker exec -it talker sh", "tty; echo $((6*7)); exit 4\n");
    expect(it).toContain("/dev/pts/");
    expect(it).toContain("42\n");
    expect(it).toMatch(/rc=4\n$/);
    const code = await docker(h1, "exec", "talker", "sh", "-c", "exit 9");
    expect(code.code).toBe(9);

    const c = await inspect("talker");
    expect(c).toMatchObject({
      Name: "/talker",
      Path: "sh",
      State: { Status: "running", Running: true },
      Config: { Image: "busybox", Labels: { role: "talk" } },
      HostConfig: { RestartPolicy: { Name: "no" } },
    });
    const top = await d("top", "talker");
    expect(top).toMatch(/^UID +PID +PPID/);
    expect(top).toContain("sleep 1000");

    await d("run", "--name", "done", "busybox", "sh", "-c", "exit 2").catch(() => "");
    const names = (...f: string[]) => d("ps", ...f, "--format", "{{.Names}}").then((s) => s.trim().split("\n").sort());
    expect(await names()).toEqual(["talker"]);
    expect(await names("-a")).toEqual(["done", "talker"]);
    expect(await names("-a", "--filter", "status=exited")).toEqual(["done"]);
    expect(await names("-a", "--filter", "exited=2")).toEqual(["done"]);
    expect(await names("-a", "--filter", "label=role=talk")).toEqual(["talker"]);
    expect(await names("-a", "--filter", "ancestor=busybox")).toEqual(["done", "talker"]);
    expect(await names("-a", "--filter", "name=^tal")).toEqual(["talker"]);
    const badFilter = await docker(h1, "ps", "--filter", "colour=red");
    expect(badFilter.code).toBe(1);
    expect(badFilter.stderr).toContain("invalid filter 'colour'");

    await d("kill", "talker");
    expect(await followEnd).toBe(0);
    expect(followed).toBe("line1\nline2\nlate\n");
    await d("rm", "talker", "done");
  });

  // An unknown network is refused in docker's words inside a swarm (test/e2e/containers.test.ts).
  it("bad input in docker's words changes nothing: a name in use, an unknown image", async () => {
    await d("run", "-d", "--name", "taken", "busybox", "sleep", "1000");
    const dup = await docker(h1, "run", "-d", "--name", "taken", "busybox", "true");
    expect(dup.code).toBe(125);
    expect(dup.stderr).toContain('Conflict. The container name "/taken" is already in use');
    const img = await docker(h1, "image", "inspect", "nosuch:2");
    expect(img.stderr).toContain("No such image: nosuch:2");
    expect((await d("ps", "-a", "--format", "{{.Names}}")).trim()).toBe("taken");
    await d("rm", "-f", "taken");
  });

  describe("restart policies", () => {
    // (docker's names have at least two characters)
    const policies = { pa: "always", pb: "unless-stopped", pc: "on-failure", pd: "no", pe: "unless-stopped" };
    const pidOf = async (n: string): Promise<number> => (await inspect(n)).State.Pid as number;
    const state = async (n: string) => (await inspect(n)).State as { Status: string; Pid: number };
    const containerdPid = (): number =>
      Number(readFileSync(join(h1.execRoot, "containerd", "containerd.pid"), "utf8").trim());
    /** Every process of h1's containers (their cgroups). */
    const containerPids = async (): Promise<number[]> => {
      const ids = (await d("ps", "-aq", "--no-trunc")).trim().split("\n").filter(Boolean);
      return ids.flatMap((id) =>
        [`/sys/fs/cgroup/pids/shoal/${id}/cgroup.procs`, `/sys/fs/cgroup/shoal/${id}/cgroup.procs`]
          .filter((p) => existsSync(p))
          .flatMap((p) => readFileSync(p, "utf8").split("\n").filter(Boolean).map(Number)),
      );
    };
    const kill = (pids: number[]): void => {
      for (const p of pids) {
        try {
          process.kill(p, "SIGKILL");
        } catch {
          // Gone already.
        }
      }
    };
    const cameBack = async (before: Record<string, number>) => {
      for (const n of ["pa", "pb", "pc"]) {
        await waitFor(
          `${n} (${policies[n as keyof typeof policies]}) running again`,
          async () => {
            const s = await shoal(h1, "inspect", n);
            if (s.code !== 0) return undefined;
            const st = (JSON.parse(s.stdout) as { State: { Status: string; Pid: number } }[])[0]!.State;
            return st.Status === "running" && st.Pid !== before[n] ? true : undefined;
          },
          30_000,
        );
      }
      // "no" is not started again (its end is seen once containerd answers again), nor what a user stopped.
      await waitFor("pd (no) seen exited", async () => ((await state("pd")).Status === "exited" ? true : undefined));
      expect((await state("pe")).Status).toBe("exited");
      expect((await d("exec", "pa", "echo", "inside")).trim()).toBe("inside");
    };

    it("a containerd restart: running containers keep running; with their shims gone, the policies bring them back", async () => {
      for (const [n, p] of Object.entries(policies))
        await d("run", "-d", "--name", n, "--restart", p, "busybox", "sleep", "1000");
      await d("stop", "-t", "1", "pe");
      const before: Record<string, number> = {};
      for (const n of ["pa", "pb", "pc", "pd"]) before[n] = await pidOf(n);

      // containerd alone: the shims keep the containers; shoald's supervisor starts containerd again.
      const cd1 = containerdPid();
      kill([cd1]);
      await waitFor("a new containerd", () => (containerdPid() !== cd1 ? true : undefined), 20_000);
      await waitFor("containerd answers", async () =>
        (await docker(h1, "exec", "pa", "true")).code === 0 ? true : undefined,
      );
      for (const n of ["pa", "pb", "pc", "pd"])
        expect(await state(n)).toMatchObject({ Status: "running", Pid: before[n] });

      // containerd with its shims and the containers: the policies start them again.
      const cd2 = containerdPid();
      const victims = await containerPids();
      kill([cd2]);
      // The shims of h1's containerd name its socket.
      killProcessesNaming(join(h1.execRoot, "containerd", "containerd.sock"));
      kill(victims);
      await cameBack(before);
      expect((await inspect("pc")).RestartCount).toBe(1);
    }, 120_000);

    it("a host restart (shoald, containerd, shims, containers gone; the run directory wiped): the policies bring them back", async () => {
      const before: Record<string, number> = {};
      for (const n of ["pa", "pb", "pc"]) before[n] = await pidOf(n);
      // One that was only created: docker starts no container at boot that never ran, whatever its policy.
      await d("create", "--name", "pf", "--restart", "always", "busybox", "sleep", "1000");
      const victims = await containerPids();
      await lab.stopDaemon(h1, "SIGKILL", 0);
      // The shims of h1's containerd name its socket.
      killProcessesNaming(join(h1.execRoot, "containerd", "containerd.sock"));
      kill(victims);
      // What a reboot clears: the run directory (a tmpfs) and everything mounted in it.
      await unmountBelow(h1.execRoot);
      await run("rm", ["-rf", h1.execRoot]);
      await lab.startDaemon(h1);
      await waitFor("h1's daemon", async () => ((await shoal(h1, "version")).code === 0 ? true : undefined), 30_000);
      await cameBack(before).catch((err: unknown) => {
        // What the daemon said about them is the diagnosis.
        const tail = readFileSync(h1.log, "utf8").split("\n").slice(-30).join("\n");
        throw new Error(`${err instanceof Error ? err.message : String(err)}; the end of h1's log:\n${tail}`);
      });
      expect((await state("pf")).Status).toBe("created");
      // The ones that stay stopped can still be started by hand.
      await d("start", "pd");
      expect((await state("pd")).Status).toBe("running");
      await d("rm", "-f", "pa", "pb", "pc", "pd", "pe", "pf");
      expect(await d("ps", "-aq")).toBe("");
    }, 120_000);
  });
});
