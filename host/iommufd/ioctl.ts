/**
 * How an ioctl is declared and entered (iommufd main.c's ioctl table and its copy-in): a command
 * names each of its argument fields with the field's uAPI type and the checks the kernel makes on
 * it before the body runs. `checkArgs` makes those checks once, for every command, and hands the
 * body a checked copy of the arguments, the way the kernel's body gets its own copy of the struct.
 *
 * The checks, in order: every field is present unless it may be left out (a struct shorter than
 * the command's minimum size is EINVAL), then every field has its type (EINVAL), then each field's
 * value rules in declaration order: unknown flag bits (EOPNOTSUPP), a refused zero (the errno the
 * field names), a value above the maximum (EINVAL). A field left out reads as zero, as the kernel
 * zero-fills the tail of a shorter struct.
 */
import { ErrnoError } from '../iommu/errno.ts';
import type { IommuDevice } from '../iommu/iommu-ops.ts';
import type { IommufdCtx } from './context.ts';
import { type Errno, IommufdError } from './errors.ts';
import { type IovaRange, U64_MAX } from './iova.ts';

/**
 * The uAPI type of an argument field: `pasid` is a u32 whose absence means the RID, `bytes` a user
 * buffer (absent: none), `ranges` an array of IOVA ranges, `device` the device a VFIO bind names.
 */
export type FieldType = 'u32' | 'u64' | 'pasid' | 'bytes' | 'ranges' | 'device';

export interface Field<T extends FieldType = FieldType> {
  readonly type: T;
  /** The field may be left out and then reads as zero; without this, leaving it out is EINVAL. */
  readonly optional?: boolean;
  /** The flag bits the command knows: any other bit set is EOPNOTSUPP. */
  readonly mask?: number;
  /** Zero is refused, with this errno. */
  readonly nonzero?: Errno;
  /** The largest value accepted: above it is EINVAL. */
  readonly max?: number;
}

/** The field type that carries values of `V` (a command field's TypeScript type). */
type FieldTypeOf<V> = [V] extends [number]
  ? 'u32'
  : [V] extends [bigint]
    ? 'u64'
    : [V] extends [number | undefined]
      ? 'pasid'
      : [V] extends [Uint8Array | undefined]
        ? 'bytes'
        : [V] extends [readonly IovaRange[]]
          ? 'ranges'
          : [V] extends [IommuDevice]
            ? 'device'
            : never;

/** One declared field per field of the checked command `C`, each of the type its values have. */
export type Fields<C> = { readonly [K in keyof C]-?: Field<FieldTypeOf<C[K]>> };

/** One row of the ioctl table: the command's name, its argument fields, and its body. */
export interface Ioctl<C, R> {
  readonly name: string;
  readonly fields: Fields<C>;
  readonly handler: (ctx: IommufdCtx, cmd: C) => R;
}

/** A row of the table; the body's checked command type `C` decides what `fields` must declare. */
export function ioctl<C, R>(
  name: string,
  fields: NoInfer<Fields<C>>,
  handler: (ctx: IommufdCtx, cmd: C) => R,
): Ioctl<C, R> {
  return { name, fields, handler };
}

function u32(value: unknown, field: string): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > 0xffff_ffff)
    throw new IommufdError('EINVAL', `${field} must be a u32 number`);
  return value;
}

function u64(value: unknown, field: string): bigint {
  if (typeof value !== 'bigint' || value < 0n || value > U64_MAX)
    throw new IommufdError('EINVAL', `${field} must be a u64 bigint`);
  return value;
}

/** A present field's value, checked against its type. */
function typed(spec: Field, value: unknown, field: string): unknown {
  switch (spec.type) {
    case 'u32':
    case 'pasid':
      return u32(value, field);
    case 'u64':
      return u64(value, field);
    case 'bytes':
      if (!(value instanceof Uint8Array)) throw new IommufdError('EINVAL', `${field} must be a Uint8Array`);
      return value;
    case 'ranges':
      if (!Array.isArray(value)) throw new IommufdError('EINVAL', `${field} must be an array of ranges`);
      for (let i = 0; i < value.length; i++) {
        const range = value[i] as Partial<IovaRange> | undefined;
        u64(range?.start, `${field}[${i}].start`);
        u64(range?.last, `${field}[${i}].last`);
      }
      return value;
    case 'device':
      if (typeof value !== 'object' || value === null)
        throw new IommufdError('EINVAL', `${field} must be a device`);
      return value;
  }
}

/** The value a field left out reads as: zero, or nothing for a PASID (the RID) or a buffer. */
function zero(spec: Field): unknown {
  return spec.type === 'u32' ? 0 : spec.type === 'u64' ? 0n : undefined;
}

/**
 * The declared checks of `op` on the caller's `args`, in the order the header gives; returns the
 * checked copy the body gets (fields left out read as zero; undeclared fields are not copied).
 */
export function checkArgs<C>(op: Ioctl<C, unknown>, args: Partial<C>): C {
  const fields = op.fields as Readonly<Record<string, Field>>;
  const given = args as Readonly<Record<string, unknown>>;
  const cmd: Record<string, unknown> = {};
  for (const field in fields) {
    const spec = fields[field];
    const value = given[field];
    if (value !== undefined) cmd[field] = typed(spec, value, field);
    else if (spec.optional) cmd[field] = zero(spec);
    else throw new IommufdError('EINVAL', `${op.name} needs ${field}`);
  }
  for (const field in fields) {
    const spec = fields[field];
    const value = cmd[field];
    if (typeof value !== 'number' && typeof value !== 'bigint') continue;
    if (spec.mask !== undefined && (Number(value) & ~spec.mask) !== 0) {
      throw new IommufdError(
        'EOPNOTSUPP',
        spec.mask === 0 ? `${op.name} takes no ${field}` : `unknown ${op.name} ${field}`,
      );
    }
    if (spec.nonzero !== undefined && (value === 0 || value === 0n))
      throw new IommufdError(spec.nonzero, `${op.name}: ${field} is 0`);
    if (spec.max !== undefined && value > spec.max)
      throw new IommufdError('EINVAL', `${op.name}: ${field} ${value} is above ${spec.max}`);
  }
  return cmd as C;
}

/** Driver refusals keep their errno but become registry errors. */
export function driverCall<T>(fn: () => T): T {
  try {
    return fn();
  } catch (error) {
    if (error instanceof ErrnoError && !(error instanceof IommufdError))
      throw new IommufdError(error.errno, error.message.replace(/^\w+: /, ''));
    throw error;
  }
}
