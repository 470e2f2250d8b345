import { describe, expect, test } from 'vitest';
import { GuestMemory } from '../../shared/guest-memory.ts';
import {
  newVirtqUsed,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_DROP_BUFFER_RANGE,
  VIRTQ_DROP_HEAD_RANGE,
  VIRTQ_DROP_INDIRECT,
  VIRTQ_DROP_LOOP,
  VIRTQ_DROP_NEXT_RANGE,
  VIRTQ_DROP_READABLE_AFTER_WRITABLE,
  VIRTQ_POP_CHAIN,
  VIRTQ_POP_DROPPED,
  VIRTQ_POP_EMPTY,
  VirtqChain,
  VirtqueueDevice,
  VirtqueueDriver,
  type VirtqueueLayout,
  virtqNeedEvent,
  virtqueueBytes,
  virtqueueLayout,
} from '../../shared/virtqueue.ts';

const QUEUE_GPA = 0x1000;
const BUFFERS_GPA = 0x10000;

function makeQueue(size = 8, eventIdx = false) {
  const memory = GuestMemory.allocate(1);
  const layout = virtqueueLayout(QUEUE_GPA, size);
  const driver = new VirtqueueDriver(memory, layout, eventIdx);
  const device = new VirtqueueDevice(memory, layout, eventIdx);
  return { memory, layout, driver, device, chain: new VirtqChain(size), used: newVirtqUsed() };
}

/** One readable then one writable buffer; returns the head. */
function addRequest(driver: VirtqueueDriver, n: number): number {
  expect(driver.beginChain(2)).toBe(true);
  driver.addReadable(BUFFERS_GPA + n * 64, 16);
  driver.addWritable(BUFFERS_GPA + n * 64 + 16, 4);
  return driver.endChain();
}

/** Word index of descriptor `d`'s flags/next word. */
function descFlagsWord(layout: VirtqueueLayout, d: number): number {
  return (layout.desc >>> 2) + d * 4 + 3;
}

describe('split virtqueue layout', () => {
  test('parts sit at the spec alignments: table 16, avail 2, used 4', () => {
    const l = virtqueueLayout(0x1000, 8);
    expect(l.desc).toBe(0x1000);
    expect(l.avail).toBe(0x1000 + 16 * 8);
    // avail is 6 + 2*8 = 22 bytes: used rounds 0x1096 up to the next multiple of 4.
    expect(l.used).toBe(0x1098);
    expect(virtqueueBytes(8)).toBe(0x98 + 6 + 8 * 8);
  });

  test('a size that is not a power of two, or a misaligned part, is refused up front', () => {
    const memory = GuestMemory.allocate(1);
    expect(() => new VirtqueueDevice(memory, virtqueueLayout(0x1000, 6), false)).toThrow(/power of two/);
    expect(
      () => new VirtqueueDevice(memory, { size: 8, desc: 0x1008, avail: 0x2000, used: 0x3000 }, false),
    ).toThrow(/16-byte aligned/);
    expect(() => new VirtqueueDevice(memory, virtqueueLayout(memory.size - 64, 8), false)).toThrow(/outside/);
  });
});

