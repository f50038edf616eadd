/**
 * Raw LZ4 *block* codec (no frame, no size prefix), the format behind nydus' `lz4_block`
 * compressor. Written from the block format description:
 *
 *   block    := sequence* last-sequence
 *   sequence := token [lit-len-ext] literals offset:u16le [match-len-ext]
 *   token    := (literal length nibble << 4) | (match length - 4 nibble); a nibble of 15
 *               is followed by extension bytes added to it, each 255 meaning "more follows"
 *   last     := token [lit-len-ext] literals        (no offset, no match)
 *
 * Encoder end-of-block rules (so that any conforming decoder accepts our output): the last
 * 5 bytes of the input are always literals and no match starts within the last 12 bytes;
 * inputs shorter than 13 bytes are emitted as a single literal run. Offsets are 1..65535.
 *
 * The decoder is strict: it checks every length and offset against the input and output
 * bounds before touching memory and requires the block to produce exactly the expected
 * number of bytes, so malformed input raises BadBlobError instead of reading or writing out
 * of bounds. Its work is bounded by the input length plus the output size, so it never hangs.
 */
import { BadBlobError, invalidArgument } from '../errors';

const MIN_MATCH = 4;
const LAST_LITERALS = 5;
const MF_LIMIT = 12;
const MIN_INPUT_FOR_MATCH = MF_LIMIT + 1;
const MAX_OFFSET = 65535;
const MAX_HASH_LOG = 16;
const MIN_HASH_LOG = 8;
/** After this many misses (>> SKIP_TRIGGER) the search step grows, so incompressible data stays fast. */
const SKIP_TRIGGER = 6;
/** Runs shorter than this are copied byte by byte; longer ones via memmove. */
const SHORT_COPY = 24;

/** Largest block the codec handles (LZ4's own limit, ~2 GiB). */
export const LZ4_MAX_INPUT_SIZE = 0x7e000000;

/** Worst-case size of `lz4BlockCompress` output for `n` input bytes. */
export function lz4BlockBound(n: number): number {
  return n + Math.floor(n / 255) + 16;
}

// Per-thread scratch state, reused across calls (each worker thread has its own copy).
const hashTable = new Int32Array(1 << MAX_HASH_LOG);
let scratch: Buffer = Buffer.allocUnsafeSlow(0);

function scratchOf(size: number): Buffer {
  if (scratch.length < size) scratch = Buffer.allocUnsafeSlow(Math.max(size, 64 * 1024));
  return scratch;
}

/** Appends a length extension (value already reduced by 15) at `op`; returns the new `op`. */
function writeLenExt(dst: Buffer, op: number, len: number): number {
  while (len >= 255) {
    dst[op++] = 255;
    len -= 255;
  }
  dst[op++] = len;
  return op;
}

function copyLiterals(src: Buffer, from: number, to: number, dst: Buffer, op: number): void {
  const len = to - from;
  if (len < SHORT_COPY) {
    for (let i = 0; i < len; i++) dst[op + i] = src[from + i];
  } else {
    src.copy(dst, op, from, to);
  }
}

/**
 * Compresses `src` into one raw LZ4 block (greedy single-probe hash matcher). The result is
 * a fresh Buffer of exactly the compressed length; an empty input gives the 1-byte block 0x00.
 */
