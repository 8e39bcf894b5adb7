// The two ports a swarm uses, defined once (as Docker's swarm mode uses them).

/** TCP port of cluster management: gRPC (Raft, CA, dispatcher, control) over mutual TLS. */
export const CLUSTER_PORT = 2377;
/** UDP port of the VXLAN data path, unless the swarm was initialised with another. */
export const DEFAULT_DATA_PATH_PORT = 4789;
