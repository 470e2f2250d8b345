// Plain JS entry for the TypeScript sources: registers tsx in the child process, then runs the
// launch figure (launch-child.ts). The compiled build runs launch-child.js directly.
import { register } from 'tsx/esm/api';

register();
await import('./launch-child.ts');