export function lz4BlockCompress(src: Buffer): Buffer {
  const n = src.length;
  if (n > LZ4_MAX_INPUT_SIZE) {
    throw invalidArgument(`lz4BlockCompress: input of ${n} bytes exceeds the LZ4 block limit of ${LZ4_MAX_INPUT_SIZE}`);
  }
  const dst = scratchOf(lz4BlockBound(n));
  let op = 0;
  let anchor = 0;

  if (n >= MIN_INPUT_FOR_MATCH) {
    // Smaller tables for small inputs keep the per-call reset cheap.
    let hashLog = MIN_HASH_LOG;
    while (hashLog < MAX_HASH_LOG && 1 << hashLog < n) hashLog++;
    const shift = 32 - hashLog;
    const table = hashTable;
    table.fill(-1, 0, 1 << hashLog);

    const mfLimit = n - MF_LIMIT; // a match may start at ip < mfLimit
    const matchLimit = n - LAST_LITERALS; // a match must end at or before matchLimit

    let ip = 0;
    outer: while (ip < mfLimit) {
      // --- find a match starting at or after ip
      let ref = -1;
      let seq = 0;
      let attempts = 1 << SKIP_TRIGGER;
      for (;;) {
        seq = src[ip] | (src[ip + 1] << 8) | (src[ip + 2] << 16) | (src[ip + 3] << 24);
        const h = Math.imul(seq, -1640531535) >>> shift; // 2654435761, Knuth's multiplier
        ref = table[h];
        table[h] = ip;
        if (
          ref >= 0 &&
          ip - ref <= MAX_OFFSET &&
          (src[ref] | (src[ref + 1] << 8) | (src[ref + 2] << 16) | (src[ref + 3] << 24)) === seq
        ) {
          break;
        }
        ip += attempts++ >>> SKIP_TRIGGER;
        if (ip >= mfLimit) break outer;
      }

      // --- extend backwards over pending literals
      while (ip > anchor && ref > 0 && src[ip - 1] === src[ref - 1]) {
        ip--;
        ref--;
      }

      // --- extend forwards, 4 bytes at a time while they match
      let p = ip + MIN_MATCH;
      let q = ref + MIN_MATCH;
      while (
        p + 4 <= matchLimit &&
        src[p] === src[q] &&
        src[p + 1] === src[q + 1] &&
        src[p + 2] === src[q + 2] &&
        src[p + 3] === src[q + 3]
      ) {
        p += 4;
        q += 4;
      }
      while (p < matchLimit && src[p] === src[q]) {
        p++;
        q++;
      }

      // --- emit the sequence
      const litLen = ip - anchor;
      const mlCode = p - ip - MIN_MATCH;
      const tokenPos = op++;
      let token: number;
      if (litLen >= 15) {
        token = 15 << 4;
        op = writeLenExt(dst, op, litLen - 15);
      } else {
        token = litLen << 4;
      }
      copyLiterals(src, anchor, ip, dst, op);
      op += litLen;
      const offset = ip - ref;
      dst[op++] = offset & 0xff;
      dst[op++] = offset >>> 8;
      if (mlCode >= 15) {
        token |= 15;
        op = writeLenExt(dst, op, mlCode - 15);
      } else {
        token |= mlCode;
      }
      dst[tokenPos] = token;

      ip = p;
      anchor = p;
      if (ip >= mfLimit) break;
      // Index a position inside the match so that the next search has a fresh candidate.
      const k = ip - 2;
      const seq2 = src[k] | (src[k + 1] << 8) | (src[k + 2] << 16) | (src[k + 3] << 24);
      table[Math.imul(seq2, -1640531535) >>> shift] = k;
    }
  }

  // --- last literals (always at least the final 5 bytes when n >= 13)
  const litLen = n - anchor;
  const tokenPos = op++;
  if (litLen >= 15) {
    dst[tokenPos] = 15 << 4;
    op = writeLenExt(dst, op, litLen - 15);
  } else {
    dst[tokenPos] = litLen << 4;
  }
  copyLiterals(src, anchor, n, dst, op);
  op += litLen;

  const out = Buffer.allocUnsafeSlow(op);
  dst.copy(out, 0, 0, op);
  return out;
}

function fail(reason: string, ctx: Record<string, unknown>): never {
  throw new BadBlobError(`lz4_block: malformed block: ${reason}`, { codec: 'lz4_block', ...ctx });
}

/**
 * Decodes one raw LZ4 block that must expand to exactly `uncompressedSize` bytes.
 * Throws BadBlobError on any malformed input (truncation, zero or out-of-window offset,
 * output overrun, trailing bytes, size mismatch). A zero-length input is accepted only
 * for `uncompressedSize === 0`.
 */
