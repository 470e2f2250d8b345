/**
 * Starting worker threads from a TypeScript entry under tsx and vitest, or from the compiled build.
 * A `.js` entry (dist/) starts as plain Node. A `.ts` entry is bundled once per process with esbuild
 * into one ES module (bundleEntry), so a worker loads plain JS instead of registering tsx and
 * compiling every module again: that is most of a guest's start-up time and memory. Without esbuild
 * it goes through the tsx bootstrap, with a warning.
 */
import { createHash, randomBytes } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { createRequire } from 'node:module';
import { basename, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { threadId, Worker, type WorkerOptions } from 'node:worker_threads';

const BOOTSTRAP = new URL('./tsx-bootstrap.mjs', import.meta.url);
/** Bundles beside the project's node_modules, so that the packages they leave out resolve. */
const BUNDLES = new URL('../node_modules/.cache/ioasid-sandbox/', import.meta.url);
/** Files there that no process has used for this long (old sources, dead writers' temporaries) go. */
const STALE_MS = 24 * 3600_000;
/**
 * Bundled CommonJS packages (pino) `require` Node's own modules, and an ES module has no `require`.
 * Their `__dirname` is only read to find pino's transport workers, which the guest does not use
 * (shared/logger.ts writes to fd 2 synchronously).
 */
const REQUIRE_SHIM =
  "import { createRequire as __bundleRequire } from 'node:module'; const require = __bundleRequire(import.meta.url);";

export interface BundleOptions {
  /**
   * 'bundle' folds the entry's packages into the file too: a worker then reads one file instead of
   * resolving and compiling pino's few dozen CommonJS modules, which costs a quarter of the
   * thread's own start. Only for entries whose packages survive bundling (comlink; pino without
   * transports). 'external', the default, leaves them to Node.
   */
  packages?: 'bundle' | 'external';
}

interface Esbuild {
  version: string;
  buildSync(options: Record<string, unknown>): {
    outputFiles: { path: string; contents: Uint8Array }[];
    metafile: { inputs: Record<string, unknown> };
  };
}

/**
 * What a bundle was built from (`<entry>-<packages>.inputs.json` beside it): every input file, a
 * hash of their contents and of the esbuild version, and the bundle's name. A process whose inputs
 * hash the same reuses the bundle without building (reading and hashing them takes a few ms, a
 * build ~100 ms).
 */
interface BundleManifest {
  inputs: string[];
  hash: string;
  bundle: string;
}

/** The files the project lives in: esbuild's metafile names inputs relative to it. */
const ROOT = fileURLToPath(new URL('..', import.meta.url));

/** Per process: each entry's bundle, or null once bundling failed. */
const bundled = new Map<string, URL | null>();

/**
 * The entry bundled into one ES module with a linked source map (`--enable-source-maps` or
 * NODE_OPTIONS=--enable-source-maps maps a worker's traces to the .ts files), or null when esbuild
 * cannot be loaded or fails (warned once). On the first call in each process: the bundle a manifest
 * names if its inputs hash the same (a few ms), else built with esbuild's buildSync (~100 ms); later
 * calls return the same URL. Files are named by the hash of their
 * content, so processes that bundle the same sources share one file, and each is written under a
 * name of its own, then renamed into place: nobody ever reads a half-written bundle.
 */
export function bundleEntry(entry: URL, options: BundleOptions = {}): URL | null {
  const packages = options.packages ?? 'external';
  const key = `${packages} ${entry.href}`;
  const known = bundled.get(key);
  // Checked each time: another process's sweep may have taken a long-unused bundle; then rebuild.
  if (known === null || (known && existsSync(known))) return known;
  let result: URL | null = null;
  try {
    const esbuild = createRequire(import.meta.url)('esbuild') as Esbuild;
    const manifestFile = new URL(`${basename(fileURLToPath(entry), '.ts')}-${packages}.inputs.json`, BUNDLES);
    result = unchangedBundle(manifestFile, esbuild.version);
    if (result) {
      bundled.set(key, result);
      return result;
    }
    const { outputFiles, metafile } = esbuild.buildSync({
      absWorkingDir: ROOT,
      metafile: true,
      entryPoints: [fileURLToPath(entry)],
      bundle: true,
      packages: packages === 'external' ? 'external' : undefined,
      banner: packages === 'bundle' ? { js: REQUIRE_SHIM } : undefined,
      platform: 'node',
      format: 'esm',
      target: 'node20',
      // The map's sources are relative to the bundle's directory; the .ts files are read from the
      // tree when a trace is mapped.
      outdir: fileURLToPath(BUNDLES),
      sourcemap: 'external',
      sourcesContent: false,
      write: false,
      logLevel: 'silent',
    });
    const map = outputFiles.find((file) => file.path.endsWith('.map'));
    const code = outputFiles.find((file) => !file.path.endsWith('.map'));
    if (!map || !code) throw new Error('esbuild produced no bundle');
    const hash = createHash('sha256').update(code.contents).update(map.contents).digest('hex').slice(0, 16);
    const name = `${basename(fileURLToPath(entry), '.ts')}-${packages}-${hash}.mjs`;
    result = writeBundle(name, code.contents, map.contents);
    const inputs = Object.keys(metafile.inputs).map((input) => resolve(ROOT, input));
    const manifest: BundleManifest = { inputs, hash: inputsHash(inputs, esbuild.version), bundle: name };
    placeFile(manifestFile, Buffer.from(JSON.stringify(manifest)));
  } catch (error) {
    process.emitWarning(
      `cannot bundle ${fileURLToPath(entry)} (${(error as Error).message}); its workers start through tsx`,
      { code: 'IOASID_SANDBOX_NO_BUNDLE' },
    );
  }
  bundled.set(key, result);
  return result;
}

/**
 * The bundle a manifest names, if its inputs still hash the same and it is there; else null. Any
 * failure (no manifest yet, an input gone, a bundle swept) means: build.
 */
function unchangedBundle(manifestFile: URL, esbuildVersion: string): URL | null {
  try {
    const manifest = JSON.parse(readFileSync(manifestFile, 'utf8')) as BundleManifest;
    if (inputsHash(manifest.inputs, esbuildVersion) !== manifest.hash) return null;
    const out = new URL(manifest.bundle, BUNDLES);
    const now = new Date();
    // Fresh again for other processes' sweeps; throws if either was swept.
    for (const file of [new URL(`${manifest.bundle}.map`, BUNDLES), out]) utimesSync(file, now, now);
    return out;
  } catch {
    return null;
  }
}

function inputsHash(inputs: readonly string[], esbuildVersion: string): string {
  const hash = createHash('sha256').update(esbuildVersion);
  for (const input of inputs) hash.update(input).update(readFileSync(input));
  return hash.digest('hex');
}

/** Write `file` whole under a name of its own, then rename it into place. */
function placeFile(file: URL, contents: Uint8Array): void {
  const unique = `${process.pid}-${threadId}-${randomBytes(4).toString('hex')}.tmp`;
  const temporary = `${fileURLToPath(file)}.${unique}`;
  writeFileSync(temporary, contents);
  renameSync(temporary, file);
}

/** Write the bundle `name` and its map into BUNDLES unless they are there already. */
function writeBundle(name: string, code: Uint8Array, map: Uint8Array): URL {
  const out = new URL(name, BUNDLES);
  const mapFile = new URL(`${name}.map`, BUNDLES);
  const now = new Date();
  try {
    // There already: fresh again for other processes' sweeps.
    for (const file of [mapFile, out]) utimesSync(file, now, now);
    return out;
  } catch {
    // Not there yet, or swept meanwhile.
  }
  mkdirSync(BUNDLES, { recursive: true });
  sweep(now.getTime());
  // The map first: once the bundle is visible, so is what it points at.
  placeFile(mapFile, map);
  placeFile(out, Buffer.concat([code, Buffer.from(`//# sourceMappingURL=${name}.map\n`)]));
  return out;
}

/** Remove what nobody has used for STALE_MS: bundles of older sources, dead writers' temporaries. */
function sweep(now: number): void {
  for (const name of readdirSync(BUNDLES)) {
    const file = new URL(name, BUNDLES);
    try {
      if (now - statSync(file).mtimeMs > STALE_MS) rmSync(file, { force: true });
    } catch {
      // Swept by another process meanwhile.
    }
  }
}

/** The module `relative` (without extension) next to `from`, with `from`'s own extension. */
export function sibling(relative: string, from: string): URL {
  return new URL(`${relative}${from.endsWith('.ts') ? '.ts' : '.js'}`, from);
}

/**
 * A worker on `entry`: a `.js` or `.mjs` file as it is, a `.ts` file from its bundle (bundleEntry,
 * packages external), or through the tsx bootstrap when there is none or IOASID_SANDBOX_NO_BUNDLE
 * is set.
 */
export function spawnWorker(entry: URL, options: WorkerOptions = {}): Worker {
  if (!entry.pathname.endsWith('.ts')) return plainWorker(entry, options);
  const js = process.env.IOASID_SANDBOX_NO_BUNDLE ? null : bundleEntry(entry);
  if (js) return plainWorker(js, options);
  return new Worker(BOOTSTRAP, { ...options, argv: [entry.href, ...(options.argv ?? [])] });
}

/** Node options that take a value; tsx's preloads and any eval are not for a worker on plain JS. */
const WITH_VALUE = new Set(['--require', '-r', '--import', '--loader', '--experimental-loader']);
/** The main script's own, with their value: a worker given an --input-type refuses its file. */
const EVAL = new Set(['--eval', '-e', '--print', '-p', '--input-type']);
/** This process's execArgv without tsx (computed once), or null when it has no tsx to drop. */
let leanExecArgv: string[] | null | undefined;

/**
 * A worker on plain JavaScript. A worker inherits its parent's execArgv, and a process under the tsx
 * CLI (`tsx host/cli/main.ts`) has tsx's preloads in it: every worker would register tsx again,
 * which costs twice the thread's own start (64 bare threads: 3.2 s against 1.1 s). The rest of
 * execArgv is kept; should Node refuse it for a worker, the default stands.
 */
function plainWorker(entry: URL, options: WorkerOptions): Worker {
  leanExecArgv ??= withoutTsx(process.execArgv);
  if (options.execArgv === undefined && leanExecArgv) {
    try {
      return new Worker(entry, { ...options, execArgv: leanExecArgv });
    } catch (error) {
      if ((error as { code?: string }).code !== 'ERR_WORKER_INVALID_EXEC_ARGV') throw error;
      leanExecArgv = null;
    }
  }
  return new Worker(entry, options);
}

function withoutTsx(execArgv: readonly string[]): string[] | null {
  const kept: string[] = [];
  let dropped = false;
  for (let i = 0; i < execArgv.length; i++) {
    const [flag, inline] = execArgv[i].split(/=(.*)/s, 2);
    if (EVAL.has(flag)) {
      if (inline === undefined) i++;
    } else if (WITH_VALUE.has(flag)) {
      const value = inline ?? execArgv[++i] ?? '';
      if (/(^|[\\/])tsx([\\/]|$)/.test(value)) dropped = true;
      else kept.push(flag, value);
    } else {
      kept.push(execArgv[i]);
    }
  }
  return dropped ? kept : null;
}
