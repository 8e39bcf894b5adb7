// The metrics endpoint: GET /metrics in Prometheus' text format on --metrics-addr (dockerd's flag), plain
// HTTP as dockerd serves it. Nothing else is served; the listener never takes the daemon down.

import http from "node:http";
import type { AddressInfo } from "node:net";
import { contentType, metricsText } from "./metrics.js";

export interface MetricsServer {
  readonly host: string;
  readonly port: number;
  close(): Promise<void>;
}

/** "host:port" (IPv6 as [addr]:port) → its parts; throws with the flag's name when it is not one. */
export function parseMetricsAddr(addr: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(addr.trim());
  const port = m ? Number(m[3]) : Number.NaN;
  if (!m || port > 65535) {
    throw new Error(`invalid --metrics-addr ${JSON.stringify(addr)}: use HOST:PORT, e.g. 127.0.0.1:9323`);
  }
  return { host: m[1] ?? m[2]!, port };
}

export async function listenMetrics(addr: string): Promise<MetricsServer> {
  const { host, port } = parseMetricsAddr(addr);
  const server = http.createServer((req, res) => {
    const path = (req.url ?? "").split("?")[0];
    if (req.method !== "GET" || path !== "/metrics") {
      res.writeHead(404, { "content-type": "text/plain" }).end("404 page not found\n");
      return;
    }
    metricsText().then(
      (text) => res.writeHead(200, { "content-type": contentType }).end(text),
      (e: unknown) => res.writeHead(500, { "content-type": "text/plain" }).end(`${String(e)}\n`),
    );
  });
  server.on("clientError", (_e, socket) => socket.destroy());
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const bound = server.address() as AddressInfo;
  return {
    host,
    port: bound.port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
