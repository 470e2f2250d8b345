/**
 * One object table per open /dev/iommu (iommufd main.c): ids start at 1 and each new object takes
 * the lowest free id. Creation is two-phase: `reserve()` takes an id that lookups cannot see, then
 * `finalize()` publishes the object or `abort()` releases the id. Tombstones keep an id reserved
 * (destroy gives ENOENT, the id is not reused) until the table is closed.
 */
import { IommufdError } from './errors.ts';
import type { FaultInjector } from './fault-injector.ts';
import type { IommufdObject, ObjectType } from './object.ts';

export const MAX_ID = 0x7fff_ffff;

const RESERVED = 'reserved';
const TOMBSTONE = 'tombstone';
type Slot = IommufdObject | typeof RESERVED | typeof TOMBSTONE | undefined;

export class ObjectTable {
  private readonly slots: Slot[] = [undefined];

  constructor(private readonly injector: FaultInjector) {}

  /** Reserve the lowest free id; invisible to lookups until finalized. */
  reserve(): number {
    this.injector.check('id-reserve');
    let id = 1;
    while (id < this.slots.length && this.slots[id] !== undefined) id++;
    if (id > MAX_ID) throw new IommufdError('ENOSPC', 'object ids exhausted');
    this.slots[id] = RESERVED;
    return id;
  }

  finalize<T extends IommufdObject>(id: number, object: T): T {
    if (this.slots[id] !== RESERVED) throw new Error(`finalize of id ${id} that was not reserved`);
    object.id = id;
    this.slots[id] = object;
    return object;
  }

  /** Creation failed: undo the object (if built) and free the id. */
  abort(id: number, object?: IommufdObject): void {
    if (this.slots[id] !== RESERVED) throw new Error(`abort of id ${id} that was not reserved`);
    object?.abort();
    this.release(id);
  }

  /**
   * Reserve, build, finalize, or abort on any failure: the whole two-phase creation in one call.
   * `build` gets the reserved id; the object it returns is published only if it did not throw.
   */
  create<T extends IommufdObject>(build: (id: number) => T): T {
    const id = this.reserve();
    let object: T;
    try {
      object = build(id);
    } catch (error) {
      this.abort(id);
      throw error;
    }
    return this.finalize(id, object);
  }

  /** The live object `id` of one of `types`, or ENOENT. */
  get<T extends IommufdObject>(id: number, ...types: ObjectType[]): T {
    const object = this.find(id);
    if (!object || (types.length > 0 && !types.includes(object.type))) {
      throw new IommufdError(
        'ENOENT',
        `no ${types.length > 0 ? types.join(' or ') : 'object'} with id ${id}`,
      );
    }
    return object as T;
  }

  /** The live object `id`, or undefined (reserved ids and tombstones are not live). */
  find(id: number): IommufdObject | undefined {
    if (!Number.isInteger(id) || id < 1 || id >= this.slots.length) return undefined;
    const slot = this.slots[id];
    return typeof slot === 'object' ? slot : undefined;
  }

  /** IOMMU_DESTROY: ENOENT for an unused, reserved or tombstoned id; EBUSY while others hold it. */
  destroy(id: number): void {
    const object = this.find(id);
    if (!object) throw new IommufdError('ENOENT', `no object with id ${id}`);
    if (object.users !== 1) {
      throw new IommufdError('EBUSY', `${object.type} ${id} is still in use (${object.users - 1} holder(s))`);
    }
    this.remove(object);
  }

  /** Destroy on the registry's own behalf (auto domains, unbind): no EBUSY check. */
  remove(object: IommufdObject): void {
    if (this.slots[object.id] !== object) throw new Error(`${object.type} ${object.id} is not in the table`);
    this.release(object.id);
    object.destroy();
  }

  /** Destroy the object but keep its id reserved until close. */
  tombstone(object: IommufdObject): void {
    this.remove(object);
    this.slots[object.id] = TOMBSTONE;
  }

  /**
   * close(): destroy every object only the table holds, leaf first, until nothing more goes.
   * Returns how many objects are left (held by open fds; they go when those fds close).
   */
  closeAll(): number {
    for (;;) {
      let progress = false;
      for (let id = this.slots.length - 1; id >= 1; id--) {
        const object = this.find(id);
        if (object && object.users === 1) {
          this.remove(object);
          progress = true;
        }
      }
      if (!progress) break;
    }
    const left = this.objects().length;
    if (left === 0) this.slots.length = 1;
    return left;
  }

  objects(): IommufdObject[] {
    return this.slots.filter((s): s is IommufdObject => typeof s === 'object');
  }

  /** Ids reserved but not live: creations in progress and tombstones. */
  reservedIds(): number {
    return this.slots.filter((s) => s === RESERVED || s === TOMBSTONE).length;
  }

  private release(id: number): void {
    this.slots[id] = undefined;
    while (this.slots.length > 1 && this.slots[this.slots.length - 1] === undefined) this.slots.length--;
  }
}
