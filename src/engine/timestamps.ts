// Times as the Engine API's filters and parameters give them (`until` of a prune, `since` of logs):
// dockerd's GetTimestamp takes a Go duration ("10m", "1h30m": that long before now), an RFC 3339 date or
// time (with or without a zone, to the nanosecond; without a zone it is the daemon's local time), or Unix
// seconds with an optional fraction.

import { badRequest } from "./errors.js";

const UNIT_NS: Record<string, number> = { ns: 1, us: 1e3, µs: 1e3, μs: 1e3, ms: 1e6, s: 1e9, m: 60e9, h: 3600e9 };

/** Go's time.ParseDuration, in nanoseconds; undefined when `s` is not a duration. */
export function parseGoDuration(s: string): number | undefined {
  const m = /^([+-]?)((?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:ns|us|µs|μs|ms|s|m|h))+)$/.exec(s);
  if (!m) return s === "0" || s === "+0" || s === "-0" ? 0 : undefined;
  let total = 0;
  for (const part of m[2]!.matchAll(/([0-9]*\.?[0-9]*)(ns|us|µs|μs|ms|s|m|h)/g)) {
    total += Number(part[1]) * UNIT_NS[part[2]!]!;
  }
  return m[1] === "-" ? -total : total;
}

const DATE_TIME =
  /^([0-9]{4})-([0-9]{2})-([0-9]{2})(?:T([0-9]{2})(?::([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{1,9}))?)?)?)?(Z|z|[+-][0-9]{2}:[0-9]{2})?$/;

/**
 * Milliseconds since the epoch that `value` names, with `nowMs` the reference for durations. Throws a 400
 * in dockerd's words when it is none of the forms.
 */
export function parseTimestampMs(value: string, nowMs: number): number {
  const d = parseGoDuration(value);
  if (d !== undefined && value !== "0") return nowMs - d / 1e6;
  const m = DATE_TIME.exec(value);
  if (m) {
    const [, y, mo, da, h = "00", mi = "00", se = "00", frac = "", zone] = m;
    const ms = Number(`0.${frac || "0"}`) * 1000;
    const iso = `${y}-${mo}-${da}T${h}:${mi}:${se}`;
    const t = zone
      ? Date.parse(`${iso}${zone.toUpperCase() === "Z" ? "Z" : zone}`)
      : new Date(Number(y), Number(mo) - 1, Number(da), Number(h), Number(mi), Number(se)).getTime();
    if (!Number.isNaN(t)) return t + ms;
  }
  const unix = /^([0-9]+)(?:\.([0-9]+))?$/.exec(value);
  if (unix) {
    return Number(unix[1]) * 1000 + Number(`0.${unix[2] ?? "0"}`) * 1000;
  }
  throw badRequest(`failed to parse value as time or duration: ${JSON.stringify(value)}`);
}
