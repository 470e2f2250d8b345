#!/usr/bin/env node
// The installed command: runs the TypeScript sources through tsx (a dependency), so the CLI works
// from a clone with no build step. `npm run build` produces dist/ for `node dist/host/cli/main.js`.
import { register } from 'tsx/esm/api';

register();
const { main } = await import('../host/cli/main.ts');
process.exitCode = await main(process.argv.slice(2));
