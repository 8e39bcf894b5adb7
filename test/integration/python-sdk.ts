// Docker's Python SDK (python3-docker), the second real client: tests run a script through it against a
// daemon's Engine API socket.

import { execFile, execFileSync } from "node:child_process";

/** A python3 that has Docker's SDK, or undefined (the tests that need it are skipped). */
export const PYTHON = ["python3", "/usr/bin/python3"].find((p) => {
  try {
    execFileSync(p, ["-c", "import docker"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
});

/**
 * Runs `script` (a function body using `client`, a DockerClient on `baseUrl`) and resolves to what it
 * returns, through JSON.
 */
export function runPython(baseUrl: string, script: string, env?: NodeJS.ProcessEnv): Promise<unknown> {
  const program = [
    "import docker, json, sys",
    `client = docker.DockerClient(base_url=${JSON.stringify(baseUrl)}, version="auto", timeout=30)`,
    "def run():",
    ...script.split("\n").map((l) => `    ${l}`),
    "print(json.dumps(run()))",
  ].join("\n");
  return new Promise((resolve, reject) => {
    if (!PYTHON) {
      reject(new Error("no python3 with Docker's SDK (python3-docker)"));
      return;
    }
    execFile(PYTHON, ["-c", program], { env, timeout: 60_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`python: ${err.message}\n${stderr}`));
      else resolve(JSON.parse(stdout) as unknown);
    });
  });
}
