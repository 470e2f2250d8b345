// The README's and docs/*.md's examples work as written: every topology block passes the real
// parser, every topology file they name loads, and every command line they show parses with the
// real CLI.
import { readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, test, vi } from 'vitest';
import { EXIT_OK, main } from '../../host/cli/main.ts';
import { loadTopology, parseTopology } from '../../host/vmm/topology.ts';

const readme = readFileSync('README.md', 'utf8');
/** The README, then every page of docs/. */
const documents = [
  { file: 'README.md', text: readme },
  ...readdirSync('docs')
    .filter((name) => name.endsWith('.md'))
    .sort()
    .map((name) => ({ file: `docs/${name}`, text: readFileSync(`docs/${name}`, 'utf8') })),
];
const startScript: string = JSON.parse(readFileSync('package.json', 'utf8')).scripts.start;

/** The ```yaml fences: each is a topology. */
function yamlBlocks(doc: string): { line: number; text: string }[] {
  const blocks: { line: number; text: string }[] = [];
  for (const m of doc.matchAll(/^```yaml\n([\s\S]*?)^```$/gm)) {
    blocks.push({ line: doc.slice(0, m.index).split('\n').length + 1, text: m[1] });
  }
  return blocks;
}

/** How the README and docs/ invoke the CLI; `npm start` runs package.json's start script. */
const PREFIXES = [
  'npx ioasid-sandbox ',
  'ioasid-sandbox ',
  'node dist/host/cli/main.js ',
  'tsx host/cli/main.ts ',
];

/**
 * Every command line a document shows, in code fences and in inline code (which may wrap), with
 * `&&` chains split, as the arguments after the command.
 */
function cliLines(doc: string): { shown: string; args: string }[] {
  const fences = [...doc.matchAll(/^```[a-z]*\n([\s\S]*?)^```$/gm)].flatMap((m) => m[1].split('\n'));
  const prose = doc.replace(/^```[a-z]*\n[\s\S]*?^```$/gm, '');
  const inline = [...prose.matchAll(/`([^`]+)`/g)].map((m) => m[1].replace(/\s+/g, ' '));
  const lines: { shown: string; args: string }[] = [];
  for (const candidate of [...fences, ...inline].flatMap((l) => l.split('&&')).map((l) => l.trim())) {
    const command = candidate === 'npm start' ? startScript : candidate;
    const prefix = PREFIXES.find((p) => command.startsWith(p));
    if (!prefix) continue;
    const args = command.slice(prefix.length).trim();
    // The prose's `npx ioasid-sandbox ...` stands for any command.
    if (args === '...') continue;
    lines.push({ shown: candidate, args });
  }
  return lines;
}

/** A value for each placeholder the synopses and the prose use. */
const PLACEHOLDERS: Record<string, string> = {
  '<topology>': 'configs/default.yaml',
  '<file>': 'configs/default.yaml',
  '...': 'configs/default.yaml',
  '<ms>': '1000',
  '<n>': '2',
  '<s>': '7',
  '<seed>': '7',
  '<k>': '1',
  '<i>/<n>': '1/2',
  '<name...>': 'plain-ioas',
};

/**
 * The argument lists a line stands for. A synopsis (`[--flag <value>]`, `a|b`) stands for its
 * command with every optional flag given, once per alternative of each `a|b`.
 */
function expand(args: string): string[][] {
  const words = args.replace(/[[\]]/g, '').split(' ').filter(Boolean);
  let lists: string[][] = [[]];
  for (const [i, word] of words.entries()) {
    // An output file never names a file of the repository, should anything ever write it.
    const value = words[i - 1] === '--trace' ? join(tmpdir(), 'readme-trace.json') : PLACEHOLDERS[word];
    const choices = value !== undefined ? [value] : word.startsWith('-') ? [word] : word.split('|');
    lists = choices.flatMap((choice) => lists.map((list) => [...list, choice]));
  }
  return lists;
}

afterEach(() => {
  vi.restoreAllMocks();
});

describe('README and docs/', () => {
  test('every topology block is a valid topology, in the README and in docs/', () => {
    expect(yamlBlocks(readme).length).toBeGreaterThan(0);
    for (const { file, text } of documents) {
      for (const block of yamlBlocks(text)) {
        expect(() => parseTopology(block.text, `${file}:${block.line}`)).not.toThrow();
      }
    }
  });

  test('every topology file they name exists and is valid', () => {
    // The example of an error message names a file that is not meant to exist.
    const all = documents.map((d) => d.text).join('\n');
    const named = [...all.matchAll(/`(?:configs\/)?([\w-]+\.yaml)`|configs\/([\w-]+\.yaml)/g)]
      .map((m) => `configs/${m[1] ?? m[2]}`)
      .filter((file) => file !== 'configs/x.yaml');
    const files = new Set(named);
    expect(files.size).toBeGreaterThan(5);
    for (const file of files) expect(() => loadTopology(file), file).not.toThrow();
  });

  test('every command line they show parses with the real CLI', async () => {
    // The README shows the synopsis of every command; docs/ repeats them with more examples.
    const commandsOf = (lines: { args: string }[]) =>
      [...new Set(lines.map((l) => l.args.split(' ')[0]))].sort();
    const every = ['--version', 'bench', 'fail-nth', 'run', 'stress', 'validate'];
    expect(commandsOf(cliLines(readme))).toEqual(every);
    const lines = documents.flatMap(({ file, text }) =>
      cliLines(text).map((line) => ({ ...line, shown: `${file}: ${line.shown}` })),
    );
    expect(lines.length).toBeGreaterThanOrEqual(10);
    expect(commandsOf(lines)).toEqual(every);
    vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
    const errors: string[] = [];
    vi.spyOn(process.stderr, 'write').mockImplementation((s) => {
      errors.push(String(s));
      return true;
    });
    for (const line of lines) {
      for (const argv of expand(line.args)) {
        errors.length = 0;
        const code = await main(argv, { parseOnly: true });
        expect({ shown: line.shown, argv, code, errors }).toEqual({
          shown: line.shown,
          argv,
          code: EXIT_OK,
          errors: [],
        });
      }
    }
  });

  test('a line the CLI does not take fails to parse', async () => {
    vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    expect(await main(['run', 'configs/default.yaml', '--speed', '3'], { parseOnly: true })).not.toBe(
      EXIT_OK,
    );
    expect(await main(['stress', '--shard', '3/2'], { parseOnly: true })).not.toBe(EXIT_OK);
  });
});
