// The Engine API's errors are the cluster's own (src/api/errors.ts): this layer turns them into HTTP.
export * from "../api/errors.js";
