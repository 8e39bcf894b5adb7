// Query parameters of rename, stats, the prunes, system df and image history, parsed as dockerd parses
// them, with its words when they are wrong.

import { z } from "zod";
import { MAX_NAME_LENGTH } from "../../api/limits.js";
import { filtersParam, lenientBool, textParam } from "./query.js";

/** httputils.BoolValueOrDefault: absent is `d`; present, BoolValue (anything but "", "0", "no", "false", "none"). */
function boolOrDefault(d: boolean) {
  return z
    .string()
    .optional()
    .transform((v) => (v === undefined ? d : !["", "0", "no", "false", "none"].includes(v.trim().toLowerCase())));
}

/** POST /containers/{id}/rename?name=NEW */
export const ContainerRenameQuery = z.object({ name: textParam("name", MAX_NAME_LENGTH + 1) });

/** GET /containers/{id}/stats?stream=&one-shot= */
export const ContainerStatsQuery = z.object({ stream: boolOrDefault(true), "one-shot": boolOrDefault(false) });

/** POST /containers/prune */
export const ContainerPruneQuery = z.object({ filters: filtersParam(["label", "label!", "until"]) });

/** POST /images/prune (docker image prune [-a]: dangling=false) */
export const ImagePruneQuery = z.object({ filters: filtersParam(["dangling", "label", "label!", "until"]) });

/** POST /build/prune: shoal builds no images (it has no build cache); the filters are still checked. */
export const BuildPruneQuery = z.object({
  all: lenientBool(),
  filters: filtersParam(["until", "id", "parent", "type", "description", "inuse", "shared", "private"]),
});

const DF_TYPES = ["container", "image", "volume", "build-cache"] as const;
export type DfType = (typeof DF_TYPES)[number];

/** GET /system/df?type=...: every `type` value (repeated), each one of dockerd's four. */
export const SystemDfTypes = z
  .array(z.string().max(32))
  .max(16)
  .superRefine((types, ctx) => {
    for (const t of types) {
      if (!(DF_TYPES as readonly string[]).includes(t)) {
        ctx.addIssue({ code: "custom", message: `unknown object type: ${t}` });
        return;
      }
    }
  })
  .transform((types) => types as DfType[]);

/** GET /events: since/until (a time, a duration ago, Unix seconds) and dockerd's event filters. */
export const EventsQuery = z.object({
  since: textParam("since", 64),
  until: textParam("until", 64),
  filters: filtersParam([
    "container",
    "daemon",
    "event",
    "image",
    "label",
    "network",
    "node",
    "plugin",
    "scope",
    "type",
    "volume",
    "config",
    "secret",
    "service",
  ]),
});
