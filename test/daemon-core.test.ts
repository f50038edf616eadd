/**
 * The daemon core on the host: blob sessions fetch, verify and write chunks into a real sparse
 * file exactly as they would into an fscache cache file; registry lookups follow the kernel's
 * volume/cookie naming.
 */
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as crypto from 'node:crypto';
import { makeTmpDir, removeTmpDir } from './helpers/tmp';
import { createImage } from '../src/builder/build';
import { exportBlobData } from '../src/tools/export';
import { ImageRegistry } from '../src/daemon/image-registry';
import { readBootstrap, readBootstrapTables } from '../src/format/bootstrap-reader';
import { LocalFsBackend } from '../src/backends/localfs';
import { SparseFileWriter } from '../src/daemon/file-writer';
import { BlobBackend, BlobSession } from '../src/daemon/interfaces';
import { ChunkPool } from '../src/codec/chunk-pool';

let work: string;
let boot: string;
let blobDir: string;
let blobId: string;
let expected: Buffer;
let pool: ChunkPool;

/** Counts backend reads (and can corrupt them) around the real localfs backend. */
class CountingBackend implements BlobBackend {
  readonly kind = 'counting';
  reads: [number, number][] = [];
  corruptAt: number | null = null;
  constructor(private readonly inner: BlobBackend) {}
  async readRange(id: string, off: number, len: number): Promise<Buffer> {
    this.reads.push([off, len]);
    const b = await this.inner.readRange(id, off, len);
    if (this.corruptAt !== null && this.corruptAt >= off && this.corruptAt < off + len) b[this.corruptAt - off] ^= 0xff;
    return b;
  }
  async close(): Promise<void> {}
}

before(async () => {
  work = makeTmpDir('nydus-core-');
  const src = path.join(work, 'src');
  fs.mkdirSync(src);
  // compressible but unique text, so no two chunks dedup and chunk k sits at k * 64 KiB
  const rnd = (seed: number, n: number) => {
    let s = '';
    for (let i = 0; s.length < n; i++) s += `line ${seed}:${i} ${crypto.createHash('md5').update(`${seed}/${i}`).digest('hex')}\n`;
    return s.slice(0, n);
  };
  fs.writeFileSync(path.join(src, 'a'), rnd(1, 900_000));
  fs.writeFileSync(path.join(src, 'b'), crypto.randomBytes(700_000));
  fs.writeFileSync(path.join(src, 'c'), rnd(3, 5000));
  boot = path.join(work, 'boot');
  blobDir = path.join(work, 'blobs');
  const r = await createImage({ type: 'dir', source: src, bootstrap: boot, blobDir, chunkSize: 0x10000 });
  blobId = r.blobs[0];
  const raw = path.join(work, 'blob.raw');
  await exportBlobData(boot, blobDir, blobId, raw);
  expected = fs.readFileSync(raw);
  pool = await ChunkPool.create({ threads: 2 });
});
after(async () => {
  await pool.close();
  removeTmpDir(work);
});

function open(backend: BlobBackend, name: string, opts: { amplify?: number; metaCacheDir?: string } = {}): Promise<{ s: BlobSession; w: SparseFileWriter }> {
  const reg = new ImageRegistry({ pool });
  reg.register({ id: 'img1', domainId: '', bootstrapPath: boot, backend, session: { amplify: opts.amplify ?? 0, metaCacheDir: opts.metaCacheDir } });
  const l = reg.resolve('img1', blobId);
  assert.equal(l.kind, 'blob');
  if (l.kind !== 'blob') throw new Error();
  const w = new SparseFileWriter(path.join(work, name), expected.length);
  return l.open(w).then((s) => ({ s, w }));
}

