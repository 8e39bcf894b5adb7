// The files a container has bind-mounted, rewritten in place (derived ones, so not fsync'd). Files that
// must survive a crash go through src/durable.ts.

import { writeFile } from "node:fs/promises";

/**
 * Rewrites a file in place (same inode: opened with O_TRUNC, not replaced): for files bind-mounted into a
 * running container, which a rename would leave pointing at the old content. Not fsync'd: these files
 * (resolv.conf, hosts, hostname) are derived, and written again at every start, so a crash loses nothing a
 * restart does not rebuild.
 */
export async function rewriteInPlace(path: string, data: string, mode = 0o644): Promise<void> {
  await writeFile(path, data, { mode });
}
