/**
 * Starting worker threads from a TypeScript entry under tsx and vitest, or from the compiled build.
 * A `.js` entry (dist/) starts as plain Node. A `.ts` entry is bundled once per process with esbuild
 * (our sources into one ES module, packages left to Node), so a worker loads plain JS instead of
 * registering tsx and compiling every module again: that is most of a guest's start-up time and
 * memory. Without esbuild it goes through the tsx bootstrap.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { Worker, type WorkerOptions } from 'node:worker_threads';

const BOOTSTRAP = new URL('./tsx-bootstrap.mjs', import.meta.url);
/** Bundles beside the project's node_modules, so that the packages they import resolve. */
const BUNDLES = new URL('../node_modules/.cache/ioasid-sandbox/', import.meta.url);
const bundled = new Map<string, URL | null>();

interface Esbuild {
  buildSync(options: Record<string, unknown>): { outputFiles: { contents: Uint8Array }[] };
}

/** The entry bundled into one ES module (cached per process), or null when esbuild is missing. */
function bundle(entry: URL): URL | null {
  const known = bundled.get(entry.href);
  if (known !== undefined) return known;
  let result: URL | null = null;
  try {
    const esbuild = createRequire(import.meta.url)('esbuild') as Esbuild;
    const { outputFiles } = esbuild.buildSync({
      entryPoints: [fileURLToPath(entry)],
      bundle: true,
      packages: 'external',
      platform: 'node',
      format: 'esm',
      target: 'node20',
      write: false,
      logLevel: 'silent',
    });
    const code = outputFiles[0].contents;
    // Named by content: processes that bundle the same sources share one file.
    const out = new URL(`${createHash('sha256').update(code).digest('hex').slice(0, 16)}.mjs`, BUNDLES);
    if (!existsSync(out)) {
      mkdirSync(BUNDLES, { recursive: true });
      const temporary = new URL(`${out.pathname}.${process.pid}.tmp`, 'file://');
      writeFileSync(temporary, code);
      renameSync(temporary, out);
    }
    result = out;
  } catch {
    result = null;
  }
  bundled.set(entry.href, result);
  return result;
}

/** The module `relative` (without extension) next to `from`, with `from`'s own extension. */
export function sibling(relative: string, from: string): URL {
  return new URL(`${relative}${from.endsWith('.ts') ? '.ts' : '.js'}`, from);
}

export function spawnWorker(entry: URL, options: WorkerOptions = {}): Worker {
  if (!entry.pathname.endsWith('.ts')) return new Worker(entry, options);
  const js = process.env.IOASID_SANDBOX_NO_BUNDLE ? null : bundle(entry);
  if (js) return new Worker(js, options);
  return new Worker(BOOTSTRAP, { ...options, argv: [entry.href, ...(options.argv ?? [])] });
}
