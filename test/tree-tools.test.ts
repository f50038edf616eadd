/**
 * Tests of the test tooling itself: src/sys/native.ts (xattrs, mknod, utimensat, lseek),
 * images/tree-gen.ts (coverage, determinism, CLI) and test/helpers/tree-compare.ts
 * (snapshot + diff against cp -a / tar copies and single-property mutations).
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as crypto from 'node:crypto';
import { execFileSync } from 'node:child_process';

import * as native from '../src/sys/native';
import { NydusError } from '../src/errors';
import { generateTree, REQUIRED_FEATURES, vfsCapV2, CAP_NET_BIND_SERVICE, TreeManifest } from '../images/tree-gen';
import { snapshotTree, diffTrees, hashFile, formatNs, EntrySnapshot } from './helpers/tree-compare';
import { makeTmpDir, removeTmpDir, isRoot } from './helpers/tmp';

const ROOT = isRoot();
// not root: devices, chown, trusted.*/security.* are skipped by the generator, and the copies
// (cp -a / tar) cannot read the mode-0000 file nor restore owners
const needRoot = ROOT ? false : 'needs root (mknod of devices, chown, trusted.* xattrs, copying unreadable files)';

function assertSysError(f: () => unknown, call: string, where: string, code: string): void {
  assert.throws(f, (e: unknown) => {
    assert.ok(e instanceof NydusError, `not a NydusError: ${String(e)}`);
    assert.equal(e.code, 'ERR_IO');
    assert.equal(e.context.code, code);
    assert.equal(typeof e.context.errno, 'number');
    assert.ok(e.message.includes(call), `message names the call: ${e.message}`);
    assert.ok(e.message.includes(where), `message names the path: ${e.message}`);
    assert.ok(e.message.includes(code), `message names the errno: ${e.message}`);
    return true;
  });
}

