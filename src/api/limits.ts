// Bounds on everything a caller can make the cluster store. Every object is replicated to every manager
// and pushed to the nodes that need it, so a size is a cost paid many times: these keep one request from
// filling the Raft log, and keep each refusal its own clear error rather than a proposal-size failure.

/** Names: networks, nodes (Spec.Name), hostnames, containers, aliases. */
export const MAX_NAME_LENGTH = 255;
/** A label's key, in bytes (UTF-8). */
export const MAX_LABEL_KEY_BYTES = 1024;
/** A label's value, in bytes (UTF-8). */
export const MAX_LABEL_VALUE_BYTES = 16 * 1024;
/** Labels of one object: their number and the bytes of all keys and values together. */
export const MAX_LABELS = 256;
export const MAX_LABELS_BYTES = 64 * 1024;
/** Driver options of a network (same bounds as labels). */
export const MAX_OPTIONS = 64;
/** Aliases of one endpoint. */
export const MAX_ALIASES = 64;
/** Short descriptive strings a node reports about itself (OS, architecture, versions, plugin names). */
export const MAX_SHORT_STRING = 256;
/** Plugins a node may report. */
export const MAX_PLUGINS = 64;
/** PEM text (certificates, keys) and TLS subjects/keys in a node's description. */
export const MAX_PEM_BYTES = 16 * 1024;
/** Status messages shown by node inspect. */
export const MAX_MESSAGE_LENGTH = 1024;
/** Address pools given at init. */
export const MAX_ADDR_POOLS = 64;
/** A join token: SWMTKN-1-<50 base36>-<25 base36> is 85 characters; anything much longer is not one. */
export const MAX_TOKEN_LENGTH = 256;
/** A certificate signing request. */
export const MAX_CSR_BYTES = 16 * 1024;

export function utf8Bytes(s: string): number {
  return Buffer.byteLength(s, "utf8");
}
