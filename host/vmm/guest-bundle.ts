/**
 * Where guest workers start from. From the compiled build (dist/) that is guest/worker.js itself.
 * From the TypeScript sources it is guest/worker.ts bundled with esbuild, packages and all, into one
 * ES module under node_modules/.cache/ioasid-sandbox/ (shared/worker-spawn.ts bundleEntry), built
 * when its sources change and found again by every process after: a worker loads one file instead of registering tsx,
 * compiling the guest's modules and resolving pino's. Without esbuild, or with
 * IOASID_SANDBOX_NO_BUNDLE set, it is guest/worker.ts, which spawnWorker starts through tsx.
 */
import { bundleEntry, sibling } from '../../shared/worker-spawn.ts';

const SOURCE = sibling('../../guest/worker', import.meta.url);

/**
 * The guest worker's entry, for spawnWorker. Synchronous: the first call in a process finds the
 * bundle of unchanged sources (a few ms) or builds it (esbuild's buildSync, ~100 ms); later calls
 * return the same URL.
 */
export function guestWorkerEntry(): URL {
  if (!SOURCE.pathname.endsWith('.ts') || process.env.IOASID_SANDBOX_NO_BUNDLE) return SOURCE;
  return bundleEntry(SOURCE, { packages: 'bundle' }) ?? SOURCE;
}
