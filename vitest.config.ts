import { configDefaults, defineConfig } from "vitest/config";

// Two groups, run one after the other: everything else first, then the ESP suite, whose User-mode Linux
// guest has one CPU and is timed against a 15 s key rotation (sharing the host's cores with the other test
// files' daemons made it miss its windows).
export default defineConfig({
  test: {
    testTimeout: 60_000,
    hookTimeout: 60_000,
    projects: [
      {
        extends: true,
        test: {
          name: "main",
          include: ["test/**/*.test.ts"],
          exclude: [...configDefaults.exclude, "test/esp/**"],
          sequence: { groupOrder: 0 },
        },
      },
      {
        extends: true,
        test: { name: "esp", include: ["test/esp/**/*.test.ts"], sequence: { groupOrder: 1 } },
      },
    ],
  },
});
