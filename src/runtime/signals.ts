// Signals by name and number, as docker parses them (--signal, --stop-signal, kill -s).

const SIGNAL_NUMBERS: Record<string, number> = {
  HUP: 1,
  INT: 2,
  QUIT: 3,
  ILL: 4,
  TRAP: 5,
  ABRT: 6,
  IOT: 6,
  BUS: 7,
  FPE: 8,
  KILL: 9,
  USR1: 10,
  SEGV: 11,
  USR2: 12,
  PIPE: 13,
  ALRM: 14,
  TERM: 15,
  STKFLT: 16,
  CHLD: 17,
  CONT: 18,
  STOP: 19,
  TSTP: 20,
  TTIN: 21,
  TTOU: 22,
  URG: 23,
  XCPU: 24,
  XFSZ: 25,
  VTALRM: 26,
  PROF: 27,
  WINCH: 28,
  IO: 29,
  PWR: 30,
  SYS: 31,
};

/** docker's signal.ParseSignal: "SIGTERM", "TERM", "term" or "15"; undefined if it is none of those. */
export function parseSignal(s: string): number | undefined {
  if (/^[0-9]+$/.test(s)) {
    const n = Number(s);
    return n >= 1 && n <= 64 ? n : undefined;
  }
  return SIGNAL_NUMBERS[s.toUpperCase().replace(/^SIG/, "")];
}

/** Node's name for a signal number (process.kill takes numbers too, but names read better in logs). */
export function signalNumberOf(name: NodeJS.Signals | null): number {
  if (name === null) return 0;
  return SIGNAL_NUMBERS[name.replace(/^SIG/, "")] ?? 0;
}
