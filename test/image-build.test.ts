/**
 * Issue #2 acceptance: build from a directory / tar / tar.gz covering every inode type, then
 * check the result on real tools and the real kernel (fsck.erofs, loop mounts, overlayfs).
 */
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { generateTree, TreeManifest } from '../images/tree-gen';
import { snapshotTree, diffTrees, EntrySnapshot } from './helpers/tree-compare';
import { makeTmpDir, removeTmpDir } from './helpers/tmp';
import { cli, cliOk, sh, Mounts } from './helpers/mount';

let work: string;
let src: string;
let manifest: TreeManifest;
let srcSnap: Map<string, EntrySnapshot>;
const mounts = new Mounts();

before(async () => {
  work = makeTmpDir('nydus-build-');
  src = path.join(work, 'src');
  manifest = await generateTree(src, { large: true, seed: 7 });
  assert.deepEqual(manifest.missingFeatures, [], `tree generator could not create: ${manifest.missingFeatures.join(', ')}`);
  srcSnap = await snapshotTree(src);
});

after(() => {
  mounts.cleanup();
  if (!process.env.NYDUS_TS_KEEP_TMP) removeTmpDir(work);
});

interface Built { boot: string; blobs: string; report: Record<string, any> }

function build(name: string, source: string, extra: string[] = [], input?: Buffer): Built {
  const dir = path.join(work, name);
  const boot = path.join(dir, 'image.boot');
  const blobs = path.join(dir, 'blobs');
  const json = path.join(dir, 'report.json');
  cliOk(['create', '-B', boot, '-D', blobs, '-J', json, ...extra, source], { input });
  return { boot, blobs, report: JSON.parse(fs.readFileSync(json, 'utf8')) };
}

/** export → fsck.erofs --extract → loop mount; returns the mount point */
function exportAndMount(b: Built, name: string): string {
  const img = path.join(work, name + '.img');
  cliOk(['export', '-B', b.boot, '-D', b.blobs, '-O', img]);
  const ex = path.join(work, name + '.fsck');
  sh('fsck.erofs', [`--extract=${ex}`, img]); // throws on a non-zero exit (corruption)
  fs.rmSync(ex, { recursive: true, force: true });
  return mounts.erofs(img, path.join(work, name + '.mnt'), ['loop']);
}

function assertSameTree(expected: Map<string, EntrySnapshot>, actual: Map<string, EntrySnapshot>, what: string, ignorePaths: (p: string) => boolean = () => false): void {
  const exp = new Map([...expected].filter(([p]) => !ignorePaths(p)));
  const diffs = diffTrees(exp, actual);
  assert.deepEqual(diffs.slice(0, 30), [], `${what}: ${diffs.length} differences`);
}

let dirImage: Built;

test('create from a directory: export passes fsck.erofs and the loop mount equals the source', async () => {
  dirImage = build('dir', src);
  assert.equal(dirImage.report.fs_version, '6');
  assert.equal(dirImage.report.blobs.length, 1);
  const check = cli(['check', dirImage.boot, '-D', dirImage.blobs]);
  assert.equal(check.status, 0, check.stderr + check.stdout);
  const mnt = exportAndMount(dirImage, 'dir');
  assertSameTree(srcSnap, await snapshotTree(mnt), 'dir image');
});

test('bootstrap mounted with the uncompressed blob as an extra loop device equals the source', async () => {
  const raw = path.join(work, 'dir-blob.raw');
  // the blob's uncompressed space is what the fscache cache file holds
  const { exportBlobData } = await import('../src/tools/export');
  await exportBlobData(dirImage.boot, dirImage.blobs, dirImage.report.blobs[0], raw);
  const dev = mounts.loop(raw);
  const mnt = mounts.erofs(dirImage.boot, path.join(work, 'dev.mnt'), ['loop', `device=${dev}`]);
  assertSameTree(srcSnap, await snapshotTree(mnt), 'bootstrap + device');
});

