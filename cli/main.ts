#!/usr/bin/env node
// shoal: the command line. It talks to the local shoald over its unix socket with the Docker Engine API,
// sending what the docker CLI sends and printing what it prints (with "shoal" in place of "docker").

import { VERSION } from "../src/version.js";
import { createProgram } from "./command.js";
import { addContainerCommands } from "./commands/container.js";
import { addImageCommands } from "./commands/image.js";
import { addNetworkCommands } from "./commands/network.js";
import { addNodeCommands } from "./commands/node.js";
import { addSwarmCommands } from "./commands/swarm.js";
import { addSystemCommands } from "./commands/system.js";

export function buildProgram(): ReturnType<typeof createProgram> {
  const program = createProgram(
    "shoal",
    "Manage a shoal swarm: nodes, networks and containers",
    `shoal version ${VERSION}`,
    [
      {
        long: "host",
        short: "H",
        type: "string",
        kind: "string",
        description:
          "Daemon socket to connect to (unix:///path.sock; default $SHOAL_HOST, else $DOCKER_HOST if unix://, else unix:///run/shoal/shoald.sock)",
      },
    ],
  );
  addSystemCommands(program.command);
  addNodeCommands(program.command);
  addSwarmCommands(program.command);
  addNetworkCommands(program.command);
  addContainerCommands(program.command);
  addImageCommands(program.command);
  return program;
}

// `shoal node ls | head -1`: a reader that goes away early is not an error.
process.stdout.on("error", (err: NodeJS.ErrnoException) => {
  if (err.code === "EPIPE") process.exit(process.exitCode ?? 0);
  throw err;
});

process.exitCode = await buildProgram().run(process.argv);
