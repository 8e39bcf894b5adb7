// What the host makes of the report the User-mode Linux guest's vitest wrote (test/esp/uml.ts): one inner
// test per assertion result, with its status and failure messages; a file that failed without a failed test
// (an import error, a failing beforeAll) is reported as broken; anything that is not a report is refused.

import { describe, expect, it } from "vitest";
import { parseVitestReport, REPO } from "../esp/uml.js";

describe("parseVitestReport", () => {
  it("turns each assertion result into an inner test; a file that failed with no failed test is broken", () => {
    const report = {
      numTotalTests: 3,
      testResults: [
        {
          name: `${REPO}/test/esp/encrypted.esp.ts`,
          status: "failed",
          message: "",
          assertionResults: [
            { fullName: "lab two hosts", title: "two hosts", status: "passed", duration: 1200, failureMessages: [] },
            {
              fullName: "lab MTU",
              title: "MTU",
              status: "failed",
              duration: 5,
              failureMessages: ["AssertionError: 0 != 3"],
            },
            { fullName: "lab later", title: "later", status: "skipped", failureMessages: [] },
            { title: "odd", status: "weird" },
          ],
        },
        {
          name: `${REPO}/test/esp/other.esp.ts`,
          status: "failed",
          message: "Error: cannot import",
          assertionResults: [],
        },
      ],
    };
    const r = parseVitestReport(JSON.stringify(report));
    expect(r.tests).toEqual([
      {
        file: "test/esp/encrypted.esp.ts",
        fullName: "lab two hosts",
        title: "two hosts",
        status: "passed",
        durationMs: 1200,
        failureMessages: [],
      },
      {
        file: "test/esp/encrypted.esp.ts",
        fullName: "lab MTU",
        title: "MTU",
        status: "failed",
        durationMs: 5,
        failureMessages: ["AssertionError: 0 != 3"],
      },
      {
        file: "test/esp/encrypted.esp.ts",
        fullName: "lab later",
        title: "later",
        status: "skipped",
        durationMs: 0,
        failureMessages: [],
      },
      // An unknown status counts as a failure, never as a pass.
      {
        file: "test/esp/encrypted.esp.ts",
        fullName: "odd",
        title: "odd",
        status: "failed",
        durationMs: 0,
        failureMessages: [],
      },
    ]);
    expect(r.brokenFiles).toEqual([{ file: "test/esp/other.esp.ts", message: "Error: cannot import" }]);
  });

  it("refuses what is not a vitest report", () => {
    expect(() => parseVitestReport("[]")).toThrow(/not a vitest JSON report/);
    expect(() => parseVitestReport("{")).toThrow();
  });
});
