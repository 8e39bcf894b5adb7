// What container calls answer when shoald has no containerd: the same one line shoald said at start, with
// the fix, as a 503 (nothing is changed).

import { ApiError } from "../api/errors.js";
import type { ContainerBackend } from "./types.js";

export function unavailableBackend(message: string): ContainerBackend {
  const fail = (): Promise<never> => Promise.reject(new ApiError(503, message));
  return {
    containerCreate: fail,
    containerStart: fail,
    containerStop: fail,
    containerKill: fail,
    containerWait: fail,
    containerRemove: fail,
    containerList: fail,
    containerInspect: fail,
    containerLogs: fail,
    containerAttach: fail,
    execCreate: fail,
    execStart: fail,
    execInspect: fail,
    containerTop: fail,
    containerRename: fail,
    containerPause: fail,
    containerUnpause: fail,
    containerPrune: fail,
    containerStats: fail,
    containerCounts: () => ({ total: 0, running: 0, paused: 0, stopped: 0 }),
  };
}
