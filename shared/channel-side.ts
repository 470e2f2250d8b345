/**
 * One side's handle on a VM's channel, whatever the transport. With `sab` both sides map the same
 * SharedArrayBuffer and a doorbell is an Atomics.notify. With `postmessage` each side has its own
 * copy of the channel and a PostedLink carries every store and ring across by postMessage; the
 * rings, registers and drivers above are the same code either way.
 */
import { Doorbell } from './doorbell.ts';
import { PostedDoorbell, type PostedLink } from './posted-link.ts';
import { RingConsumer, RingProducer } from './ring.ts';
import type { RingPlace } from './vm-channel.ts';

export type TransportKind = 'sab' | 'postmessage';

export class ChannelSide {
  constructor(
    /** This side's channel: the shared one, or this side's own copy. */
    readonly buffer: SharedArrayBuffer,
    readonly link?: PostedLink,
  ) {}

  /** A doorbell this side rings; the other side sleeps on it. */
  ringer(byteOffset: number): Doorbell {
    return this.link
      ? new PostedDoorbell(this.buffer, byteOffset, this.link)
      : new Doorbell(this.buffer, byteOffset);
  }

  /** A doorbell this side sleeps on. */
  waiter(byteOffset: number): Doorbell {
    return new Doorbell(this.buffer, byteOffset);
  }

  producer(place: RingPlace, doorbell?: Doorbell): RingProducer {
    return new RingProducer(this.buffer, place.offset, place.geometry, doorbell, this.link);
  }

  consumer(place: RingPlace): RingConsumer {
    return new RingConsumer(this.buffer, place.offset, place.geometry, this.link);
  }
}