// ------------------------------------------------------------------------------------------------
describe('native (koffi → libc)', () => {
  let dir: string;
  before(() => {
    dir = makeTmpDir('native-');
  });
  after(() => removeTmpDir(dir));

  test('errno names', () => {
    assert.equal(native.errnoName(95), 'ENOTSUP');
    assert.equal(native.errnoName(61), 'ENODATA');
    assert.equal(native.errnoName(2), 'ENOENT');
    assert.equal(native.errnoName(35), 'EDEADLK'); // not in libuv's map: from koffi's table
  });

  test('xattr set / get / list / remove', () => {
    const f = path.join(dir, 'x');
    fs.writeFileSync(f, 'data');
    assert.deepEqual(native.llistxattr(f), []);
    const bin = Buffer.from([0, 1, 2, 0xff, 0, 0x80]);
    native.lsetxattr(f, 'user.bin', bin);
    native.lsetxattr(f, 'user.empty', Buffer.alloc(0));
    const big = crypto.randomBytes(3000);
    native.lsetxattr(f, 'user.big', big);
    const rawName = Buffer.concat([Buffer.from('user.'), Buffer.from([0xff, 0xfe, 0x41])]); // not UTF-8
    native.lsetxattr(f, rawName, Buffer.from('raw'));
    native.lsetxattr(Buffer.from(f), 'user.名前', Buffer.from('utf8 name')); // Buffer path, wide name → UTF-8
    const names = native.llistxattr(f).sort();
    const rawLatin1 = rawName.toString('latin1');
    const utf8AsLatin1 = Buffer.from('user.名前').toString('latin1');
    assert.deepEqual(names, ['user.big', 'user.bin', 'user.empty', rawLatin1, utf8AsLatin1].sort());
    assert.deepEqual(native.lgetxattr(f, 'user.bin'), bin);
    assert.deepEqual(native.lgetxattr(f, 'user.empty'), Buffer.alloc(0));
    assert.deepEqual(native.lgetxattr(f, 'user.big'), big);
    assert.deepEqual(native.lgetxattr(f, rawLatin1), Buffer.from('raw')); // names from llistxattr round-trip
    assert.deepEqual(native.lgetxattr(f, utf8AsLatin1), Buffer.from('utf8 name'));
    // flags
    assertSysError(() => native.lsetxattr(f, 'user.bin', Buffer.from('x'), native.XATTR_CREATE), 'lsetxattr', f, 'EEXIST');
    assertSysError(() => native.lsetxattr(f, 'user.nope', Buffer.from('x'), native.XATTR_REPLACE), 'lsetxattr', f, 'ENODATA');
    native.lsetxattr(f, 'user.bin', Buffer.from('replaced'), native.XATTR_REPLACE);
    assert.equal(native.lgetxattr(f, 'user.bin').toString(), 'replaced');
    // remove
    for (const n of native.llistxattr(f)) native.lremovexattr(f, n);
    assert.deepEqual(native.llistxattr(f), []);
    assertSysError(() => native.lremovexattr(f, 'user.bin'), 'lremovexattr', f, 'ENODATA');
  });

  test('xattr errors name the path, the call and the errno', () => {
    const f = path.join(dir, 'y');
    fs.writeFileSync(f, '');
    assertSysError(() => native.lgetxattr(f, 'user.missing'), 'lgetxattr', f, 'ENODATA');
    const missing = path.join(dir, 'does-not-exist');
    assertSysError(() => native.llistxattr(missing), 'llistxattr', missing, 'ENOENT');
    assertSysError(() => native.lsetxattr(missing, 'user.a', Buffer.from('1')), 'lsetxattr', missing, 'ENOENT');
    // the kernel refuses user.* on symlinks: proves the l* calls do not follow the link
    const l = path.join(dir, 'link-to-y');
    fs.symlinkSync('y', l);
    assertSysError(() => native.lsetxattr(l, 'user.a', Buffer.from('1')), 'lsetxattr', l, 'EPERM');
    // procfs has no xattr support: ENOTSUP from listxattr means "none"
    assert.deepEqual(native.llistxattr('/proc/self/status'), []);
    // (as root the permission check passes and procfs answers ENOTSUP; otherwise the 0444 mode: EACCES)
    assertSysError(() => native.lsetxattr('/proc/self/status', 'user.a', Buffer.from('1')), 'lsetxattr', '/proc/self/status', ROOT ? 'ENOTSUP' : 'EACCES');
    // a NUL inside a path is an argument error, not a truncated syscall
    assert.throws(() => native.llistxattr('a\0b'), (e: unknown) => e instanceof NydusError && e.code === 'ERR_INVALID_ARGUMENT');
  });

  test('xattrs on symlinks (trusted.*, not followed)', { skip: needRoot }, () => {
    const target = path.join(dir, 'tgt');
    fs.writeFileSync(target, '');
    const l = path.join(dir, 'tlink');
    fs.symlinkSync('tgt', l);
    native.lsetxattr(l, 'trusted.on-link', Buffer.from('L'));
    assert.deepEqual(native.llistxattr(l), ['trusted.on-link']);
    assert.deepEqual(native.llistxattr(target), []);
  });

  test('makedev / major / minor match glibc', () => {
    assert.equal(native.makedev(1, 3), 0x103n);
    assert.equal(native.makedev(259, 70000), 0x11110370n);
    for (const [ma, mi] of [[0, 0], [7, 0], [259, 70000], [4095, 0xfffff], [0xfffff, 0xffffffff], [0xffffffff, 0xffffffff]]) {
      const d = native.makedev(ma, mi);
      assert.equal(native.devMajor(d), ma);
      assert.equal(native.devMinor(d), mi);
    }
  });

  test('mknod fifo, socket and regular file (no privilege needed)', () => {
    const fifo = path.join(dir, 'fifo');
    native.mknod(fifo, native.S_IFIFO | 0o640);
    assert.ok(fs.lstatSync(fifo).isFIFO());
    const sock = path.join(dir, 'sock');
    native.mknod(sock, native.S_IFSOCK | 0o600);
    assert.ok(fs.lstatSync(sock).isSocket());
    const reg = path.join(dir, 'reg');
    native.mknod(reg, native.S_IFREG | 0o600);
    assert.ok(fs.lstatSync(reg).isFile());
    // a non-UTF-8 name, passed as raw bytes
    const raw = Buffer.concat([Buffer.from(dir + '/fifo-'), Buffer.from([0xff, 0xc0, 0x80])]);
    native.mknod(raw, native.S_IFIFO | 0o600);
    assert.ok(fs.lstatSync(raw).isFIFO());
    assertSysError(() => native.mknod(fifo, native.S_IFIFO | 0o600), 'mknod', fifo, 'EEXIST');
    assertSysError(() => native.mknod(raw, native.S_IFIFO | 0o600), 'mknod', 'fifo-\\xff\\xc0\\x80', 'EEXIST');
    const noDir = path.join(dir, 'no', 'such', 'dir');
    assertSysError(() => native.mknod(noDir, native.S_IFIFO | 0o600), 'mknod', noDir, 'ENOENT');
  });

  test('mknod character and block devices', { skip: needRoot }, () => {
    for (const [name, type, ma, mi] of [
      ['null', native.S_IFCHR, 1, 3],
      ['big', native.S_IFCHR, 259, 70000],
      ['max', native.S_IFCHR, 4095, 0xfffff],
      ['loop0', native.S_IFBLK, 7, 0],
    ] as const) {
      const p = path.join(dir, name);
      native.mknod(p, type | 0o600, ma, mi);
      const st = fs.lstatSync(p, { bigint: true });
      assert.equal(type === native.S_IFCHR ? st.isCharacterDevice() : st.isBlockDevice(), true, name);
      assert.equal(st.rdev, native.makedev(ma, mi), name);
      assert.equal(native.devMajor(st.rdev), ma);
      assert.equal(native.devMinor(st.rdev), mi);
    }
  });

  test('lutimens sets full nanoseconds, before 1970 and after 2038, on symlinks too', () => {
    const f = path.join(dir, 't');
    fs.writeFileSync(f, '');
    const l = path.join(dir, 't-link');
    fs.symlinkSync('t', l);
    for (const ns of [1_700_000_000_123_456_789n, -1_234_567_890_123_456_789n, -1n, 0n, 4_102_444_800_987_654_321n]) {
      native.lutimens(f, ns, ns);
      assert.equal(fs.lstatSync(f, { bigint: true }).mtimeNs, ns);
    }
    native.lutimens(l, 5n, -86_400_000_000_001n);
    assert.equal(fs.lstatSync(l, { bigint: true }).mtimeNs, -86_400_000_000_001n);
    assert.equal(fs.lstatSync(f, { bigint: true }).mtimeNs, 4_102_444_800_987_654_321n); // target untouched
    assert.equal(formatNs(-1n), '-1.999999999');
    assertSysError(() => native.lutimens(path.join(dir, 'nope'), 0n, 0n), 'utimensat', path.join(dir, 'nope'), 'ENOENT');
  });

  test('lseek SEEK_DATA / SEEK_HOLE', () => {
    const f = path.join(dir, 'sparse');
    const fd = fs.openSync(f, 'w+');
    try {
      fs.ftruncateSync(fd, 64 << 20);
      fs.writeSync(fd, Buffer.alloc(4096, 1), 0, 4096, 32 << 20);
      assert.equal(native.lseek(fd, 0, native.SEEK_DATA), 32 << 20);
      assert.equal(native.lseek(fd, 32 << 20, native.SEEK_HOLE), (32 << 20) + 4096);
      assert.equal(native.lseek(fd, (32 << 20) + 4096, native.SEEK_DATA), -1); // ENXIO: no more data
      assertSysError(() => native.lseek(fd, -5, native.SEEK_SET, f), 'lseek', f, 'EINVAL');
    } finally {
      fs.closeSync(fd);
    }
  });
});

