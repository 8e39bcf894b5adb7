// Issue 10, item 5: a write's outcome, around a SIGKILL of the leader, is reported truly and fast.
//
// Three real managers on loopback; many concurrent writers create networks through the Engine API of
// every manager; the leader is SIGKILLed in the middle. Afterwards, with the old leader restarted and
// caught up:
//   - every write answered success is in the store of every manager;
//   - every write answered "not applied" is in no manager's store;
//   - writes that were in flight on the survivors when the leader died were answered within about a
//     second of the new leader's election (not after the 10 s proposal timeout).
// "May still take effect" answers are allowed (a manager that cannot know says so) and counted. The
// figures are printed.
//
//   flock /tmp/shoal-heavy.lock npx vitest run test/integration/write-outcome.test.ts

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildOnce, Lab, sleep } from "./harness.js";

const WRITERS = 18;
const BEFORE_KILL_MS = 2_000;
const AFTER_KILL_MS = 6_000;

interface Write {
  name: string;
  manager: number;
  startMs: number;
  endMs: number;
  /** success | not-applied | unknown | refused (another answer, e.g. a name clash) | no-answer (the socket failed) */
  kind: "success" | "not-applied" | "unknown" | "refused" | "no-answer";
  status: number;
  message: string;
}

function classify(status: number, message: string): Write["kind"] {
  if (status === 201) return "success";
  if (/may still take effect/.test(message)) return "unknown";
  if (status === 503 && /not applied/.test(message)) return "not-applied";
  return "refused";
}

async function createNetwork(lab: Lab, manager: number, name: string): Promise<Write> {
  const startMs = Date.now();
  try {
    const r = await lab.api(manager, "POST", "/v1.47/networks/create", { Name: name, Driver: "overlay" });
    const message =
      typeof r.json === "object" && r.json !== null ? String((r.json as { message?: unknown }).message ?? "") : "";
    return { name, manager, startMs, endMs: Date.now(), kind: classify(r.status, message), status: r.status, message };
  } catch (e) {
    return { name, manager, startMs, endMs: Date.now(), kind: "no-answer", status: 0, message: String(e) };
  }
}

async function networkNames(lab: Lab, i: number): Promise<Set<string>> {
  const r = await lab.api(i, "GET", "/v1.47/networks");
  if (r.status !== 200) throw new Error(`GET /networks on node${i}: ${r.status} ${JSON.stringify(r.json)}`);
  return new Set((r.json as { Name: string }[]).map((n) => n.Name));
}

async function leaderNode(lab: Lab, via: number): Promise<number | undefined> {
  const r = await lab.api(via, "GET", "/v1.47/nodes");
  if (r.status !== 200) return undefined;
  const rows = r.json as { Description: { Hostname: string }; ManagerStatus?: { Leader?: boolean } }[];
  const l = rows.find((n) => n.ManagerStatus?.Leader === true);
  return l ? Number(l.Description.Hostname.replace(/^node/, "")) : undefined;
}

/** When a manager other than `old` logged that it became the leader, after `sinceMs`. */
function electedAt(lab: Lab, survivors: number[], sinceMs: number): { node: number; atMs: number } | undefined {
  for (const i of survivors) {
    for (const rec of lab.logRecords(i)) {
      if (rec.msg === "this manager is now the leader" && typeof rec.time === "number" && rec.time > sinceMs) {
        return { node: i, atMs: rec.time };
      }
    }
  }
  return undefined;
}

function quantile(xs: number[], q: number): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
}

