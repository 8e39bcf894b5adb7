// The docker commands beside a container's life, through the real docker CLI and Docker's Python SDK
// against shoald on a one-host lab: rename (its words when the name is taken; the overlay DNS name of a
// running container follows at once, a stopped one's at its next start), pause and unpause
// (inspect, ps and info say so; exec and start refused; stop and kill of a paused container work),
// container, image, build-cache and system prune with their filters, system df, the bytes a container
// wrote (ps -s, inspect --size, system df -v, prune's reclaimed space), stats (CPU, memory and its
// limit, pids, network bytes; zeros for a stopped container), history, and bad input in docker's words
// that changes nothing; docker events (replayed and streamed). Root only; run under the lock. The lab is removed at the end.

import { spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildImage, dockerArchive } from "../../deploy/busybox-image.js";
import { Lab, type LabHost } from "../../deploy/lab.js";
import { PYTHON, runPython } from "../integration/python-sdk.js";
import { build, docker, isRoot, run, waitFor } from "./lab-helpers.js";

describe.skipIf(!isRoot)("docker rename, pause, prune, system df, stats and history (lab)", () => {
  const lab = new Lab({ name: "ctxtra", raftTickMs: 50 });
  let h1: LabHost;

  /** docker against h1 that must succeed: its stdout. */
  const d = async (...args: string[]): Promise<string> => {
    const r = await docker(h1, ...args);
    if (r.code !== 0) throw new Error(`docker ${args.join(" ")} failed (${r.code}): ${r.stderr}${r.stdout}`);
    return r.stdout;
  };
  /** docker against h1 that must fail: its stderr. */
  const refused = async (...args: string[]): Promise<string> => {
    const r = await docker(h1, ...args);
    expect(r.code, `docker ${args.join(" ")}: ${r.stdout}`).not.toBe(0);
    return r.stderr;
  };
  const state = async (name: string): Promise<Record<string, unknown>> =>
    (JSON.parse(await d("inspect", name)) as { State: Record<string, unknown> }[])[0]!.State;
  const names = async (): Promise<string[]> =>
    (await d("ps", "-a", "--format", "{{.Names}}")).trim().split("\n").filter(Boolean).sort();
  /** A raw Engine API request on h1's socket: status and body. */
  const api = async (method: string, path: string): Promise<{ status: number; body: string }> => {
    const r = await run("curl", [
      "-s",
      "-X",
      method,
      "--unix-socket",
      h1.socket,
      "-w",
      "\n%{http_code}",
      `http://x${path}`,
    ]);
    const lines = r.stdout.trimEnd().split("\n");
    return { status: Number(lines.pop()), body: lines.join("\n").trim() };
  };
  /** Docker's Python SDK against h1: runs `script` (a function body using `client`), its JSON result. */
  const python = (script: string): Promise<unknown> => runPython(`unix://${h1.socket}`, script);

  beforeAll(async () => {
    await build();
    await lab.down();
    [h1] = (await lab.up(1)) as [LabHost];
    writeFileSync(join(lab.root, "busybox.tar"), dockerArchive(buildImage({ name: "busybox:latest" })));
    await d("load", "-i", join(lab.root, "busybox.tar"));
    await d("swarm", "init", "--advertise-addr", h1.addr);
    await d("network", "create", "-d", "overlay", "--attachable", "ov");
  }, 180_000);

  afterAll(async () => {
    await lab.down();
  }, 120_000);

  it("docker rename: the new name everywhere, docker's words for a taken or bad name, the overlay DNS name at once", async () => {
    await d("run", "-d", "--name", "r1", "busybox", "sleep", "1000");
    await d("create", "--name", "taken", "busybox", "true");
    await d("rename", "r1", "r2");
    expect(await names()).toEqual(["r2", "taken"]);
    expect((JSON.parse(await d("inspect", "r2")) as { Name: string }[])[0]!.Name).toBe("/r2");
    expect((await docker(h1, "inspect", "r1")).stderr).toContain("No such object: r1");
    const takenId = (await d("inspect", "-f", "{{.Id}}", "taken")).trim();
    expect(await refused("rename", "r2", "taken")).toContain(
      `Error response from daemon: Error when allocating new name: Conflict. The container name "/taken" is already in use by container "${takenId}". You have to remove (or rename) that container to be able to reuse that name.`,
    );
    expect(await refused("rename", "r2", "r2")).toContain(
      "Error response from daemon: Renaming a container with the same name as its current name",
    );
    expect(await refused("rename", "r2", "bad/name")).toContain(
      "Error response from daemon: Invalid container name (bad/name), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed",
    );
    expect(await refused("rename", "nosuch", "x1")).toContain("No such container: nosuch");
    expect(await names()).toEqual(["r2", "taken"]);

    // On an overlay, running: the cluster's DNS name follows at once (the old one no longer answers).
    const ping = (name: string) =>
      docker(h1, "run", "--rm", "--network", "ov", "busybox", "ping", "-c", "1", "-W", "2", name);
    await d("run", "-d", "--name", "web", "--network", "ov", "busybox", "sleep", "1000");
    await d("rename", "web", "www");
    expect(await names()).toContain("www");
    await waitFor("the new name to answer on ov", async () =>
      (await ping("www")).stdout.includes("1 packets received"),
    );
    const old = await ping("web");
    expect(old.stdout + old.stderr).toContain("bad address 'web'");
    // Stopped: renamed, and its next start registers the new name.
    await d("stop", "-t", "0", "www");
    await d("rename", "www", "w3");
    await d("start", "w3");
    expect((await ping("w3")).stdout).toContain("1 packets received");
    await d("rm", "-f", "r2", "taken", "w3");
  }, 120_000);

  it("docker pause/unpause: paused in inspect, ps and info; exec and start refused; stop and kill thaw it", async () => {
    // Counts to /tmp/n while it runs: a frozen container counts no more.
    const counter = "trap 'exit 3' TERM; i=0; while :; do i=$((i+1)); echo $i > /tmp/n; sleep 0.05; done";
    await d("run", "-d", "--name", "p1", "busybox", "sh", "-c", counter);
    await d("pause", "p1");
    expect(await state("p1")).toMatchObject({ Status: "paused", Running: true, Paused: true });
    expect(await d("ps", "--filter", "status=paused", "--format", "{{.Names}} {{.State}} {{.Status}}")).toMatch(
      /^p1 paused Up .* \(Paused\)\n$/,
    );
    expect(await d("info", "--format", "{{.ContainersPaused}} {{.ContainersRunning}}")).toBe("1 0\n");
    const id = (await d("inspect", "-f", "{{.Id}}", "p1")).trim();
    expect(await refused("pause", "p1")).toContain(`Error response from daemon: Container ${id} is already paused`);
    expect(await refused("exec", "p1", "true")).toContain(
      `Error response from daemon: Container ${id} is paused, unpause the container before exec`,
    );
    expect(await refused("start", "p1")).toContain("cannot start a paused container, try unpause instead");
    // Frozen: the counter does not move (read from the host, through the container's root file system).
    const pid = (await d("inspect", "-f", "{{.State.Pid}}", "p1")).trim();
    const counted = () => run("cat", [`/proc/${pid}/root/tmp/n`]).then((r) => r.stdout);
    const frozenAt = await counted();
    await new Promise((r) => setTimeout(r, 300));
    expect(await counted()).toBe(frozenAt);
    await d("unpause", "p1");
    expect(await state("p1")).toMatchObject({ Status: "running", Paused: false });
    await waitFor("the counter to move again", async () => (await counted()) !== frozenAt);
    expect(await refused("unpause", "p1")).toContain(`Error response from daemon: Container ${id} is not paused`);

    // docker stop of a paused container: SIGTERM reaches it (it exits 3, not killed after the timeout).
    await d("pause", "p1");
    await d("stop", "-t", "30", "p1");
    expect(await state("p1")).toMatchObject({ Status: "exited", Paused: false, ExitCode: 3 });
    expect(await refused("pause", "p1")).toContain(`Error response from daemon: Container ${id} is not running`);
    // docker kill of a paused container: killed.
    await d("run", "-d", "--name", "p2", "busybox", "sleep", "1000");
    await d("pause", "p2");
    await d("kill", "p2");
    expect(await state("p2")).toMatchObject({ Status: "exited", Paused: false, ExitCode: 137 });
    // rm -f of a paused container.
    await d("run", "-d", "--name", "p3", "busybox", "sleep", "1000");
    await d("pause", "p3");
    await d("rm", "-f", "p1", "p2", "p3");
    expect(await names()).toEqual([]);
  }, 120_000);

  it("docker container prune, image prune, system df, system prune: what is unused goes, filters hold", async () => {
    // On ov: system prune keeps the networks a container uses.
    await d("run", "-d", "--name", "keep-running", "--network", "ov", "busybox", "sleep", "1000");
    await d("create", "--name", "old-a", "--label", "tier=a", "busybox", "true");
    await d("create", "--name", "old-b", "--label", "tier=b", "busybox", "true");
    await d("tag", "busybox", "spare:1");
    writeFileSync(
      join(lab.root, "other.tar"),
      dockerArchive(buildImage({ name: "other:1", labels: { keep: "yes" }, cmd: ["true"] })),
    );
    await d("load", "-i", join(lab.root, "other.tar"));

    expect(await refused("container", "prune", "-f", "--filter", "color=red")).toContain(
      "Error response from daemon: invalid filter 'color'",
    );
    expect(await refused("container", "prune", "-f", "--filter", "until=soon")).toContain(
      'Error response from daemon: failed to parse value as time or duration: "soon"',
    );
    // (dangling=maybe is refused by the daemon, but the CLI adds dangling=true to it: test/unit/engine-usage.)
    expect(await refused("image", "prune", "-a", "-f", "--filter", "until=soon")).toContain(
      'Error response from daemon: failed to parse value as time or duration: "soon"',
    );
    expect(await names()).toEqual(["keep-running", "old-a", "old-b"]);

    const df = await d("system", "df", "--format", "{{.Type}} {{.TotalCount}} {{.Active}}");
    expect(df).toBe("Images 2 1\nContainers 3 1\nLocal Volumes 0 0\nBuild Cache 0 0\n");

    const idA = (await d("inspect", "-f", "{{.Id}}", "old-a")).trim();
    const pruned = await d("container", "prune", "-f", "--filter", "label=tier=a");
    expect(pruned).toBe(`Deleted Containers:\n${idA}\n\nTotal reclaimed space: 0B\n`);
    expect(await d("container", "prune", "-f", "--filter", "until=1h")).toBe("Total reclaimed space: 0B\n");
    expect(await names()).toEqual(["keep-running", "old-b"]);

    // Untagged images only by default: every image here has a name.
    expect(await d("image", "prune", "-f")).toBe("Total reclaimed space: 0B\n");
    expect(await d("image", "prune", "-a", "-f", "--filter", "label=keep=no")).toBe("Total reclaimed space: 0B\n");
    const images = await d("image", "prune", "-a", "-f", "--filter", "label=keep=yes");
    expect(images).toMatch(
      /^Deleted Images:\nuntagged: other:1\ndeleted: sha256:[0-9a-f]{64}\n\nTotal reclaimed space: .*B\n$/,
    );
    const left = await d("images", "--format", "{{.Repository}}:{{.Tag}}");
    expect(left.trim().split("\n").sort()).toEqual(["busybox:latest", "spare:1"]);

    // system prune -a: stopped containers, unused networks and every image no container uses.
    await d("network", "create", "-d", "overlay", "--attachable", "unused");
    const sys = await d("system", "prune", "-a", "-f");
    expect(sys).toContain("Deleted Containers:\n");
    expect(sys).toContain("Deleted Networks:\nunused\n");
    expect(await names()).toEqual(["keep-running"]);
    // busybox (and its other name) stays: keep-running uses it.
    const kept = await d("images", "--format", "{{.Repository}}:{{.Tag}}");
    expect(kept.trim().split("\n").sort()).toEqual(["busybox:latest", "spare:1"]);
    expect((await d("network", "ls", "--format", "{{.Name}}")).split("\n")).toContain("ov");
    await d("rm", "-f", "keep-running");
    await d("rmi", "spare:1");
  }, 120_000);

  it("docker ps -s, inspect --size, system df -v and container prune: the bytes a container wrote", async () => {
    const MB3 = 3_000_000;
    await d(
      "run",
      "-d",
      "--name",
      "writer",
      "--label",
      "sized=yes",
      "busybox",
      "sh",
      "-c",
      `head -c ${MB3} /dev/zero > /blob; sleep 1000`,
    );
    const sizes = async (): Promise<{ SizeRw?: number; SizeRootFs?: number }> =>
      (JSON.parse(await d("inspect", "--size", "writer")) as { SizeRw?: number; SizeRootFs?: number }[])[0]!;
    await waitFor("the container to write its 3 MB", async () => ((await sizes()).SizeRw ?? 0) >= MB3);
    const s = await sizes();
    // The 3 MB file and what else the container's file system got (its directories, /etc files): a few kB.
    expect(s.SizeRw).toBeLessThan(MB3 + 256 * 1024);
    const imageSize = Number((await d("image", "inspect", "-f", "{{.Size}}", "busybox")).trim());
    expect(imageSize).toBeGreaterThan(0);
    expect(s.SizeRootFs).toBe(s.SizeRw! + imageSize);
    // Without --size, inspect carries neither (as dockerd).
    const plain = (JSON.parse(await d("inspect", "writer")) as Record<string, unknown>[])[0]!;
    expect(plain.SizeRw).toBeUndefined();
    expect(await d("ps", "-s", "--filter", "name=writer", "--format", "{{.Size}}")).toMatch(
      /^3(\.\d+)?MB \(virtual \d+(\.\d+)?MB\)\n$/,
    );
    const df = await d("system", "df", "-v", "--format", "{{json .Containers}}");
    const row = (JSON.parse(df) as { Names: string; Size: string }[]).find((c) => c.Names === "writer");
    expect(row?.Size).toMatch(/^3(\.\d+)?MB$/);
    await d("stop", "-t", "0", "writer");
    expect(await d("container", "prune", "-f", "--filter", "label=sized=yes")).toMatch(
      /^Deleted Containers:\n[0-9a-f]{64}\n\nTotal reclaimed space: 3(\.\d+)?MB\n$/,
    );
  }, 60_000);

  it("docker stats: CPU, memory against its limit, pids and network bytes of a running container; zeros when stopped", async () => {
    await d(
      "run",
      "-d",
      "--name",
      "busy",
      "--memory",
      "64m",
      "--network",
      "ov",
      "busybox",
      "sh",
      "-c",
      "while :; do :; done",
    );
    await d("run", "--rm", "--network", "ov", "busybox", "ping", "-c", "3", "-q", "busy");
    const fmt = "{{.Name}}|{{.CPUPerc}}|{{.MemUsage}}|{{.NetIO}}|{{.PIDs}}";
    const [name, cpu, mem, net, pids] = (await d("stats", "--no-stream", "--format", fmt, "busy")).trim().split("|");
    expect(name).toBe("busy");
    // A busy loop: most of a CPU (the CLI computes it from cpu_stats and precpu_stats a second apart).
    expect(Number.parseFloat(cpu!)).toBeGreaterThan(20);
    expect(mem).toMatch(/^[0-9.]+[KMG]iB \/ 64MiB$/);
    // The pings came in and went out on its overlay interface.
    const [rx, tx] = net!.split(" / ");
    expect(rx).not.toBe("0B");
    expect(tx).not.toBe("0B");
    expect(Number(pids)).toBeGreaterThanOrEqual(1);

    // `docker stats` streams every running container (and watches /events for new ones) until stopped.
    const child = spawn("docker", ["-H", `unix://${h1.socket}`, "stats", "--format", "{{.Name}} {{.PIDs}}"]);
    let streamed = "";
    child.stdout.on("data", (c: Buffer) => {
      streamed += c.toString();
    });
    child.stderr.on("data", (c: Buffer) => {
      streamed += c.toString();
    });
    try {
      await waitFor(
        "docker stats to stream busy's figures",
        () => /busy [1-9]/.test(streamed) || child.exitCode !== null,
      );
      expect(child.exitCode, streamed).toBeNull();
    } finally {
      child.kill();
    }

    await d("create", "--name", "idle", "busybox", "true");
    expect(await d("stats", "--no-stream", "--format", fmt, "idle")).toBe("idle|0.00%|0B / 0B|0B / 0B|0\n");
    // One sample, no delta: the first sample of a stream (one-shot) has no precpu figures.
    const one = await api("GET", "/v1.50/containers/busy/stats?stream=false&one-shot=true");
    expect(one.status).toBe(200);
    const sample = JSON.parse(one.body) as {
      cpu_stats: { cpu_usage: { total_usage: number } };
      precpu_stats: { system_cpu_usage: number };
      name: string;
    };
    expect(sample.name).toBe("/busy");
    expect(sample.cpu_stats.cpu_usage.total_usage).toBeGreaterThan(0);
    expect(sample.precpu_stats.system_cpu_usage).toBe(0);
    const bad = await api("GET", "/v1.50/containers/busy/stats?stream=true&one-shot=true");
    expect(bad).toEqual({ status: 400, body: '{"message":"cannot have stream=true and one-shot=true"}' });
    expect(await refused("stats", "--no-stream", "nosuch")).toContain("No such container: nosuch");
    await d("rm", "-f", "busy", "idle");
  }, 120_000);

  it("docker history: the image config's history, newest first, with the image's id and tag on top", async () => {
    const out = await d("history", "--no-trunc", "--format", "{{.ID}}|{{.CreatedBy}}|{{.Size}}", "busybox");
    const id = (await d("image", "inspect", "-f", "{{.Id}}", "busybox")).trim();
    const rows = out.trim().split("\n");
    expect(rows[0]!.split("|")[0]).toBe(id);
    expect(rows.every((r) => r.split("|")[2] !== "")).toBe(true);
    expect(await refused("history", "nosuch:1")).toContain("No such image: nosuch:1");
  }, 60_000);

  it("docker events: a container's, an image's and a network's events, replayed with --since/--until and streamed", async () => {
    const since = ((Date.now() - 1000) / 1000).toFixed(3);
    const id = (await d("run", "-d", "--name", "ev1", "busybox", "sleep", "1000")).trim();
    await d("pause", "ev1");
    await d("unpause", "ev1");
    await d("rename", "ev1", "ev2");
    await d("rm", "-f", "ev2");
    await d("tag", "busybox", "evtag:1");
    await d("rmi", "evtag:1");
    const until = ((Date.now() + 1000) / 1000).toFixed(3);
    const fmt = "{{.Type}} {{.Action}} {{.Actor.Attributes.name}}";
    const replay = async (...filter: string[]) =>
      (await d("events", "--since", since, "--until", until, "--format", fmt, ...filter)).trim().split("\n");
    expect(await replay("--filter", `container=${id}`)).toEqual([
      "container create ev1",
      "container start ev1",
      "container pause ev1",
      "container unpause ev1",
      "container rename ev2",
      "container kill ev2",
      "container die ev2",
      "container destroy ev2",
    ]);
    expect(await replay("--filter", "type=image", "--filter", "event=tag", "--filter", "event=untag")).toEqual([
      "image tag evtag:1",
      "image untag evtag:1",
    ]);
    expect(await refused("events", "--filter", "colour=red", "--until", until)).toContain("invalid filter 'colour'");

    // Streamed: the CLI prints each event as it comes, until it is stopped (--since: those that came before
    // its request reached the daemon are replayed first).
    const child = spawn("docker", [
      "-H",
      `unix://${h1.socket}`,
      "events",
      "--since",
      ((Date.now() - 1000) / 1000).toFixed(3),
      "--filter",
      "type=network",
      "--format",
      fmt,
    ]);
    let out = "";
    child.stdout.on("data", (c: Buffer) => {
      out += c.toString();
    });
    try {
      await d("network", "create", "-d", "overlay", "--attachable", "evnet");
      await d("network", "rm", "evnet");
      await waitFor("the streamed network events", () => out.includes("network destroy evnet"));
      expect(out).toBe("network create evnet\nnetwork destroy evnet\n");
    } finally {
      child.kill();
    }
  }, 120_000);

  it.skipIf(!PYTHON)(
    "Docker's Python SDK: rename, pause, stats, containers.prune, images.prune, df",
    async () => {
      const r = (await python(
        [
          'c = client.containers.run("busybox", ["sleep", "1000"], name="py1", detach=True)',
          'c.rename("py2")',
          "c.reload()",
          "name = c.name",
          "c.pause()",
          "c.reload()",
          "paused = c.status",
          "c.unpause()",
          "s = c.stats(stream=False)",
          'stopped = client.containers.create("busybox", ["true"], name="py-stopped", labels={"py": "1"})',
          'pruned = client.containers.prune(filters={"label": "py"})',
          "c.remove(force=True)",
          "images = client.images.prune()",
          "df = client.df()",
          'return {"name": name, "paused": paused, "statsName": s["name"], "memLimit": s["memory_stats"].get("limit", 0),',
          '        "pruned": pruned["ContainersDeleted"], "stoppedId": stopped.id, "images": images,',
          '        "dfImages": len(df["Images"]), "dfNames": [n for c in df["Containers"] for n in c["Names"]]}',
        ].join("\n"),
      )) as Record<string, unknown>;
      expect(r).toMatchObject({
        name: "py2",
        paused: "paused",
        statsName: "/py2",
        images: { ImagesDeleted: null, SpaceReclaimed: 0 },
      });
      expect(r.memLimit).toBeGreaterThan(0);
      expect(r.pruned).toEqual([r.stoppedId]);
      expect(r.dfImages).toBeGreaterThanOrEqual(1);
      expect(r.dfNames).not.toContain("/py2");
      expect(r.dfNames).not.toContain("/py-stopped");
    },
    120_000,
  );
});
