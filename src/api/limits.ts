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
/** Endpoints one request names for one container (the networks it is on). */
export const MAX_CONTAINER_ENDPOINTS = 256;
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

/** Largest Engine API request body; anything bigger is answered 413 before it is read to the end. */
export const MAX_REQUEST_BODY_BYTES = 1024 * 1024;
/** Deepest nesting of arrays and objects in a request body (Docker's own deepest is 6). */
export const MAX_JSON_DEPTH = 32;
/** Environment entries of a container or exec (count, and bytes of all of them together). */
export const MAX_ENV = 1024;
export const MAX_ENV_BYTES = 256 * 1024;
/** Arguments of a command (Cmd, Entrypoint), in number and in bytes together. */
export const MAX_ARGS = 4096;
export const MAX_ARGS_BYTES = 256 * 1024;
/** A file system path in a request (WorkingDir). */
export const MAX_PATH_LENGTH = 4096;
/** Image references ("registry:5000/org/name:tag@sha256:..."). */
export const MAX_IMAGE_REF_LENGTH = 1024;
/** Manager addresses given to swarm join. */
export const MAX_REMOTE_ADDRS = 16;
/** The `filters` query parameter: its keys, the values of one key, and its length. */
export const MAX_FILTER_KEYS = 32;
export const MAX_FILTER_VALUES = 256;
export const MAX_FILTERS_LENGTH = 16 * 1024;
/** Entries of any other list or map a request may carry (refused unless empty, mostly). */
export const MAX_LIST_ENTRIES = 1024;
