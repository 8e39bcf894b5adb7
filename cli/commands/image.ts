// shoal pull | images | load | save | rmi | tag, and the same under `shoal image` — docker's requests and
// output. `pull` prints docker's per-layer progress as lines (what docker prints without a terminal).

import { createReadStream, createWriteStream, statSync } from "node:fs";
import type * as http from "node:http";
import { pipeline } from "node:stream/promises";
import type { Command } from "commander";
import { CliError, type EngineClient } from "../client.js";
import { group, type Invocation, type LeafSpec, leaf } from "../command.js";
import { filtersJSON } from "../flags.js";
import { filterFlag, humanDuration, obj, openStream, renderList, row, str } from "./common.js";

/** Reads docker's JSON message stream, calling `each` for every message; throws its error message. */
export async function readMessages(
  res: http.IncomingMessage,
  each: (m: Record<string, unknown>) => void,
): Promise<void> {
  let buf = "";
  let error: string | undefined;
  res.setEncoding("utf8");
  for await (const chunk of res) {
    buf += chunk as string;
    let nl = buf.indexOf("\n");
    while (nl >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      nl = buf.indexOf("\n");
      if (line === "") continue;
      let m: Record<string, unknown>;
      try {
        m = obj(JSON.parse(line));
      } catch {
        continue;
      }
      if (typeof m.error === "string") error = m.error;
      else each(m);
    }
  }
  if (error !== undefined) throw new CliError(error);
}

/** `pull`'s lines as docker prints them without a terminal: one per status change of each layer. */
function progressPrinter(out: (text: string) => void): (m: Record<string, unknown>) => void {
  return (m) => {
    const status = str(m.status);
    if (status === "Downloading" || status === "Extracting") return;
    const id = str(m.id);
    out(id ? `${id}: ${status}\n` : `${status}\n`);
  };
}

/** Pulls an image, printing docker's progress lines. */
export async function pull(client: EngineClient, ref: string, out: (text: string) => void): Promise<void> {
  const at = ref.indexOf("@");
  const colon = ref.lastIndexOf(":");
  let fromImage = ref;
  let tag = "latest";
  if (at >= 0) {
    fromImage = ref.slice(0, at);
    tag = ref.slice(at + 1);
  } else if (colon > ref.lastIndexOf("/")) {
    fromImage = ref.slice(0, colon);
    tag = ref.slice(colon + 1);
  }
  const { res } = await openStream(client, "POST", "/images/create", { fromImage, tag });
  await readMessages(res, progressPrinter(out));
}

async function runPull(inv: Invocation): Promise<void> {
  const ref = inv.args[0]!;
  const full = ref.includes(":") || ref.includes("@") ? ref : `${ref}:latest`;
  if (!ref.includes(":") && !ref.includes("@")) inv.out("Using default tag: latest\n");
  await pull(inv.client(), full, (t) => inv.out(t));
  if (inv.flag<boolean>("quiet") !== true) inv.out(`${full.includes("/") ? full : `docker.io/library/${full}`}\n`);
}

function humanSize(n: number): string {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let v = n;
  let i = 0;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return `${Number(v.toPrecision(3))}${units[i]}`;
}

const IMAGE_HEADERS: Record<string, string> = {
  Repository: "REPOSITORY",
  Tag: "TAG",
  ID: "IMAGE ID",
  CreatedSince: "CREATED",
  CreatedAt: "CREATED AT",
  Size: "SIZE",
  Digest: "DIGEST",
};

async function runImages(inv: Invocation): Promise<void> {
  const filters = inv.flag<[string, string][] | undefined>("filter") ?? [];
  if (inv.args[0]) filters.push(["reference", inv.args[0]]);
  const list = (
    await inv
      .client()
      .get<unknown[]>("/images/json", { filters: filters.length > 0 ? filtersJSON(filters) : undefined })
  ).map(obj);
  const trunc = inv.flag<boolean>("trunc") !== false;
  const rows = list.flatMap((img) => {
    const tags = Array.isArray(img.RepoTags) && img.RepoTags.length > 0 ? img.RepoTags.map(str) : ["<none>:<none>"];
    const id = str(img.Id);
    const created = typeof img.Created === "number" ? img.Created : 0;
    return tags.map((t) => {
      const colon = t.lastIndexOf(":");
      return row("*formatter.imageContext", [
        ["Repository", t.slice(0, colon)],
        ["Tag", t.slice(colon + 1)],
        ["ID", trunc ? id.replace(/^sha256:/, "").slice(0, 12) : id],
        ["CreatedSince", `${humanDuration(Date.now() - created * 1000)} ago`],
        ["CreatedAt", new Date(created * 1000).toISOString()],
        ["Size", humanSize(typeof img.Size === "number" ? img.Size : 0)],
        ["Digest", "<none>"],
      ]);
    });
  });
  renderList(inv, rows, {
    headers: IMAGE_HEADERS,
    defaultTable: "table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}",
    quietField: "ID",
    format: inv.flag<string | undefined>("format") ?? "",
    quiet: inv.flag<boolean>("quiet") === true,
  });
}

