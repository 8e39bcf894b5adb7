// Commander glue that makes shoal's commands behave like docker's cobra commands: docker-style help, the
// same argument-count and flag errors, the same exit codes (1 for usage and runtime errors, 125 for flag
// errors), and "changed" flags (a flag counts only when given on the command line).

import { Command, type CommanderError, Option } from "commander";
import { CliError, EngineClient, resolveHost } from "./client.js";
import { FlagValueError } from "./flags.js";

export type FlagKind = "bool" | "optbool" | "string" | "list" | "custom";

export interface FlagSpec {
  /** Long name without dashes ("data-path-port"). */
  long: string;
  /** One letter, without the dash. */
  short?: string;
  /** The value's type as docker's help shows it ("string", "uint32", "filter"); none for booleans. */
  type?: string;
  kind: FlagKind;
  description: string;
  /** What docker's help prints as "(default ...)". */
  defaultText?: string;
  /** For "custom" and "list" flags: turn the text into a value; throw FlagValueError when it does not parse. */
  parse?: (value: string) => unknown;
}

export type ArgRule = { kind: "none" } | { kind: "exact"; n: number } | { kind: "min"; n: number };

export interface Invocation {
  args: string[];
  /** A flag's value, by its long name (undefined when not given and without default). */
  flag<T = unknown>(long: string): T;
  /** Whether the flag was given on the command line (pflag's Changed). */
  changed(long: string): boolean;
  /** The Engine API client for -H / $SHOAL_HOST / $DOCKER_HOST. */
  client(): EngineClient;
  out(text: string): void;
  /** The command's help text (docker prints it for `docker swarm update` without flags). */
  help(): string;
}

export interface LeafSpec {
  name: string;
  aliases?: string[];
  /** What follows the command path in the usage line ("[OPTIONS] NODE [NODE...]"). */
  use: string;
  short: string;
  args: ArgRule;
  flags?: FlagSpec[];
  /** Appended to the help text (e.g. what --format supports). */
  notes?: string;
  /** false: flags end at the first argument (docker run/exec: the rest is the container's command line). */
  interspersed?: boolean;
  run(inv: Invocation): Promise<void>;
}

const camel = (long: string): string => long.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());

/** "shoal node ls" */
export function commandPath(cmd: Command): string {
  const names: string[] = [];
  for (let c: Command | null = cmd; c; c = c.parent) names.unshift(c.name());
  return names.join(" ");
}

const USE = new WeakMap<Command, string>();
const FLAGS = new WeakMap<Command, FlagSpec[]>();
const NOTES = new WeakMap<Command, string>();

/** cobra's UseLine: "shoal node rm [OPTIONS] NODE [NODE...]" */
export function useLine(cmd: Command): string {
  const use = USE.get(cmd);
  return use ? `${commandPath(cmd)} ${use}` : commandPath(cmd);
}

function flagDisplay(f: FlagSpec): string {
  return f.short ? `-${f.short}, --${f.long}` : `--${f.long}`;
}

/** Help text in docker's layout. */
export function dockerHelp(cmd: Command): string {
  const lines: string[] = [];
  const groups = cmd.commands.filter((c) => !(c as unknown as { _hidden?: boolean })._hidden);
  const isGroup = groups.length > 0;
  const root = !cmd.parent;
  lines.push(
    `Usage:  ${root ? `${cmd.name()} [OPTIONS] COMMAND` : isGroup ? `${commandPath(cmd)} COMMAND` : useLine(cmd)}`,
  );
  lines.push("", cmd.description());
  const aliases = cmd.aliases();
  if (aliases.length > 0) {
    const parent = commandPath(cmd.parent!);
    lines.push("", "Aliases:", `  ${[cmd.name(), ...aliases].map((a) => `${parent} ${a}`).join(", ")}`);
  }
  if (isGroup) {
    lines.push("", "Commands:");
    const width = Math.max(...groups.map((c) => c.name().length)) + 2;
    for (const c of [...groups].sort((a, b) => (a.name() < b.name() ? -1 : 1))) {
      lines.push(`  ${c.name().padEnd(Math.max(width, 12))}${c.description()}`);
    }
  }
  const flags = [...(FLAGS.get(cmd) ?? [])].sort((a, b) => (a.long < b.long ? -1 : 1));
  if (flags.length > 0) {
    const left = flags.map((f) => `  ${f.short ? `-${f.short}, ` : "    "}--${f.long}${f.type ? ` ${f.type}` : ""}`);
    const width = Math.max(...left.map((l) => l.length)) + 3;
    lines.push("", root ? "Global Options:" : "Options:");
    flags.forEach((f, i) => {
      const def = f.defaultText !== undefined ? ` (default ${f.defaultText})` : "";
      lines.push(`${left[i]!.padEnd(width)}${f.description}${def}`);
    });
  }
  const notes = NOTES.get(cmd);
  if (notes) lines.push("", notes);
  if (isGroup) lines.push("", `Run '${commandPath(cmd)} COMMAND --help' for more information on a command.`);
  return `${lines.join("\n")}\n`;
}