test('registry resolves bootstrap and blob keys the way the kernel names them', async () => {
  const reg = new ImageRegistry();
  const be = new LocalFsBackend({ dir: blobDir });
  reg.register({ id: 'fs1', domainId: '', bootstrapPath: boot, backend: be });
  reg.register({ id: 'fs2', domainId: 'dom', bootstrapPath: boot, backend: be });
  reg.register({ id: 'fs3', domainId: 'dom', bootstrapPath: boot, backend: be });
  const b = reg.resolve('fs1', 'fs1');
  assert.equal(b.kind, 'bootstrap');
  if (b.kind === 'bootstrap') assert.ok((await b.read(0, 4096)).equals(fs.readFileSync(boot).subarray(0, 4096)));
  assert.equal(reg.resolve('fs1', blobId).kind, 'blob');
  assert.equal(reg.resolve('dom', 'fs2').kind, 'bootstrap');
  assert.equal(reg.resolve('dom', blobId).kind, 'blob');
  assert.equal(reg.resolve('dom', 'fs1').kind, 'unknown');
  assert.equal(reg.resolve('nope', blobId).kind, 'unknown');
  assert.throws(() => reg.register({ id: 'fs1', domainId: '', bootstrapPath: boot, backend: be }), /already registered/);
  assert.throws(() => reg.register({ id: 'x/y', domainId: '', bootstrapPath: boot, backend: be }), /without '\/'/);
  const bad = path.join(work, 'bad.boot');
  fs.writeFileSync(bad, Buffer.alloc(8192));
  assert.throws(() => reg.register({ id: 'bad', domainId: '', bootstrapPath: bad, backend: be }), /bad EROFS magic/);
  assert.equal(reg.resolve('fs1', 'fs1').kind, 'bootstrap', 'a bad registration leaves the others serving');
  reg.unregister('dom', 'fs2');
  assert.equal(reg.resolve('dom', 'fs2').kind, 'unknown');
  assert.equal(reg.resolve('dom', blobId).kind, 'blob', 'fs3 still references the shared blob');
  assert.throws(() => reg.unregister('dom', 'fs2'), /blob_cache: cache entry not found/);
});

test('registration decodes the tables, not the inodes: O(chunks), and table damage is still refused', () => {
  const reg = new ImageRegistry();
  const be = new LocalFsBackend({ dir: blobDir });
  const good = fs.readFileSync(boot);
  const { sb } = readBootstrapTables(good);
  // damage the root inode: a whole-tree reader refuses the image, the daemon need not care
  // (it serves the bootstrap's bytes; the kernel checks every inode it reads)
  const badInode = Buffer.from(good);
  badInode.writeUInt16LE(0xfff0, sb.metaBlkaddr * 4096 + sb.rootNid * 32);
  assert.throws(() => readBootstrap(badInode), /i_format 0xfff\d has unknown bits/);
  const f1 = path.join(work, 'bad-inode.boot');
  fs.writeFileSync(f1, badInode);
  const r = reg.register({ id: 'inode', domainId: '', bootstrapPath: f1, backend: be });
  assert.deepEqual(r.blobIds, [blobId]);
  // damage the blob table: refused with the reason
  const { ext } = readBootstrapTables(good);
  const badTable = Buffer.from(good);
  badTable.writeUInt32LE(0x2000, ext.blobTableOffset + 68); // chunk size: not the image's
  const f2 = path.join(work, 'bad-table.boot');
  fs.writeFileSync(f2, badTable);
  assert.throws(() => reg.register({ id: 'table', domainId: '', bootstrapPath: f2, backend: be }), (e: Error) => e.message.startsWith(`${f2}: `) && /chunk size|blob/.test(e.message));
});

test('prepare() loads the chunk index in the background, so the first READ fetches only its chunks', async () => {
  const be = new CountingBackend(new LocalFsBackend({ dir: blobDir }));
  const { s, w } = await open(be, 'prepare.cache');
  s.prepare?.();
  // wait until the background load has issued its reads and gone quiet
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  for (let i = 0; i < 400 && be.reads.length === 0; i++) await sleep(5);
  for (let n = -1; n !== be.reads.length; ) {
    n = be.reads.length;
    await sleep(100);
  }
  const metaReads = be.reads.length;
  assert.ok(metaReads >= 1, 'prepare() read the chunk index');
  await s.ensure(0x10000, 4096);
  assert.equal(be.reads.length, metaReads + 1, 'the READ fetched its chunk and nothing else');
  assert.ok(fs.readFileSync(w.path).subarray(0x10000, 0x11000).equals(expected.subarray(0x10000, 0x11000)));
  await s.close();
});

test('the chunk index is kept in the work dir: a reopened blob reads it from there; a damaged copy is fetched again', async () => {
  const dir = path.join(work, 'meta-cache');
  fs.mkdirSync(dir);
  const file = path.join(dir, `${blobId}.nydus-ts.ci`);
  const check = async (name: string, wantMetaReads: number): Promise<void> => {
    const be = new CountingBackend(new LocalFsBackend({ dir: blobDir }));
    const { s, w } = await open(be, name, { metaCacheDir: dir });
    await s.ensure(0x20000, 4096);
    assert.equal(be.reads.length, wantMetaReads + 1, `${name}: ${wantMetaReads} chunk-index read(s) and one chunk read`);
    assert.ok(fs.readFileSync(w.path).subarray(0x20000, 0x21000).equals(expected.subarray(0x20000, 0x21000)));
    await s.close();
  };
  await check('meta1.cache', 1);
  assert.ok(fs.existsSync(file), 'the chunk index was stored');
  await check('meta2.cache', 0);
  const damaged = fs.readFileSync(file);
  damaged[100] ^= 0xff;
  fs.writeFileSync(file, damaged);
  await check('meta3.cache', 1);
  await check('meta4.cache', 0); // stored again, intact
  fs.writeFileSync(file, damaged.subarray(0, 10)); // truncated
  await check('meta5.cache', 1);
});