export function lz4BlockDecompress(src: Buffer, uncompressedSize: number): Buffer {
  if (!Number.isSafeInteger(uncompressedSize) || uncompressedSize < 0 || uncompressedSize > LZ4_MAX_INPUT_SIZE) {
    throw invalidArgument(`lz4BlockDecompress: invalid uncompressed size ${uncompressedSize}`);
  }
  const iend = src.length;
  const oend = uncompressedSize;
  if (iend === 0) {
    if (oend === 0) return Buffer.alloc(0);
    fail(`empty input, expected ${oend} output bytes`, { compressedSize: 0, uncompressedSize: oend });
  }
  // Every input byte expands to at most 255 output bytes; reject impossible sizes before
  // allocating the output.
  if (oend > iend * 255 + 32) {
    fail(`${iend} input bytes cannot expand to ${oend} bytes`, { compressedSize: iend, uncompressedSize: oend });
  }
  // allocUnsafeSlow: the result owns its ArrayBuffer (transferable); every byte is written
  // before it is returned because op must reach oend exactly.
  const dst = Buffer.allocUnsafeSlow(oend);
  let ip = 0;
  let op = 0;

  for (;;) {
    if (ip >= iend) fail(`truncated: missing token at input offset ${ip}`, { at: ip, compressedSize: iend });
    const token = src[ip++];

    // literals
    let litLen = token >>> 4;
    if (litLen === 15) {
      let b: number;
      do {
        if (ip >= iend) fail(`truncated literal length at input offset ${ip}`, { at: ip, compressedSize: iend });
        b = src[ip++];
        litLen += b;
      } while (b === 255);
    }
    if (litLen > iend - ip) {
      fail(`literal run of ${litLen} bytes at input offset ${ip} overruns the ${iend}-byte input`, { at: ip });
    }
    if (litLen > oend - op) {
      fail(`literal run of ${litLen} bytes at output offset ${op} overruns the ${oend}-byte output`, { at: ip });
    }
    if (litLen < SHORT_COPY) {
      for (let i = 0; i < litLen; i++) dst[op + i] = src[ip + i];
    } else {
      src.copy(dst, op, ip, ip + litLen);
    }
    ip += litLen;
    op += litLen;

    if (ip === iend) break; // last sequence: literals only

    // match
    if (iend - ip < 2) fail(`truncated match offset at input offset ${ip}`, { at: ip, compressedSize: iend });
    const offset = src[ip] | (src[ip + 1] << 8);
    ip += 2;
    if (offset === 0) fail(`zero match offset at input offset ${ip - 2}`, { at: ip - 2 });
    if (offset > op) {
      fail(`match offset ${offset} at input offset ${ip - 2} reaches before the start of the output (at ${op})`, {
        at: ip - 2,
      });
    }
    let matchLen = token & 15;
    if (matchLen === 15) {
      let b: number;
      do {
        if (ip >= iend) fail(`truncated match length at input offset ${ip}`, { at: ip, compressedSize: iend });
        b = src[ip++];
        matchLen += b;
      } while (b === 255);
    }
    matchLen += MIN_MATCH;
    if (matchLen > oend - op) {
      fail(`match of ${matchLen} bytes at output offset ${op} overruns the ${oend}-byte output`, { at: ip });
    }
    const m = op - offset;
    if (matchLen < SHORT_COPY) {
      // byte order matters for overlapping matches (offset < length)
      for (let i = 0; i < matchLen; i++) dst[op + i] = dst[m + i];
    } else if (offset >= matchLen) {
      dst.copyWithin(op, m, m + matchLen);
    } else {
      // Overlapping: [m, op) repeats with period `offset`; copy in doubling steps that keep
      // the distance between source and destination a multiple of the period.
      let done = 0;
      while (done < matchLen) {
        const c = Math.min(offset + done, matchLen - done);
        dst.copyWithin(op + done, m, m + c);
        done += c;
      }
    }
    op += matchLen;
  }

  if (op !== oend) {
    fail(`block decodes to ${op} bytes, expected ${oend}`, { actualSize: op, uncompressedSize: oend });
  }
  return dst;
}
