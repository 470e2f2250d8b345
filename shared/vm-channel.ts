/**
 * The data plane between the host and one VM: a single SharedArrayBuffer, shared with that VM only,
 * holding two doorbells and every ring of the VM. Both sides compute the same layout from the same
 * `ChannelConfig`; the host never reads geometry back from shared memory.
 *
 *   guest doorbell   the VM's interrupt line: rung by the host's producers (fault queues, completions)
 *   host doorbell    rung by the guest's producers (command queue, DMA descriptor queues)
 *   smmuv3:  PRI queue      host -> guest, SMMUv3 PRIQ entries
 *            event queue    host -> guest, SMMUv3 event records
 *            command queue  guest -> host, SMMUv3 commands (CMD_PRI_RESP, CMD_RESUME, CMD_SYNC, TLBI)
 *   vtd:     page request queue   host -> guest, its PQH/PQT and PRS register line, 32-byte
 *                                 page request descriptors (vtd-prq-registers.ts)
 *            invalidation queue   guest -> host, 32-byte descriptors (page group responses,
 *                                 PASID-based IOTLB invalidations, invalidation waits)
 *   per device: DMA descriptor queue (guest -> host) and completion queue (host -> guest)
 */
import { COMMAND_ERROR_BYTES } from './command-error.ts';
import { DOORBELL_BYTES, Doorbell } from './doorbell.ts';
import { CMDQ_ENTRY_WORDS } from './records/cmdq-entry.ts';
import { DMA_COMPLETION_WORDS, DMA_DESCRIPTOR_WORDS } from './records/dma-descriptor.ts';
import { EVTQ_ENTRY_WORDS } from './records/evtq-entry.ts';
import { PRIQ_ENTRY_WORDS } from './records/priq-entry.ts';
import { VTD_IQ_ENTRY_WORDS } from './records/vtd-iq-entry.ts';
import { type RingGeometry, ringBytes } from './ring.ts';
import { vtdPrqBytes } from './vtd-prq-registers.ts';

/** The guest-visible vIOMMU: which queues the channel holds. */
export type Flavour = 'smmuv3' | 'vtd';

export interface ChannelConfig {
  flavour: Flavour;
  /** PRI queue (smmuv3) or page request queue (vtd): 2^n entries. */
  priqLog2: number;
  evtqLog2: number;
  cmdqLog2: number;
  dmaQueueLog2: number;
  devices: number;
}

export interface RingPlace {
  offset: number;
  geometry: RingGeometry;
}

export interface ChannelLayout {
  bytes: number;
  guestBell: number;
  hostBell: number;
  /** The command-error register line (command-error.ts). */
  commandError: number;
  /** smmuv3 only. */
  priq?: RingPlace;
  evtq?: RingPlace;
  /** vtd only: the page request queue's register line (the ring follows it). */
  prq?: { offset: number; log2Size: number };
  cmdq: RingPlace;
  dma: { submit: RingPlace; complete: RingPlace }[];
}

export function channelLayout(config: ChannelConfig): ChannelLayout {
  let offset = 0;
  const place = (geometry: RingGeometry): RingPlace => {
    const at = offset;
    offset += ringBytes(geometry);
    offset = Math.ceil(offset / 64) * 64;
    return { offset: at, geometry };
  };
  const guestBell = offset;
  offset += DOORBELL_BYTES;
  const hostBell = offset;
  offset += DOORBELL_BYTES;
  const commandError = offset;
  offset += COMMAND_ERROR_BYTES;
  let priq: RingPlace | undefined;
  let evtq: RingPlace | undefined;
  let prq: ChannelLayout['prq'];
  if (config.flavour === 'vtd') {
    prq = { offset, log2Size: config.priqLog2 };
    offset += vtdPrqBytes(config.priqLog2);
    offset = Math.ceil(offset / 64) * 64;
  } else {
    priq = place({ log2Size: config.priqLog2, recordWords: PRIQ_ENTRY_WORDS });
    evtq = place({ log2Size: config.evtqLog2, recordWords: EVTQ_ENTRY_WORDS });
  }
  const cmdq = place({
    log2Size: config.cmdqLog2,
    recordWords: config.flavour === 'vtd' ? VTD_IQ_ENTRY_WORDS : CMDQ_ENTRY_WORDS,
  });
  const dma = [];
  for (let i = 0; i < config.devices; i++) {
    const submit = place({ log2Size: config.dmaQueueLog2, recordWords: DMA_DESCRIPTOR_WORDS });
    const complete = place({ log2Size: config.dmaQueueLog2, recordWords: DMA_COMPLETION_WORDS });
    dma.push({ submit, complete });
  }
  return { bytes: offset, guestBell, hostBell, commandError, priq, evtq, prq, cmdq, dma };
}

/** The two interrupt lines of a channel. */
export function channelBells(
  buffer: SharedArrayBuffer,
  layout: ChannelLayout,
): { guest: Doorbell; host: Doorbell } {
  return { guest: new Doorbell(buffer, layout.guestBell), host: new Doorbell(buffer, layout.hostBell) };
}
