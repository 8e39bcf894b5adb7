// The data encryption key the Raft tests open LevelStorage with, so that they exercise the encrypted
// path as managers run it. Fixed, so that a directory written by one process (crash-child.ts) reopens in
// another.

import { DEK_BYTES } from "../../src/raft/level-storage.js";

export const TEST_DEK: Uint8Array = new Uint8Array(DEK_BYTES).map((_, i) => (i * 37 + 11) & 0xff);
