/**
 * Issue #2: multi-layer merge with OCI whiteouts compared against a real overlayfs mount of the
 * same layers, and chunk dedup across layers (--parent-bootstrap) and images (--chunk-dict).
 */
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { snapshotTree, diffTrees } from './helpers/tree-compare';
import { makeTmpDir, removeTmpDir } from './helpers/tmp';
import { cliOk, sh, Mounts, ociWhiteoutsToOverlay } from './helpers/mount';

let work: string;
const mounts = new Mounts();
before(() => {
  work = makeTmpDir('nydus-layers-');
});
after(() => {
  mounts.cleanup();
  if (!process.env.NYDUS_TS_KEEP_TMP) removeTmpDir(work);
});

type Spec = Record<string, string | { dir: true } | { link: string } | { opaque: true }>;

/** Write a layer directory from a spec; whiteouts as OCI `.wh.` files. */
function writeLayer(dir: string, spec: Spec): void {
  fs.mkdirSync(dir, { recursive: true });
  for (const [p, v] of Object.entries(spec)) {
    const full = path.join(dir, p);
    fs.mkdirSync(path.dirname(full), { recursive: true });
    if (typeof v === 'string') fs.writeFileSync(full, v);
    else if ('dir' in v) fs.mkdirSync(full, { recursive: true });
    else if ('link' in v) fs.symlinkSync(v.link, full);
    else if ('opaque' in v) {
      fs.mkdirSync(full, { recursive: true });
      fs.writeFileSync(path.join(full, '.wh..wh..opq'), '');
    }
  }
}

/** Extract an OCI layer tar as an overlayfs lower directory (char 0:0, opaque xattr). */
function toOverlayLayer(tarFile: string, out: string): void {
  sh('tar', ['--numeric-owner', '-xpf', tarFile, '-C', out]);
  ociWhiteoutsToOverlay(out);
}

const big = (seed: number, n: number): string => {
  let s = '';
  let x = seed;
  while (s.length < n) {
    x = (x * 1103515245 + 12345) & 0x7fffffff;
    s += x.toString(36);
  }
  return s.slice(0, n);
};

test('three layers with whiteouts and opaque dirs merge to what overlayfs shows', async () => {
  const layers: Spec[] = [
    {
      'etc/passwd': 'root:x:0:0\n', 'etc/hosts': '127.0.0.1 localhost\n', 'usr/bin/tool': big(1, 300000),
      'var/cache/a': 'a', 'var/cache/b': 'b', 'opt/keep/x': 'x', 'opt/gone/y': 'y', 'lib/link': { link: '../usr/bin/tool' },
      'home/user/.profile': 'p', 'data/big': big(2, 2_500_000),
    },
    {
      'etc/.wh.hosts': '', 'etc/passwd': 'root:x:0:0\nuser:x:1000:1000\n', 'var/cache': { opaque: true },
      'var/cache/c': 'c', 'opt/.wh.gone': '', 'lib/.wh.link': '', 'lib/link2': { link: 'x' }, 'new/dir/file': 'n',
    },
    {
      'var/.wh.cache': '', 'opt/keep': { opaque: true }, 'opt/keep/z': 'z', 'etc/hosts': 'back\n',
      'home/user/.profile': 'p2', 'new/.wh.dir': '', 'data/big': big(3, 1_100_000),
    },
  ];
  const boots: string[] = [];
  const blobs = path.join(work, 'blobs');
  const lowers: string[] = [];
  layers.forEach((spec, i) => {
    const dir = path.join(work, `layer${i}`);
    writeLayer(dir, spec);
    const tarFile = path.join(work, `layer${i}.tar`);
    sh('tar', ['--numeric-owner', '-cf', tarFile, '-C', dir, '.']);
    const boot = path.join(work, `layer${i}.boot`);
    cliOk(['create', '--type', 'tar', '-B', boot, '-D', blobs, tarFile]);
    boots.push(boot);
    const ovl = path.join(work, `ovl${i}`);
    fs.mkdirSync(ovl);
    toOverlayLayer(tarFile, ovl);
    lowers.unshift(ovl); // overlay lowerdir lists the top layer first
  });
  const merged = path.join(work, 'merged.boot');
  const json = path.join(work, 'merge.json');
  cliOk(['merge', '-B', merged, '-J', json, ...boots]);
  const report = JSON.parse(fs.readFileSync(json, 'utf8'));
  assert.equal(report.blobs.length, 3);
  cliOk(['check', merged, '-D', blobs]);
  const img = path.join(work, 'merged.img');
  cliOk(['export', '-B', merged, '-D', blobs, '-O', img]);
  sh('fsck.erofs', [img]);
  const ours = mounts.erofs(img, path.join(work, 'merged.mnt'), ['loop']);
  const theirs = mounts.overlay(lowers, path.join(work, 'overlay.mnt'));
  const a = await snapshotTree(theirs);
  const b = await snapshotTree(ours);
  // overlayfs reports directory link counts of its own; everything else must match
  const diffs = diffTrees(a, b, { ignore: ['nlink'] });
  assert.deepEqual(diffs, []);
  // no whiteout marker survives the merge
  for (const p of b.keys()) assert.ok(!path.basename(p).startsWith('.wh.'), `whiteout ${p} in result`);
  assert.ok(!b.has('/var/cache') && !b.has('/opt/gone') && b.has('/opt/keep/z') && !b.has('/opt/keep/x'));
});

