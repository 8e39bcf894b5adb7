// The one place the runtime writes files that must survive a crash: written beside, fsync'd, renamed
// over, and the directory fsync'd, so a reader finds the old content or the new, never a torn one. (And
// the files a container has bind-mounted, rewritten in place; derived ones, so not fsync'd.)

import { open, rename, rm } from "node:fs/promises";
import { dirname } from "node:path";

export async function writeFileDurable(path: string, data: string, mode = 0o600): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}`;
  const fh = await open(tmp, "w", mode);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  const dir = await open(dirname(path), "r");
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}

/**
 * Rewrites a file in place (same inode): for files bind-mounted into a running container, which a rename
 * would leave pointing at the old content. Not fsync'd: these files (resolv.conf, hosts, hostname) are
 * derived, and written again at every start, so a crash loses nothing a restart does not rebuild.
 */
export async function rewriteInPlace(path: string, data: string, mode = 0o644): Promise<void> {
  const fh = await open(path, "a+", mode);
  try {
    await fh.truncate(0);
    await fh.write(data, 0);
  } finally {
    await fh.close();
  }
}
