/**
 * Deterministic benchmark data: mixed runs (random, stored raw by zstd, or word text, zstd
 * ≈ 3–4×), incompressible random bytes, and the sha256 of pieces of a source file (what a reader
 * of those pieces through a mount must see).
 */
import * as fs from 'node:fs';
import * as crypto from 'node:crypto';
import { MiB } from './harness';

/** xorshift32: deterministic, cheap pseudo-random bytes. */
class Rng {
  private a: number;
  constructor(seed: number) {
    this.a = seed >>> 0 || 1;
  }
  /** 32-bit xorshift */
  next(): number {
    let x = this.a;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.a = x >>> 0;
    return this.a;
  }
  fill(buf: Buffer): void {
    let i = 0;
    for (; i + 4 <= buf.length; i += 4) buf.writeUInt32LE(this.next(), i);
    for (; i < buf.length; i++) buf[i] = this.next() & 0xff;
  }
}

const WORDS = ('the of and to in is was that for on with as by at from this be are or it an which have not has but were ' +
  'image chunk blob layer cache kernel daemon read write fetch verify digest compress erofs fscache nydus rafs bootstrap ' +
  'container registry lazy mount object cookie volume request complete sequential random window amplify').split(' ');
const WORD_BUFS = WORDS.map((w) => Buffer.from(w + ' ', 'latin1'));

/** Mixed data: runs of 256 KiB – 2 MiB, each random (incompressible) or word text (zstd ≈ 3–4×). */
export function writeMixedFile(file: string, size: number, seed = 1): { sha256: string; randomBytes: number; textBytes: number } {
  const rng = new Rng(seed);
  const h = crypto.createHash('sha256');
  const fd = fs.openSync(file, 'w');
  let done = 0;
  let randomBytes = 0;
  let textBytes = 0;
  try {
    while (done < size) {
      const run = Math.min(size - done, (256 << 10) + (rng.next() % (7 * 256)) * 1024);
      const buf = Buffer.allocUnsafe(run);
      if (rng.next() & 1) {
        rng.fill(buf);
        randomBytes += run;
      } else {
        let o = 0;
        while (o < run) {
          const x = rng.next();
          const w = WORD_BUFS[x % WORD_BUFS.length];
          o += w.copy(buf, o);
          // a number now and then, and line breaks, so it is text-like but not too repetitive
          if ((x >>> 8) % 5 === 0 && o + 6 <= run) o += buf.write(String((x >>> 12) % 100000), o, 'latin1');
          if ((x >>> 20) % 12 === 0 && o < run) buf[o++] = 10;
        }
        textBytes += run;
      }
      h.update(buf);
      fs.writeSync(fd, buf, 0, run, null);
      done += run;
    }
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  return { sha256: h.digest('hex'), randomBytes, textBytes };
}

/** Deterministic random bytes (AES-128-CTR keystream): incompressible, so zstd stores chunks raw. */
export function writeRandomFile(file: string, size: number): string {
  const cipher = crypto.createCipheriv('aes-128-ctr', Buffer.alloc(16, 9), Buffer.alloc(16, 0));
  const zeros = Buffer.alloc(4 * MiB);
  const h = crypto.createHash('sha256');
  const fd = fs.openSync(file, 'w');
  try {
    for (let done = 0; done < size;) {
      const n = Math.min(zeros.length, size - done);
      const b = cipher.update(zeros.subarray(0, n));
      h.update(b);
      fs.writeSync(fd, b, 0, b.length, done);
      done += b.length;
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

export function expectedPiecesSha(srcFile: string, piece: number, offsets: number[]): string {
  const fd = fs.openSync(srcFile, 'r');
  const h = crypto.createHash('sha256');
  const b = Buffer.allocUnsafe(piece);
  try {
    for (const off of offsets) {
      if (fs.readSync(fd, b, 0, piece, off) !== piece) throw new Error(`${srcFile}: short read at ${off}`);
      h.update(b);
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

const num = (x: unknown): number => (typeof x === 'number' ? x : NaN);