// ------------------------------------------------------------------------------------------------
describe('tree-gen + tree-compare', () => {
  let base: string;
  let src: string;
  let manifest: TreeManifest;
  let snap: Map<string, EntrySnapshot>;
  let snapMs = 0;
  before(async () => {
    base = makeTmpDir('tree-tools-');
    src = path.join(base, 'src');
    manifest = await generateTree(src, { seed: 42 });
    const t0 = Date.now();
    snap = await snapshotTree(src);
    snapMs = Date.now() - t0;
  });
  after(() => removeTmpDir(base));

  test('manifest covers every required feature', { skip: needRoot }, (t) => {
    t.diagnostic(`generate ${manifest.generateMs.toFixed(0)} ms, snapshot ${snapMs} ms, ${snap.size} entries`);
    assert.deepEqual(manifest.missingFeatures, []);
    assert.deepEqual(manifest.skipped, []);
    for (const f of REQUIRED_FEATURES) assert.ok(manifest.features[f]?.length, f);
    assert.ok(!manifest.features['file:sparse-4GiB']);
    for (const k of ['file', 'dir', 'symlink', 'hardlink', 'chr', 'blk', 'fifo', 'sock'] as const) assert.ok(manifest.counts[k] > 0, k);
    for (const k of ['user', 'trusted', 'security', 'system'] as const) assert.ok(manifest.xattrNamespaces[k] > 0, k);
    assert.equal(manifest.counts.total, manifest.entries.length);
    assert.equal(manifest.mtime.exact, manifest.entries.filter((e) => e.kind !== 'hardlink').length);
    assert.deepEqual(manifest.mtime.mismatched, []);
    // Node's lutimes: µs precision, and a negative number silently means "now"
    assert.match(manifest.mtime.nodeLutimesProbe.landed, /000$/);
  });

  test('manifest agrees with the snapshot', () => {
    assert.equal(snap.size, manifest.entries.length);
    for (const e of manifest.entries) {
      const s = snap.get(e.path);
      assert.ok(s, `${e.path} in snapshot`);
      const kind = e.kind === 'hardlink' ? 'file' : e.kind;
      assert.equal(s.type, kind, e.path);
      if (e.mode !== undefined) assert.equal(s.mode, e.mode, `${e.path} mode`);
      if (e.uid !== undefined) assert.equal(s.uid, e.uid, `${e.path} uid`);
      if (e.gid !== undefined) assert.equal(s.gid, e.gid, `${e.path} gid`);
      if (e.size !== undefined) assert.equal(s.size, e.size, `${e.path} size`);
      if (e.mtimeNs !== undefined) assert.equal(s.mtimeNs, BigInt(e.mtimeNs), `${e.path} mtime`);
      if (e.target !== undefined) assert.equal(s.target, e.target, `${e.path} target`);
      if (e.rdev) assert.deepEqual(s.rdev, e.rdev, `${e.path} rdev`);
      for (const x of e.xattrs ?? []) assert.ok(x in s.xattrs, `${e.path} xattr ${x}`);
    }
    assert.equal([...snap.keys()].filter((p) => p.startsWith('/dirs/many/')).length, manifest.fileCount);
  });

  test('snapshot details: devices, links, names, xattrs, owners, times', { skip: needRoot }, () => {
    const g = (p: string) => {
      const e = snap.get(p);
      assert.ok(e, p);
      return e;
    };
    assert.deepEqual(g('/special/chr-259-70000').rdev, { major: 259, minor: 70000 });
    assert.deepEqual(g('/special/loop0').rdev, { major: 7, minor: 0 });
    assert.equal(g('/special/loop0').type, 'blk');
    assert.equal(g('/special/socket').type, 'sock');
    assert.equal(g('/special/fifo').type, 'fifo');
    assert.equal(g('/links/long-1000').size, 1000);
    assert.equal(g('/links/long-4095').size, 4095);
    assert.equal(g('/links/long-4095').targetHex!.length, 2 * 4095);
    assert.deepEqual(g('/hardlinks/three').links, ['/hardlinks/a/one', '/hardlinks/b/two', '/hardlinks/three']);
    assert.equal(g('/hardlinks/a/one').nlink, 3);
    assert.deepEqual(g('/hardlinks/b/empty-2').links, ['/hardlinks/b/empty-2', '/hardlinks/empty-1']);
    assert.equal(g('/hardlinks/empty-1').size, 0);
    assert.deepEqual(g('/files/one-byte').links, ['/files/one-byte']);
    const n255 = [...snap.keys()].filter((p) => p.startsWith('/names/') && Buffer.byteLength(path.basename(p)) === 255);
    assert.equal(n255.length, 2);
    for (const n of ['!', '-', '.a', '..b', '...', '.-', '.hidden-dir']) assert.ok(snap.has(`/names/${n}`), n);
    assert.ok(snap.has('/names/日本語のファイル名'));
    assert.ok(snap.has('/names/emoji-😀🚀🐳'));
    let deep = '/dirs/deep';
    for (let i = 1; i <= 45; i++) deep += `/level-${String(i).padStart(2, '0')}`;
    assert.equal(g(`${deep}/bottom`).type, 'file');
    assert.equal(g('/dirs/sticky-1777').mode, 0o1777);
    assert.equal(g('/dirs/empty-0700').mode, 0o700);
    assert.equal(g('/owners/setuid').mode, 0o4755);
    assert.equal(g('/owners/setuid-setgid-1000').mode, 0o6750);
    assert.equal(g('/owners/uid-2147483646').uid, 2 ** 31 - 2);
    assert.equal(g('/owners/uid-100000').gid, 100000);
    // xattrs
    const ux = g('/xattrs/user').xattrs;
    assert.equal(ux['user.empty'], '');
    assert.equal(ux['user.binary'], Buffer.from(Array.from({ length: 256 }, (_, i) => i)).toString('hex'));
    assert.ok(Object.keys(ux).some((n) => n.length === 255));
    assert.equal(g('/xattrs/cap-net-bind').xattrs['security.capability'], vfsCapV2([CAP_NET_BIND_SERVICE]).toString('hex'));
    assert.equal(g('/xattrs/cap-net-bind').xattrs['security.capability'], '0100000200040000000000000000000000000000');
    assert.ok(g('/xattrs/acl-file').xattrs['system.posix_acl_access'].startsWith('02000000'));
    assert.equal(g('/xattrs/acl-file').mode, 0o660); // group bits = ACL mask
    assert.ok(g('/xattrs/acl-dir').xattrs['system.posix_acl_default']);
    assert.ok(g('/xattrs/acl-dir/inherited').xattrs['system.posix_acl_access'], 'default ACL inherited');
    assert.ok(g('/xattrs/symlink-trusted').xattrs['trusted.on-symlink']);
    // times
    assert.equal(formatNs(g('/times/pre-1970').mtimeNs), '-1234567891.876543211');
    assert.equal(g('/times/year-2100').mtimeNs, 4_102_444_800_987_654_321n);
    assert.equal(g('/times/ns-1').mtimeNs % 1000n, 1n);
    assert.equal(g('/times/symlink-pre-1970').mtimeNs, -86_400_000_000_001n);
  });

  test('sparse hashing (SEEK_DATA path) equals a plain read', async () => {
    const p = path.join(src, 'files/sparse');
    const st = fs.statSync(p);
    assert.ok(st.blocks * 512 < st.size, 'files/sparse is sparse on this filesystem');
    const plain = crypto.createHash('sha256').update(fs.readFileSync(p)).digest('hex');
    assert.equal(snap.get('/files/sparse')!.sha256, plain);
    assert.equal(await hashFile(p), plain);
    const dedupA = fs.readFileSync(path.join(src, 'files/dedup-a'));
    assert.ok(dedupA.subarray(0, 1 << 20).equals(dedupA.subarray(1 << 20, 2 << 20)), 'repeating chunks');
  });

  test('same seed → identical tree; other seed → different', async () => {
    const again = path.join(base, 'again');
    await generateTree(again, { seed: 42 });
    assert.deepEqual(diffTrees(snap, await snapshotTree(again)), []);
    const other = path.join(base, 'other');
    await generateTree(other, { seed: 43, fileCount: 10 });
    const d = diffTrees(snap, await snapshotTree(other));
    assert.ok(d.some((l) => l.startsWith('/files/exact-4096: content sha256')), 'contents depend on the seed');
    assert.ok(d.some((l) => l.includes('missing in actual')), 'fileCount changes /dirs/many');
    removeTmpDir(again);
    removeTmpDir(other);
  });

  test('generating into a non-empty directory is refused', async () => {
    await assert.rejects(generateTree(src), (e: unknown) => e instanceof NydusError && e.code === 'ERR_INVALID_ARGUMENT');
  });

  test('cp -a --preserve=all copy: no differences', { skip: needRoot }, async () => {
    const copy = path.join(base, 'cp');
    execFileSync('cp', ['-a', '--preserve=all', src, copy]);
    assert.deepEqual(diffTrees(snap, await snapshotTree(copy)), []);
    removeTmpDir(copy);
  });

  test('tar --xattrs --acls round trip: only the socket is lost (GNU tar ignores sockets)', { skip: needRoot }, async () => {
    const out = path.join(base, 'tar-out');
    fs.mkdirSync(out);
    const tarFile = path.join(base, 't.tar');
    const flags = ['--xattrs', "--xattrs-include=*", '--acls'];
    execFileSync('tar', ['-C', src, ...flags, '--format=posix', '-cf', tarFile, '.'], { stdio: 'ignore' });
    execFileSync('tar', ['-C', out, ...flags, '-xpf', tarFile], { stdio: 'ignore' });
    assert.deepEqual(diffTrees(snap, await snapshotTree(out)), ['/special/socket: missing in actual']);
    removeTmpDir(out);
    fs.rmSync(tarFile, { force: true });
  });

  test('every kind of mutation is reported', { skip: needRoot }, async () => {
    const copy = path.join(base, 'mut');
    execFileSync('cp', ['-a', '--preserve=all', src, copy]);
    const m = (rel: string) => path.join(copy, rel);
    fs.chmodSync(m('files/one-byte'), 0o600);
    native.lsetxattr(m('xattrs/user'), 'user.plain', Buffer.from('HELLO'));
    native.lremovexattr(m('xattrs/user'), 'user.empty');
    native.lsetxattr(m('files/exact-1MiB'), 'user.added', Buffer.from('new'));
    {
      const fd = fs.openSync(m('files/exact-4096'), 'r+');
      fs.writeSync(fd, Buffer.from('X'), 0, 1, 100);
      fs.closeSync(fd);
    }
    fs.appendFileSync(m('files/small-text'), '!');
    fs.rmSync(m('links/short'));
    fs.symlinkSync('../files/empty', m('links/short'));
    fs.copyFileSync(m('hardlinks/b/two'), m('hardlinks/b/two.tmp'));
    fs.renameSync(m('hardlinks/b/two.tmp'), m('hardlinks/b/two')); // split one name off the group of 3
    fs.rmSync(m('names/!'));
    fs.writeFileSync(m('names/extra'), '');
    fs.utimesSync(m('files/mode-0600'), 1, 1);
    native.lutimens(m('files/mode-0444'), 0n, fs.lstatSync(m('files/mode-0444'), { bigint: true }).mtimeNs + 1n);
    if (ROOT) {
      fs.lchownSync(m('owners/uid-1000'), 1001, 1000);
      native.lsetxattr(m('xattrs/trusted'), 'trusted.overlay.opaque', Buffer.from('n'));
      fs.rmSync(m('special/chr-259-70000'));
      native.mknod(m('special/chr-259-70000'), native.S_IFCHR | 0o640, 259, 70001);
      fs.lchownSync(m('special/chr-259-70000'), 0, 6);
    }
    fs.rmSync(m('special/fifo'));
    fs.mkdirSync(m('special/fifo'));
    fs.chmodSync(copy, 0o700);

    const actual = await snapshotTree(copy);
    const d = diffTrees(snap, actual);
    const expectHas = (prefix: string) => assert.ok(d.some((l) => l.startsWith(prefix)), `expected a line starting ${JSON.stringify(prefix)} in:\n${d.join('\n')}`);
    expectHas('/files/one-byte: mode 0644 != 0600');
    expectHas('/xattrs/user: xattr "user.plain" 68656c6c6f != 48454c4c4f');
    expectHas('/xattrs/user: xattr "user.empty" missing in actual');
    expectHas('/files/exact-1MiB: xattr "user.added" unexpected in actual');
    expectHas('/files/exact-4096: content sha256 ');
    expectHas('/files/small-text: size 3000 != 3001');
    expectHas('/links/short: symlink target "../files/one-byte" != "../files/empty"');
    expectHas('/hardlinks/b/two: nlink 3 != 1');
    expectHas('/hardlinks/b/two: hardlinks [/hardlinks/a/one, /hardlinks/b/two, /hardlinks/three] != [/hardlinks/b/two]');
    expectHas('/hardlinks/a/one: nlink 3 != 2');
    expectHas('/hardlinks/three: hardlinks [/hardlinks/a/one, /hardlinks/b/two, /hardlinks/three] != [/hardlinks/a/one, /hardlinks/three]');
    expectHas('/names/!: missing in actual');
    expectHas('/names/extra: unexpected in actual');
    expectHas('/files/mode-0600: mtime ');
    expectHas('/files/mode-0444: mtime ');
    expectHas('/special/fifo: type fifo != dir');
    expectHas('/: mode 0755 != 0700');
    expectHas('/links: mtime '); // directory mtime changed by the re-created symlink
    if (ROOT) {
      expectHas('/owners/uid-1000: uid 1000 != 1001');
      expectHas('/xattrs/trusted: xattr "trusted.overlay.opaque" 79 != 6e');
      expectHas('/special/chr-259-70000: rdev 259:70000 != 259:70001');
    }

    // ignore switches hide exactly their kind of difference
    const d2 = diffTrees(snap, actual, { ignore: ['mtime', 'xattrs', 'uidgid', 'nlink', 'rootMeta'] });
    assert.ok(!d2.some((l) => / (mtime|xattr|uid|gid|nlink) /.test(l) || l.startsWith('/:')), d2.join('\n'));
    assert.ok(d2.some((l) => l.startsWith('/files/one-byte: mode')));
    assert.ok(d2.some((l) => l.startsWith('/hardlinks/b/two: hardlinks')));
    const d3 = diffTrees(snap, actual, { ignore: ['dirMtime'] });
    assert.ok(!d3.some((l) => l.startsWith('/links: mtime')));
    assert.ok(d3.some((l) => l.startsWith('/files/mode-0600: mtime')));
    const d4 = diffTrees(snap, actual, { xattrFilter: (n) => !n.startsWith('user.') });
    assert.ok(!d4.some((l) => l.includes('xattr "user.')));
    if (ROOT) assert.ok(d4.some((l) => l.includes('xattr "trusted.')));
    // directory sizes are compared only on request
    assert.ok(!d.some((l) => /^\/[^:]*: size /.test(l) && snap.get(l.slice(0, l.indexOf(':')))?.type === 'dir'));
    removeTmpDir(copy);
  });

  test('CLI: node dist/images/tree-gen.js DIR --seed N --file-count N', () => {
    const out = path.join(base, 'cli');
    const script = path.join(__dirname, '..', 'images', 'tree-gen.js');
    const json = execFileSync(process.execPath, [script, out, '--seed', '5', '--file-count', '20'], { encoding: 'utf8' });
    const summary = JSON.parse(json) as { fileCount: number; seed: number; counts: Record<string, number>; features: Record<string, number> };
    assert.equal(summary.seed, 5);
    assert.equal(summary.fileCount, 20);
    assert.equal(fs.readdirSync(path.join(out, 'dirs/many')).length, 20);
    assert.ok(summary.features['file:dedup'] >= 1);
    assert.throws(() => execFileSync(process.execPath, [script], { stdio: 'pipe' }));
    removeTmpDir(out);
  });
});

