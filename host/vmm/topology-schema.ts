/** `npm run schema`: writes configs/topology.schema.json from the zod schema. */
import { writeFileSync } from 'node:fs';
import { topologyJsonSchema } from './topology.ts';

const target = new URL('../../configs/topology.schema.json', import.meta.url);
writeFileSync(target, `${JSON.stringify(topologyJsonSchema(), null, 2)}\n`);
process.stdout.write(`wrote ${target.pathname}\n`);