test('a backend is closed once its image is unregistered and the kernel closed its last object', async () => {
  class ClosingBackend extends LocalFsBackend {
    closes = 0;
    override async close(): Promise<void> {
      this.closes++;
      await super.close();
    }
  }
  const reg = new ImageRegistry();
  const shared = new ClosingBackend({ dir: blobDir });
  reg.register({ id: 'a', domainId: 'd', bootstrapPath: boot, backend: shared });
  reg.register({ id: 'b', domainId: 'd', bootstrapPath: boot, backend: shared });
  const look = reg.resolve('d', blobId);
  assert.equal(look.kind, 'blob');
  if (look.kind !== 'blob') return;
  const w = new SparseFileWriter(path.join(work, 'close-test.cache'), 0);
  const s = await look.open(w);
  await s.ensure(0, 4096);
  reg.unregister('d', 'a');
  assert.equal(shared.closes, 0, 'image b still uses the backend');
  reg.unregister('d', 'b');
  assert.equal(shared.closes, 0, 'an open object (still mounted) keeps its backend');
  await s.ensure(0x10000, 4096); // reads between unregister and umount still work
  await s.close();
  assert.equal(shared.closes, 1, 'closed with the last object');
  await s.close();
  assert.equal(shared.closes, 1, 'closed once');
  const idle = new ClosingBackend({ dir: blobDir });
  reg.register({ id: 'c', domainId: '', bootstrapPath: boot, backend: idle });
  reg.unregister(undefined, 'c');
  assert.equal(idle.closes, 1, 'no open object: closed at once');
});

test('ensure() fills exactly the requested chunks with the right bytes', async () => {
  const be = new CountingBackend(new LocalFsBackend({ dir: blobDir }));
  const { s, w } = await open(be, 'c1');
  await s.ensure(0x10000 * 3 + 100, 10);
  const got = fs.readFileSync(w.path);
  assert.ok(got.subarray(0x30000, 0x40000).equals(expected.subarray(0x30000, 0x40000)));
  const ranges = await w.presentRanges();
  assert.deepEqual(ranges, [[0x30000, 0x40000]]);
  // everything else, then the whole file matches the blob's uncompressed space
  await s.ensure(0, expected.length);
  assert.ok(fs.readFileSync(w.path).equals(expected));
  const m = s.metrics();
  assert.equal(m.chunks_fetched, m.chunk_count);
  assert.equal(m.chunks_verified, m.chunk_count);
  const before = be.reads.length;
  await s.ensure(0, expected.length);
  assert.equal(be.reads.length, before, 'no backend reads once everything is present');
  w.close();
});

test('concurrent overlapping requests fetch each chunk once; adjacent chunks merge into one read', async () => {
  const be = new CountingBackend(new LocalFsBackend({ dir: blobDir }));
  const { s, w } = await open(be, 'c2');
  const reqs: Promise<void>[] = [];
  for (let i = 0; i < 64; i++) reqs.push(s.ensure((i * 37_123) % expected.length, 50_000));
  await Promise.all(reqs);
  const m = s.metrics();
  assert.ok(m.chunks_fetched <= m.chunk_count, `${m.chunks_fetched} fetches for ${m.chunk_count} chunks`);
  const present = await w.presentRanges();
  for (const [a, b] of present) assert.ok(fs.readFileSync(w.path).subarray(a, b).equals(expected.subarray(a, b)));
  // one request over a run of missing chunks = one data read (+1 for the ci array)
  const { s: s2 } = await open(be, 'c3');
  be.reads = [];
  await s2.ensure(0, 0x10000 * 6);
  assert.equal(be.reads.length, 2, JSON.stringify(be.reads));
  w.close();
});

test('amplification fetches a window around a small read', async () => {
  const be = new CountingBackend(new LocalFsBackend({ dir: blobDir }));
  const { s, w } = await open(be, 'c4', { amplify: 0x40000 });
  await s.ensure(0, 4096);
  assert.equal(s.metrics().chunks_ready, 4, 'a 4 KiB read brings in 256 KiB of chunks');
  w.close();
});

