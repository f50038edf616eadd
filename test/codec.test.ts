import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { execFileSync, spawnSync } from 'node:child_process';

import { NydusError, BadBlobError, DigestMismatchError } from '../src/errors';
import type { CompressorName } from '../src/format/constants';
import { lz4BlockCompress, lz4BlockDecompress, lz4BlockBound } from '../src/codec/lz4';
import { compress, decompress, compressChunk, decompressChunk } from '../src/codec/compress';
import { digest, digestReady, sha256Hex, createSha256, createDigest, blake3Implementation } from '../src/codec/digest';
import { createBLAKE3 } from 'hash-wasm';
import { ChunkPool } from '../src/codec/chunk-pool';

// ---------------------------------------------------------------------------------------
// data generators

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Prose / source-like bytes: Zipf-ish words from a vocabulary, numbers, punctuation. */
function textLike(n: number, seed = 1): Buffer {
  const rnd = mulberry32(seed);
  const syll = ['ka', 'lo', 'mi', 'ne', 'ru', 'ta', 'shi', 'fon', 'der', 'ix', 'pa', 'gu', 'zen', 'o', 'el', 'bra'];
  const vocab: string[] = [];
  for (let i = 0; i < 600; i++) {
    let w = '';
    const k = 1 + Math.floor(rnd() * 4);
    for (let j = 0; j < k; j++) w += syll[Math.floor(rnd() * syll.length)];
    vocab.push(w);
  }
  const parts: string[] = [];
  let len = 0;
  while (len < n) {
    const r = rnd();
    let w: string;
    if (r < 0.05) w = String(Math.floor(rnd() * 100000));
    else if (r < 0.1) w = '\n' + ' '.repeat(Math.floor(rnd() * 8));
    else w = vocab[Math.floor(Math.pow(rnd(), 3) * vocab.length)];
    w += rnd() < 0.1 ? ', ' : ' ';
    parts.push(w);
    len += w.length;
  }
  return Buffer.from(parts.join('').slice(0, n), 'latin1');
}

function randomBytes(n: number, seed = 7): Buffer {
  const rnd = mulberry32(seed);
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = (rnd() * 256) | 0;
  return b;
}

const MiB = 1 << 20;
const BOUNDARY_SIZES = [
  0, 1, 2, 3, 4, 5, 11, 12, 13, 14, 15, 16, 17, 19, 20, 255, 256, 270, 4095, 4096, 4097, 65535, 65536, 65537, 65536 + 270,
];

