// The fuzz run: fast-check draws batches of cases from a seed (batch k is run k of the property, so
// `--seed S --path k` replays it alone); each batch is sent to the live cluster with a few cases in flight
// at once, what valid cases built is undone, and the invariants are checked. A failure prints the seed,
// the batch, the commands that replay it, the findings and the last cases sent, and saves the batch; with
// shrinking on, fast-check then looks for a smaller part of the batch that still fails on a new cluster.

import { writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { arbBatch, type Case, casesToJson, describeCase } from "./cases.js";
import { FuzzCluster } from "./cluster.js";
import { LagProbe } from "./lag.js";
import { CASE_TIMEOUT_MS, type Outcome, PROBE_TIMEOUT_MS, type SendEnv, sendCase } from "./send.js";

export interface RunOptions {
  seed: number;
  /** Cases to send in all (rounded up to whole batches). */
  requests: number;
  batchSize: number;
  concurrency: number;
  /** Replay only this fast-check path (a batch index, e.g. "12"). */
  path?: string;
  /** Replay these cases as one batch instead of generating. */
  cases?: Case[];
  /** After a failure, look for a smaller failing part of the batch (each try on a new cluster). */
  shrink: boolean;
  shrinkBudgetMs: number;
  /** Keep the cluster's directory (logs) after a failure. */
  keep: boolean;
  /** Collect findings (bad answers, bug lines in the logs) and go on; stop only when the cluster fails. */
  keepGoing?: boolean;
  /** Run against this cluster (it is left running) instead of forming a new one. */
  cluster?: FuzzCluster;
  log: (line: string) => void;
}

export interface BatchFailure {
  batch: number;
  reasons: string[];
  lastSent: string[];
  findings: string[];
  savedTo: string;
  replay: string[];
  shrunk?: string[];
}

export interface RunReport {
  ok: boolean;
  seed: number;
  requestsSent: number;
  batches: number;
  checksPassed: number;
  durationMs: number;
  stats: Map<string, number>;
  failure?: BatchFailure;
  /** Up to three examples (answer detail and case) of each outcome. */
  samples: Map<string, string[]>;
  /** With keepGoing: each distinct finding once, with how often it was seen. */
  findings: Map<string, { n: number; first: string }>;
  rssMb: number[][];
  /** Per batch: how late the fuzzer's own event loop ran at most while it sent the cases (ms). */
  lagMs: number[];
}

interface BatchResult {
  failures: string[];
  findings: string[];
  sentOrder: Case[];
  outcomes: Map<Case, Outcome>;
}

/** Run `fn` over `items` with at most `limit` in flight; each result is recorded by the caller. */
async function pool<T>(items: T[], limit: number, fn: (x: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const x = items[next++]!;
      await fn(x);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

/** The case's outcome, or "stuck" with what evidence there is (how far it got, the fuzzer's own delays). */
function withTimeout(p: Promise<Outcome>, ms: number, evidence: () => string): Promise<Outcome> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<Outcome>((resolve) => {
    timer = setTimeout(
      () => resolve({ summary: "stuck", finding: `the case did not finish in ${ms} ms\n    evidence: ${evidence()}` }),
      ms,
    );
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

function statKey(c: Case, o: Outcome): string {
  const summary = o.summary.replace(/\d+\/\d+/, "n").replace(/\d+ bytes/, "n bytes");
  if (c.kind === "engine") return `engine ${c.route}: ${summary}`;
  if (c.kind === "grpc") return `grpc ${c.identity} ${c.rpc.split("/").pop()}: ${summary}`;
  return `${c.kind}: ${summary}`;
}

/** Send `cases` (a few at a time), undo what they built, check the invariants; outcomes in case order. */
export async function sendAndCheck(
  cluster: FuzzCluster,
  cases: Case[],
  tag: string,
  concurrency = 6,
): Promise<{ failures: string[]; findings: string[]; outcomes: Outcome[] }> {
  const r = await runBatch(cluster, cases, tag, { concurrency }, new Map());
  return { failures: r.failures, findings: r.findings, outcomes: cases.map((c) => r.outcomes.get(c)!) };
}

/** Send a batch, clean up, check. */
async function runBatch(
  cluster: FuzzCluster,
  cases: Case[],
  tag: string,
  opts: Pick<RunOptions, "concurrency">,
  stats: Map<string, number>,
  samples?: Map<string, string[]>,
): Promise<
  BatchResult & { rss: number[]; checkMs: number; sendMs: number; lagMs: number; leader?: string; left: string[] }
> {
  const ctx = await cluster.refresh();
  const lag = new LagProbe();
  const env: SendEnv = {
    ctx,
    lag,
    sock: (d) => cluster.lab.sock(d),
    cluster: (d) => ({ host: cluster.lab.ip(d), port: cluster.lab.port(d) }),
    clients: cluster.clients,
  };
  const sentOrder: Case[] = [];
  const outcomes = new Map<Case, Outcome>();
  const findings: string[] = [];
  const sendStart = Date.now();
  await pool(cases, opts.concurrency, async (c) => {
    sentOrder.push(c);
    const started = Date.now();
    const progress: string[] = [];
    const o = await withTimeout(
      sendCase(env, c, (s) => progress.push(s)),
      // A case waits up to twice CASE_TIMEOUT_MS when the fuzzer itself was starved (LagProbe.waitAwake).
      2 * CASE_TIMEOUT_MS + PROBE_TIMEOUT_MS + 15_000,
      () => `${progress.length ? `${progress.join(", ")}; ` : ""}${lag.describe(started)}`,
    );
    outcomes.set(c, o);
    const key = statKey(c, o);
    stats.set(key, (stats.get(key) ?? 0) + 1);
    const seen = samples?.get(key) ?? [];
    if (samples && seen.length < 3)
      samples.set(key, [...seen, `${o.detail ?? ""}  <=  ${describeCase(c).slice(0, 400)}`]);
    if (o.finding) findings.push(`${o.finding}\n    case: ${describeCase(c)}`);
  });
  const sendMs = Date.now() - sendStart;
  const lagMs = lag.maxLagSince(sendStart);
  lag.stop();
  const left = await cluster.cleanup(ctx).catch((e: unknown) => [`cleanup failed: ${String(e)}`]);
  const check = await cluster.check(tag);
  return {
    failures: check.failures,
    findings: [...findings, ...check.logFindings],
    sentOrder,
    outcomes,
    rss: check.rssMb,
    checkMs: check.ms,
    sendMs,
    lagMs,
    left,
    ...(check.leader ? { leader: check.leader } : {}),
  };
}

function replayCommands(opts: RunOptions, batch: number): string[] {
  const base = `npm run fuzz -- --seed ${opts.seed} --batch ${opts.batchSize} --concurrency ${opts.concurrency}`;
  return [
    `${base} --requests ${(batch + 1) * opts.batchSize}    # the whole run up to the failing batch`,
    `${base} --path ${batch}    # the failing batch alone, on a new cluster`,
  ];
}

function failureReport(opts: RunOptions, batch: number, r: BatchResult, savedTo: string): BatchFailure {
  return {
    batch,
    reasons: r.failures,
    findings: r.findings,
    lastSent: r.sentOrder.slice(-20).map((c) => `${describeCase(c)}  => ${r.outcomes.get(c)?.summary ?? "?"}`),
    savedTo,
    replay: [...replayCommands(opts, batch), `npm run fuzz -- --replay-file ${savedTo}    # exactly these cases`],
  };
}

export function printFailure(f: BatchFailure, seed: number, log: (s: string) => void): void {
  log(`\nFUZZ FAILURE: seed ${seed}, batch ${f.batch}`);
  for (const r of f.reasons) log(`  invariant: ${r}`);
  for (const x of f.findings.slice(0, 20)) log(`  finding: ${x}`);
  if (f.findings.length > 20) log(`  ... ${f.findings.length - 20} more findings`);
  log("  last cases sent (in order):");
  for (const l of f.lastSent) log(`    ${l}`);
  log(`  the batch's cases: ${f.savedTo}`);
  log("  replay:");
  for (const c of f.replay) log(`    ${c}`);
  if (f.shrunk) {
    log(`  shrunk to ${f.shrunk.length} case(s) that still fail on a new cluster:`);
    for (const s of f.shrunk) log(`    ${s}`);
  }
}

/** A run: form the cluster, then batch after batch until done or a failure. */
export async function run(opts: RunOptions): Promise<RunReport> {
  const started = Date.now();
  const stats = new Map<string, number>();
  const samples = new Map<string, string[]>();
  const rssMb: number[][] = [];
  const lagMs: number[] = [];
  const own = opts.cluster === undefined;
  let cluster: FuzzCluster | undefined = opts.cluster ?? (await FuzzCluster.start(`fuzz-${opts.seed}`, opts.log));
  let sent = 0;
  let checks = 0;
  let batchNo = -1;
  let failure: BatchFailure | undefined;
  let failedBatch: Case[] | undefined;
  const numRuns = opts.cases ? 1 : Math.max(1, Math.ceil(opts.requests / opts.batchSize));
  const distinct = new Map<string, { n: number; first: string }>();
  const batchIndex = (): number => (opts.path !== undefined ? Number(opts.path.split(":")[0]) : batchNo);
  const property = fc.asyncProperty(opts.cases ? fc.constant(opts.cases) : arbBatch(opts.batchSize), async (cases) => {
    batchNo++;
    const k = batchIndex();
    const t0 = Date.now();
    let r: Awaited<ReturnType<typeof runBatch>>;
    try {
      r = await runBatch(cluster!, cases, `b${k}`, opts, stats, samples);
    } catch (e) {
      const why = e instanceof Error ? e.message : String(e);
      r = {
        failures: [`the batch could not run: ${why}`],
        findings: [],
        sentOrder: cases,
        outcomes: new Map(),
        rss: [],
        checkMs: 0,
        sendMs: 0,
        lagMs: 0,
        left: [],
      };
    }
    sent += cases.length;
    rssMb.push(r.rss);
    lagMs.push(r.lagMs);
    opts.log(
      `batch ${k + 1}/${numRuns}: ${cases.length} cases in ${(r.sendMs / 1000).toFixed(1)} s, ` +
        `${r.findings.length} findings; checks ${r.failures.length === 0 ? "passed" : "FAILED"} in ${(r.checkMs / 1000).toFixed(1)} s ` +
        `(leader ${r.leader ?? "?"}; rss MB ${r.rss.join("/")}; fuzzer late by up to ${r.lagMs} ms; ` +
        `${((Date.now() - t0) / 1000).toFixed(1)} s in all)` +
        (r.left.length ? `; not undone: ${r.left.slice(0, 3).join(", ")}${r.left.length > 3 ? ", ..." : ""}` : ""),
    );
    if (r.failures.length === 0 && (r.findings.length === 0 || opts.keepGoing)) {
      checks++;
      // Each as it comes, with its case and evidence (the summary at the end keeps only the first of a kind).
      for (const f of r.findings) opts.log(`  finding (${new Date().toISOString()}): ${f.slice(0, 800)}`);
      for (const f of r.findings) {
        const key = signature(f);
        const d = distinct.get(key);
        if (d) d.n++;
        else distinct.set(key, { n: 1, first: f });
      }
      return;
    }
    const savedTo = join(tmpdir(), `shoal-fuzz-seed${opts.seed}-batch${k}.json`);
    writeFileSync(savedTo, casesToJson(cases));
    failure = failureReport(opts, k, r, savedTo);
    failedBatch = cases;
    throw new Error(`batch ${k} failed`);
  });
  try {
    await fc.check(property, {
      seed: opts.seed,
      numRuns,
      endOnFailure: true,
      ...(opts.path !== undefined ? { path: opts.path } : {}),
    });
  } finally {
    if (failure && opts.keep) opts.log(`  cluster directory kept: ${cluster.lab.dir}`);
    if (own) await cluster.close(failure !== undefined && opts.keep);
    cluster = undefined;
  }
  if (failure && failedBatch && opts.shrink) {
    failure.shrunk = await shrink(failedBatch, opts);
  }
  return {
    ok: failure === undefined,
    seed: opts.seed,
    requestsSent: sent,
    batches: batchNo + 1,
    checksPassed: checks,
    durationMs: Date.now() - started,
    stats,
    ...(failure ? { failure } : {}),
    findings: distinct,
    samples,
    rssMb,
    lagMs,
  };
}

/** A finding with its particulars (ids, numbers, times) blurred, to count distinct ones. */
function signature(f: string): string {
  const firstLine = f.split("\n")[0]!;
  return firstLine
    .replace(/"time":\d+|"pid":\d+|"hostname":"[^"]*"/g, "")
    .replace(/[0-9a-f]{12,}/g, "<id>")
    .replace(/\d+/g, "N")
    .slice(0, 160);
}

/**
 * A smaller part of a failing batch that still fails: fast-check shrinks a subarray of the batch, starting
 * from the whole (which must fail again on a new cluster, or the failure needed earlier batches). Every
 * try after a failed one gets a new cluster; the search stops at the time budget.
 */
async function shrink(batch: Case[], opts: RunOptions): Promise<string[] | undefined> {
  const deadline = Date.now() + opts.shrinkBudgetMs;
  let cluster: FuzzCluster | undefined;
  let tries = 0;
  let smallest: Case[] | undefined;
  opts.log(`shrinking: ${batch.length} cases, budget ${Math.round(opts.shrinkBudgetMs / 60_000)} min`);
  const property = fc.asyncProperty(fc.subarray(batch, { minLength: 1 }), async (cases) => {
    if (Date.now() > deadline) return true;
    tries++;
    cluster ??= await FuzzCluster.start(`fuzz-shrink-${opts.seed}`, () => undefined);
    const r = await runBatch(cluster, cases, `s${tries}`, opts, new Map());
    const failed = r.failures.length > 0 || (!opts.keepGoing && r.findings.length > 0);
    opts.log(`  shrink try ${tries}: ${cases.length} cases ${failed ? "FAIL" : "pass"}`);
    if (!failed) return true;
    if (!smallest || cases.length < smallest.length) smallest = cases;
    await cluster.close();
    cluster = undefined;
    return false;
  });
  try {
    await fc.check(property, { examples: [[batch]], numRuns: 1, seed: opts.seed });
  } finally {
    await cluster?.close();
  }
  if (!smallest) {
    opts.log("  the batch alone did not fail on a new cluster: the failure needs the batches before it");
    return undefined;
  }
  const file = join(tmpdir(), `shoal-fuzz-seed${opts.seed}-shrunk.json`);
  writeFileSync(file, casesToJson(smallest));
  return [...smallest.map(describeCase), `(saved: npm run fuzz -- --replay-file ${file})`];
}

/** Outcomes per route or RPC, one line each: "engine net-create: HTTP 201 x12, HTTP 400 x80". */
export function formatStats(stats: Map<string, number>): string[] {
  const byRoute = new Map<string, string[]>();
  for (const [k, n] of [...stats.entries()].sort((a, b) => b[1] - a[1])) {
    const i = k.lastIndexOf(": ");
    const route = k.slice(0, i);
    byRoute.set(route, [...(byRoute.get(route) ?? []), `${k.slice(i + 2)} x${n}`]);
  }
  return [...byRoute.entries()].sort((a, b) => a[0].localeCompare(b[0])).map(([r, xs]) => `  ${r}: ${xs.join(", ")}`);
}
