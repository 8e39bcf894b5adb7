// `npm run demo`: the whole of shoal on one machine. A 3-host lab (network namespaces on an underlay
// bridge, a shoald in each, each with its own containerd), a registry on h3 holding a busybox image built
// here from Debian's busybox-static, a swarm (one manager, two workers), an attachable overlay, a web
// server container (busybox httpd) on h1 and a container on h2 that fetches its page by name across the
// overlay, then `node ls` and `network inspect`. Needs root (it builds namespaces); everything it makes is
// removed at the end, also on failure.

import { execFile } from "node:child_process";
import { existsSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { missingPrograms, missingProgramsLine, SHOALD_PROGRAMS } from "../src/dataplane/programs.js";
import { buildImage, ociArchive } from "./busybox-image.js";
import { Lab, type LabHost } from "./lab.js";

/** Where the demo's registry listens: on h3's underlay address. */
const REGISTRY = "192.0.2.3:5000";
const IMAGE = `${REGISTRY}/shoal/busybox:latest`;

const run = promisify(execFile);
const cli = join(import.meta.dirname ?? process.cwd(), "..", "cli", "main.js");
const t0 = performance.now();

function say(text: string): void {
  process.stdout.write(`[${((performance.now() - t0) / 1000).toFixed(2).padStart(6)} s] ${text}\n`);
}

function step(title: string): void {
  process.stdout.write(`\n── ${title}\n`);
}

async function shoal(h: LabHost, ...args: string[]): Promise<string> {
  say(`${h.name}$ shoal ${args.join(" ")}`);
  try {
    const { stdout } = await run(process.execPath, [cli, "-H", `unix://${h.socket}`, ...args], { timeout: 60_000 });
    return stdout;
  } catch (e) {
    const x = e as { stdout?: string; stderr?: string };
    throw new Error(`shoal ${args.join(" ")} on ${h.name} failed: ${x.stderr ?? ""}${x.stdout ?? ""}`);
  }
}

function show(text: string): void {
  for (const line of text.trimEnd().split("\n")) process.stdout.write(`           ${line}\n`);
}

function held(h: LabHost): string[] {
  const dir = join(h.execRoot, "netns");
  return existsSync(dir) ? readdirSync(dir).filter((n) => n.startsWith("1-")) : [];
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error("the demo builds network namespaces: run it as root");
  // shoald's programs, and ping for step 5: say what to install before building anything.
  const missing = missingPrograms([...SHOALD_PROGRAMS, "busybox", "docker-registry", "skopeo"]);
  if (missing.length > 0) throw new Error(`${missingProgramsLine(missing)} (bash deploy/install.sh installs them all)`);
  const lab = new Lab({ name: "demo", daemonArgs: ["--insecure-registry", REGISTRY] });
  await lab.down();
  try {
    step("1. three hosts: network namespaces on an underlay bridge (192.0.2.0/24), a shoald in each");
    const [h1, h2, h3] = (await lab.up(3)) as [LabHost, LabHost, LabHost];
    for (const h of [h1, h2, h3]) say(`${h.name}: ${h.addr}, Engine API on ${h.socket}`);
    const archive = join(lab.root, "busybox.tar");
    writeFileSync(archive, ociArchive(buildImage()));
    say(`a registry on h3 (${REGISTRY}), holding ${IMAGE}: busybox-static, one layer, built here`);
    await lab.startRegistry(h3);
    await lab.pushImage(h3, archive, IMAGE);

    step("2. a swarm: h1 initialises it, h2 and h3 join as workers");
    show(await shoal(h1, "swarm", "init", "--advertise-addr", h1.addr));
    const token = (await shoal(h1, "swarm", "join-token", "-q", "worker")).trim();
    for (const h of [h2, h3])
      show(await shoal(h, "swarm", "join", "--token", token, "--advertise-addr", h.addr, `${h1.addr}:2377`));
    show(await shoal(h1, "node", "ls"));

    step("3. an attachable overlay network, allocated by the managers");
    const id = (await shoal(h1, "network", "create", "-d", "overlay", "--attachable", "demo-net")).trim();
    say(
      `network id ${id}; no host holds it yet: ${[h1, h2, h3].map((h) => `${h.name} [${held(h).join(" ")}]`).join(", ")}`,
    );

    step("4. a web server on h1 (busybox httpd); h1 pulls the image from h3 and builds the overlay only now");
    show(
      await shoal(
        h1,
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "demo-net",
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/var/www",
      ),
    );
    say(`overlay namespaces: ${[h1, h2, h3].map((h) => `${h.name} [${held(h).join(" ")}]`).join(", ")}`);

    step("5. a container on h2 fetches web's page by name, across the VXLAN overlay");
    let out = "";
    for (let i = 0; i < 50; i++) {
      try {
        out = await shoal(h2, "run", "--rm", "--network", "demo-net", IMAGE, "wget", "-qO-", "http://web/");
        break;
      } catch (e) {
        if (i === 49) throw e;
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    show(out);
    if (!out.includes("hello from shoal's busybox")) throw new Error(`web's page did not come back: ${out}`);
    await shoal(h2, "run", "-d", "--name", "beta", "--network", "demo-net", IMAGE, "sleep", "3600");
    show(await shoal(h2, "exec", "beta", "ping", "-c", "2", "-W", "1", "web"));
    show(await shoal(h1, "images"));

    step("6. what the swarm and h2 say");
    show(await shoal(h1, "node", "ls"));
    show(await shoal(h2, "network", "inspect", "demo-net"));

    step("7. the last container on h2 leaves; h2 drops the overlay");
    await shoal(h2, "rm", "-f", "beta");
    for (let i = 0; i < 50 && held(h2).length > 0; i++) await new Promise((r) => setTimeout(r, 100));
    say(`overlay namespaces: ${[h1, h2, h3].map((h) => `${h.name} [${held(h).join(" ")}]`).join(", ")}`);
    await shoal(h1, "rm", "-f", "web");
    process.stdout.write("\nDemo finished: every step checked out.\n");
  } finally {
    await lab.down();
    say("lab removed");
  }
}

main().catch((e: unknown) => {
  process.stdout.write(`\nDEMO FAILED: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exitCode = 1;
});
