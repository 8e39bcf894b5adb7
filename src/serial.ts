// Async jobs one after another, in the order they were asked for: each starts when the one before has
// settled, whether it succeeded or failed (a failure is its caller's, not the next job's).

export class Serial {
  private tail: Promise<unknown> = Promise.resolve();

  run<T>(f: () => Promise<T>): Promise<T> {
    const r = this.tail.then(f, f);
    // The tail only orders the jobs: a failure is its caller's (it gets `r`), so the next job starts anyway.
    this.tail = r.catch(() => undefined);
    return r;
  }
}
