// Layer apply benchmark: shoald's LayerApplier (src/runtime/images/apply) against containerd's Diff.Apply,
// both unpacking the same layer from a complete file into a fresh overlayfs snapshot of a containerd of
// this benchmark's own.
//
//   npm run bench:layer-apply -- [--rounds 7] [--mb 25] [--rate 100]
//
// Layers: one file of --mb MB of random bytes; a busybox-like layer (the busybox binary, ~400 symlinks to
// it, 2000 small files in 40 directories); each as a tar and as a tar+gzip. Per layer and applier: the
// wall ms of the apply call (Prepare and Remove not counted) and the CPU ms spent for it (containerd's
// process for Diff.Apply; this process, the worker thread included, for the applier), the median of
// --rounds, rounds alternating. Then "streamed": the layer written into its file at --rate MB/s in 1 MiB
// pieces while the applier applies it; the figure is the ms from its last byte to the apply's end (what a
// pull waits for after its download; containerd's Diff.Apply can only start there, so its whole apply
// time above is its figure). Needs root and containerd. Everything made is removed at the end.

import { randomBytes, randomUUID } from "node:crypto";
import { appendFileSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import pino from "pino";
import { SNAPSHOTTER } from "../../src/runtime/containerd/client.js";
import { ContentStore } from "../../src/runtime/containerd/content.js";
import { ContainerdSupervisor } from "../../src/runtime/containerd/supervisor.js";
import { completeFile, type GrowingFile, LayerApplier } from "../../src/runtime/images/apply/applier.js";
import { sha256, type TarItem, tar } from "../unit/layer-tar.js";

function arg(name: string, def: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : def;
}

const ROUNDS = arg("rounds", 7);
const MB = arg("mb", 25);
const RATE = arg("rate", 100);
const TICKS = 100; // USER_HZ

function busyboxLike(): TarItem[] {
  const bin = existsSync("/bin/busybox") ? readFileSync("/bin/busybox") : randomBytes(2_000_000);
  const items: TarItem[] = [{ name: "bin/" }, { name: "bin/busybox", data: bin, mode: 0o755 }, { name: "etc/" }];
  for (let i = 0; i < 400; i++) items.push({ name: `bin/applet${i}`, type: "symlink", link: "busybox" });
  for (let d = 0; d < 40; d++) {
    items.push({ name: `usr/share/d${d}/` });
    for (let f = 0; f < 50; f++) {
      items.push({ name: `usr/share/d${d}/f${f}`, data: randomBytes(1024 + ((d * 50 + f) % 8) * 1024) });
    }
  }
  return items;
}

/**
 * Writes data to path at RATE MB/s in 1 MiB pieces, as a download would, telling the GrowingFile; `done`
 * resolves after the last piece. Returns the file and when the last byte was in.
 */
function download(path: string, data: Buffer): { file: GrowingFile; finished: Promise<number> } {
  let available = 0;
  const subs = new Set<(n: number) => void>();
  let finish!: (t: number) => void;
  const finished = new Promise<number>((r) => {
    finish = r;
  });
  writeFileSync(path, "");
  const file: GrowingFile = {
    path,
    size: data.length,
    get available() {
      return available;
    },
    onProgress(cb) {
      subs.add(cb);
      return () => subs.delete(cb);
    },
    done: finished.then(() => undefined),
  };
  const start = performance.now();
  const step = (): void => {
    const n = Math.min(data.length - available, 1 << 20);
    appendFileSync(path, data.subarray(available, available + n));
    available += n;
    for (const cb of subs) cb(available);
    if (available === data.length) {
      finish(performance.now());
      return;
    }
    const due = start + (available / (RATE * 1e6)) * 1000;
    setTimeout(step, Math.max(0, due - performance.now()));
  };
  setTimeout(step, 0);
  return { file, finished };
}

function containerdCpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / TICKS;
}

function selfCpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error("needs root");
  const dir = await mkdtemp(join(tmpdir(), "shoal-bench-layer-"));
  const sup = new ContainerdSupervisor({
    dataRoot: join(dir, "data"),
    execRoot: join(dir, "run"),
    logger: pino({ level: "silent" }),
  });
  const applier = new LayerApplier(pino({ level: "silent" }));
  try {
    const cd = await sup.start();
    const pid = Number(readFileSync(join(dir, "run", "containerd", "containerd.pid"), "utf8"));
    applier.start();
    const lease = `bench-${randomUUID()}`;
    await cd.call(cd.leases, cd.leases.create, { id: lease, labels: {} });
    const plainBig = tar([{ name: "big", data: randomBytes(MB * 1024 * 1024) }]);
    const plainBusy = tar(busyboxLike());
    const layers = [
      { name: `${MB} MB file, tar`, data: plainBig, mediaType: "application/vnd.oci.image.layer.v1.tar" },
      {
        name: `${MB} MB file, tar+gzip`,
        data: gzipSync(plainBig, { level: 1 }),
        mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
      },
      { name: "busybox-like, tar", data: plainBusy, mediaType: "application/vnd.oci.image.layer.v1.tar" },
      {
        name: "busybox-like, tar+gzip",
        data: gzipSync(plainBusy),
        mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
      },
    ];
    const store = new ContentStore(cd);
    for (const l of layers) {
      await store.write({ digest: sha256(l.data), size: l.data.length }, l.data, lease);
      writeFileSync(join(dir, sha256(l.data).slice(7)), l.data);
    }
    const prepare = async (key: string) =>
      (
        await cd.call(
          cd.snapshots,
          cd.snapshots.prepare,
          { snapshotter: SNAPSHOTTER, key, parent: "", labels: {} },
          { lease },
        )
      ).mounts;
    const remove = (key: string) => cd.call(cd.snapshots, cd.snapshots.remove, { snapshotter: SNAPSHOTTER, key });
    console.log(`layer apply, median of ${ROUNDS} rounds (wall ms / CPU ms)`);
    console.log(
      `${"layer".padEnd(26)} ${"size MB".padStart(8)}  ${"containerd".padStart(16)}  ${"LayerApplier".padStart(16)}`,
    );
    for (const l of layers) {
      const digest = sha256(l.data);
      const samples = { cd: [] as number[][], mine: [] as number[][] };
      for (let r = 0; r < ROUNDS; r++) {
        for (const who of r % 2 === 0 ? (["cd", "mine"] as const) : (["mine", "cd"] as const)) {
          const key = `bench-${randomUUID()}`;
          const mounts = await prepare(key);
          const t0 = performance.now();
          let cpu0: number;
          if (who === "cd") {
            cpu0 = containerdCpuMs(pid);
            const res = await cd.call(cd.diff, cd.diff.apply, {
              diff: { mediaType: l.mediaType, digest, size: l.data.length, annotations: {} },
              mounts,
              payloads: {},
            });
            samples.cd.push([performance.now() - t0, containerdCpuMs(pid) - cpu0]);
            if (r === 0) console.error(`  containerd diff id ${res.applied?.digest}`);
          } else {
            cpu0 = selfCpuMs();
            const res = await applier.apply(
              completeFile(join(dir, digest.slice(7)), l.data.length),
              l.mediaType,
              mounts,
              {
                hash: l.mediaType.endsWith("gzip"),
              },
            );
            samples.mine.push([performance.now() - t0, selfCpuMs() - cpu0]);
            if (r === 0) console.error(`  applier    diff id ${res.diffId ?? "(not computed: the layer's digest)"}`);
          }
          await remove(key);
        }
      }
      const fmt = (s: number[][]) =>
        `${median(s.map((x) => x[0]!)).toFixed(1)} / ${median(s.map((x) => x[1]!)).toFixed(0)}`.padStart(16);
      console.log(
        `${l.name.padEnd(26)} ${(l.data.length / 1e6).toFixed(1).padStart(8)}  ${fmt(samples.cd)}  ${fmt(samples.mine)}`,
      );
    }
    // Streamed: the applier works while the layer downloads; what is left after its last byte is the tail.
    console.log(`\nstreamed at ${RATE} MB/s: ms from the layer's last byte to applied (median of ${ROUNDS})`);
    for (const l of layers) {
      const tails: number[] = [];
      for (let r = 0; r < ROUNDS; r++) {
        const key = `bench-${randomUUID()}`;
        const mounts = await prepare(key);
        const d = download(join(dir, `dl-${r}`), l.data);
        const applied = await applier.apply(d.file, l.mediaType, mounts, { hash: l.mediaType.endsWith("gzip") });
        const end = performance.now();
        if (applied.diffId !== undefined && r === 0) console.error(`  streamed diff id ${applied.diffId}`);
        tails.push(end - (await d.finished));
        await remove(key);
      }
      console.log(`${l.name.padEnd(26)} ${median(tails).toFixed(1).padStart(8)}`);
    }
  } finally {
    await applier.close();
    await sup.stop();
    await rm(dir, { recursive: true, force: true, maxRetries: 5 });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
