// The guest's bundle: built once per process, one self-contained ES module that a worker starts from
// and whose guest answers the control plane; builders in several processes at once never expose a
// half-written file; a source esbuild cannot build falls back to tsx with a warning.
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { isBuiltin } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterAll, describe, expect, test } from 'vitest';
import { guestWorkerEntry } from '../../../host/vmm/guest-bundle.ts';
import { Sandbox } from '../../../host/vmm/sandbox.ts';
import { parseTopology } from '../../../host/vmm/topology.ts';
import { bundleEntry } from '../../../shared/worker-spawn.ts';

const ROOT = fileURLToPath(new URL('../../..', import.meta.url));
const BUNDLES = join(ROOT, 'node_modules/.cache/ioasid-sandbox');
const scratch = mkdtempSync(join(tmpdir(), 'guest-bundle-test-'));

afterAll(() => {
  rmSync(scratch, { recursive: true, force: true });
  // The bundles of this file's throwaway entries.
  for (const name of readdirSync(BUNDLES)) if (name.startsWith('racer-')) rmSync(join(BUNDLES, name));
});

/** Run `code` (an ES module, under tsx) in a process of its own; its stdout. */
function runNode(code: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (chunk) => {
      out += chunk;
    });
    child.stderr.on('data', (chunk) => {
      err += chunk;
    });
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`exit ${code}: ${err}`))));
  });
}

