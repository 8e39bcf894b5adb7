// A daemon's Prometheus endpoint (--metrics-addr), read by the integration tests: one GET, and one value
// out of the text.

import http from "node:http";

/** Where the lab's daemons serve metrics: each daemon's cluster port plus this. */
export const METRICS_PORT_OFFSET = 100;

export function scrape(host: string, port: number, path = "/metrics"): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host, port, path, timeout: 5000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString("utf8") }));
    });
    req.on("error", reject);
    req.on("timeout", () => req.destroy(new Error("no answer")));
  });
}

/** The value of `name{labels}` in Prometheus text (labels: the exact label text, or none). */
export function value(text: string, name: string, labels?: string): number | undefined {
  for (const line of text.split("\n")) {
    if (line.startsWith("#")) continue;
    const sp = line.lastIndexOf(" ");
    if (line.slice(0, sp) === (labels ? `${name}{${labels}}` : name)) return Number(line.slice(sp + 1));
  }
  return undefined;
}