function usageError(cmd: Command, message: string, exitCode: number, see: "Run" | "See" = "Run"): CliError {
  return new CliError(
    `${message}\n\nUsage:  ${useLine(cmd)}\n\n${see} '${commandPath(cmd)} --help' for more information`,
    exitCode,
  );
}

function checkArgs(cmd: Command, rule: ArgRule, args: string[]): void {
  const bin = cmd.parent ? commandPath(cmd).split(" ")[0] : cmd.name();
  const path = commandPath(cmd);
  const plural = (n: number): string => (n === 1 ? "argument" : "arguments");
  if (rule.kind === "none" && args.length > 0) {
    throw usageError(cmd, `${bin}: '${path}' accepts no arguments`, 1);
  }
  if (rule.kind === "exact" && args.length !== rule.n) {
    throw usageError(cmd, `${bin}: '${path}' requires ${rule.n} ${plural(rule.n)}`, 1);
  }
  if (rule.kind === "min" && args.length < rule.n) {
    throw usageError(cmd, `${bin}: '${path}' requires at least ${rule.n} ${plural(rule.n)}`, 1, "See");
  }
}

function addFlag(cmd: Command, f: FlagSpec): void {
  const placeholder = f.kind === "bool" ? "" : f.kind === "optbool" ? " [bool]" : ` <${f.type ?? "string"}>`;
  const opt = new Option(`${f.short ? `-${f.short}, ` : ""}--${f.long}${placeholder}`, f.description);
  const parseOne = (value: string): unknown => {
    try {
      return f.parse ? f.parse(value) : value;
    } catch (e) {
      if (e instanceof FlagValueError) {
        throw usageError(
          cmd,
          `invalid argument ${JSON.stringify(value)} for "${flagDisplay(f)}" flag: ${e.message}`,
          125,
        );
      }
      throw e;
    }
  };
  if (f.kind === "list") {
    opt.argParser((value: string, previous: unknown) => [
      ...((previous as unknown[] | undefined) ?? []),
      parseOne(value),
    ]);
  } else if (f.kind === "optbool") {
    opt.argParser((value: string) => {
      if (["1", "t", "T", "TRUE", "true", "True"].includes(value)) return true;
      if (["0", "f", "F", "FALSE", "false", "False"].includes(value)) return false;
      throw usageError(
        cmd,
        `invalid argument ${JSON.stringify(value)} for "${flagDisplay(f)}" flag: strconv.ParseBool: parsing ${JSON.stringify(value)}: invalid syntax`,
        125,
      );
    });
  } else if (f.kind === "custom") {
    opt.argParser((value: string) => parseOne(value));
  }
  cmd.addOption(opt);
}

/** Where commander's own errors become docker's texts and exit codes. */
function mapCommanderError(cmd: Command, err: CommanderError): CliError {
  if (err.exitCode === 0 || err.code === "commander.helpDisplayed" || err.code === "commander.version") {
    return new CliError("", err.exitCode);
  }
  if (err.code === "commander.unknownOption") {
    const flag = /unknown option '([^']+)'/.exec(err.message)?.[1] ?? "";
    const msg = flag.startsWith("--")
      ? `unknown flag: ${flag.split("=")[0]}`
      : `unknown shorthand flag: '${flag[1]}' in ${flag}`;
    return usageError(cmd, msg, 125);
  }
  if (err.code === "commander.optionMissingArgument") {
    const flags = /option '([^']+)' argument missing/.exec(err.message)?.[1] ?? "";
    const long = /--([\w-]+)/.exec(flags)?.[1];
    const short = /(?:^|\s)-(\w)\b/.exec(flags)?.[1];
    const typedShort = short !== undefined && process.argv.includes(`-${short}`) && !process.argv.includes(`--${long}`);
    return usageError(
      cmd,
      typedShort ? `flag needs an argument: '${short}' in -${short}` : `flag needs an argument: --${long}`,
      125,
    );
  }
  return usageError(cmd, err.message.replace(/^error: /, ""), 125);
}

