/**
 * Checks before anything starts: the environment every command reads, and the files a run will
 * write. A failure is bad input (exit 2) that says what to set instead; no worker has been spawned
 * and no report is lost when one fails.
 */
import { closeSync, openSync, statSync, unlinkSync } from 'node:fs';
import { logLevel } from '../../shared/logger.ts';
import { parsePlantedBugs } from '../vmm/plant.ts';
import { DEFAULT_DURATION_MS } from '../vmm/sandbox.ts';
import type { RunContext } from '../vmm/topology-file.ts';

export class PreflightError extends Error {
  override readonly name = 'PreflightError';
}

/** LOG_LEVEL (read by every logger, the guests' too) and IOASID_SANDBOX_PLANT. */
export function checkEnvironment(env: NodeJS.ProcessEnv = process.env): void {
  try {
    logLevel(env.LOG_LEVEL);
  } catch (error) {
    throw new PreflightError((error as Error).message);
  }
  try {
    parsePlantedBugs(env.IOASID_SANDBOX_PLANT);
  } catch (error) {
    throw new PreflightError(`${(error as Error).message}; unset it for a normal run`);
  }
}

/**
 * `--trace <file>` is written when the run ends: a path that cannot be written would lose the
 * whole run's trace, so it is opened for writing now. A file that did not exist is removed again
 * (a run that fails leaves nothing behind); one that did is left as it was until the run ends.
 */
export function checkTraceTarget(file: string): void {
  let existed = false;
  try {
    const stat = statSync(file);
    existed = true;
    if (!stat.isFile())
      throw new PreflightError(`--trace ${file}: not a regular file; name a file to write the trace to`);
  } catch (error) {
    if (error instanceof PreflightError) throw error;
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw cannotWrite(file, error);
  }
  let fd: number;
  try {
    fd = openSync(file, 'a');
  } catch (error) {
    throw cannotWrite(file, error);
  }
  closeSync(fd);
  if (!existed) unlinkSync(file);
}

function cannotWrite(file: string, error: unknown): PreflightError {
  const code = (error as NodeJS.ErrnoException).code ?? String(error);
  return new PreflightError(
    `--trace ${file}: cannot write it (${code}); name a file in a directory that exists and is writable`,
  );
}

/** What a topology is checked against for a run of `--duration` (or the default duration). */
export function runContext(durationMs: number | undefined): RunContext {
  return { durationMs: durationMs ?? DEFAULT_DURATION_MS, durationFromFlag: durationMs !== undefined };
}