test('a layer repeating files of its parent adds no chunk; --chunk-dict shares chunks across images', async () => {
  const blobs = path.join(work, 'dedup-blobs');
  const l1 = path.join(work, 'd1');
  writeLayer(l1, { 'a/one': big(10, 3_000_000), 'a/two': big(11, 700_000), 'b/three': big(12, 50_000) });
  const b1 = path.join(work, 'd1.boot');
  const j1 = path.join(work, 'd1.json');
  cliOk(['create', '-B', b1, '-D', blobs, '-J', j1, l1]);
  const r1 = JSON.parse(fs.readFileSync(j1, 'utf8'));
  assert.ok(r1.stats.new_chunks >= 5);

  // second layer: copies of the first layer's files under new names
  const l2 = path.join(work, 'd2');
  writeLayer(l2, { 'copy/one': big(10, 3_000_000), 'copy/three': big(12, 50_000), 'a/two': big(11, 700_000) });
  const b2 = path.join(work, 'd2.boot');
  const j2 = path.join(work, 'd2.json');
  cliOk(['create', '--parent-bootstrap', b1, '-B', b2, '-D', blobs, '-J', j2, l2]);
  const r2 = JSON.parse(fs.readFileSync(j2, 'utf8'));
  assert.equal(r2.stats.new_chunks, 0, 'second layer must add no chunk');
  assert.equal(r2.blob_id, null);
  assert.ok(r2.stats.dedup_chunks >= 5);
  assert.deepEqual(r2.blobs, r1.blobs, 'only the parent blob is referenced');
  cliOk(['check', b2, '-D', blobs]);

  // chunk dict: an unrelated image that shares two files with image 1
  const other = path.join(work, 'other');
  writeLayer(other, { 'x/one': big(10, 3_000_000), 'y/new': big(99, 2_200_000) });
  const b3 = path.join(work, 'other.boot');
  const j3 = path.join(work, 'other.json');
  cliOk(['create', '--chunk-dict', b1, '-B', b3, '-D', blobs, '-J', j3, other]);
  const r3 = JSON.parse(fs.readFileSync(j3, 'utf8'));
  assert.equal(r3.blobs.length, 2, 'own blob + the dictionary blob');
  assert.ok(r3.blobs.includes(r1.blobs[0]));
  assert.ok(r3.stats.dedup_chunks >= 3, `dedup chunks ${r3.stats.dedup_chunks}`);
  assert.ok(r3.stats.blob_compressed_size < r3.stats.blob_sizes[r1.blobs[0]].compressed + 3_000_000);
  const img = path.join(work, 'other.img');
  cliOk(['export', '-B', b3, '-D', blobs, '-O', img]);
  const mnt = mounts.erofs(img, path.join(work, 'other.mnt'), ['loop']);
  assert.deepEqual(diffTrees(await snapshotTree(other), await snapshotTree(mnt)), []);
});
