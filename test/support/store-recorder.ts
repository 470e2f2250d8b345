/**
 * Queue index stores as the other side observes them: a RingMirror (and RegisterMirror) that the
 * producer under test calls for every store its protocol makes, in program order. Tests of the
 * overflow rule read the PROD stores it recorded, the way the physical queue's tests read PROD.
 */
import type { RegisterMirror } from '../../shared/posted-link.ts';
import { CONS, FLAG, PROD, type RingMirror } from '../../shared/ring.ts';

export type RecordedStore =
  | { kind: 'prod' | 'cons'; index: number; overflow: boolean }
  | { kind: 'records'; count: number }
  | { kind: 'or' | 'and'; value: number };

export class StoreRecorder implements RingMirror, RegisterMirror {
  readonly stores: RecordedStore[] = [];

  store(words: Int32Array, at: number, count: number): void {
    if (at === PROD || at === CONS) {
      const value = Atomics.load(words, at);
      this.stores.push({
        kind: at === PROD ? 'prod' : 'cons',
        index: value & ~FLAG,
        overflow: (value & FLAG) !== 0,
      });
    } else {
      this.stores.push({ kind: 'records', count });
    }
  }

  ringIfSleeping(): void {}

  or(_words: Int32Array, _at: number, bits: number): void {
    this.stores.push({ kind: 'or', value: bits });
  }

  and(_words: Int32Array, _at: number, mask: number): void {
    this.stores.push({ kind: 'and', value: mask });
  }

  add(): void {}

  /** The PROD stores, as (index with wrap, OVFLG). */
  get prod(): { index: number; overflow: boolean }[] {
    const out: { index: number; overflow: boolean }[] = [];
    for (const s of this.stores) if (s.kind === 'prod') out.push({ index: s.index, overflow: s.overflow });
    return out;
  }
}
