// Node and cluster ids, as swarmkit's identity.NewID: 128 random bits in base36, left-padded to 25 chars.

import { bytesToBigInt, cryptoRandomBytes, type RandomBytes, takeRandom, toBase36Padded } from "./random.js";

const ID_LENGTH = 25;
const ID_RE = /^[0-9a-z]{25}$/;

function newId(rand: RandomBytes): string {
  return toBase36Padded(bytesToBigInt(takeRandom(rand, 16)), ID_LENGTH);
}

/** A new node id: 25 lower-case base36 characters from 128 random bits. */
export function newNodeId(rand: RandomBytes = cryptoRandomBytes): string {
  return newId(rand);
}

/** A new cluster id: same format as a node id. */
export function newClusterId(rand: RandomBytes = cryptoRandomBytes): string {
  return newId(rand);
}

/** True for a string in the format newNodeId / newClusterId produce. */
export function isGeneratedId(s: string): boolean {
  return ID_RE.test(s);
}