describe('split virtqueue chains', () => {
  test('chains reach the device in avail order with their buffers readable first', () => {
    const { driver, device, chain } = makeQueue();
    const heads = [addRequest(driver, 0), addRequest(driver, 1), addRequest(driver, 2)];
    expect(device.pop(chain)).toBe(VIRTQ_POP_EMPTY); // not published yet
    driver.publish();
    for (let n = 0; n < 3; n++) {
      expect(device.pop(chain)).toBe(VIRTQ_POP_CHAIN);
      expect(chain.head).toBe(heads[n]);
      expect(chain.count).toBe(2);
      expect(chain.readable).toBe(1);
      expect(chain.gpa[0]).toBe(BUFFERS_GPA + n * 64);
      expect(chain.length[0]).toBe(16);
      expect(chain.gpa[1]).toBe(BUFFERS_GPA + n * 64 + 16);
      expect(chain.readableBytes).toBe(16);
      expect(chain.writableBytes).toBe(4);
    }
    expect(device.pop(chain)).toBe(VIRTQ_POP_EMPTY);
  });

  test('used elements come back in used order and free every descriptor of their chain', () => {
    const { driver, device, chain, used } = makeQueue();
    const a = addRequest(driver, 0);
    const b = addRequest(driver, 1);
    driver.publish();
    expect(driver.free).toBe(4);
    device.pop(chain);
    device.pop(chain);
    device.push(b, 4);
    device.push(a, 0);
    expect(driver.reap(used)).toBe(false); // not published yet
    device.publishUsed();
    expect(driver.reap(used)).toBe(true);
    expect(used).toEqual({ id: b, len: 4 });
    expect(driver.reap(used)).toBe(true);
    expect(used.id).toBe(a);
    expect(driver.reap(used)).toBe(false);
    expect(driver.free).toBe(8);
  });

  test('a chain needs its descriptors free up front, and the last one can be used', () => {
    const { driver, device, chain } = makeQueue(4);
    expect(driver.beginChain(5)).toBe(false);
    expect(driver.beginChain(4)).toBe(true);
    for (let i = 0; i < 4; i++) driver.addReadable(BUFFERS_GPA + i * 8, 8);
    driver.endChain();
    driver.publish();
    expect(device.pop(chain)).toBe(VIRTQ_POP_CHAIN);
    expect(chain.count).toBe(4);
    expect(driver.beginChain(1)).toBe(false);
  });

  test('gather reads readable buffers in order; scatter writes only the writable ones', () => {
    const { memory, driver, device, chain } = makeQueue();
    memory.bytes.set([1, 2, 3], BUFFERS_GPA);
    memory.bytes.set([4, 5], BUFFERS_GPA + 0x100);
    driver.beginChain(4);
    driver.addReadable(BUFFERS_GPA, 3);
    driver.addReadable(BUFFERS_GPA + 0x100, 2);
    driver.addWritable(BUFFERS_GPA + 0x200, 2);
    driver.addWritable(BUFFERS_GPA + 0x300, 8);
    driver.endChain();
    driver.publish();
    expect(device.pop(chain)).toBe(VIRTQ_POP_CHAIN);
    const scratch = new Uint8Array(16);
    expect(chain.gather(memory, scratch)).toBe(5);
    expect([...scratch.subarray(0, 5)]).toEqual([1, 2, 3, 4, 5]);
    expect(chain.scatter(memory, Uint8Array.of(9, 8, 7), 3)).toBe(3);
    expect([...memory.bytes.subarray(BUFFERS_GPA + 0x200, BUFFERS_GPA + 0x202)]).toEqual([9, 8]);
    expect(memory.bytes[BUFFERS_GPA + 0x300]).toBe(7);
    expect(memory.bytes[BUFFERS_GPA]).toBe(1); // a readable buffer is never written
  });

  test('the 16-bit avail and used indices wrap without losing or repeating a chain', () => {
    const { driver, device, chain, used } = makeQueue(4);
    for (let n = 0; n < 70_000; n++) {
      const head = addRequest(driver, n & 3);
      driver.publish();
      expect(device.pop(chain)).toBe(VIRTQ_POP_CHAIN);
      if (chain.head !== head) throw new Error(`chain ${n}: head ${chain.head}, expected ${head}`);
      device.push(head, n & 0xff);
      device.publishUsed();
      if (!driver.reap(used) || used.len !== (n & 0xff)) throw new Error(`chain ${n} not reaped`);
    }
    expect(device.pop(chain)).toBe(VIRTQ_POP_EMPTY);
    expect(driver.free).toBe(4);
    expect(device.droppedTotal()).toBe(0);
  });
});

describe('split virtqueue notification suppression', () => {
  test('VIRTQ_USED_F_NO_NOTIFY stops the driver notifying until the device clears it', () => {
    const { driver, device } = makeQueue();
    addRequest(driver, 0);
    expect(driver.publish()).toBe(true);
    device.disableNotifications();
    addRequest(driver, 1);
    expect(driver.publish()).toBe(false);
    expect(device.enableNotifications()).toBe(true); // chains arrived meanwhile: pop them
    addRequest(driver, 2);
    expect(driver.publish()).toBe(true);
    expect(driver.publish()).toBe(false); // nothing new published
  });

  test('VIRTQ_AVAIL_F_NO_INTERRUPT stops the device interrupting until the driver clears it', () => {
    const { driver, device, chain } = makeQueue();
    const a = addRequest(driver, 0);
    const b = addRequest(driver, 1);
    driver.publish();
    device.pop(chain);
    device.pop(chain);
    driver.disableInterrupts();
    device.push(a, 0);
    expect(device.publishUsed()).toBe(false);
    expect(driver.enableInterrupts()).toBe(true); // a completion is waiting
    device.push(b, 0);
    expect(device.publishUsed()).toBe(true);
  });

  test('event idx: the driver notifies only when avail idx passes avail_event', () => {
    const { driver, device } = makeQueue(16, true);
    device.enableNotifications(); // avail_event = 0
    addRequest(driver, 0);
    expect(driver.publish()).toBe(true); // idx 0 -> 1 passes 0
    addRequest(driver, 1);
    expect(driver.publish()).toBe(false); // 1 -> 2: the device has not asked again
    // The flag is ignored with event idx: NO_NOTIFY does not suppress, avail_event does.
    device.disableNotifications();
    device.view.halves[device.view.availEvent] = 3;
    addRequest(driver, 2);
    expect(driver.publish()).toBe(false); // 2 -> 3 does not pass 3
    addRequest(driver, 3);
    addRequest(driver, 4);
    expect(driver.publish()).toBe(true); // 3 -> 5 passes 3: one notification for the batch
  });

  test('event idx: the device interrupts only when used idx passes used_event', () => {
    const { driver, device, chain } = makeQueue(8, true);
    for (let n = 0; n < 4; n++) addRequest(driver, n);
    driver.publish();
    driver.disableInterrupts(); // ignored with event idx
    driver.setUsedEvent(2); // interrupt once the third completion is used
    for (let n = 0; n < 4; n++) {
      device.pop(chain);
      device.push(chain.head, 0);
      expect(device.publishUsed()).toBe(n === 2);
    }
  });

  test('vring_need_event holds across the 16-bit wrap', () => {
    expect(virtqNeedEvent(0xffff, 0x0001, 0xfffe)).toBe(true);
    expect(virtqNeedEvent(0x0001, 0x0001, 0xfffe)).toBe(false);
    expect(virtqNeedEvent(0xfffe, 0x0000, 0xfffe)).toBe(true);
  });
});