/** Every command gets docker's error mapping (commander copies settings at creation, so do it per command). */
function installErrorMapping(cmd: Command): void {
  cmd.exitOverride((err) => {
    throw mapCommanderError(cmd, err);
  });
  for (const c of cmd.commands) installErrorMapping(c);
}

export interface Program {
  command: Command;
  /** Parse and run; resolves to the exit code. Errors are printed here. */
  run(argv: string[]): Promise<number>;
}

function out(text: string): void {
  process.stdout.write(text);
}

/** A command group ("swarm", "node"): help without a subcommand, docker's error for an unknown one. */
export function group(parent: Command, name: string, short: string): Command {
  const cmd = parent.command(name).description(short).allowExcessArguments(true).helpCommand(false);
  cmd.action((_opts: unknown, self: Command) => {
    if (self.args.length === 0) {
      // docker shows a group's help on stderr when no subcommand is given (and exits 0)
      process.stderr.write(dockerHelp(self));
      return;
    }
    throw new CliError(
      `${commandPath(self).split(" ")[0]}: unknown command: ${commandPath(self)} ${self.args[0]}\n\nUsage:  ${commandPath(self)}\n\nRun '${commandPath(self)} --help' for more information`,
    );
  });
  return cmd;
}

/** A command that does something. */
export function leaf(parent: Command, spec: LeafSpec): Command {
  const cmd = parent.command(spec.name).description(spec.short).allowExcessArguments(true);
  for (const a of spec.aliases ?? []) cmd.alias(a);
  USE.set(cmd, spec.use);
  FLAGS.set(cmd, spec.flags ?? []);
  if (spec.notes) NOTES.set(cmd, spec.notes);
  if (spec.interspersed === false) cmd.passThroughOptions();
  // A command with its own -h (run --hostname) keeps only --help, as docker's does.
  if ((spec.flags ?? []).some((f) => f.short === "h")) cmd.helpOption("--help", "Print usage");
  for (const f of spec.flags ?? []) addFlag(cmd, f);
  cmd.action(async (_opts: unknown, self: Command) => {
    checkArgs(self, spec.args, self.args);
    let client: EngineClient | undefined;
    const getClient = (): EngineClient => {
      client ??= new EngineClient(resolveHost(self.optsWithGlobals().host as string | undefined));
      return client;
    };
    // Like the docker CLI, ping once before the command runs. Its failure is safe to ignore here: the
    // command's first real call meets the same daemon and reports what is wrong in docker's words.
    await getClient()
      .ping()
      .catch(() => undefined);
    const opts = self.opts() as Record<string, unknown>;
    await spec.run({
      args: [...self.args],
      flag: <T>(long: string) => opts[camel(long)] as T,
      changed: (long) => self.getOptionValueSource(camel(long)) === "cli",
      client: getClient,
      out,
      help: () => dockerHelp(self),
    });
  });
  return cmd;
}

/** The root command with the global flags; add groups and leaves to `.command`, then `run`. */
export function createProgram(
  name: string,
  description: string,
  versionText: string,
  globalFlags: FlagSpec[],
): Program {
  const command = new Command(name)
    .description(description)
    .enablePositionalOptions()
    .allowExcessArguments(true)
    .configureOutput({ outputError: () => {} })
    .configureHelp({ formatHelp: (cmd) => dockerHelp(cmd as Command) })
    .version(versionText, "-v, --version", "Print version information and quit")
    .helpCommand("help [command]", "Help about any command");
  USE.set(command, "[OPTIONS] COMMAND [ARG...]");
  FLAGS.set(command, [
    ...globalFlags,
    { long: "version", short: "v", kind: "bool", description: "Print version information and quit" },
  ]);
  for (const f of globalFlags) addFlag(command, f);
  command.action((_opts: unknown, self: Command) => {
    if (self.args.length === 0) {
      // docker shows a group's help on stderr when no subcommand is given (and exits 0)
      process.stderr.write(dockerHelp(self));
      return;
    }
    throw new CliError(
      `${name}: unknown command: ${name} ${self.args[0]}\n\nRun '${name} --help' for more information`,
    );
  });
  return {
    command,
    async run(argv: string[]): Promise<number> {
      installErrorMapping(command);
      try {
        await command.parseAsync(argv);
        return 0;
      } catch (e) {
        if (e instanceof CliError) {
          if (e.message) process.stderr.write(`${e.message}\n`);
          return e.exitCode;
        }
        process.stderr.write(`${e instanceof Error ? e.message : String(e)}\n`);
        return 1;
      }
    },
  };
}