function makeTar(gz: boolean): string {
  const out = path.join(work, gz ? 'src.tar.gz' : 'src.tar');
  sh('tar', ['--xattrs', '--xattrs-include=*', '--acls', '--sparse', '--format=pax', '--numeric-owner', gz ? '-czf' : '-cf', out, '-C', src, '.']);
  return out;
}
// tar cannot hold sockets, and GNU tar stores ACLs in its own records, re-created on extract
const isSocket = (p: string): boolean => srcSnap.get(p)?.type === 'sock';

for (const gz of [false, true]) {
  test(`create --type ${gz ? 'targz' : 'tar'} streams the layer and mounts equal to the source`, async () => {
    const tarFile = makeTar(gz);
    const b = build(gz ? 'targz' : 'tar', tarFile, ['--type', gz ? 'targz' : 'tar']);
    const mnt = exportAndMount(b, gz ? 'targz' : 'tar');
    const snap = await snapshotTree(mnt);
    const diffs = diffTrees(new Map([...srcSnap].filter(([p]) => !isSocket(p))), snap, {
      // GNU tar writes ACLs as SCHILY.acl.* text records, not as xattrs
      xattrFilter: (n) => !n.startsWith('system.posix_acl_'),
    });
    assert.deepEqual(diffs.slice(0, 30), [], `${diffs.length} differences`);
  });
}

test('create from stdin (-) gives the same bootstrap and blob as from the file', () => {
  const tarFile = path.join(work, 'src.tar');
  const a = build('tar-file-again', tarFile, ['--type', 'tar']);
  const b = build('tar-stdin', '-', ['--type', 'tar'], fs.readFileSync(tarFile));
  assert.ok(fs.readFileSync(a.boot).equals(fs.readFileSync(b.boot)));
  assert.deepEqual(a.report.blobs, b.report.blobs);
});

test('builds are reproducible: same input and flags give byte-identical bootstrap and blob', () => {
  const again = build('dir-again', src);
  assert.ok(fs.readFileSync(again.boot).equals(fs.readFileSync(dirImage.boot)), 'bootstrap differs');
  assert.deepEqual(again.report.blobs, dirImage.report.blobs);
});

for (const compressor of ['lz4_block', 'none']) {
  test(`compressor ${compressor} and sha256 digests round-trip through export and mount`, async () => {
    const sub = path.join(src, 'files');
    const b = build(`c-${compressor}`, sub, ['--compressor', compressor, '--digester', 'sha256', '--chunk-size', '0x10000']);
    const check = cli(['check', b.boot, '-D', b.blobs]);
    assert.equal(check.status, 0, check.stderr);
    const mnt = exportAndMount(b, `c-${compressor}`);
    const exp = await snapshotTree(sub);
    assertSameTree(exp, await snapshotTree(mnt), compressor);
  });
}

test('unpack round-trips our image to the same tree', async () => {
  const tarOut = path.join(work, 'unpacked.tar');
  cliOk(['unpack', '-B', dirImage.boot, '-D', dirImage.blobs, '-O', tarOut]);
  // rebuild from the unpacked tar with our own reader and compare the mounted trees
  const b = build('from-unpack', tarOut, ['--type', 'tar']);
  const mnt = exportAndMount(b, 'from-unpack');
  assertSameTree(srcSnap, await snapshotTree(mnt), 'unpack → create', isSocket);
  // and GNU tar extracts it to the same tree too
  const x = path.join(work, 'unpacked-x');
  fs.mkdirSync(x);
  sh('tar', ['--xattrs', '--xattrs-include=*', '--numeric-owner', '-xpf', tarOut, '-C', x]);
  const diffs = diffTrees(new Map([...srcSnap].filter(([p]) => !isSocket(p))), await snapshotTree(x), { ignore: ['dirMtime', 'rootMeta'] });
  assert.deepEqual(diffs.slice(0, 30), [], `${diffs.length} differences after GNU tar extraction`);
});