describe('guest bundle', () => {
  test('is built once per process, holds its packages, and its workers answer the control plane', async () => {
    const entry = guestWorkerEntry();
    expect(entry.protocol).toBe('file:');
    expect(fileURLToPath(entry).startsWith(BUNDLES)).toBe(true);
    expect(entry.pathname).toMatch(/\/worker-bundle-[0-9a-f]{16}\.mjs$/);
    // The same URL without building again.
    expect(guestWorkerEntry()).toBe(entry);
    const code = readFileSync(entry, 'utf8');
    // comlink and pino are inside: only Node's own modules are imported.
    const imports = [...code.matchAll(/^import .* from "([^"]+)";$/gm)].map((m) => m[1]);
    expect(imports.length).toBeGreaterThan(0);
    expect(imports.filter((specifier) => !isBuiltin(specifier))).toEqual([]);
    const mapName = code.match(/\/\/# sourceMappingURL=(\S+)\n$/)?.[1];
    const map = JSON.parse(readFileSync(new URL(mapName ?? 'missing', entry), 'utf8')) as {
      sources: string[];
    };
    expect(map.sources.some((source) => source.endsWith('guest/guest-vm.ts'))).toBe(true);

    // Launch boots the guest and starts its workload over comlink; workloadsDone asks its stats.
    const sandbox = new Sandbox(
      parseTopology(`name: bundle
vms:
  - { name: solo, memoryMiB: 16, viommu: smmuv3, devices: [{ name: d, pri: true, pasids: [1] }], workload: { kind: sva-stream, pages: 2, seed: 7 } }
`),
    );
    await sandbox.launch();
    try {
      const deadline = performance.now() + 20_000;
      while (!(await sandbox.workloadsDone())) {
        if (performance.now() > deadline) throw new Error('the guest did not finish its workload');
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      expect(sandbox.dmaCompleted()[0]).toBeGreaterThan(0);
    } finally {
      const report = await sandbox.stop();
      expect(report.invariants.ok).toBe(true);
    }
  });

  test('processes bundling the same new sources at once all get one whole file', async () => {
    const entry = join(scratch, 'racer.ts');
    const marker = `racer ${process.pid} ${Math.random()}`;
    writeFileSync(entry, `export const marker: string = ${JSON.stringify(marker)};\n`);
    const start = Date.now() + 1500;
    const racer = `
      import { bundleEntry } from ${JSON.stringify(pathToFileURL(join(ROOT, 'shared/worker-spawn.ts')).href)};
      while (Date.now() < ${start});
      const url = bundleEntry(${JSON.stringify(pathToFileURL(entry).href)});
      const { marker } = await import(url.href);
      process.stdout.write(JSON.stringify({ url: url.href, marker }));
    `;
    const results = (await Promise.all([1, 2, 3, 4].map(() => runNode(racer)))).map(
      (out) => JSON.parse(out) as { url: string; marker: string },
    );
    expect(new Set(results.map((r) => r.url)).size).toBe(1);
    expect(results.every((r) => r.marker === marker)).toBe(true);
    // This process finds the same file, and no writer left a temporary behind.
    expect(bundleEntry(pathToFileURL(entry))?.href).toBe(results[0].url);
    const name = results[0].url.slice(results[0].url.lastIndexOf('/') + 1);
    expect(
      readdirSync(BUNDLES)
        .filter((file) => file.startsWith(name))
        .sort(),
    ).toEqual([name, `${name}.map`]);
  }, 30_000);

  test('a later process reuses the bundle while its inputs hash the same, and rebuilds when one changes', async () => {
    const dep = join(scratch, 'racer-reuse-dep.ts');
    const entry = join(scratch, 'racer-reuse.ts');
    writeFileSync(dep, 'export const value = 1;\n');
    writeFileSync(entry, "export { value } from './racer-reuse-dep.ts';\n");
    const manifest = join(BUNDLES, 'racer-reuse-external.inputs.json');
    const load = `
      import { bundleEntry } from ${JSON.stringify(pathToFileURL(join(ROOT, 'shared/worker-spawn.ts')).href)};
      const url = bundleEntry(${JSON.stringify(pathToFileURL(entry).href)});
      const { value } = await import(url.href);
      process.stdout.write(JSON.stringify({ url: url.href, value }));
    `;
    const first = JSON.parse(await runNode(load));
    const built = statSync(manifest).ino;
    // Unchanged inputs: the same bundle, and the manifest not written again (renamed files get new inodes).
    expect(JSON.parse(await runNode(load))).toEqual(first);
    expect(statSync(manifest).ino).toBe(built);
    writeFileSync(dep, 'export const value = 2;\n');
    const changed = JSON.parse(await runNode(load));
    expect(changed.value).toBe(2);
    expect(changed.url).not.toBe(first.url);
    expect(statSync(manifest).ino).not.toBe(built);
  }, 30_000);

  test('a source esbuild cannot build is left to tsx, with a warning', async () => {
    const broken = join(scratch, 'broken.ts');
    writeFileSync(broken, 'export const x = ;\n');
    const warnings: Error[] = [];
    const listen = (warning: Error) => warnings.push(warning);
    process.on('warning', listen);
    try {
      expect(bundleEntry(pathToFileURL(broken))).toBeNull();
      await new Promise((resolve) => setImmediate(resolve));
    } finally {
      process.off('warning', listen);
    }
    expect(warnings.map((w) => (w as Error & { code?: string }).code)).toContain('IOASID_SANDBOX_NO_BUNDLE');
  });
});

test("a worker on a bundle does without tsx's preloads, which a process under tsx passes on to its workers", async () => {
  const entry = join(scratch, 'racer-argv.ts');
  writeFileSync(
    entry,
    "import { parentPort } from 'node:worker_threads';\nparentPort?.postMessage(process.execArgv);\n",
  );
  const out = await runNode(`
    import { once } from 'node:events';
    import { spawnWorker } from ${JSON.stringify(pathToFileURL(join(ROOT, 'shared/worker-spawn.ts')).href)};
    const worker = spawnWorker(new URL(${JSON.stringify(pathToFileURL(entry).href)}));
    const [execArgv] = await once(worker, 'message');
    await worker.terminate();
    process.stdout.write(JSON.stringify({ parent: process.execArgv, worker: execArgv }));
  `);
  const { parent, worker } = JSON.parse(out) as { parent: string[]; worker: string[] };
  expect(parent).toContain('tsx');
  expect(worker.join(' ')).not.toMatch(/tsx|--eval|-e /);
});
