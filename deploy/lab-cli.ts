// `npm run lab -- up [N]` builds N hosts (default 3) as network namespaces with a shoald in each;
// `npm run lab -- down` removes everything; `npm run lab -- exec hN CMD...` runs a command on a host;
// `npm run lab -- shoal hN ARGS...` runs the shoal CLI against that host's daemon; `npm run lab -- ls`.
// Needs root.

import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { Lab } from "./lab.js";

const [cmd, ...rest] = process.argv.slice(2);
const lab = new Lab({ name: process.env.SHOAL_LAB ?? "lab" });
const cli = join(import.meta.dirname ?? process.cwd(), "..", "cli", "main.js");

function hostArg(s: string | undefined) {
  const m = s?.match(/^h(\d+)$/);
  if (!m) throw new Error(`a host is named h1, h2, ...; got "${s ?? ""}"`);
  return lab.host(Number(m[1]));
}

async function main(): Promise<number> {
  switch (cmd) {
    case "up": {
      const n = rest[0] ? Number(rest[0]) : 3;
      for (const h of await lab.up(n)) {
        process.stdout.write(`${h.name}  ${h.addr}  unix://${h.socket}  (exec root ${h.execRoot}, log ${h.log})\n`);
      }
      return 0;
    }
    case "down":
      await lab.down();
      process.stdout.write("lab removed\n");
      return 0;
    case "ls":
      for (const h of lab.hosts()) process.stdout.write(`${h.name}  ${h.addr}  unix://${h.socket}\n`);
      return 0;
    case "exec": {
      const h = hostArg(rest[0]);
      const r = spawnSync("nsenter", [`--net=/run/netns/${h.netns}`, ...rest.slice(1)], { stdio: "inherit" });
      return r.status ?? 1;
    }
    case "shoal": {
      const h = hostArg(rest[0]);
      const r = spawnSync(process.execPath, [cli, "-H", `unix://${h.socket}`, ...rest.slice(1)], { stdio: "inherit" });
      return r.status ?? 1;
    }
    default:
      process.stderr.write("usage: npm run lab -- up [N] | down | ls | exec hN CMD... | shoal hN ARGS...\n");
      return 2;
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`lab: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exitCode = 1;
  },
);
