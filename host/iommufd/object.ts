/**
 * The uniform object header of the registry (iommufd_object): an id, a type and a `users`
 * refcount that starts at 1 (the table's own). A holder of another object adds to its `users`;
 * IOMMU_DESTROY succeeds only when the table is the last user.
 */
export type ObjectType =
  | 'IOAS'
  | 'DEVICE'
  | 'HWPT_PAGING'
  | 'HWPT_NESTED'
  | 'FAULT'
  | 'VIOMMU'
  | 'VDEVICE'
  | 'VEVENTQ'
  | 'HW_QUEUE'
  | 'SELFTEST';

export abstract class IommufdObject {
  abstract readonly type: ObjectType;
  id = 0;
  users = 1;

  /** Take a reference (a holder keeps this object alive). */
  hold(): void {
    this.users++;
  }

  /** Drop a reference taken with `hold()`. */
  put(): void {
    if (this.users <= 1) throw new Error(`refcount underflow on ${this.type} ${this.id}`);
    this.users--;
  }

  /** Release what the object holds; called once, when the table destroys it. */
  destroy(): void {}

  /** Undo a half-built object whose creation failed before it was finalized. */
  abort(): void {
    this.destroy();
  }
}
