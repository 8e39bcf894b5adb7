#!/usr/bin/env node
// shoal: the command line. It talks to the local shoald over its unix socket with the Docker Engine API.

import { Command } from "commander";
import { API_VERSION, VERSION } from "../src/version.js";

function buildProgram(): Command {
  const program = new Command("shoal")
    .description("Manage a shoal swarm: nodes, networks and containers")
    .version(`shoal version ${VERSION}`, "-v, --version", "Print version information and quit");

  program
    .command("version")
    .description("Show the shoal version information")
    .action(() => {
      process.stdout.write(`Client:\n Version:     ${VERSION}\n API version: ${API_VERSION}\n`);
    });

  return program;
}

await buildProgram().parseAsync(process.argv);
