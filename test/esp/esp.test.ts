// The suites that need a kernel with ESP and AES-GCM (test/esp/*.esp.ts), run inside User-mode Linux
// (test/esp/uml.ts) as part of the host's own `npm test`: the guest runs them with vitest, and each of its
// tests becomes one test here with the same name, passing or failing as it did in the guest (its failure
// messages carried over), so the run's counts include them. The guest boots while this file is collected
// (vitest needs the names of the tests before it runs them).
//
// Skipped, with the reason, only where the guest cannot run at all: not root (network namespaces), or the
// user-mode-linux package missing (deploy/install.sh installs it). `SHOAL_ESP_FILES` (space-separated)
// narrows the inner run to some files, `SHOAL_ESP_TESTS` to the tests whose names match (vitest's -t);
// `SHOAL_ESP_ECHO=1` streams the guest's console to stderr; `SHOAL_ESP_KEEP=1` keeps the job directory (under
// .uml-jobs, named on stderr) with the guest's output and every lab daemon's log.

import { describe, expect, it } from "vitest";
import { build, isRoot } from "../e2e/lab-helpers.js";
import { runEspSuite, type SuiteOutcome, umlAvailable } from "./uml.js";

const avail = umlAvailable();
const cannot = !isRoot ? "not root" : !avail.ok ? avail.reason : undefined;

let outcome: SuiteOutcome | undefined;
if (cannot === undefined) {
  await build();
  const files = (process.env.SHOAL_ESP_FILES ?? "").split(/\s+/).filter((f) => f !== "");
  const echo = process.env.SHOAL_ESP_ECHO === "1";
  const keep = process.env.SHOAL_ESP_KEEP === "1";
  outcome = await runEspSuite(
    files,
    {
      timeoutMs: 40 * 60_000,
      ...(echo ? { onOutput: (s: string) => process.stderr.write(s) } : {}),
      ...(keep ? { keepJobDir: true, env: { SHOAL_ESP_KEEP: "1" } } : {}),
    },
    process.env.SHOAL_ESP_TESTS || undefined,
  );
  if (keep) process.stderr.write(`the guest's job directory (kept): ${outcome.guest.jobDir}\n`);
}

/** The last lines of what the guest printed, for a failure message. */
const tail = (text: string, n = 60) => text.split("\n").slice(-n).join("\n");

describe("inside User-mode Linux (ESP, AES-GCM, iptables-legacy)", () => {
  if (cannot !== undefined || outcome === undefined) {
    it.skip(`the ESP suite (skipped: ${cannot})`, () => {});
    return;
  }
  const o = outcome;
  it(`the guest booted, ran the suite and reported (${Math.round(o.guest.durationMs / 1000)} s)`, () => {
    if (o.noReport !== undefined) throw new Error(`${o.noReport}\n--- the guest's console:\n${tail(o.guest.console)}`);
    expect(o.tests.length, "the guest ran no test").toBeGreaterThan(0);
    for (const b of o.brokenFiles)
      throw new Error(`${b.file} failed to run in the guest: ${b.message}\n--- its output:\n${tail(o.guest.output)}`);
    expect(o.guest.status, `the guest's vitest exited with ${o.guest.status}:\n${tail(o.guest.output)}`).toBe(
      o.tests.some((t) => t.status === "failed") ? 1 : 0,
    );
  });
  for (const t of o.tests) {
    const name = `${t.file}: ${t.fullName}`;
    if (t.status === "skipped" || t.status === "pending" || t.status === "todo") {
      it.skip(name, () => {});
      continue;
    }
    it(name, () => {
      if (t.status === "failed") throw new Error(`failed in the guest:\n${t.failureMessages.join("\n")}`);
    });
  }
});
