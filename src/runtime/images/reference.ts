// Image references as docker reads them: "busybox" is docker.io/library/busybox:latest, "host:5000/x" names
// a registry by its port (or a dot, or "localhost"), a digest pins the content. Images are stored under the
// full name; users see the familiar one (docker.io/library/ dropped). Bad references are refused in
// docker's words ("invalid reference format").

import { badRequest } from "../../api/errors.js";

export const DEFAULT_DOMAIN = "docker.io";
const LEGACY_DOMAIN = "index.docker.io";
const OFFICIAL_PREFIX = "library/";

const COMPONENT = "[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*";
const DOMAIN_COMPONENT = "(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
const DOMAIN = `(?:${DOMAIN_COMPONENT}(?:\\.${DOMAIN_COMPONENT})*|\\[[0-9a-fA-F:]+\\])(?::[0-9]+)?`;
const PATH_RE = new RegExp(`^${COMPONENT}(?:/${COMPONENT})*$`);
const DOMAIN_RE = new RegExp(`^${DOMAIN}$`);
const TAG_RE = /^[\w][\w.-]{0,127}$/;
const DIGEST_RE = /^sha256:[0-9a-f]{64}$/;
/** The longest name docker accepts. */
const MAX_NAME = 255;

export interface Reference {
  /** The registry: "docker.io", "registry.lab:5000". */
  domain: string;
  /** The repository in that registry: "library/busybox". */
  path: string;
  /** Set unless the reference is by digest only. */
  tag?: string;
  digest?: string;
}

export const invalidReference = (detail = ""): Error =>
  badRequest(`invalid reference format${detail ? `: ${detail}` : ""}`);

/** Whether the first component names a registry (docker's rule: a dot, a port, or "localhost"). */
function isDomain(first: string): boolean {
  return first.includes(".") || first.includes(":") || first === "localhost" || first !== first.toLowerCase();
}

/**
 * Parses a reference and fills in what docker fills in: the default registry, "library/" for official
 * images, and the tag "latest" when neither tag nor digest is given.
 */
export function parseReference(text: string): Reference {
  if (text === "" || /\s/.test(text)) throw invalidReference();
  let rest = text;
  let digest: string | undefined;
  const at = rest.indexOf("@");
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST_RE.test(digest)) throw invalidReference();
  }
  let tag: string | undefined;
  const colon = rest.lastIndexOf(":");
  if (colon > rest.lastIndexOf("/")) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG_RE.test(tag)) throw invalidReference();
  }
  const slash = rest.indexOf("/");
  let domain = DEFAULT_DOMAIN;
  let path = rest;
  if (slash >= 0 && isDomain(rest.slice(0, slash))) {
    domain = rest.slice(0, slash);
    path = rest.slice(slash + 1);
    if (!DOMAIN_RE.test(domain)) throw invalidReference();
  }
  if (domain === LEGACY_DOMAIN) domain = DEFAULT_DOMAIN;
  if (path !== path.toLowerCase()) throw invalidReference("repository name must be lowercase");
  if (!PATH_RE.test(path)) throw invalidReference();
  if (domain === DEFAULT_DOMAIN && !path.includes("/")) path = `${OFFICIAL_PREFIX}${path}`;
  if (`${domain}/${path}`.length > MAX_NAME)
    throw invalidReference("repository name must not be more than 255 characters");
  if (tag === undefined && digest === undefined) tag = "latest";
  return { domain, path, ...(tag !== undefined ? { tag } : {}), ...(digest !== undefined ? { digest } : {}) };
}

/** The repository's full name: "docker.io/library/busybox". */
export function repositoryOf(ref: Reference): string {
  return `${ref.domain}/${ref.path}`;
}

/** The full name an image is stored under: "docker.io/library/busybox:latest" or "...@sha256:...". */
export function fullName(ref: Reference): string {
  const repo = repositoryOf(ref);
  if (ref.digest) return ref.tag ? `${repo}:${ref.tag}@${ref.digest}` : `${repo}@${ref.digest}`;
  return `${repo}:${ref.tag}`;
}

/** The repository as users see it: "busybox", "registry.lab:5000/tools/busybox". */
export function familiarRepository(ref: Reference): string {
  if (ref.domain === DEFAULT_DOMAIN) {
    return ref.path.startsWith(OFFICIAL_PREFIX) ? ref.path.slice(OFFICIAL_PREFIX.length) : ref.path;
  }
  return repositoryOf(ref);
}

/** A stored name as users see it: "busybox:latest". */
export function familiarName(stored: string): string {
  // An image loaded without a name is stored under its id.
  if (stored.startsWith("sha256:")) return "<none>:<none>";
  const ref = parseReference(stored);
  const repo = familiarRepository(ref);
  if (ref.digest && !ref.tag) return `${repo}@${ref.digest}`;
  return `${repo}:${ref.tag}`;
}

/** Whether a string could be an image id or a prefix of one (hex, or "sha256:" and hex). */
export function looksLikeId(text: string): boolean {
  return /^(sha256:)?[0-9a-f]{1,64}$/.test(text);
}
