/**
 * An SMMUv3 guest's queues and memory manager with the test as the vSMMU on the other end: the
 * test publishes PRI queue entries and event records, and reads the commands the driver wrote.
 * Real rings in one SharedArrayBuffer, real guest RAM, a real demand pager.
 */
import { emptyStats } from '../../guest/guest-vm.ts';
import { type Misbehaviour, Smmuv3Forger } from '../../guest/misbehave.ts';
import { AddressSpaces } from '../../guest/mm/address-spaces.ts';
import { DemandPager } from '../../guest/mm/demand-pager.ts';
import { PageAllocator } from '../../guest/mm/page-allocator.ts';
import { Smmuv3Driver } from '../../guest/smmuv3-driver.ts';
import { DOORBELL_BYTES, Doorbell } from '../../shared/doorbell.ts';
import { GuestMemory, PAGE_SIZE } from '../../shared/guest-memory.ts';
import {
  CMD_PRI_RESP,
  CMD_RESUME,
  CMD_SYNC,
  CMDQ_ENTRY_WORDS,
  commandOpcode,
  decodePriResp,
  decodeResume,
  newPriRespCommand,
  newResumeCommand,
  syncMsiAddress,
  syncMsiData,
} from '../../shared/records/cmdq-entry.ts';
import { F_TRANSLATION } from '../../shared/records/event-types.ts';
import { EVTQ_ENTRY_WORDS, encodeEvtqEntry, newEvtqEntry } from '../../shared/records/evtq-entry.ts';
import {
  encodePriqEntry,
  newPriqEntry,
  PRIQ_ENTRY_WORDS,
  type PriqEntry,
} from '../../shared/records/priq-entry.ts';
import { RingConsumer, RingProducer, ringBytes } from '../../shared/ring.ts';

/** The guest's device: StreamID 0, PASID 1; its buffer of BACKED_PAGES pages at VA. */
export const SID = 0;
export const PASID = 1;
export const VA = 0x7e00_0000_0000;
export const BACKED_PAGES = 64;
/** An address of PASID 1 outside every backed range: its page-in fails. */
export const UNBACKED_VA = 0x1000_0000_0000;

/** A command the driver wrote, decoded by its opcode. */
export type Command =
  | { op: 'PRI_RESP'; streamId: number; ssv: boolean; substreamId: number; prgIndex: number; resp: number }
  | { op: 'RESUME'; streamId: number; stag: number; action: number }
  | { op: 'SYNC'; msiAddress: number; msiData: number }
  | { op: number };

export interface Smmuv3GuestOptions {
  /** log2 of the PRI queue, event queue and command queue sizes (default 3 each). */
  priqLog2?: number;
  evtqLog2?: number;
  cmdqLog2?: number;
  /** A hostile guest's hooks, attached to the driver's queues. */
  misbehave?: Misbehaviour;
}

export function smmuv3Guest(options: Smmuv3GuestOptions = {}) {
  const geometry = {
    priq: { log2Size: options.priqLog2 ?? 3, recordWords: PRIQ_ENTRY_WORDS },
    evtq: { log2Size: options.evtqLog2 ?? 3, recordWords: EVTQ_ENTRY_WORDS },
    cmdq: { log2Size: options.cmdqLog2 ?? 3, recordWords: CMDQ_ENTRY_WORDS },
  };
  const priqAt = 0;
  const evtqAt = priqAt + ringBytes(geometry.priq);
  const cmdqAt = evtqAt + ringBytes(geometry.evtq);
  const bellAt = cmdqAt + ringBytes(geometry.cmdq);
  const buffer = new SharedArrayBuffer(bellAt + DOORBELL_BYTES);

  const memory = GuestMemory.allocate(2);
  const pages = new PageAllocator(memory);
  const spaces = new AddressSpaces(memory, pages);
  spaces.installDevice(SID, [PASID]);
  const misbehave = options.misbehave;
  const pager = new DemandPager(memory, pages, spaces, misbehave);
  pager.back(PASID, VA, BACKED_PAGES, 7);
  const stats = emptyStats();
  const syncWordGpa = pages.allocZeroed();
  const hostBell = new Doorbell(buffer, bellAt);

  const guest = {
    priq: new RingConsumer(buffer, priqAt, geometry.priq),
    evtq: new RingConsumer(buffer, evtqAt, geometry.evtq),
    cmdq: new RingProducer(buffer, cmdqAt, geometry.cmdq),
  };
  const host = {
    priq: new RingProducer(buffer, priqAt, geometry.priq),
    evtq: new RingProducer(buffer, evtqAt, geometry.evtq),
    cmdq: new RingConsumer(buffer, cmdqAt, geometry.cmdq),
  };
  misbehave?.attach({
    forger: new Smmuv3Forger(guest.cmdq),
    commands: guest.cmdq,
    pageRequests: guest.priq,
    events: guest.evtq,
    hostBell,
  });
  const driver = new Smmuv3Driver(
    guest.priq,
    guest.evtq,
    guest.cmdq,
    pager,
    stats,
    memory,
    syncWordGpa,
    misbehave,
    { hostBell },
  );

  const entry = newPriqEntry();
  /** Commit one PRI queue entry (PASID 1, a read of page `page` of the buffer unless told). */
  function pageRequest(fields: Partial<PriqEntry> & { page?: number }): void {
    Object.assign(entry, newPriqEntry(), {
      streamId: SID,
      ssv: true,
      substreamId: PASID,
      read: true,
      address: VA + (fields.page ?? 0) * PAGE_SIZE,
      ...fields,
    });
    encodePriqEntry(host.priq.words, host.priq.claim(), entry);
    host.priq.commit();
  }

  const event = newEvtqEntry();
  /** Commit one event record: a stage-1 translation fault of PASID 1 at `address`. */
  function faultEvent(address: number, stall: boolean, stag = 0): void {
    Object.assign(event, newEvtqEntry(), {
      eventType: F_TRANSLATION,
      streamId: SID,
      ssv: true,
      substreamId: PASID,
      read: true,
      stall,
      stag,
      inputAddress: address,
    });
    encodeEvtqEntry(host.evtq.words, host.evtq.claim(), event);
    host.evtq.commit();
  }

  const response = newPriRespCommand();
  const resume = newResumeCommand();
  /** Consume every command the driver published, decoded. */
  function commands(): Command[] {
    const out: Command[] = [];
    const q = host.cmdq;
    for (let ready = q.poll(); ready > 0; ready = q.poll()) {
      for (let i = 0; i < ready; i++) {
        const at = q.at(i);
        const op = commandOpcode(q.words, at);
        if (op === CMD_PRI_RESP) out.push({ op: 'PRI_RESP', ...decodePriResp(q.words, at, response) });
        else if (op === CMD_RESUME) out.push({ op: 'RESUME', ...decodeResume(q.words, at, resume) });
        else if (op === CMD_SYNC)
          out.push({
            op: 'SYNC',
            msiAddress: syncMsiAddress(q.words, at),
            msiData: syncMsiData(q.words, at),
          });
        else out.push({ op });
      }
      q.release(ready);
    }
    return out;
  }

  /** The page of the buffer is mapped in PASID 1's stage-1 table. */
  const resident = (address: number) => spaces.table(PASID).lookup(address) >= 0;

  return {
    driver,
    stats,
    memory,
    pages,
    spaces,
    pager,
    guest,
    host,
    hostBell,
    syncWordGpa,
    pageRequest,
    faultEvent,
    commands,
    resident,
  };
}
