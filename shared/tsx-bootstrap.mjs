// Plain JS so Node 20 can load it without hooks: registers tsx inside a worker thread, then imports
// the TypeScript entry passed as argv[2] (Node 20 applies no ESM hooks to workers; docs/development.md).
import { register } from 'tsx/esm/api';

const entry = process.argv[2];
process.argv.splice(2, 1);
register();
await import(entry);