describe('split virtqueue: the device validates what the driver wrote', () => {
  test('a head index out of range is a counted drop and the queue goes on', () => {
    const { layout, driver, device, chain } = makeQueue();
    addRequest(driver, 0);
    addRequest(driver, 1);
    driver.publish();
    device.view.halves[device.view.availRing] = layout.size; // corrupt the first ring entry
    expect(device.pop(chain)).toBe(VIRTQ_POP_DROPPED);
    expect(device.lastDrop).toBe(VIRTQ_DROP_HEAD_RANGE);
    expect(device.pop(chain)).toBe(VIRTQ_POP_CHAIN);
    expect(device.dropped[VIRTQ_DROP_HEAD_RANGE]).toBe(1);
  });

  test('a chain that loops is a counted drop, not an endless walk', () => {
    const { memory, layout, driver, device, chain } = makeQueue();
    const head = addRequest(driver, 0);
    driver.publish();
    // Point the head at itself: a loop of one.
    memory.words[descFlagsWord(layout, head)] = VIRTQ_DESC_F_NEXT | (head << 16);
    expect(device.pop(chain)).toBe(VIRTQ_POP_DROPPED);
    expect(device.dropped[VIRTQ_DROP_LOOP]).toBe(1);
  });

  test('a next index out of range is a counted drop', () => {
    const { memory, layout, driver, device, chain } = makeQueue();
    const head = addRequest(driver, 0);
    driver.publish();
    memory.words[descFlagsWord(layout, head)] = VIRTQ_DESC_F_NEXT | (0x8000 << 16);
    expect(device.pop(chain)).toBe(VIRTQ_POP_DROPPED);
    expect(device.dropped[VIRTQ_DROP_NEXT_RANGE]).toBe(1);
  });

  test('a buffer outside guest RAM is a counted drop', () => {
    const { memory, driver, device, chain } = makeQueue();
    driver.beginChain(1);
    driver.addWritable(memory.size - 2, 4);
    driver.endChain();
    driver.publish();
    expect(device.pop(chain)).toBe(VIRTQ_POP_DROPPED);
    expect(device.dropped[VIRTQ_DROP_BUFFER_RANGE]).toBe(1);
  });

  test('a device-readable buffer after a writable one is a counted drop', () => {
    const { memory, layout, driver, device, chain } = makeQueue();
    const head = addRequest(driver, 0);
    driver.publish();
    // Swap the roles: the first buffer writable, the second readable.
    const w = descFlagsWord(layout, head);
    const next = memory.words[w] >>> 16;
    memory.words[w] = VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT | (next << 16);
    memory.words[descFlagsWord(layout, next)] = 0;
    expect(device.pop(chain)).toBe(VIRTQ_POP_DROPPED);
    expect(device.dropped[VIRTQ_DROP_READABLE_AFTER_WRITABLE]).toBe(1);
  });

  test('an indirect descriptor, not negotiated, is a counted drop', () => {
    const { memory, layout, driver, device, chain } = makeQueue();
    const head = addRequest(driver, 0);
    driver.publish();
    memory.words[descFlagsWord(layout, head)] |= VIRTQ_DESC_F_INDIRECT;
    expect(device.pop(chain)).toBe(VIRTQ_POP_DROPPED);
    expect(device.dropped[VIRTQ_DROP_INDIRECT]).toBe(1);
  });

  test('an avail idx more than a queue ahead is counted and read as empty', () => {
    const { driver, device, chain } = makeQueue();
    addRequest(driver, 0);
    driver.publish();
    Atomics.store(device.view.halves, device.view.availIdx, 100);
    expect(device.pop(chain)).toBe(VIRTQ_POP_EMPTY);
    expect(device.available()).toBe(0);
    expect(device.corruptAvailIndex).toBe(1);
  });

  test('the driver counts a used id that is not outstanding and a used idx too far ahead', () => {
    const { driver, device, chain, used } = makeQueue();
    const head = addRequest(driver, 0);
    driver.publish();
    device.pop(chain);
    device.push(7, 0); // never published by the driver
    device.push(head, 4);
    device.publishUsed();
    expect(driver.reap(used)).toBe(true);
    expect(used.id).toBe(head);
    expect(driver.badUsedId).toBe(1);
    Atomics.store(device.view.halves, device.view.usedIdx, 1000);
    expect(driver.reap(used)).toBe(false);
    expect(driver.corruptUsedIndex).toBe(1);
  });
});
