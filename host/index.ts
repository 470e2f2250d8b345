/**
 * The library entry (`import { ... } from 'ioasid-sandbox'`): run topologies from scripts, and reach
 * the building blocks that tests and experiments compose.
 */

export { Doorbell } from '../shared/doorbell.ts';
export { RingConsumer, type RingGeometry, RingProducer, ringBytes } from '../shared/ring.ts';
export { PciFunction, type PciFunctionOptions } from './devices/pci-function.ts';
export { PriCapability } from './devices/pri-capability.ts';
export { Iommu } from './iommu/iommu.ts';
export { IommuInstance, type IommuInstanceOptions } from './iommu/iommu-instance.ts';
export { IopfGroup, type IopfHandler, IopfQueue } from './iommu/iopf.ts';
export { PRG_FAILURE, PRG_INVALID, PRG_SUCCESS } from './iommu/page-request.ts';
export { PhysicalPriQueue } from './iommu/physical-queue.ts';
export { PriqThread } from './iommu/priq-thread.ts';
export { type RefaultFigures, RefaultGauge } from './iommu/refault-gauge.ts';
export { Smmuv3Ops } from './iommu/smmuv3-ops.ts';
export { ACCESS_EXEC, ACCESS_PRIV, ACCESS_READ, ACCESS_WRITE, walkStage1 } from './iommu/stage1-walker.ts';
export { type Errno, IommufdError } from './iommufd/errors.ts';
export * from './iommufd/eventq-records.ts';
export type { FaultFd, FaultObject } from './iommufd/fault.ts';
export { type FailPoint, FaultInjector } from './iommufd/fault-injector.ts';
export * from './iommufd/hwpt.ts';
export {
  IOMMU_IOAS_MAP_FIXED_IOVA,
  IOMMU_IOAS_MAP_READABLE,
  IOMMU_IOAS_MAP_WRITEABLE,
} from './iommufd/ioas.ts';
export * from './iommufd/iommufd.ts';
export { type IovaRange, U64_MAX } from './iommufd/iova.ts';
export * from './iommufd/selftest.ts';
export type { VeventqFd } from './iommufd/veventq.ts';
export type { RunReport, VmReport } from './vmm/report.ts';
export { type InjectedFault, type RunOptions, runTopology, Sandbox } from './vmm/sandbox.ts';
export { TEARDOWN_OPS, type TeardownOp, type Topology, topologyJsonSchema } from './vmm/topology.ts';
export { loadTopology, parseTopology, TopologyError } from './vmm/topology-file.ts';