async function runLoad(inv: Invocation): Promise<void> {
  const input = inv.flag<string | undefined>("input");
  if (input) statSync(input);
  const body = input ? createReadStream(input) : process.stdin;
  const { res } = await openStream(
    inv.client(),
    "POST",
    "/images/load",
    { quiet: inv.flag<boolean>("quiet") ? "1" : "0" },
    {
      body,
      headers: { "Content-Type": "application/x-tar" },
    },
  );
  await readMessages(res, (m) => inv.out(str(m.stream)));
}

async function runSave(inv: Invocation): Promise<void> {
  const output = inv.flag<string | undefined>("output");
  if (!output && process.stdout.isTTY) {
    throw new CliError("cowardly refusing to save to a terminal. Use the -o flag or redirect");
  }
  const names = new URLSearchParams();
  for (const n of inv.args) names.append("names", n);
  const { res } = await openStream(inv.client(), "GET", "/images/get", {}, { extraQuery: names.toString() });
  await pipeline(res, output ? createWriteStream(output) : process.stdout);
}

async function runRmi(inv: Invocation): Promise<void> {
  let failed = false;
  for (const ref of inv.args) {
    try {
      const out = await inv.client().json<unknown[]>("DELETE", `/images/${ref}`, {
        query: { force: inv.flag<boolean>("force") ? "1" : undefined },
      });
      for (const r of out.map(obj)) {
        if (r.Untagged) inv.out(`Untagged: ${str(r.Untagged)}\n`);
        if (r.Deleted) inv.out(`Deleted: ${str(r.Deleted)}\n`);
      }
    } catch (e) {
      if (!(e instanceof CliError)) throw e;
      process.stderr.write(`${e.message}\n`);
      failed = true;
    }
  }
  if (failed) throw new CliError("", 1);
}

async function runTag(inv: Invocation): Promise<void> {
  const [source, target] = inv.args as [string, string];
  const colon = target.lastIndexOf(":");
  const hasTag = colon > target.lastIndexOf("/");
  await inv.client().call("POST", `/images/${source}/tag`, {
    query: { repo: hasTag ? target.slice(0, colon) : target, tag: hasTag ? target.slice(colon + 1) : "latest" },
  });
}

function specs(): Record<string, LeafSpec> {
  return {
    pull: {
      name: "pull",
      use: "[OPTIONS] NAME[:TAG|@DIGEST]",
      short: "Download an image from a registry",
      args: { kind: "exact", n: 1 },
      flags: [{ long: "quiet", short: "q", kind: "bool", description: "Suppress verbose output" }],
      run: runPull,
    },
    images: {
      name: "images",
      use: "[OPTIONS] [REPOSITORY[:TAG]]",
      short: "List images",
      args: { kind: "min", n: 0 },
      flags: [
        { long: "all", short: "a", kind: "bool", description: "Show all images (default hides intermediate images)" },
        filterFlag(),
        { long: "format", type: "string", kind: "string", description: "Format output using a custom template" },
        { long: "no-trunc", kind: "bool", description: "Don't truncate output" },
        { long: "quiet", short: "q", kind: "bool", description: "Only show image IDs" },
      ],
      run: runImages,
    },
    load: {
      name: "load",
      use: "[OPTIONS]",
      short: "Load an image from a tar archive or STDIN",
      args: { kind: "none" },
      flags: [
        {
          long: "input",
          short: "i",
          type: "string",
          kind: "string",
          description: "Read from tar archive file, instead of STDIN",
        },
        { long: "quiet", short: "q", kind: "bool", description: "Suppress the load output" },
      ],
      run: runLoad,
    },
    save: {
      name: "save",
      use: "[OPTIONS] IMAGE [IMAGE...]",
      short: "Save one or more images to a tar archive (streamed to STDOUT by default)",
      args: { kind: "min", n: 1 },
      flags: [
        {
          long: "output",
          short: "o",
          type: "string",
          kind: "string",
          description: "Write to a file, instead of STDOUT",
        },
      ],
      run: runSave,
    },
    rmi: {
      name: "rmi",
      use: "[OPTIONS] IMAGE [IMAGE...]",
      short: "Remove one or more images",
      args: { kind: "min", n: 1 },
      flags: [
        { long: "force", short: "f", kind: "bool", description: "Force removal of the image" },
        { long: "no-prune", kind: "bool", description: "Do not delete untagged parents" },
      ],
      run: runRmi,
    },
    tag: {
      name: "tag",
      use: "SOURCE_IMAGE[:TAG] TARGET_IMAGE[:TAG]",
      short: "Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE",
      args: { kind: "exact", n: 2 },
      run: runTag,
    },
  };
}

export function addImageCommands(program: Command): void {
  const s = specs();
  for (const name of ["pull", "images", "load", "save", "rmi", "tag"]) leaf(program, s[name]!);
  const image = group(program, "image", "Manage images");
  for (const name of ["pull", "load", "save", "tag"]) leaf(image, s[name]!);
  leaf(image, { ...s.images!, name: "ls", aliases: ["list"] });
  leaf(image, { ...s.rmi!, name: "rm", aliases: ["remove"] });
}
