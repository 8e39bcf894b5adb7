// GET /events (docker events [--since] [--until] [--filter]): the events kept since `since`, then those
// that happen, one JSON object a line, until `until` or until the client goes. The runtime keeps and
// emits container and image events; the network routes add the networks' (networkEvent).

import type { EngineEvent } from "../../runtime/events.js";
import { badRequest } from "../errors.js";
import type { Filters } from "../filters.js";
import { writeWithBackpressure } from "../http.js";
import { type Ctx, type Route, type RouteDeps, route } from "../router.js";
import { decodeQuery } from "../schemas/query.js";
import { EventsQuery } from "../schemas/usage.js";
import { parseTimestampMs } from "../timestamps.js";

/** A network event (create, destroy, connect, disconnect) into the runtime's event log, if there is one. */
export function networkEvent(d: RouteDeps, action: string, id: string, attributes: Record<string, string>): void {
  d.containerBackend?.events?.emit("network", action, id, { ...attributes, type: "overlay" });
}

/** "key" or "key=value" against an event's attributes. */
function labelMatches(attrs: Record<string, string>, f: string): boolean {
  const eq = f.indexOf("=");
  if (eq < 0) return Object.hasOwn(attrs, f);
  return attrs[f.slice(0, eq)] === f.slice(eq + 1);
}

/** dockerd's events filter: every key given holds (type, event, container, image, network, label, scope). */
export function eventMatches(e: EngineEvent, f: Filters): boolean {
  const a = e.Actor.Attributes;
  const idOrName = (values: string[] | undefined, type: EngineEvent["Type"]) =>
    !values || (e.Type === type && values.some((v) => v === e.Actor.ID || e.Actor.ID.startsWith(v) || v === a.name));
  if (f.type && !f.type.includes(e.Type)) return false;
  if (f.event && !f.event.some((v) => v === e.Action || e.Action.startsWith(`${v}:`))) return false;
  if (f.scope && !f.scope.includes(e.scope)) return false;
  if (!idOrName(f.container, "container") || !idOrName(f.network, "network")) return false;
  if (f.image) {
    const image = e.Type === "image" ? [e.Actor.ID, a.name] : e.Type === "container" ? [a.image] : [];
    if (!f.image.some((v) => image.includes(v))) return false;
  }
  if (f.label && !f.label.every((l) => labelMatches(a, l))) return false;
  return true;
}

/** Events held for one stream that its client has not taken yet; past that its stream ends (dockerd drops a slow subscriber too). */
export const MAX_PENDING_EVENTS = 4096;

export function eventRoutes(d: RouteDeps): Route[] {
  return [route("GET", "/events", (ctx) => events(d, ctx))];
}

async function events(d: RouteDeps, { res, query }: Ctx): Promise<void> {
  const q = decodeQuery(EventsQuery, query);
  const now = Date.now();
  const since = q.since ? parseTimestampMs(q.since, now) : undefined;
  const until = q.until ? parseTimestampMs(q.until, now) : undefined;
  if (since !== undefined && until !== undefined && since > until) {
    throw badRequest("`since` time must be before `until`");
  }
  const log = d.containers().events;
  res.writeHead(200, { "Content-Type": "application/json" });
  res.flushHeaders();
  if (!log) {
    res.end();
    return;
  }
  const pending: EngineEvent[] = [];
  let wake: (() => void) | undefined;
  let closed = false;
  const stop = log.subscribe((e) => {
    // A client that does not read: its stream ends rather than shoald holding its events without bound.
    if (pending.length >= MAX_PENDING_EVENTS) closed = true;
    else pending.push(e);
    wake?.();
  });
  const ended = () => {
    closed = true;
    wake?.();
  };
  res.once("close", ended);
  const timer = until !== undefined && until > now ? setTimeout(ended, until - now) : undefined;
  try {
    const past = since !== undefined ? log.since(since) : [];
    const inTime = (e: EngineEvent) => until === undefined || e.timeNano / 1e6 <= until;
    for (const e of past) {
      if (inTime(e) && eventMatches(e, q.filters) && !(await send(res, e))) return;
    }
    // An `until` in the past: only what was kept.
    if (until !== undefined && until <= now) return;
    while (!closed) {
      const e = pending.shift();
      if (!e) {
        await new Promise<void>((resolve) => {
          wake = resolve;
        });
        wake = undefined;
        continue;
      }
      if (inTime(e) && eventMatches(e, q.filters) && !(await send(res, e))) return;
    }
  } finally {
    stop();
    clearTimeout(timer);
    if (!res.destroyed) res.end();
  }
}

function send(res: Ctx["res"], e: EngineEvent): Promise<boolean> {
  return writeWithBackpressure(res, Buffer.from(`${JSON.stringify(e)}\n`));
}
