/**
 * The guest driver's side of a VT-d page request queue, in the order Linux's prq_event_thread
 * keeps (docs/queues.md):
 *
 * 1. Write PPR=1 to clear it first. The host raises the next interrupt only on a write that finds
 *    PPR (and PRO) clear, so clearing after the drain could swallow the interrupt of a request
 *    that landed in between.
 * 2. Read PQT, handle every descriptor from PQH up to it, then write PQH := PQT.
 * 3. If PRO is set, re-read PQT: only when head == tail (nothing left that predates the overflow)
 *    discard partial groups and write PRO=1 to clear it. Otherwise leave PRO for the next pass;
 *    the requests still queued set PPR after step 1, so that pass is already signalled.
 */

import type { RegisterMirror } from '../shared/posted-link.ts';
import { queueIndex } from '../shared/queue-index.ts';
import type { VtdPageRequest } from '../shared/records/vtd-prq-entry.ts';
import {
  decodeVtdPageRequest,
  newVtdPageRequest,
  VTD_PRQ_ENTRY_BYTES,
} from '../shared/records/vtd-prq-entry.ts';
import type { RingConsumer, RingMirror } from '../shared/ring.ts';
import { type PageRequestStatus, PRS_PPR, PRS_PRO, vtdPrqConsumer } from '../shared/vtd-prq-registers.ts';

export interface VtdPrqDriverStats {
  /** Descriptors handed to the handler. */
  handled: number;
  /** Passes of `service`. */
  passes: number;
  /** Times PRO was found with the queue drained and cleared. */
  overflowsCleared: number;
}

export class VtdPrqDriver {
  readonly stats: VtdPrqDriverStats = { handled: 0, passes: 0, overflowsCleared: 0 };
  readonly status: PageRequestStatus;

  readonly ring: RingConsumer;
  private readonly request = newVtdPageRequest();

  constructor(
    buffer: SharedArrayBuffer,
    byteOffset: number,
    log2Size: number,
    mirror?: RingMirror & RegisterMirror,
  ) {
    const { ring, status } = vtdPrqConsumer(buffer, byteOffset, log2Size, mirror);
    this.ring = ring;
    this.status = status;
  }

  /** PQH, as a byte offset into the queue. */
  get head(): number {
    return queueIndex(this.ring.index, this.ring.log2Size) * VTD_PRQ_ENTRY_BYTES;
  }

  /** PQT (a fresh load), as a byte offset into the queue. */
  get tail(): number {
    return queueIndex(this.ring.index + this.ring.poll(), this.ring.log2Size) * VTD_PRQ_ENTRY_BYTES;
  }

  /** Descriptors between PQH and PQT (a fresh load of PQT). */
  pending(): number {
    return this.ring.poll();
  }

  /**
   * One pass of the page request interrupt handler. `onRequest` gets each descriptor decoded into
   * one reused object; it may return false to leave that descriptor (and the rest) for the next pass,
   * e.g. when there is no room for its response. `onOverflowCleared` runs just before PRO is cleared
   * (where Linux discards partial groups). Returns the number of descriptors handled.
   */
  service(onRequest: (request: VtdPageRequest) => unknown, onOverflowCleared?: () => void): number {
    this.stats.passes++;
    this.status.write(PRS_PPR);
    const ring = this.ring;
    const ready = ring.poll();
    let handled = 0;
    while (handled < ready) {
      if (onRequest(decodeVtdPageRequest(ring.words, ring.at(handled), this.request)) === false) break;
      handled++;
    }
    ring.release(handled);
    this.stats.handled += handled;
    if (handled < ready) return handled;
    if ((this.status.read() & PRS_PRO) !== 0 && ring.poll() === 0) {
      onOverflowCleared?.();
      this.status.write(PRS_PRO);
      this.stats.overflowsCleared++;
    }
    return handled;
  }
}
