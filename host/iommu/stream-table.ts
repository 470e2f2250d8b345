/**
 * The stream table of the host's physical IOMMUs: StreamID -> the stream's stage-1 context (an
 * SMMU's STE, a VT-d context entry with its PASID table), the tag its IOTLB entries carry, and the
 * IOTLB of the instance the stream sits behind; and the walk an entry drives when its IOTLB misses.
 * StreamIDs are unique across instances, so one table serves them all. Installing or removing an
 * entry invalidates the old tag's translations before it returns, as a driver's STE update followed
 * by CFGI + TLBI does.
 */
import { PAGE_SIZE } from '../../shared/guest-memory.ts';
import { ANY_PASID, type Iotlb } from './iotlb.ts';
import { type Stage1Context, type WalkResult, walkLeaf, walkStage1 } from './stage1-walker.ts';
import { WALK_RECORD, WALK_STALL } from './walk-cache.ts';

/** A stream table entry: the stage-1 context, the tag its IOTLB entries carry, and that IOTLB. */
export interface StreamEntry {
  streamId: number;
  ctx: Stage1Context;
  tag: number;
  iotlb: Iotlb;
}

/** Configuration-cache slots (a power of two): StreamIDs that differ in their low bits never collide. */
const STE_CACHE_SIZE = 256;

export class StreamTable {
  private readonly streams = new Map<number, StreamEntry>();
  /**
   * The configuration cache (an SMMU's STE cache), direct-mapped by the StreamID's low bits:
   * translation reaches a stream's entry without a Map lookup. `streams` stays the truth; a slot
   * is emptied whenever its stream's entry is installed or removed, before that call returns.
   */
  private readonly steCache: (StreamEntry | null)[] = new Array(STE_CACHE_SIZE).fill(null);
  private nextTag = 1;
  /** Test-only: from the n-th ranged invalidation on, none takes effect (host/vmm/plant.ts). */
  private staleFrom: number | undefined;
  private rangeInvalidations = 0;

  /** Install a stream's entry with a new tag, replacing (and invalidating) any it had. */
  install(streamId: number, ctx: Stage1Context, iotlb: Iotlb): void {
    this.remove(streamId);
    this.streams.set(streamId, { streamId, ctx, tag: this.nextTag++, iotlb });
  }

  /** Remove a stream's entry and invalidate its tag; false when it had none. */
  remove(streamId: number): boolean {
    const entry = this.streams.get(streamId);
    if (!entry) return false;
    this.streams.delete(streamId);
    const slot = streamId & (STE_CACHE_SIZE - 1);
    if (this.steCache[slot] === entry) this.steCache[slot] = null;
    entry.iotlb.invalidateDomain(entry.tag);
    return true;
  }

  /** A stream's installed context, past the configuration cache (diagnostics, benchmarks). */
  contextOf(streamId: number): Stage1Context | undefined {
    return this.streams.get(streamId)?.ctx;
  }

  /** The stream's entry, through the configuration cache; undefined: no entry (a disabled stream). */
  entry(streamId: number): StreamEntry | undefined {
    const cached = this.steCache[streamId & (STE_CACHE_SIZE - 1)];
    return cached !== null && cached.streamId === streamId ? cached : this.steMiss(streamId);
  }

  private steMiss(streamId: number): StreamEntry | undefined {
    const entry = this.streams.get(streamId);
    if (entry) this.steCache[streamId & (STE_CACHE_SIZE - 1)] = entry;
    return entry;
  }

  /**
   * Walk the stream's tables for one access (its IOTLB missed, or refused the access); a
   * translation fills the IOTLB. The walk goes through the IOTLB's walk cache: a CD-table stream's
   * walk that reached the last level leaves that table there, and the next walk in the same 2 MiB
   * (the retry after a page request, the next page of a stream) starts from it. Streams with a host
   * PASID table (VT-d) or bypassing stage 1 always walk whole.
   */
  walk(entry: StreamEntry, pasid: number, va: number, access: number, out: WalkResult): boolean {
    if (!this.walkCached(entry, pasid, va, access, out)) return false;
    entry.iotlb.insert(entry.tag, pasid, va, Math.floor(out.hpa / PAGE_SIZE) * PAGE_SIZE, out.leafPerm);
    return true;
  }

  private walkCached(
    entry: StreamEntry,
    pasid: number,
    va: number,
    access: number,
    out: WalkResult,
  ): boolean {
    const ctx = entry.ctx;
    if (ctx.s1Bypass || ctx.pasidTable) return walkStage1(ctx, pasid, va, access, out);
    const walks = entry.iotlb.walks;
    const hit = walks.lookup(entry.tag, pasid, va);
    if (hit >= 0) {
      const flags = walks.flagsOf(hit);
      return walkLeaf(
        ctx,
        walks.tableOf(hit),
        (flags & WALK_RECORD) !== 0,
        (flags & WALK_STALL) !== 0,
        va,
        access,
        out,
      );
    }
    const translated = walkStage1(ctx, pasid, va, access, out);
    if (out.leafTable >= 0) {
      const flags = (out.recordFaults ? WALK_RECORD : 0) | (out.stallFaults ? WALK_STALL : 0);
      walks.insert(entry.tag, pasid, va, out.leafTable, flags);
    }
    return translated;
  }

  /** Invalidate a stream's cached translations: all, one PASID, or one range of one PASID (or ANY_PASID). */
  invalidate(streamId: number, pasid = ANY_PASID, va?: number, length?: number): void {
    const entry = this.streams.get(streamId);
    if (!entry) return;
    if (va !== undefined && length !== undefined) {
      if (this.staleFrom !== undefined && ++this.rangeInvalidations >= this.staleFrom) return;
      entry.iotlb.invalidateRange(entry.tag, pasid, va, length);
    } else if (pasid !== ANY_PASID) entry.iotlb.invalidatePasid(entry.tag, pasid);
    else entry.iotlb.invalidateDomain(entry.tag);
  }

  /**
   * Test only (host/vmm/plant.ts): from the n-th ranged IOTLB invalidation on, none takes effect,
   * so DMA keeps using translations the guest invalidated.
   */
  plantStaleTranslations(n: number): void {
    this.staleFrom = n;
  }
}
