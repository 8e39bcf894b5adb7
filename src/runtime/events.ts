// `docker events`: what happened to this daemon's containers, images and networks, as dockerd's
// events.Message (Type, Action, Actor, scope, time, timeNano), kept for a while so that `--since` can
// replay them, and sent to every subscriber as it happens. The parts that act emit: the container
// lifecycle, rename/pause/unpause, the image service, and the engine's network routes.

/** docker's events.Message. */
export interface EngineEvent {
  Type: "container" | "image" | "network";
  Action: string;
  Actor: { ID: string; Attributes: Record<string, string> };
  scope: "local" | "swarm";
  /** Unix seconds. */
  time: number;
  timeNano: number;
  /** The fields of old clients (containers and images): status, id, from. */
  status?: string;
  id?: string;
  from?: string;
}

/** How many events are kept for `--since` (dockerd keeps 256). */
const KEPT = 1024;

export class EventLog {
  private readonly kept: EngineEvent[] = [];
  private readonly subscribers = new Set<(e: EngineEvent) => void>();

  constructor(private readonly nowMs: () => number = Date.now) {}

  emit(type: EngineEvent["Type"], action: string, id: string, attributes: Record<string, string> = {}): void {
    const ms = this.nowMs();
    const e: EngineEvent = {
      Type: type,
      Action: action,
      Actor: { ID: id, Attributes: attributes },
      scope: "local",
      time: Math.floor(ms / 1000),
      timeNano: Math.floor(ms) * 1_000_000,
    };
    if (type !== "network") {
      e.status = action;
      e.id = id;
      if (attributes.image) e.from = attributes.image;
    }
    this.kept.push(e);
    if (this.kept.length > KEPT) this.kept.shift();
    for (const s of [...this.subscribers]) s(e);
  }

  /** The events kept whose time is at or after `sinceMs`, oldest first. */
  since(sinceMs: number): EngineEvent[] {
    return this.kept.filter((e) => e.timeNano / 1e6 >= sinceMs);
  }

  /** Calls `f` with every event from now on; the function returned stops it. */
  subscribe(f: (e: EngineEvent) => void): () => void {
    this.subscribers.add(f);
    return () => this.subscribers.delete(f);
  }
}
