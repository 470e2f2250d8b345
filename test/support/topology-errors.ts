/** Topology errors as tests look at them. */
import { parseTopology, TopologyError } from '../../host/vmm/topology.ts';

/** The TopologyError parsing `text` (as bad.yaml) throws; fails the test if it parses. */
export function topologyErrorOf(text: string): TopologyError {
  try {
    parseTopology(text, 'bad.yaml');
  } catch (error) {
    if (error instanceof TopologyError) return error;
    throw error;
  }
  throw new Error('expected a TopologyError, the topology parsed');
}