// ------------------------------------------------------------------------------------------------
describe('tree-gen --large', () => {
  let base: string;
  before(() => {
    base = makeTmpDir('tree-large-');
  });
  after(() => removeTmpDir(base));

  test('4 GiB + 12345 sparse file: apparent size, few blocks, quick hashing', async (t) => {
    const src = path.join(base, 'src');
    const manifest = await generateTree(src, { large: true, seed: 9, fileCount: 100 });
    if (ROOT) assert.deepEqual(manifest.missingFeatures, []);
    const rel = '/large/sparse-4GiB';
    const entry = manifest.entries.find((e) => e.path === rel)!;
    assert.ok(entry.features.includes('file:sparse-4GiB'));
    const p = path.join(src, rel);
    const st = fs.statSync(p);
    assert.equal(st.size, 4 * 1024 ** 3 + 12345);
    assert.ok(st.blocks * 512 < 1 << 20, `allocated ${st.blocks * 512} bytes`);

    const t0 = Date.now();
    const snap = await snapshotTree(src);
    const snapMs = Date.now() - t0;
    t.diagnostic(`large: generate ${manifest.generateMs.toFixed(0)} ms, snapshot ${snapMs} ms`);
    assert.ok(snapMs < 60_000, `snapshot took ${snapMs} ms`);

    // independent expected digest: zeros + the data extents the manifest recorded
    const h = crypto.createHash('sha256');
    const zeros = Buffer.alloc(1 << 20);
    const fd = fs.openSync(p, 'r');
    let pos = 0;
    for (const [off, len] of [...entry.dataExtents!, [st.size, 0] as [number, number]]) {
      for (let n = off - pos; n > 0; n -= zeros.length) h.update(n >= zeros.length ? zeros : zeros.subarray(0, n));
      const b = Buffer.alloc(len);
      fs.readSync(fd, b, 0, len, off);
      assert.ok(len === 0 || !b.equals(Buffer.alloc(len)), 'extent holds data');
      h.update(b);
      pos = off + len;
    }
    fs.closeSync(fd);
    assert.equal(snap.get(rel)!.sha256, h.digest('hex'));
    assert.equal(snap.get(rel)!.size, 4 * 1024 ** 3 + 12345);
  });
});
