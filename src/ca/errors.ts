// Errors from the CA module. `code` is for programs; `message` is for people.

export type CAErrorCode =
  | "invalid-join-token"
  | "invalid-root-ca"
  | "no-ca-key"
  | "invalid-csr"
  | "invalid-node-id"
  | "invalid-certificate"
  | "untrusted-certificate"
  | "certificate-not-yet-valid"
  | "certificate-expired";

export class CAError extends Error {
  readonly code: CAErrorCode;
  constructor(code: CAErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "CAError";
    this.code = code;
  }
}

/** Thrown by parseJoinToken. The message never echoes the token: it carries a secret. */
export class InvalidJoinTokenError extends CAError {
  /** Which check failed, for logs and tests. Contains no part of the token. */
  readonly reason: string;
  constructor(reason: string) {
    super("invalid-join-token", "invalid join token");
    this.name = "InvalidJoinTokenError";
    this.reason = reason;
  }
}
