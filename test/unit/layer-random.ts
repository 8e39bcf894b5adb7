// Random tar entries for the layer applier's comparison tests (against containerd's apply, and staged
// against applied directly): files, directories, symlinks, hardlinks and whiteouts over a few names, and,
// when asked, fifos, character devices and pax xattrs.

import fc from "fast-check";
import type { TarItem } from "./layer-tar.js";

export function randomEntry(o: {
  names: string[];
  whiteouts: string[];
  /** The directories' mtimes to pick from. */
  dirMtimes: number[];
  /** The symlinks' targets to pick from. */
  links: string[];
  /** Fifos, character devices and pax xattrs too. */
  special: boolean;
}): fc.Arbitrary<TarItem> {
  const name = fc.constantFrom(...o.names);
  const common: fc.Arbitrary<TarItem>[] = [
    fc.record({
      name,
      data: fc.constantFrom(Buffer.from("1"), Buffer.from("22")),
      mode: fc.constantFrom(0o644, 0o4711),
      uid: fc.constantFrom(0, 7),
    }),
    fc.record({
      name: name.map((n) => `${n}/`),
      mode: fc.constantFrom(0o755, 0o1777),
      mtime: fc.constantFrom(...o.dirMtimes),
    }),
    fc.record({ name, type: fc.constant("symlink" as const), link: fc.constantFrom(...o.links) }),
    fc.record({ name, type: fc.constant("link" as const), link: name }),
    fc.record({ name: fc.constantFrom(...o.whiteouts), data: fc.constant(Buffer.alloc(0)) }),
  ];
  if (!o.special) return fc.oneof(...common);
  return fc.oneof(
    ...common,
    fc.record({
      name,
      type: fc.constantFrom("fifo" as const, "char" as const),
      major: fc.constant(1),
      minor: fc.constant(3),
    }),
    fc.record({ name, data: fc.constant(Buffer.from("x")), pax: fc.constant({ "SCHILY.xattr.user.k": "v" }) }),
  );
}
