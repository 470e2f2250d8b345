/**
 * What a guest did to its vIOMMU that no correct driver does, as the host counted it: the damage a
 * hostile guest (topology `misbehave`) leaves. None of it is a violation: malformed guest input is
 * refused, skipped and counted here, and the host goes on. A guest's death (crash, hang, silence)
 * is `crashed`/`crashReason`; wild page tables show as unrecoverable faults and extra page requests.
 */
import type { ViommuModel } from './viommu-model.ts';

/**
 * Times the host read an index the guest owns that claimed more records in flight than the ring
 * holds (counted by the ring, treated as full or empty, never followed).
 */
export interface CorruptIndices {
  /** The guest's CONS of its PRI queue (SMMUv3) or PQH of its page request queue (VT-d). */
  pageRequestQueue: number;
  /** The guest's CONS of its event queue (SMMUv3; 0 for VT-d). */
  eventQueue: number;
  /** The guest's PROD of its command queue (SMMUv3) or invalidation queue tail (VT-d). */
  commandQueue: number;
}

export interface GuestDamage {
  corruptIndices: CorruptIndices;
  /** Responses naming no group or stall delivered to the guest (duplicates included). */
  unknownResponses: number;
  /** Second answers to a group or stall the guest had answered already. */
  duplicateResponses: number;
  /** Commands the vIOMMU refused and skipped (reserved codes, unknown opcodes, bad addresses). */
  illegalCommands: number;
}

/** One VM's damage, from its vIOMMU model (the run report's per-VM `damage`). */
export function guestDamage(model: ViommuModel): GuestDamage {
  return {
    corruptIndices: model.corruptIndices,
    unknownResponses: model.stats.unknownResponses,
    duplicateResponses: model.stats.duplicateResponses,
    illegalCommands: model.stats.illegalCommands,
  };
}
