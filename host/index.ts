/**
 * The library entry (`import { ... } from 'ioasid-sandbox'`): run topologies from scripts, and reach
 * the building blocks that tests and experiments compose.
 */

export { Doorbell } from '../shared/doorbell.ts';
export { RingConsumer, type RingGeometry, RingProducer, ringBytes } from '../shared/ring.ts';
export { PciFunction, type PciFunctionOptions } from './devices/pci-function.ts';
export { PriCapability } from './devices/pri-capability.ts';
export { Iommu } from './iommu/iommu.ts';
export { IopfGroup, type IopfHandler, IopfQueue } from './iommu/iopf.ts';
export { PRG_FAILURE, PRG_INVALID, PRG_SUCCESS } from './iommu/page-request.ts';
export { ACCESS_EXEC, ACCESS_PRIV, ACCESS_READ, ACCESS_WRITE, walkStage1 } from './iommu/stage1-walker.ts';
export { type Errno, IommufdError } from './iommufd/errors.ts';
export { FaultQueue, PAGE_RESP_INVALID, PAGE_RESP_SUCCESS } from './iommufd/fault-queue.ts';
export type { RunReport, VmReport } from './vmm/report.ts';
export { type RunOptions, runTopology } from './vmm/sandbox.ts';
export {
  loadTopology,
  parseTopology,
  type Topology,
  TopologyError,
  topologyJsonSchema,
} from './vmm/topology.ts';
