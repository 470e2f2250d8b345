/**
 * Starting worker threads from a TypeScript entry under tsx and vitest, or from the compiled build.
 * A `.ts` entry goes through the tsx bootstrap; a `.js` entry (dist/) starts as plain Node.
 */
import { Worker, type WorkerOptions } from 'node:worker_threads';

const BOOTSTRAP = new URL('./tsx-bootstrap.mjs', import.meta.url);

/** The module `relative` (without extension) next to `from`, with `from`'s own extension. */
export function sibling(relative: string, from: string): URL {
  return new URL(`${relative}${from.endsWith('.ts') ? '.ts' : '.js'}`, from);
}

export function spawnWorker(entry: URL, options: WorkerOptions = {}): Worker {
  if (!entry.pathname.endsWith('.ts')) return new Worker(entry, options);
  return new Worker(BOOTSTRAP, { ...options, argv: [entry.href, ...(options.argv ?? [])] });
}