function corpus(): { name: string; data: Buffer }[] {
  const out: { name: string; data: Buffer }[] = [
    { name: 'empty', data: Buffer.alloc(0) },
    { name: '1 byte', data: Buffer.from([0x42]) },
    { name: 'random 1MiB', data: crypto.randomBytes(MiB) },
    { name: 'text 1MiB', data: textLike(MiB) },
    { name: 'zeros 1MiB', data: Buffer.alloc(MiB) },
    { name: 'period-3 1MiB', data: Buffer.from('abc'.repeat(MiB / 3 + 1).slice(0, MiB)) },
  ];
  for (const n of BOUNDARY_SIZES) {
    out.push({ name: `text ${n}`, data: textLike(n, n + 3) });
    out.push({ name: `random ${n}`, data: randomBytes(n, n + 5) });
    out.push({ name: `zeros ${n}`, data: Buffer.alloc(n) });
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// xxHash32 (LZ4 frame checksums) and LZ4 frame helpers, for cross-checks with the lz4 CLI

const P1 = 2654435761 | 0;
const P2 = 2246822519 | 0;
const P3 = 3266489917 | 0;
const P4 = 668265263;
const P5 = 374761393;
const rotl = (x: number, r: number): number => (x << r) | (x >>> (32 - r));

function xxh32(buf: Uint8Array, seed = 0): number {
  const n = buf.length;
  const u32 = (i: number): number => buf[i] | (buf[i + 1] << 8) | (buf[i + 2] << 16) | (buf[i + 3] << 24);
  let i = 0;
  let acc: number;
  if (n >= 16) {
    let v1 = (seed + P1 + P2) | 0;
    let v2 = (seed + P2) | 0;
    let v3 = seed | 0;
    let v4 = (seed - P1) | 0;
    for (; i + 16 <= n; i += 16) {
      v1 = Math.imul(rotl((v1 + Math.imul(u32(i), P2)) | 0, 13), P1);
      v2 = Math.imul(rotl((v2 + Math.imul(u32(i + 4), P2)) | 0, 13), P1);
      v3 = Math.imul(rotl((v3 + Math.imul(u32(i + 8), P2)) | 0, 13), P1);
      v4 = Math.imul(rotl((v4 + Math.imul(u32(i + 12), P2)) | 0, 13), P1);
    }
    acc = (rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18)) | 0;
  } else {
    acc = (seed + P5) | 0;
  }
  acc = (acc + n) | 0;
  for (; i + 4 <= n; i += 4) acc = Math.imul(rotl((acc + Math.imul(u32(i), P3)) | 0, 17), P4);
  for (; i < n; i++) acc = Math.imul(rotl((acc + Math.imul(buf[i], P5)) | 0, 11), P1);
  acc ^= acc >>> 15;
  acc = Math.imul(acc, P2);
  acc ^= acc >>> 13;
  acc = Math.imul(acc, P3);
  acc ^= acc >>> 16;
  return acc >>> 0;
}

const LZ4_FRAME_MAGIC = 0x184d2204;
const BLOCK_MAX: Record<number, number> = { 4: 64 * 1024, 5: 256 * 1024, 6: MiB, 7: 4 * MiB };

interface ParsedFrame {
  blockMax: number;
  independent: boolean;
  blocks: { data: Buffer; raw: boolean }[];
  contentSize?: bigint;
  contentChecksum?: number;
}

/** Parses an LZ4 frame, verifying the header checksum and any block checksums. */
function parseLz4Frame(frame: Buffer): ParsedFrame {
  assert.equal(frame.readUInt32LE(0), LZ4_FRAME_MAGIC, 'frame magic');
  const flg = frame[4];
  const bd = frame[5];
  assert.equal(flg >>> 6, 1, 'frame version');
  assert.equal(flg & 0x02, 0, 'reserved FLG bit');
  const independent = (flg & 0x20) !== 0;
  const blockChecksum = (flg & 0x10) !== 0;
  const hasContentSize = (flg & 0x08) !== 0;
  const hasContentChecksum = (flg & 0x04) !== 0;
  const hasDictId = (flg & 0x01) !== 0;
  const blockMax = BLOCK_MAX[(bd >>> 4) & 7];
  assert.ok(blockMax, `block max size code ${(bd >>> 4) & 7}`);
  let pos = 6;
  let contentSize: bigint | undefined;
  if (hasContentSize) {
    contentSize = frame.readBigUInt64LE(pos);
    pos += 8;
  }
  if (hasDictId) pos += 4;
  assert.equal(frame[pos], (xxh32(frame.subarray(4, pos)) >>> 8) & 0xff, 'header checksum');
  pos++;
  const blocks: { data: Buffer; raw: boolean }[] = [];
  for (;;) {
    const word = frame.readUInt32LE(pos);
    pos += 4;
    if (word === 0) break;
    const len = word & 0x7fffffff;
    const data = frame.subarray(pos, pos + len);
    assert.equal(data.length, len, 'block truncated');
    pos += len;
    if (blockChecksum) {
      assert.equal(frame.readUInt32LE(pos), xxh32(data), 'block checksum');
      pos += 4;
    }
    blocks.push({ data, raw: (word & 0x80000000) !== 0 });
  }
  let contentChecksum: number | undefined;
  if (hasContentChecksum) {
    contentChecksum = frame.readUInt32LE(pos);
    pos += 4;
  }
  assert.equal(pos, frame.length, 'trailing bytes after the frame');
  return { blockMax, independent, blocks, contentSize, contentChecksum };
}

/** Decodes every block of a parsed frame with our block decoder. */
function decodeFrameWithOurs(f: ParsedFrame, totalSize: number): Buffer {
  assert.ok(f.independent, 'blocks must be independent');
  const out: Buffer[] = [];
  let left = totalSize;
  for (const b of f.blocks) {
    const size = Math.min(left, f.blockMax);
    out.push(b.raw ? b.data : lz4BlockDecompress(b.data, size));
    left -= size;
  }
  assert.equal(left, 0);
  return Buffer.concat(out);
}

/** Wraps our encoder's blocks into a frame with every checksum turned on. */
function frameWithOurBlocks(data: Buffer, bdCode: number): Buffer {
  const blockMax = BLOCK_MAX[bdCode];
  const flg = 0x40 | 0x20 | 0x10 | 0x08 | 0x04;
  const header = Buffer.alloc(15);
  header.writeUInt32LE(LZ4_FRAME_MAGIC, 0);
  header[4] = flg;
  header[5] = bdCode << 4;
  header.writeBigUInt64LE(BigInt(data.length), 6);
  header[14] = (xxh32(header.subarray(4, 14)) >>> 8) & 0xff;
  const parts: Buffer[] = [header];
  for (let off = 0; off < data.length; off += blockMax) {
    const raw = data.subarray(off, off + blockMax);
    const c = lz4BlockCompress(raw);
    const useRaw = c.length >= raw.length;
    const body = useRaw ? raw : c;
    const w = Buffer.alloc(4);
    w.writeUInt32LE((body.length | (useRaw ? 0x80000000 : 0)) >>> 0);
    const cs = Buffer.alloc(4);
    cs.writeUInt32LE(xxh32(body));
    parts.push(w, body, cs);
  }
  const tail = Buffer.alloc(8);
  tail.writeUInt32LE(0, 0);
  tail.writeUInt32LE(xxh32(data), 4);
  parts.push(tail);
  return Buffer.concat(parts);
}

/** Walks an LZ4 block's sequences and checks the encoder's end-of-block rules. */
function checkEndOfBlockRules(block: Buffer, n: number): void {
  let ip = 0;
  let op = 0;
  let lastMatchStart = -1;
  let lastMatchEnd = 0;
  for (;;) {
    const token = block[ip++];
    let lit = token >>> 4;
    if (lit === 15) for (let b = 255; b === 255; ) lit += b = block[ip++];
    ip += lit;
    op += lit;
    if (ip === block.length) break;
    const off = block.readUInt16LE(ip);
    ip += 2;
    assert.ok(off >= 1 && off <= 65535 && off <= op, `offset ${off} at output ${op}`);
    let ml = token & 15;
    if (ml === 15) for (let b = 255; b === 255; ) ml += b = block[ip++];
    ml += 4;
    lastMatchStart = op;
    op += ml;
    lastMatchEnd = op;
  }
  assert.equal(op, n);
  if (lastMatchStart >= 0) {
    assert.ok(lastMatchStart < n - 12, `match starts at ${lastMatchStart}, within the last 12 bytes of ${n}`);
    assert.ok(lastMatchEnd <= n - 5, `match ends at ${lastMatchEnd}, within the last 5 bytes of ${n}`);
  }
  if (n < 13) assert.equal(lastMatchStart, -1, 'inputs below 13 bytes are all literals');
}

let tmpDir = '';
before(() => {
  tmpDir = fs.mkdtempSync(path.join(os.tmpdir(), 'nydus-codec-test-'));
});
after(() => {
  if (tmpDir) fs.rmSync(tmpDir, { recursive: true, force: true });
});

function run(cmd: string, args: string[], input?: Buffer): Buffer {
  return execFileSync(cmd, args, { input, maxBuffer: 1 << 28, stdio: ['pipe', 'pipe', 'ignore'] });
}

function hasTool(name: string): boolean {
  return spawnSync(name, ['--version'], { stdio: 'ignore' }).status === 0;
}

// ---------------------------------------------------------------------------------------

describe('lz4 block codec', () => {
  test('round trips the corpus and obeys the end-of-block rules', () => {
    for (const { name, data } of corpus()) {
      const c = lz4BlockCompress(data);
      assert.ok(c.length <= lz4BlockBound(data.length), `${name}: within bound`);
      checkEndOfBlockRules(c, data.length);
      const d = lz4BlockDecompress(c, data.length);
      assert.ok(d.equals(data), `${name}: round trip`);
    }
  });

  test('empty input is the one-byte block 0x00', () => {
    assert.deepEqual([...lz4BlockCompress(Buffer.alloc(0))], [0]);
    assert.equal(lz4BlockDecompress(Buffer.from([0]), 0).length, 0);
    assert.equal(lz4BlockDecompress(Buffer.alloc(0), 0).length, 0);
  });

  test('compresses text and zeros well, random not much worse than its size', () => {
    assert.ok(lz4BlockCompress(Buffer.alloc(MiB)).length < 5000);
    assert.ok(lz4BlockCompress(textLike(MiB)).length < MiB * 0.7);
    assert.ok(lz4BlockCompress(crypto.randomBytes(MiB)).length <= lz4BlockBound(MiB));
  });

  test('match offsets never exceed 65535 on far repeats', () => {
    const unit = crypto.randomBytes(70000);
    const data = Buffer.concat([unit, unit, unit.subarray(0, 30000)]);
    const c = lz4BlockCompress(data);
    checkEndOfBlockRules(c, data.length);
    assert.ok(lz4BlockDecompress(c, data.length).equals(data));
  });

  test('hand-made blocks: overlapping matches', () => {
    // 'a' then a match of offset 1, length 32, then 5 literals
    const b = Buffer.from([0x1f, 0x61, 0x01, 0x00, 13, 0x50, 0x62, 0x62, 0x62, 0x62, 0x62]);
    assert.equal(lz4BlockDecompress(b, 38).toString(), 'a'.repeat(33) + 'bbbbb');
    // 'abc' then offset 3, length 200 (exercises the doubling copy)
    const ml = 200 - 4 - 15;
    const blk = Buffer.from([0x3f, 0x61, 0x62, 0x63, 0x03, 0x00, ml, 0x00]);
    assert.equal(lz4BlockDecompress(blk, 203).toString(), 'abc'.repeat(68).slice(0, 203));
    for (const off of [1, 2, 3, 5, 7, 16, 23, 24, 25, 31, 64]) {
      const pre = randomBytes(off, off);
      const mlen = 1000;
      const ext: number[] = [];
      let rest = mlen - 4 - 15;
      while (rest >= 255) {
        ext.push(255);
        rest -= 255;
      }
      ext.push(rest);
      const block = Buffer.concat([
        Buffer.from([off >= 15 ? 0xff : (off << 4) | 0x0f]),
        off >= 15 ? Buffer.from([off - 15]) : Buffer.alloc(0),
        pre,
        Buffer.from([off & 0xff, off >> 8]),
        Buffer.from(ext),
        Buffer.from([0x00]),
      ]);
      const expect = Buffer.alloc(off + mlen);
      pre.copy(expect);
      for (let i = off; i < expect.length; i++) expect[i] = expect[i - off];
      assert.ok(lz4BlockDecompress(block, off + mlen).equals(expect), `offset ${off}`);
    }
  });

  test('maximal expansion decodes; impossible sizes are refused before allocating', () => {
    const k = 70000;
    const block = Buffer.concat([Buffer.from([0x1f, 0x61, 0x01, 0x00]), Buffer.alloc(k, 0xff), Buffer.from([0x00, 0x00])]);
    const size = 1 + 4 + 15 + 255 * k;
    const out = lz4BlockDecompress(block, size);
    assert.equal(out.length, size);
    assert.ok(out.equals(Buffer.alloc(size, 0x61)));
    const z = Buffer.alloc(16 * MiB);
    assert.ok(lz4BlockDecompress(lz4BlockCompress(z), z.length).equals(z));
    assert.throws(() => lz4BlockDecompress(Buffer.from([0x10, 0x61]), 0x7000000), /cannot expand/);
  });

  test('malformed blocks throw BadBlobError', () => {
    const bad: [string, number[], number][] = [
      ['empty input with non-zero size', [], 5],
      ['size mismatch (short)', [0x10, 0x61], 2],
      ['size mismatch (expects less)', [0x20, 0x61, 0x62], 1],
      ['zero offset', [0x14, 0x61, 0x00, 0x00, 0x00], 10],
      ['offset before output start', [0x10, 0x61, 0x02, 0x00, 0x00], 10],
      ['truncated literal length', [0xf0], 100],
      ['truncated literal length ext', [0xf0, 0xff, 0xff], 10000],
      ['literal overruns input', [0x50, 0x61, 0x62], 5],
      ['literal overruns output', [0x30, 0x61, 0x62, 0x63], 2],
      ['truncated offset', [0x10, 0x61, 0x01], 10],
      ['truncated match length', [0x1f, 0x61, 0x01, 0x00], 100],
      ['truncated match length ext', [0x1f, 0x61, 0x01, 0x00, 0xff], 1000],
      ['match overruns output', [0x1f, 0x61, 0x01, 0x00, 0xff, 0xff, 0x10, 0x00], 100],
      ['ends after a match', [0x14, 0x61, 0x01, 0x00], 9],
      ['trailing byte', [0x10, 0x61, 0x00], 1],
    ];
    for (const [why, bytes, size] of bad) {
      assert.throws(
        () => lz4BlockDecompress(Buffer.from(bytes), size),
        (err: unknown) => err instanceof BadBlobError && err.code === 'ERR_BAD_BLOB' && /lz4_block/.test(err.message),
        why,
      );
    }
    assert.throws(() => lz4BlockDecompress(Buffer.from([0]), -1), (e: unknown) => e instanceof NydusError && e.code === 'ERR_INVALID_ARGUMENT');
    assert.throws(() => lz4BlockDecompress(Buffer.from([0]), 1.5), (e: unknown) => e instanceof NydusError);
  });

  test('xxh32 helper matches the known empty-input vector', () => {
    assert.equal(xxh32(Buffer.alloc(0)), 0x02cc5d05);
  });

  test('decodes blocks from lz4 CLI frames', { skip: !hasTool('lz4') }, () => {
    const inputs = [
      { name: 'text', data: textLike(3 * MiB + 12345, 11) },
      { name: 'random', data: crypto.randomBytes(MiB + 777) },
      { name: 'mixed', data: Buffer.concat([textLike(300000, 3), Buffer.alloc(200000), crypto.randomBytes(100000), textLike(5000, 4)]) },
      { name: 'small', data: textLike(100, 9) },
      { name: 'tiny', data: Buffer.from('hello') },
    ];
    const variants = [
      ['-B4', '--no-frame-crc'],
      ['-B5'],
      ['-B6', '-BX'],
      ['-B7', '--content-size'],
      ['-B4', '-9'],
      ['-B7', '-12', '--no-frame-crc'],
      ['-B5', '--fast=5'],
    ];
    for (const { name, data } of inputs) {
      const file = path.join(tmpDir, `in-${name}`);
      fs.writeFileSync(file, data);
      for (const v of variants) {
        const frame = run('lz4', ['-c', '-f', ...v, file]);
        const parsed = parseLz4Frame(frame);
        if (parsed.contentSize !== undefined) assert.equal(parsed.contentSize, BigInt(data.length));
        if (parsed.contentChecksum !== undefined) assert.equal(parsed.contentChecksum, xxh32(data), 'content checksum');
        const out = decodeFrameWithOurs(parsed, data.length);
        assert.ok(out.equals(data), `${name} ${v.join(' ')}`);
      }
    }
  });

  test('lz4 -d accepts frames built from our blocks', { skip: !hasTool('lz4') }, () => {
    const inputs = [
      textLike(2 * MiB + 333, 21),
      crypto.randomBytes(300000),
      Buffer.concat([Buffer.alloc(100000), textLike(70000, 2), crypto.randomBytes(5000)]),
      Buffer.alloc(MiB),
      Buffer.from('abc'.repeat(50000)),
      textLike(13, 1),
      Buffer.from('x'),
    ];
    for (const data of inputs) {
      for (const bd of [4, 5, 6, 7]) {
        const frame = frameWithOurBlocks(data, bd);
        const out = run('lz4', ['-d', '-c'], frame);
        assert.ok(out.equals(data), `lz4 -d of our frame, ${data.length} bytes, BD ${bd}`);
      }
    }
  });
});

describe('compress / decompress', () => {
  const algos: CompressorName[] = ['none', 'lz4_block', 'zstd'];

  test('round trips the corpus for every compressor', () => {
    for (const algo of algos) {
      for (const { name, data } of corpus()) {
        const c = compress(algo, data);
        const d = decompress(algo, c, data.length);
        assert.ok(d.equals(data), `${algo} ${name}`);
        assert.equal(d.length, data.length);
      }
    }
  });

  test('gzip: decompression only', () => {
    assert.throws(() => compress('gzip', Buffer.from('x')), (e: unknown) => e instanceof NydusError && e.code === 'ERR_UNSUPPORTED');
    for (const data of [Buffer.alloc(0), textLike(100000), crypto.randomBytes(4097)]) {
      assert.ok(decompress('gzip', zlib.gzipSync(data), data.length).equals(data));
    }
    const gz = zlib.gzipSync(textLike(1000));
    assert.throws(() => decompress('gzip', gz, 999), BadBlobError);
    assert.throws(() => decompress('gzip', gz, 1001), BadBlobError);
    assert.throws(() => decompress('gzip', gz.subarray(0, gz.length - 9), 1000), BadBlobError);
  });

  test('output size must match exactly', () => {
    const data = textLike(70000);
    for (const algo of ['none', 'lz4_block', 'zstd'] as CompressorName[]) {
      const c = compress(algo, data);
      for (const size of [0, data.length - 1, data.length + 1, data.length * 2]) {
        assert.throws(
          () => decompress(algo, c, size),
          (e: unknown) => e instanceof BadBlobError && e.message.includes(String(size)),
          `${algo} size ${size}`,
        );
      }
    }
    assert.throws(() => decompress('zstd', Buffer.from('not zstd at all'), 10), BadBlobError);
    assert.throws(() => decompress('zstd', compress('zstd', data), -1), (e: unknown) => e instanceof NydusError && e.code === 'ERR_INVALID_ARGUMENT');
    assert.throws(() => compress('brotli' as CompressorName, data), (e: unknown) => e instanceof NydusError && e.code === 'ERR_UNSUPPORTED');
  });

  test('zstd output uses level 3 frames that the zstd CLI decodes, and we decode the CLI', { skip: !hasTool('zstd') }, () => {
    for (const data of [textLike(MiB + 5), crypto.randomBytes(65537), Buffer.alloc(4096), Buffer.from('z')]) {
      const ours = compress('zstd', data);
      assert.ok(run('zstd', ['-d', '-c', '-q'], ours).equals(data), `zstd -d of ours, ${data.length}`);
      const theirs = run('zstd', ['-3', '-c', '-q'], data);
      assert.ok(decompress('zstd', theirs, data.length).equals(data), `ours of zstd -3, ${data.length}`);
      const theirs19 = run('zstd', ['-19', '-c', '-q', '--no-check'], data);
      assert.ok(decompress('zstd', theirs19, data.length).equals(data));
    }
    // level 3: within a few percent of the CLI's -3 (library versions differ slightly), and
    // clearly different from -1 / -19
    const t = textLike(MiB, 5);
    const ours = compress('zstd', t).length;
    const cli3 = run('zstd', ['-3', '-c', '-q', '--no-check'], t).length;
    assert.ok(Math.abs(ours - cli3) / cli3 < 0.02, `ours ${ours} vs zstd -3 ${cli3}`);
  });

  test('compressChunk keeps compression only when strictly smaller', () => {
    const text = textLike(MiB);
    const c = compressChunk('lz4_block', text);
    assert.equal(c.compressed, true);
    assert.ok(c.data.length < text.length);
    assert.ok(decompressChunk('lz4_block', c.data, true, text.length).equals(text));

    const rnd = crypto.randomBytes(MiB);
    for (const algo of ['lz4_block', 'zstd'] as CompressorName[]) {
      const r = compressChunk(algo, rnd);
      assert.equal(r.compressed, false, algo);
      assert.equal(r.data, rnd, `${algo}: raw data is the input itself`);
      assert.ok(decompressChunk(algo, r.data, false, rnd.length).equals(rnd));
    }
    // empty and 1-byte inputs cannot shrink: stored raw
    for (const algo of ['lz4_block', 'zstd'] as CompressorName[]) {
      assert.equal(compressChunk(algo, Buffer.alloc(0)).compressed, false);
      assert.equal(compressChunk(algo, Buffer.from([1])).compressed, false);
    }
    const n = compressChunk('none', text);
    assert.equal(n.compressed, false);
    assert.equal(n.data, text);
    assert.throws(() => compressChunk('gzip', text), (e: unknown) => e instanceof NydusError && e.code === 'ERR_UNSUPPORTED');
  });

  test('fuzz: random and corrupted inputs only ever throw NydusError', () => {
    const rnd = mulberry32(1234);
    const deadline = Date.now() + 15000;
    const seeds = [textLike(4096, 1), textLike(70000, 2), Buffer.concat([textLike(3000, 3), Buffer.alloc(3000)]), randomBytes(600, 4)];
    const valid: { algo: CompressorName; c: Buffer; size: number }[] = [];
    for (const s of seeds) {
      valid.push({ algo: 'lz4_block', c: lz4BlockCompress(s), size: s.length });
      valid.push({ algo: 'zstd', c: compress('zstd', s), size: s.length });
      valid.push({ algo: 'gzip', c: zlib.gzipSync(s), size: s.length });
    }
    let iterations = 0;
    let threw = 0;
    const attempt = (algo: CompressorName, data: Buffer, size: number): void => {
      iterations++;
      try {
        const out = algo === 'lz4_block' && rnd() < 0.5 ? lz4BlockDecompress(data, size) : decompress(algo, data, size);
        assert.equal(out.length, size);
      } catch (err) {
        threw++;
        if (!(err instanceof NydusError)) throw new Error(`${algo}: non-NydusError ${String(err)}`, { cause: err });
      }
    };
    for (let i = 0; i < 6000 && Date.now() < deadline; i++) {
      const mode = i % 4;
      if (mode === 0) {
        // random garbage, random expected size
        const data = randomBytes(Math.floor(rnd() * 300), i);
        const algo = (['lz4_block', 'zstd', 'gzip'] as CompressorName[])[i % 3];
        attempt(algo, data, Math.floor(rnd() * 5000));
      } else {
        const v = valid[Math.floor(rnd() * valid.length)];
        const data = Buffer.from(v.c);
        if (mode === 1 || mode === 2) {
          const flips = 1 + Math.floor(rnd() * 4);
          for (let f = 0; f < flips; f++) {
            const p = Math.floor(rnd() * data.length);
            data[p] ^= 1 << Math.floor(rnd() * 8);
          }
          attempt(v.algo, data, v.size);
        } else {
          // truncation / extension / wrong size
          const cut = Math.floor(rnd() * data.length);
          attempt(v.algo, data.subarray(0, cut), v.size);
          attempt(v.algo, Buffer.concat([data, randomBytes(1 + Math.floor(rnd() * 8), i)]), v.size);
          attempt(v.algo, data, Math.max(0, v.size + Math.floor(rnd() * 21) - 10));
        }
      }
    }
    assert.ok(iterations >= 1000, `only ${iterations} iterations before the deadline`);
    assert.ok(threw > iterations / 4, `${threw} of ${iterations} threw`);
  });
});

describe('digest', () => {
  before(async () => {
    await digestReady();
  });

  test('blake3 and sha256 vectors', () => {
    assert.equal(digest('blake3', Buffer.alloc(0)).toString('hex'), 'af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262');
    assert.equal(digest('blake3', Buffer.from('abc')).toString('hex'), '6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85');
    assert.equal(digest('sha256', Buffer.alloc(0)).toString('hex'), 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
    assert.equal(digest('sha256', Buffer.from('abc')).toString('hex'), 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
    assert.equal(sha256Hex(Buffer.from('abc')), 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
    assert.equal(digest('blake3', Buffer.alloc(MiB)).length, 32);
    assert.throws(() => digest('md5' as 'sha256', Buffer.alloc(1)), (e: unknown) => e instanceof NydusError && e.code === 'ERR_UNSUPPORTED');
  });

  test('native blake3 is in use here and equals the WebAssembly fallback (sizes around the 1 KiB chunk and 64 KiB SIMD boundaries)', async () => {
    assert.equal(blake3Implementation, 'native', 'the @napi-rs/blake-hash binary did not load');
    const wasm = await createBLAKE3(256);
    const data = crypto.randomBytes(3 * MiB + 5);
    for (const n of [0, 1, 63, 64, 65, 1023, 1024, 1025, 2048, 4097, 16384, 65535, 65536, 65537, MiB - 1, MiB, 3 * MiB + 5]) {
      for (const off of [0, 3]) {
        const piece = data.subarray(off, off + n);
        wasm.init();
        wasm.update(piece);
        assert.equal(digest('blake3', piece).toString('hex'), wasm.digest('hex'), `${n} bytes at offset ${off}`);
      }
    }
    // a Uint8Array that is not a Buffer, on a shared ArrayBuffer
    const u8 = new Uint8Array(data.buffer, data.byteOffset + 7, 5000);
    wasm.init();
    wasm.update(u8);
    assert.equal(digest('blake3', u8).toString('hex'), wasm.digest('hex'));
    // the fallback itself, in a process that asks for it
    const r = spawnSync(process.execPath, ['-e', `const d=require(${JSON.stringify(path.resolve(__dirname, '../src/codec/digest.js'))}); d.digestReady().then(()=>console.log(d.blake3Implementation, d.digest('blake3', Buffer.from('abc')).toString('hex')))`], { env: { ...process.env, NYDUS_TS_BLAKE3: 'wasm' }, encoding: 'utf8' });
    assert.equal(r.stdout.trim(), 'wasm 6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85', r.stderr);
  });

  test('incremental hashers equal one-shot digests', async () => {
    const data = textLike(3 * MiB + 17);
    for (const algo of ['blake3', 'sha256'] as const) {
      const h = await createDigest(algo);
      const h2 = await createDigest(algo);
      for (let off = 0; off < data.length; off += 100003) {
        h.update(data.subarray(off, off + 100003));
        h2.update(Buffer.from('interleaved'));
      }
      assert.ok(h.digest().equals(digest(algo, data)), algo);
    }
    const s = createSha256().update(Buffer.from('ab')).update(Buffer.from('c'));
    assert.equal(s.digestHex(), sha256Hex(Buffer.from('abc')));
  });
});

describe('ChunkPool', () => {
  let pool: ChunkPool;
  before(async () => {
    await digestReady();
    pool = await ChunkPool.create({ threads: 2 });
  });
  after(async () => {
    await pool.close();
  });

  test('results match inputs, in submission order', async () => {
    const chunks = Array.from({ length: 40 }, (_, i) => (i % 3 === 0 ? crypto.randomBytes(65536 + i) : textLike(65536 + i * 100, i)));
    for (const algo of ['zstd', 'lz4_block', 'none'] as CompressorName[]) {
      for (const dg of ['blake3', 'sha256'] as const) {
        const results = await Promise.all(chunks.map((c) => pool.process(c, algo, dg)));
        results.forEach((r, i) => {
          assert.ok(r.digest.equals(digest(dg, chunks[i])), `${algo}/${dg} digest of chunk ${i}`);
          assert.equal(r.zero, false);
          const ref = compressChunk(algo, chunks[i]);
          assert.equal(r.compressed, ref.compressed);
          assert.ok(r.data.equals(ref.data), `${algo} data of chunk ${i}`);
        });
        const back = await Promise.all(
          results.map((r, i) => pool.decompressAndVerify(r.data, algo, r.compressed, chunks[i].length, dg, r.digest)),
        );
        back.forEach((b, i) => assert.ok(b.equals(chunks[i]), `${algo} round trip ${i}`));
      }
    }
  });

  test('200 concurrent tasks, pending and drain', async () => {
    const chunks = Array.from({ length: 200 }, (_, i) => textLike(20000 + ((i * 7919) % 50000), i + 100));
    const promises = chunks.map((c) => pool.process(c, 'zstd', 'blake3'));
    assert.equal(pool.pending, 200);
    await pool.drain(150);
    assert.ok(pool.pending <= 150);
    const results = await Promise.all(promises);
    assert.equal(pool.pending, 0);
    results.forEach((r, i) => assert.ok(r.digest.equals(digest('blake3', chunks[i]))));
    await pool.drain();
  });

  test('caller buffers: copied by default, transferred on request', async () => {
    const a = textLike(100000, 77);
    const keep = Buffer.from(a);
    const p = pool.process(a, 'lz4_block', 'sha256');
    a.fill(0xff); // reusing the buffer right away must not affect the task
    const r = await p;
    assert.ok(r.digest.equals(digest('sha256', keep)));

    const owned = Buffer.from(new ArrayBuffer(100000));
    keep.copy(owned);
    const r2 = await pool.process(owned, 'lz4_block', 'sha256', { transfer: true });
    assert.equal(owned.buffer.byteLength, 0, 'transferred buffer is detached');
    assert.ok(r2.digest.equals(r.digest));
  });

  test('all-zero chunks take the cached fast path', async () => {
    for (const size of [MiB, 4096, 12345]) {
      for (const algo of ['zstd', 'lz4_block', 'none'] as CompressorName[]) {
        const zeros = Buffer.alloc(size);
        const [r1, r2] = await Promise.all([pool.process(zeros, algo, 'blake3'), pool.process(Buffer.alloc(size), algo, 'blake3')]);
        for (const r of [r1, r2]) {
          assert.equal(r.zero, true);
          assert.ok(r.digest.equals(digest('blake3', zeros)));
          assert.equal(r.compressed, algo !== 'none');
          assert.ok(decompressChunk(algo, r.data, r.compressed, size).equals(zeros));
        }
        assert.notEqual(r1.data, r2.data, 'each caller gets its own copy');
        r1.data.fill(1);
        const r3 = await pool.process(zeros, algo, 'blake3');
        assert.ok(decompressChunk(algo, r3.data, r3.compressed, size).equals(zeros), 'cache not polluted');
      }
    }
    const sha = await pool.process(Buffer.alloc(MiB), 'zstd', 'sha256');
    assert.ok(sha.digest.equals(digest('sha256', Buffer.alloc(MiB))));
    const almost = Buffer.alloc(MiB);
    almost[MiB - 2] = 1;
    assert.equal((await pool.process(almost, 'zstd', 'blake3')).zero, false);
    assert.equal((await pool.process(Buffer.alloc(0), 'zstd', 'blake3')).zero, false);
  });

  test('digest mismatch and bad data reject only their own task', async () => {
    const data = textLike(50000, 5);
    const r = await pool.process(data, 'zstd', 'blake3');
    const wrong = Buffer.from(r.digest);
    wrong[0] ^= 0xff;
    const good = pool.decompressAndVerify(r.data, 'zstd', true, data.length, 'blake3', r.digest);
    await assert.rejects(
      pool.decompressAndVerify(r.data, 'zstd', true, data.length, 'blake3', wrong),
      (e: unknown) =>
        e instanceof DigestMismatchError &&
        e.code === 'ERR_DIGEST_MISMATCH' &&
        e.message.includes(wrong.toString('hex')) &&
        e.message.includes(r.digest.toString('hex')),
    );
    await assert.rejects(pool.decompressAndVerify(r.data.subarray(0, 100), 'zstd', true, data.length, null, null), BadBlobError);
    await assert.rejects(pool.decompressAndVerify(data, 'zstd', false, data.length + 1, null, null), BadBlobError);
    await assert.rejects(pool.process(data, 'gzip', 'blake3'), (e: unknown) => e instanceof NydusError && e.code === 'ERR_UNSUPPORTED');
    assert.ok((await good).equals(data));
    // verification skipped when no digest is given
    assert.ok((await pool.decompressAndVerify(r.data, 'zstd', true, data.length, null, null)).equals(data));
  });

  test('a crashed worker is replaced; only its tasks fail', async () => {
    const err = await pool._crashWorkerForTest();
    assert.ok(err instanceof Error && /exited unexpectedly/.test(err.message));
    const chunks = Array.from({ length: 20 }, (_, i) => textLike(30000, i));
    const results = await Promise.all(chunks.map((c) => pool.process(c, 'lz4_block', 'blake3')));
    results.forEach((r, i) => assert.ok(r.digest.equals(digest('blake3', chunks[i]))));
  });

  test('close drains, then rejects new work', async () => {
    const p = await ChunkPool.create({ threads: 1 });
    assert.equal(p.threads, 1);
    const tasks = Array.from({ length: 10 }, (_, i) => p.process(textLike(10000, i), 'zstd', 'sha256'));
    await p.close();
    assert.equal((await Promise.all(tasks)).length, 10);
    await assert.rejects(p.process(Buffer.from('x'), 'zstd', 'sha256'), (e: unknown) => e instanceof NydusError && e.code === 'ERR_INVALID_ARGUMENT');
    await p.close();
    const z = await ChunkPool.create({ threads: 0 });
    assert.equal(z.threads, 1, 'thread count is at least 1');
    await z.close();
  });

  test('an unclosed idle pool does not keep node alive', () => {
    const mod = path.join(__dirname, '..', 'src', 'codec', 'chunk-pool.js');
    const script = `
      const { ChunkPool } = require(${JSON.stringify(mod)});
      (async () => {
        const pool = await ChunkPool.create({ threads: 2 });
        const r = await pool.process(Buffer.from('hello world hello world hello world'), 'zstd', 'blake3');
        console.log(r.digest.length);
      })();`;
    const t0 = Date.now();
    const res = spawnSync(process.execPath, ['-e', script], { timeout: 20000, encoding: 'utf8' });
    assert.equal(res.signal, null, 'child was killed by the timeout: pool kept node alive');
    assert.equal(res.status, 0, res.stderr);
    assert.equal(res.stdout.trim(), '32');
    assert.ok(Date.now() - t0 < 20000);
  });
});
