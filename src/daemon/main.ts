#!/usr/bin/env node
// shoald: the daemon, one per host (manager or worker).

import { Command } from "commander";
import { VERSION } from "../version.js";

function buildProgram(): Command {
  return new Command("shoald")
    .description("The shoal daemon: runs a swarm manager or worker on this host")
    .version(`shoald version ${VERSION}`, "-v, --version", "Print version information and quit");
}

await buildProgram().parseAsync(process.argv);
