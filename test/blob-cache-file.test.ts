/**
 * The fanotify front end's blob cache file and its presence map (src/kernel/blob-cache-file.ts),
 * on real files of this host's ext4: bits only after writes, persisted only after the data, tied
 * to the file's identity, and holes always win over the map.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as crypto from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { BlobCacheFile, PAGE } from '../src/kernel/blob-cache-file';

const SIZE = 64 * PAGE + 100; // a partial last page
function dirs(): { storeDir: string; presenceDir: string } {
  const d = fs.mkdtempSync(path.join(process.env.TMPDIR ?? '/tmp', 'nydus-bcf-'));
  return { storeDir: path.join(d, 'blobs'), presenceDir: path.join(d, 'presence') };
}
const open = (d: ReturnType<typeof dirs>, logs: string[] = []): BlobCacheFile =>
  BlobCacheFile.open({ ...d, blobId: 'b1', size: SIZE, log: (_l, m) => logs.push(m) });

test('a new cache file is sparse, of the blob size, with no page present', async () => {
  const d = dirs();
  const f = open(d);
  assert.equal(fs.statSync(f.path).size, SIZE);
  assert.equal(f.presentPages, 0);
  assert.deepEqual(await f.presentRanges(), []);
  await f.close();
});

test('writes mark whole pages; the last partial page counts when the write reaches the end', async () => {
  const d = dirs();
  const f = open(d);
  let done = 0;
  f.onComplete = () => done++;
  await f.write(0, crypto.randomBytes(3 * PAGE + 10)); // 3 whole pages, the 4th partial: not present
  assert.ok(f.covers(0, 3 * PAGE));
  assert.ok(!f.covers(0, 4 * PAGE));
  await f.write(4 * PAGE, crypto.randomBytes(SIZE - 4 * PAGE + 5000)); // clamped to the blob
  assert.equal(fs.statSync(f.path).size, SIZE, 'a write never extends the file');
  assert.ok(f.covers(4 * PAGE, SIZE));
  assert.deepEqual(await f.presentRanges(), [[0, 3 * PAGE], [4 * PAGE, SIZE]]);
  await f.write(3 * PAGE, Buffer.alloc(PAGE, 1));
  assert.ok(f.complete);
  assert.equal(done, 1);
  await f.close();
});

test('the map survives a reopen only after a flush; unflushed bits are lost, never gained', async () => {
  const d = dirs();
  const data = crypto.randomBytes(8 * PAGE);
  let f = open(d);
  await f.write(0, data);
  await f.flush();
  await f.write(16 * PAGE, crypto.randomBytes(PAGE)); // not flushed: a crash here
  fs.closeSync(f.fd); // "crash": no close(), no flush
  const logs: string[] = [];
  f = open(d, logs);
  assert.ok(f.covers(0, 8 * PAGE), 'flushed pages are present');
  assert.ok(!f.covers(16 * PAGE, 17 * PAGE), 'a page written after the last flush is not trusted');
  assert.deepEqual(logs, []);
  assert.ok(fs.readFileSync(f.path).subarray(0, 8 * PAGE).equals(data));
  await f.close();
});

test('a file without a flushed map, replaced, resized or with a damaged map is discarded', async () => {
  const cases: Array<[string, (d: ReturnType<typeof dirs>, file: string) => void, RegExp]> = [
    ['replaced', (_d, file) => {
      fs.rmSync(file);
      fs.writeFileSync(file, Buffer.alloc(SIZE, 7));
    }, /generation stamp/],
    ['resized', (_d, file) => fs.truncateSync(file, SIZE - PAGE), /size is/],
    ['damaged map', (d) => {
      const m = path.join(d.presenceDir, 'b1');
      const b = fs.readFileSync(m);
      b[60] ^= 1;
      fs.writeFileSync(m, b);
    }, /checksum/],
    ['no map', (d) => fs.rmSync(path.join(d.presenceDir, 'b1')), /no presence map/],
  ];
  for (const [name, tamper, why] of cases) {
    const d = dirs();
    let f = open(d);
    await f.write(0, crypto.randomBytes(8 * PAGE));
    await f.close();
    tamper(d, f.path);
    const logs: string[] = [];
    f = open(d, logs);
    assert.equal(f.presentPages, 0, name);
    assert.match(logs.join('\n'), why, name);
    assert.equal(fs.statSync(f.path).size, SIZE, name);
    assert.ok(fs.readFileSync(f.path).equals(Buffer.alloc(SIZE)), `${name}: old contents are discarded`);
    await f.close();
  }
});

test('holes win over the map: punched at rest, and punched or truncated while open', async () => {
  const d = dirs();
  let f = open(d);
  await f.write(0, crypto.randomBytes(SIZE));
  assert.ok(f.complete);
  await f.close();
  execFileSync('fallocate', ['--punch-hole', '--offset', String(8 * PAGE), '--length', String(2 * PAGE), f.path]);
  const logs: string[] = [];
  f = open(d, logs);
  assert.ok(!f.covers(8 * PAGE, 10 * PAGE) && f.covers(0, 8 * PAGE) && f.covers(10 * PAGE, SIZE));
  assert.match(logs.join('\n'), /are holes/);
  // while open: a punch in [20, 21) pages and a truncate to 40 pages
  execFileSync('fallocate', ['--punch-hole', '--offset', String(20 * PAGE), '--length', String(PAGE), f.path]);
  assert.ok(f.covers(20 * PAGE, 21 * PAGE), 'the map alone does not know yet');
  assert.deepEqual(f.dropHoles(16 * PAGE, 24 * PAGE), [[20 * PAGE, 21 * PAGE]]);
  fs.truncateSync(f.path, 40 * PAGE);
  const dropped = f.dropHoles(0, PAGE);
  assert.deepEqual(dropped, [[40 * PAGE, SIZE]]);
  assert.equal(fs.statSync(f.path).size, SIZE, 'the file is extended back to the blob size');
  assert.ok(!f.covers(40 * PAGE, SIZE) && f.covers(10 * PAGE, 20 * PAGE));
  await f.close();
});

test('evict clears bits first, then punches after the grace period, never under a write in flight', async () => {
  const d = dirs();
  const f = open(d);
  const data = crypto.randomBytes(SIZE);
  await f.write(0, data);
  assert.ok(f.complete);
  const before = f.diskBytes();
  // evict pages 8..24; a write of pages 16..17 starts during the grace period and must survive
  const evicting = f.evict(8 * PAGE + 1, 24 * PAGE, 50);
  assert.ok(!f.covers(8 * PAGE, 9 * PAGE), 'bits are cleared before the grace period');
  const rewrite = f.write(16 * PAGE, data.subarray(16 * PAGE, 18 * PAGE));
  assert.equal(await evicting, 16 * PAGE);
  await rewrite;
  assert.ok(f.covers(16 * PAGE, 18 * PAGE));
  assert.ok(!f.covers(8 * PAGE, 16 * PAGE) && !f.covers(18 * PAGE, 24 * PAGE));
  assert.ok(f.covers(0, 8 * PAGE) && f.covers(24 * PAGE, SIZE));
  assert.ok(f.diskBytes() <= before - 14 * PAGE, `${f.diskBytes()} of ${before} bytes still allocated`);
  const now = fs.readFileSync(f.path);
  assert.ok(now.subarray(8 * PAGE, 16 * PAGE).equals(Buffer.alloc(8 * PAGE)), 'evicted pages are holes');
  assert.ok(now.subarray(16 * PAGE, 18 * PAGE).equals(data.subarray(16 * PAGE, 18 * PAGE)), 'the rewritten pages keep their bytes');
  assert.ok(now.subarray(0, 8 * PAGE).equals(data.subarray(0, 8 * PAGE)));
  await f.close();
  // the persisted map agrees after a reopen
  const g = open(d);
  assert.ok(!g.covers(8 * PAGE, 9 * PAGE) && g.covers(0, 8 * PAGE) && g.covers(16 * PAGE, 18 * PAGE));
  await g.close();
});
