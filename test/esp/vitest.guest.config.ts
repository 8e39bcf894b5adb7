// vitest inside the User-mode Linux guest (test/esp/esp.test.ts boots it): the suites that need a kernel
// with ESP and AES-GCM. Their files end in .esp.ts, so the host's own run (test/**/*.test.ts) never
// collects them; the guest has one CPU, so the files run one after another.
import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/esp/**/*.esp.ts"],
    // One CPU, shared by three daemons, containerd and runc: a test of many CLI calls takes minutes.
    testTimeout: 480_000,
    hookTimeout: 300_000,
    fileParallelism: false,
    maxWorkers: 1,
  },
});
