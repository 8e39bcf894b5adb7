// `npm run sim -- --seeds N --from S [--nodes 3|5|7] [--steps K] [--trace] [--unsafe-commit-any-term]`
// Runs a range of simulation seeds and prints one line per failure with the command that replays it.

import { writeFileSync } from "node:fs";
import { replayCommand, runSeed } from "./cluster.js";

interface Args {
  seeds: number;
  from: number;
  nodes?: number;
  steps?: number;
  trace: boolean;
  unsafe: boolean;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { seeds: 100, from: 0, trace: false, unsafe: false };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]!;
    const num = (): number => {
      const v = Number(argv[++i]);
      if (!Number.isInteger(v) || v < 0) throw new Error(`${k} needs a non-negative integer`);
      return v;
    };
    if (k === "--seeds") a.seeds = num();
    else if (k === "--from") a.from = num();
    else if (k === "--nodes") a.nodes = num();
    else if (k === "--steps") a.steps = num();
    else if (k === "--trace") a.trace = true;
    else if (k === "--unsafe-commit-any-term") a.unsafe = true;
    else throw new Error(`unknown argument ${k}`);
  }
  return a;
}

const args = parseArgs(process.argv.slice(2));
const t0 = performance.now();
let failed = 0;
let steps = 0;
for (let seed = args.from; seed < args.from + args.seeds; seed++) {
  const r = runSeed({
    seed,
    ...(args.nodes ? { nodes: args.nodes } : {}),
    ...(args.steps ? { steps: args.steps } : {}),
    trace: args.trace,
    unsafeCommitAnyTerm: args.unsafe,
  });
  steps += r.steps;
  if (!r.ok) {
    failed++;
    const extra = `${args.nodes ? ` --nodes ${args.nodes}` : ""}${args.steps ? ` --steps ${args.steps}` : ""}${args.unsafe ? " --unsafe-commit-any-term" : ""}`;
    console.log(`seed ${seed} FAILED: ${r.error?.trim()}\n  replay: ${replayCommand(seed, extra)} --trace`);
    if (r.trace) {
      const file = `sim-trace-${seed}.log`;
      writeFileSync(file, `${r.trace.join("\n")}\n`);
      console.log(`  trace written to ${file}`);
    }
  } else if (args.seeds === 1) {
    console.log(`seed ${seed} ok: ${JSON.stringify(r.stats)}`);
  }
}
const secs = (performance.now() - t0) / 1000;
console.log(`${args.seeds - failed} seeds passed, ${failed} failed; ${steps} steps in ${secs.toFixed(1)} s`);
process.exit(failed > 0 ? 1 : 0);
