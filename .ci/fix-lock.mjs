// Adds lock entries for platform-only optional packages the registry here does not serve, so `npm ci`
// accepts the lock; on Linux x64 npm skips them by os/cpu without fetching.
import fs from "node:fs";
const lock = JSON.parse(fs.readFileSync("package-lock.json", "utf8"));
const pk = lock.packages;
const plat = (name) => {
  const m = name.match(/-(android|darwin|linux|win32|freebsd)-(arm64|x64|armv7|arm|ia32)(-musl|-gnu)?$/);
  if (!m) return null;
  return { os: [m[1]], cpu: [m[2] === "armv7" ? "arm" : m[2]], libc: m[3] === "-musl" ? ["musl"] : m[3] === "-gnu" ? ["glibc"] : undefined };
};
let added = 0;
for (const [path, meta] of Object.entries(pk)) {
  for (const [dep, ver] of Object.entries(meta.optionalDependencies ?? {})) {
    const key = `node_modules/${dep}`;
    if (pk[key]) continue;
    const p = plat(dep);
    if (!p) { console.error("unknown platform for", dep); continue; }
    pk[key] = { version: ver, dev: meta.dev, optional: true, os: p.os, cpu: p.cpu, ...(p.libc ? { libc: p.libc } : {}) };
    if (!meta.dev) delete pk[key].dev;
    added++;
  }
}
const sorted = {};
for (const k of Object.keys(pk).sort((a, b) => (a === "" ? -1 : b === "" ? 1 : a.localeCompare(b)))) sorted[k] = pk[k];
lock.packages = sorted;
fs.writeFileSync("package-lock.json", JSON.stringify(lock, null, 2) + "\n");
console.log("added", added);
