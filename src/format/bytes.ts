/** Little-endian helpers over Buffer that keep u64 values as safe JS numbers. */
export function readU64(buf: Buffer, off: number): number {
  const v = buf.readBigUInt64LE(off);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
    // Callers validate ranges anyway; a value this large is never legitimate on disk here.
    return Number.MAX_SAFE_INTEGER;
  }
  return Number(v);
}
export function writeU64(buf: Buffer, off: number, v: number): void {
  buf.writeBigUInt64LE(BigInt(v), off);
}
export function readI64(buf: Buffer, off: number): number {
  return Number(buf.readBigInt64LE(off));
}
export function writeI64(buf: Buffer, off: number, v: number): void {
  buf.writeBigInt64LE(BigInt(v), off);
}
/** ASCII string up to the first NUL inside a fixed field. */
export function readCString(buf: Buffer, off: number, len: number): string {
  const field = buf.subarray(off, off + len);
  const nul = field.indexOf(0);
  return field.subarray(0, nul < 0 ? len : nul).toString('latin1');
}
export function writeCString(buf: Buffer, off: number, len: number, s: string): void {
  const b = Buffer.from(s, 'latin1');
  if (b.length > len) throw new RangeError(`string "${s}" longer than field of ${len} bytes`);
  b.copy(buf, off);
  buf.fill(0, off + b.length, off + len);
}
export function isZero(buf: Buffer): boolean {
  // Compare in 8-byte strides; fast enough for 1 MiB chunks and tables.
  let i = 0;
  const n = buf.length;
  for (; i + 8 <= n; i += 8) if (buf.readBigUInt64LE(i) !== 0n) return false;
  for (; i < n; i++) if (buf[i] !== 0) return false;
  return true;
}