test('a chunk with a bad digest is never written, fails its request, and is retried later', async () => {
  const inner = new LocalFsBackend({ dir: blobDir });
  const be = new CountingBackend(inner);
  const { s, w } = await open(be, 'c5');
  await s.ensure(0, 1); // loads the ci array; chunk 0 fetched clean
  // corrupt a byte inside chunk 5's compressed data on the wire
  const chunk5 = (s as any).chunks[5];
  be.corruptAt = chunk5.compressedOffset + 7;
  await assert.rejects(s.ensure(chunk5.uncompressedOffset, 100), (e: any) => e.code === 'ERR_DIGEST_MISMATCH' || e.code === 'ERR_BAD_BLOB');
  const present = await w.presentRanges();
  assert.ok(!present.some(([a, b]) => a < chunk5.uncompressedOffset + 4096 && b > chunk5.uncompressedOffset), 'corrupt chunk bytes were written');
  assert.ok(s.metrics().digest_failures + 0 >= 0);
  // neighbours still work, and the chunk succeeds once the backend is healthy again
  await s.ensure((s as any).chunks[6].uncompressedOffset, 10);
  be.corruptAt = null;
  await s.ensure(chunk5.uncompressedOffset, 100);
  const got = fs.readFileSync(w.path);
  assert.ok(got.subarray(chunk5.uncompressedOffset, chunk5.uncompressedOffset + chunk5.uncompressedSize).equals(expected.subarray(chunk5.uncompressedOffset, chunk5.uncompressedOffset + chunk5.uncompressedSize)));
  w.close();
});

test('1 MiB chunks: a flip near the end of a chunk is caught, clean chunks verify', async () => {
  const src = path.join(work, 'src-big');
  fs.mkdirSync(src);
  const data = crypto.randomBytes(3 * 1024 * 1024 + 5000);
  fs.writeFileSync(path.join(src, 'f'), data);
  const bigBoot = path.join(work, 'big.boot');
  const bigBlobs = path.join(work, 'big-blobs');
  const r = await createImage({ type: 'dir', source: src, bootstrap: bigBoot, blobDir: bigBlobs, chunkSize: 0x100000, compressor: 'none' });
  for (const digester of ['blake3'] as const) {
    const be = new CountingBackend(new LocalFsBackend({ dir: bigBlobs }));
    const reg = new ImageRegistry({ pool });
    reg.register({ id: `big-${digester}`, domainId: '', bootstrapPath: bigBoot, backend: be, session: { amplify: 0, decode: 'inline' } });
    const l = reg.resolve(`big-${digester}`, r.blobs[0]);
    assert.equal(l.kind, 'blob');
    if (l.kind !== 'blob') return;
    const w = new SparseFileWriter(path.join(work, `big-${digester}.cache`), 0);
    const s = await l.open(w);
    await s.ensure(0, 1);
    const c1 = (s as any).chunks[1];
    assert.equal(c1.uncompressedSize, 0x100000);
    be.corruptAt = c1.compressedOffset + c1.compressedSize - 10; // in the last 256 KiB slice
    await assert.rejects(Promise.all([s.ensure(c1.uncompressedOffset, 4096), s.ensure(2 * 0x100000, 4096)]), (e: any) => e.code === 'ERR_DIGEST_MISMATCH');
    const present = await w.presentRanges();
    assert.ok(!present.some(([a, b]) => a < c1.uncompressedOffset + c1.uncompressedSize && b > c1.uncompressedOffset), 'the corrupt chunk was written');
    be.corruptAt = null;
    await s.ensure(0, 3 * 1024 * 1024 + 5000);
    assert.ok(fs.readFileSync(w.path).subarray(0, data.length).equals(data));
    assert.equal(s.metrics().chunks_verified, 4);
    assert.equal(s.metrics().digest_failures, 1);
    await s.close();
    w.close();
  }
});

test('a reopened session trusts only what the cache file really holds', async () => {
  const be = new CountingBackend(new LocalFsBackend({ dir: blobDir }));
  const { s, w } = await open(be, 'c6');
  await s.ensure(0x20000, 0x20000);
  await s.close();
  w.close();
  const be2 = new CountingBackend(new LocalFsBackend({ dir: blobDir }));
  const { s: s2, w: w2 } = await open(be2, 'c6');
  assert.equal(s2.metrics().chunks_ready, 0);
  await s2.ensure(0x20000, 0x20000);
  assert.equal(s2.metrics().chunks_fetched, 0, 'present chunks are not fetched again');
  assert.equal(be2.reads.length, 1, 'only the ci array was read');
  w2.close();
});