describe("write outcomes across a SIGKILL of the leader (3 managers, concurrent writers)", () => {
  let lab: Lab;

  beforeAll(async () => {
    await buildOnce();
    lab = await Lab.create("outcome", 3);
    await lab.form(3, 0, "docker");
  }, 120_000);

  afterAll(async () => {
    await lab?.close();
  });

  it("success means applied everywhere, 'not applied' means nowhere, and writes in flight are answered soon after the new leader's election", async () => {
    const old = await lab.waitFor(() => leaderNode(lab, 1), 15_000, "a leader");
    const survivors = [1, 2, 3].filter((i) => i !== old);
    const writes: Write[] = [];
    let stop = false;
    let killAtMs = 0;
    const writer = async (w: number): Promise<void> => {
      let manager = 1 + (w % 3);
      for (let seq = 0; !stop; seq++) {
        if (killAtMs > 0 && manager === old) manager = survivors[w % 2]!;
        const res = await createNetwork(lab, manager, `w${w}-${seq}`);
        writes.push(res);
        if (res.kind === "no-answer") await sleep(50);
      }
    };
    const running = Array.from({ length: WRITERS }, (_, w) => writer(w));
    await sleep(BEFORE_KILL_MS);
    killAtMs = Date.now();
    await lab.kill(old, "SIGKILL");
    await sleep(AFTER_KILL_MS);
    stop = true;
    await Promise.all(running);

    const elected = electedAt(lab, survivors, killAtMs);
    expect(elected, "a new leader was elected among the survivors").toBeDefined();
    const electedAtMs = elected!.atMs;

    // Bring the old leader back and let every manager catch up with the successful writes.
    await lab.restart(old);
    const succeeded = writes.filter((w) => w.kind === "success");
    const names = new Map<number, Set<string>>();
    for (const i of [1, 2, 3]) {
      await lab.waitFor(
        async () => {
          const have = await networkNames(lab, i);
          names.set(i, have);
          return succeeded.every((w) => have.has(w.name));
        },
        30_000,
        `node${i} to hold every write answered success`,
      );
    }
    const notApplied = writes.filter((w) => w.kind === "not-applied");
    for (const i of [1, 2, 3]) {
      const have = names.get(i)!;
      for (const w of notApplied)
        expect(have.has(w.name), `${w.name} answered "${w.message}" but is on node${i}`).toBe(false);
    }
    // Never "no leader" for a write that may have been applied: every 503 says which it is.
    for (const w of writes.filter((x) => x.status === 503)) {
      expect(w.kind === "not-applied" || w.kind === "unknown", `${w.name}: ${w.message}`).toBe(true);
    }

    // Writes in flight on the survivors when the leader died.
    const inFlight = writes.filter((w) => w.manager !== old && w.startMs <= killAtMs && w.endMs > killAtMs);
    const lateMs = inFlight.map((w) => w.endMs - electedAtMs);
    const byKind = (k: Write["kind"]) => writes.filter((w) => w.kind === k).length;
    process.stderr.write(
      `\nwrite outcomes around a SIGKILL of the leader (node${old}; ${WRITERS} writers):\n` +
        `  writes: ${writes.length}: success ${byKind("success")}, not applied ${byKind("not-applied")}, ` +
        `unknown ${byKind("unknown")}, refused ${byKind("refused")}, no answer (killed manager) ${byKind("no-answer")}\n` +
        `  new leader node${elected!.node} elected ${electedAtMs - killAtMs} ms after the kill\n` +
        `  in flight on survivors at the kill: ${inFlight.length}; answered after the election: ` +
        `median ${quantile(lateMs, 0.5)} ms, max ${Math.max(...lateMs)} ms ` +
        `(${inFlight.filter((w) => w.kind === "success").length} succeeded)\n` +
        `  latency of survivors' writes started after the kill: median ${quantile(
          writes.filter((w) => w.manager !== old && w.startMs > killAtMs).map((w) => w.endMs - w.startMs),
          0.5,
        )} ms, p99 ${quantile(
          writes.filter((w) => w.manager !== old && w.startMs > killAtMs).map((w) => w.endMs - w.startMs),
          0.99,
        )} ms\n`,
    );
    expect(byKind("refused"), JSON.stringify(writes.filter((w) => w.kind === "refused").slice(0, 3))).toBe(0);
    expect(inFlight.length).toBeGreaterThan(0);
    for (const w of inFlight) {
      expect(w.endMs - electedAtMs, `${w.name} on node${w.manager}: ${w.kind} ${w.message}`).toBeLessThan(1500);
    }
    expect(succeeded.length).toBeGreaterThan(WRITERS);
  }, 120_000);
});
