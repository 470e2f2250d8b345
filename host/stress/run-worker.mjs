// Plain JS piscina entry for the TypeScript sources: registers tsx inside the pool's worker thread,
// then loads the task (Node 20 applies no ESM hooks to workers; docs/development.md).
import { register } from 'tsx/esm/api';

register();
const task = await import('./run-worker.ts');
export default task.default;
