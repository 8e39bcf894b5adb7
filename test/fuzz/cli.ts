// npm run fuzz -- [--requests N] [--seed S] [--batch B] [--concurrency C] [--path K] [--replay-file F]
//                 [--no-shrink] [--shrink-minutes M] [--keep]
//
// A long fuzz run against a new cluster of real shoald daemons (3 managers, a worker, a demoted manager on
// 127.0.0.1-5). Run it under the shared lock: flock /tmp/shoal-heavy.lock npm run fuzz -- --requests 10000
// Prints a line per batch, the outcomes at the end, and on a failure the seed, the batch, the commands that
// replay it and (unless --no-shrink) a smaller failing part of the batch. Exit status 1 on a failure.

import { readFileSync, writeFileSync } from "node:fs";
import { Command } from "commander";
import { casesFromJson } from "./cases.js";
import { formatStats, printFailure, run } from "./runner.js";

const log = (s: string) => process.stdout.write(`${s}\n`);

const program = new Command("fuzz")
  .option("--requests <n>", "cases to send in all", "10000")
  .option("--seed <n>", "the seed (default: random, printed)")
  .option("--batch <n>", "cases between invariant checks", "250")
  .option("--concurrency <n>", "cases in flight at once", "6")
  .option("--path <k>", "replay only batch k of the seed (fast-check path)")
  .option("--replay-file <file>", "send the cases saved in this file as one batch")
  .option("--no-shrink", "do not look for a smaller failing part of a failed batch")
  .option("--shrink-minutes <m>", "time budget for shrinking", "20")
  .option("--keep", "keep the cluster's directory (daemon logs) after a failure")
  .option("--keep-going", "collect findings and go on; stop only when the cluster stops serving")
  .option("--samples <file>", "write examples of every outcome (answer and case) to this file");

program.parse();
const o = program.opts<{
  requests: string;
  seed?: string;
  batch: string;
  concurrency: string;
  path?: string;
  replayFile?: string;
  shrink: boolean;
  shrinkMinutes: string;
  keep?: boolean;
  keepGoing?: boolean;
  samples?: string;
}>();

const seed = o.seed !== undefined ? Number(o.seed) : Math.floor(Math.random() * 2 ** 31);
log(
  `shoal fuzz: seed ${seed}, ${o.replayFile ? `cases of ${o.replayFile}` : `${o.requests} cases`}, batches of ${o.batch}`,
);
const report = await run({
  seed,
  requests: Number(o.requests),
  batchSize: Number(o.batch),
  concurrency: Number(o.concurrency),
  ...(o.path !== undefined ? { path: o.path } : {}),
  ...(o.replayFile ? { cases: casesFromJson(readFileSync(o.replayFile, "utf8")) } : {}),
  shrink: o.shrink,
  shrinkBudgetMs: Number(o.shrinkMinutes) * 60_000,
  keep: o.keep === true,
  keepGoing: o.keepGoing === true,
  log,
});
if (o.samples) {
  const lines = [...report.samples.entries()].sort().flatMap(([k, xs]) => [k, ...xs.map((x) => `    ${x}`)]);
  writeFileSync(o.samples, `${lines.join("\n")}\n`);
}
log("outcomes:");
for (const l of formatStats(report.stats)) log(l);
const peak = report.rssMb.reduce((a, r) => a.map((x, i) => Math.max(x, r[i] ?? 0)), [0, 0, 0, 0, 0]);
log(
  `\nseed ${seed}: ${report.requestsSent} cases in ${report.batches} batches, ${(report.durationMs / 1000).toFixed(0)} s; ` +
    `${report.checksPassed} invariant checks passed; peak rss MB ${peak.join("/")}; ` +
    `fuzzer late by up to ${Math.max(0, ...report.lagMs)} ms; ` +
    `${report.ok && report.findings.size === 0 ? "CLEAN" : "FAILED"}`,
);
if (report.findings.size > 0) {
  log(`\n${report.findings.size} distinct findings (the cluster kept serving):`);
  for (const { n, first } of report.findings.values()) log(`  x${n} ${first}`);
}
if (report.failure) printFailure(report.failure, seed, log);
process.exit(report.ok && report.findings.size === 0 ? 0 : 1);
