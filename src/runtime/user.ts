// `-u USER[:GROUP]` (or the image's User) to the uid, gid and supplementary groups runc runs the process
// with, looked up in the container's own /etc/passwd and /etc/group as docker does. Names need the files;
// numbers do not.

import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { badRequest } from "../api/errors.js";
import type { ProcessUser } from "./spec.js";

interface PasswdEntry {
  name: string;
  uid: number;
  gid: number;
}

interface GroupEntry {
  name: string;
  gid: number;
  members: string[];
}

function parsePasswd(text: string): PasswdEntry[] {
  const out: PasswdEntry[] = [];
  for (const line of text.split("\n")) {
    const f = line.split(":");
    if (f.length < 4 || line.startsWith("#")) continue;
    const uid = Number(f[2]);
    const gid = Number(f[3]);
    if (Number.isInteger(uid) && Number.isInteger(gid)) out.push({ name: f[0]!, uid, gid });
  }
  return out;
}

function parseGroup(text: string): GroupEntry[] {
  const out: GroupEntry[] = [];
  for (const line of text.split("\n")) {
    const f = line.split(":");
    if (f.length < 3 || line.startsWith("#")) continue;
    const gid = Number(f[2]);
    if (Number.isInteger(gid)) out.push({ name: f[0]!, gid, members: (f[3] ?? "").split(",").filter((m) => m !== "") });
  }
  return out;
}

/** A file of the container's root file system: the first of its layer directories (top first) that has it. */
async function readFromLayers(dirs: string[], path: string): Promise<string> {
  for (const d of dirs) {
    try {
      return await readFile(join(d, path), "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    }
  }
  return "";
}

const isNumber = (s: string): boolean => /^[0-9]+$/.test(s);

/**
 * Resolves a user spec against the root file system whose layer directories are `dirs` (top first).
 * "" is root. A name that is not in /etc/passwd is refused in docker's words.
 */
export async function resolveUser(spec: string, dirs: string[]): Promise<ProcessUser> {
  if (spec === "") return { uid: 0, gid: 0 };
  const [userPart, groupPart] = spec.split(":", 2) as [string, string?];
  const needFiles = !isNumber(userPart) || (groupPart !== undefined && !isNumber(groupPart));
  const passwd = parsePasswd(needFiles || groupPart === undefined ? await readFromLayers(dirs, "etc/passwd") : "");
  const groups = parseGroup(await readFromLayers(dirs, "etc/group"));
  let uid: number;
  let gid: number;
  let name: string | undefined;
  if (isNumber(userPart)) {
    uid = Number(userPart);
    const entry = passwd.find((p) => p.uid === uid);
    gid = entry?.gid ?? 0;
    name = entry?.name;
  } else {
    const entry = passwd.find((p) => p.name === userPart);
    if (!entry) throw badRequest(`unable to find user ${userPart}: no matching entries in passwd file`);
    ({ uid, gid, name } = entry);
  }
  if (groupPart !== undefined) {
    if (isNumber(groupPart)) gid = Number(groupPart);
    else {
      const g = groups.find((x) => x.name === groupPart);
      if (!g) throw badRequest(`unable to find group ${groupPart}: no matching entries in group file`);
      gid = g.gid;
    }
  }
  const additionalGids = name ? groups.filter((g) => g.members.includes(name!) && g.gid !== gid).map((g) => g.gid) : [];
  return { uid, gid, ...(additionalGids.length > 0 ? { additionalGids } : {}) };
}

/** The layer directories (top first) of an overlay or bind mount of a snapshot. */
export function layerDirs(mounts: { type: string; source: string; options: string[] }[]): string[] {
  const m = mounts[0];
  if (!m) return [];
  if (m.type === "bind") return [m.source];
  const opt = (key: string): string | undefined =>
    m.options.find((o) => o.startsWith(`${key}=`))?.slice(key.length + 1);
  return [opt("upperdir"), ...(opt("lowerdir")?.split(":") ?? [])].filter((d): d is string => d !== undefined);
}
