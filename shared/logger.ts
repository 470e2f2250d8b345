/**
 * Structured logs on stderr (stdout stays clean for --json), one binding set per VM. Sync
 * destinations everywhere: pino only flushes on exit on the main thread, and a worker that is
 * terminated would lose its async buffer (stack-notes.md 5).
 */
import { threadId } from 'node:worker_threads';
import { type Logger, pino } from 'pino';

export type { Logger };

export function makeLogger(bindings: Record<string, unknown> = {}): Logger {
  return pino(
    { level: process.env.LOG_LEVEL ?? 'info', base: { pid: process.pid, thread: threadId, ...bindings } },
    pino.destination({ dest: 2, sync: true }),
  );
}
