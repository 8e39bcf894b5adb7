// The cluster record a store starts from in unit tests: what `swarm init` writes first, with empty secrets.

import { DEFAULT_SWARM_SPEC } from "../../src/api/objects.js";
import type { Command } from "../../src/store/store.js";

/** A cluster.create command for cluster `id` (25 characters), made at `at`. */
export function clusterCreate(at: Date, id = "c".padEnd(25, "0")): Extract<Command, { op: "cluster.create" }> {
  return {
    op: "cluster.create",
    info: {
      ID: id,
      Version: { Index: 0 },
      CreatedAt: at.toISOString(),
      UpdatedAt: at.toISOString(),
      Spec: DEFAULT_SWARM_SPEC,
      TLSInfo: { TrustRoot: "", CertIssuerSubject: "", CertIssuerPublicKey: "" },
      RootRotationInProgress: false,
      DefaultAddrPool: ["10.0.0.0/8"],
      SubnetSize: 24,
      DataPathPort: 4789,
    },
    secrets: { rootCACertPem: "", rootCAKeyPem: "", workerToken: "w", managerToken: "m" },
  };
}
