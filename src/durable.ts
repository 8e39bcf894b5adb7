// The one place shoald writes a file that must survive a crash (the data root's state, certificates and
// keys; a container's state.json): written beside under a name of its own, fsync'd, renamed over, and the
// directory fsync'd, so a reader finds the old content or the new, never a torn one. No layer of its own:
// it imports nothing but node:fs, and every layer may use it.

import { open, rename, rm } from "node:fs/promises";
import { dirname } from "node:path";

let tmpSeq = 0;

/**
 * Replace `path` with `data` durably. The directory must exist: a write never recreates one removed.
 * What does not depend on another step runs beside it (the directory opened while the file is written, the
 * file closed while it is renamed): each step waits for a thread of the pool, and a busy daemon (a
 * container's create) waits for this write.
 */
export async function writeFileDurable(path: string, data: string, mode = 0o600): Promise<void> {
  // A name of its own for every write: two writes of the same file at once must not share a temp file.
  const tmp = `${path}.tmp-${process.pid}-${++tmpSeq}`;
  const dirOpened = open(dirname(path), "r");
  // Read below, after the file's steps: their failure first is not an unhandled rejection.
  dirOpened.catch(() => undefined);
  try {
    try {
      const fh = await open(tmp, "w", mode);
      let closed: Promise<void> | undefined;
      try {
        await fh.writeFile(data);
        await fh.sync();
        closed = fh.close();
        await rename(tmp, path);
      } finally {
        await (closed ?? fh.close());
      }
    } catch (err) {
      // Nothing half-written stays beside the file.
      await rm(tmp, { force: true });
      throw err;
    }
    await (await dirOpened).sync();
  } finally {
    await dirOpened.then(
      (dir) => dir.close(),
      () => undefined,
    );
  }
}
