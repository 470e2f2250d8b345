/** The registry's errors as tests look at them. */
import { type Errno, IommufdError } from '../../host/iommufd/errors.ts';

/** The IommufdError `run` throws; fails the test if it succeeds or throws anything else. */
export function errorOf(run: () => unknown): IommufdError {
  try {
    run();
  } catch (error) {
    if (error instanceof IommufdError) return error;
    throw error;
  }
  throw new Error('expected an IommufdError, the call succeeded');
}

/** The errno of what `run` throws; fails the test if it succeeds. */
export function errnoOf(run: () => unknown): Errno {
  return errorOf(run).errno;
}
