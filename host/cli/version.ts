/** The package's version, for `--version`: read from package.json at the root of the package. */
import { readFileSync } from 'node:fs';

/** package.json sits two levels above this file in the sources, three in the compiled dist/. */
const CANDIDATES = ['../../package.json', '../../../package.json'];

export function packageVersion(): string {
  for (const candidate of CANDIDATES) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(candidate, import.meta.url), 'utf8'));
      if (pkg.name === 'ioasid-sandbox' && typeof pkg.version === 'string') return pkg.version;
    } catch {
      // Not this level: try the next.
    }
  }
  return 'unknown';
}
