// Errors that reach a user, with the HTTP status and the words dockerd uses. The bottom floor: every layer
// may raise them; the Engine API turns them into its answers, the cluster protocol into gRPC statuses.

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

const MSG_NOT_MANAGER =
  'This node is not a swarm manager. Use "docker swarm init" or "docker swarm join" to connect this node to swarm and try again.';
export const MSG_WORKER =
  "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. Please run this command on a manager node or promote the current node to a manager.";
const MSG_ALREADY_IN_SWARM =
  'This node is already part of a swarm. Use "docker swarm leave" to leave this swarm and join another one.';
const MSG_NOT_IN_SWARM = "This node is not part of a swarm";
/** A manager whose keys are sealed under the swarm's unlock key (autolock), after a restart. */
export const MSG_LOCKED =
  'Swarm is encrypted and needs to be unlocked before it can be used. Please use "docker swarm unlock" to unlock it.';
export const MSG_LEAVE_LOCKED =
  "Swarm is encrypted and locked. Please unlock it first or use `--force` to ignore this message.";
/** 401: the key given to "docker swarm unlock" does not open this manager's keys. */
export const MSG_INVALID_UNLOCK_KEY = "swarm could not be unlocked: invalid key provided";

/** 503: the node is not in a swarm, or is a worker, or the swarm has no leader. */
export const notManager = (): ApiError => new ApiError(503, MSG_NOT_MANAGER);
export const workerNode = (): ApiError => new ApiError(503, MSG_WORKER);
export const alreadyInSwarm = (): ApiError => new ApiError(503, MSG_ALREADY_IN_SWARM);
export const notInSwarm = (): ApiError => new ApiError(503, MSG_NOT_IN_SWARM);
export const notFound = (what: string): ApiError => new ApiError(404, what);
export const nodeNotFound = (ref: string): ApiError => new ApiError(404, `node ${ref} not found`);
export const badRequest = (msg: string): ApiError => new ApiError(400, msg);
export const conflict = (msg: string): ApiError => new ApiError(409, msg);
export const unavailable = (msg: string): ApiError => new ApiError(503, msg);
export const internal = (msg: string): ApiError => new ApiError(500, msg);
/** A write whose version is stale: docker prints this as it comes. */
export const outOfSequence = (): ApiError => new ApiError(500, "update out of sequence");
