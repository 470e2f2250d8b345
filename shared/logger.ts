/**
 * Structured logs on stderr (stdout stays clean for --json), one binding set per VM. Sync
 * destinations everywhere: pino only flushes on exit on the main thread, and a worker that is
 * terminated would lose its async buffer (docs/development.md).
 */
import { threadId } from 'node:worker_threads';
import { type Logger, pino } from 'pino';

export type { Logger };

/** The levels LOG_LEVEL may name (pino's, and `silent`). */
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

/** LOG_LEVEL, `info` when unset or empty; throws naming the valid levels when it is none of them. */
export function logLevel(value = process.env.LOG_LEVEL): string {
  if (value === undefined || value === '') return 'info';
  if (!(LOG_LEVELS as readonly string[]).includes(value))
    throw new Error(`LOG_LEVEL=${value} is not a log level; use one of ${LOG_LEVELS.join(', ')}`);
  return value;
}

/** A logger at `level`, by default LOG_LEVEL's (which the CLI checks before anything starts). */
export function makeLogger(bindings: Record<string, unknown> = {}, level = logLevel()): Logger {
  return pino(
    { level, base: { pid: process.pid, thread: threadId, ...bindings } },
    pino.destination({ dest: 2, sync: true }),
  );
}
