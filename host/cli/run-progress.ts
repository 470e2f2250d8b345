/**
 * `run`'s progress on stderr: time elapsed over the run's duration and the faults raised so far.
 * Only for a person at a terminal: a pipe, or --json (a script reads stdout), gets none, so that
 * stderr stays the logs' alone.
 */
import { Presets, SingleBar } from 'cli-progress';

/** Whether `run` draws progress on `stream`. */
export function showsProgress(stream: { isTTY?: boolean }, json: boolean): boolean {
  return stream.isTTY === true && !json;
}

export interface RunProgress {
  /** The run's RunOptions.onProgress. */
  update: (elapsedMs: number, durationMs: number, faultsRaised: number) => void;
  stop: () => void;
}

export function runProgress(stream: NodeJS.WritableStream = process.stderr): RunProgress {
  const bar = new SingleBar(
    {
      // `duration` is cli-progress's own token (seconds since start), hence other names.
      format: 'run |{bar}| {runS}/{plannedS} s | {faults} faults raised',
      stream,
      hideCursor: true,
    },
    Presets.shades_classic,
  );
  let started = false;
  const seconds = (ms: number) => (ms / 1000).toFixed(1);
  return {
    update: (elapsedMs, durationMs, faultsRaised) => {
      const payload = { runS: seconds(elapsedMs), plannedS: seconds(durationMs), faults: faultsRaised };
      const value = Math.min(elapsedMs, durationMs);
      if (started) {
        bar.update(value, payload);
        return;
      }
      started = true;
      bar.start(durationMs, value, payload);
    },
    stop: () => {
      if (started) bar.stop();
    },
  };
}
