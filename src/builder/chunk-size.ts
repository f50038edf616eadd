/** The --chunk-size option (its own module: the CLI checks it without loading the builder). */
import { DEFAULT_CHUNK_SIZE, MIN_CHUNK_SIZE, MAX_CHUNK_SIZE } from '../format/constants';
import { invalidArgument } from '../errors';

export function parseChunkSize(v: string | number | undefined): number {
  if (v === undefined) return DEFAULT_CHUNK_SIZE;
  const n = typeof v === 'number' ? v : v.startsWith('0x') || v.startsWith('0X') ? parseInt(v, 16) : Number(v);
  if (!Number.isInteger(n) || n < MIN_CHUNK_SIZE || n > MAX_CHUNK_SIZE || (n & (n - 1)) !== 0) {
    throw invalidArgument(`--chunk-size ${v}: must be a power of two between 0x1000 and 0x1000000`);
  }
  return n;
}

