/**
 * Deterministic generator of a directory tree that covers every item of the RAFS v6 / EROFS
 * format checklist (file sizes around chunk and block boundaries, dedup, sparse files, huge
 * directories, deep chains, every inode type, xattrs of all namespaces with valid binary
 * security.capability and POSIX ACL values, large uid/gid, special mode bits, nanosecond mtimes
 * before 1970 and after 2038, non-ASCII and 255-byte names, names sorting around "." and "..").
 *
 *   generateTree(root, { large?, seed?, fileCount? }) → TreeManifest
 *   node dist/images/tree-gen.js DIR [--large] [--seed N] [--file-count N] [--json]
 *
 * Everything derives from the seed (contents, names in the big directory, mtimes), so two runs
 * with the same seed give trees that snapshot identically. Operations that need privileges
 * (mknod of devices, chown, trusted.* / security.* xattrs) are recorded in `skipped` when the
 * host refuses them instead of failing the whole generation.
 *
 * Order per entry: create → content → lchown → chmod → xattrs (ACLs last, consistent with the
 * mode) ; then, after everything exists, mtimes are set deepest first, each directory after its
 * contents and the root last, with utimensat (full ns; Node's utimes would round to µs and
 * turns negative numbers into "now").
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as native from '../src/sys/native';
import { NydusError } from '../src/errors';

export type EntryKind = 'file' | 'dir' | 'symlink' | 'hardlink' | 'chr' | 'blk' | 'fifo' | 'sock';

export interface ManifestEntry {
  /** '/'-rooted path relative to the tree root ('/' is the root itself) */
  path: string;
  /** 'hardlink' for every name of an inode after the first one */
  kind: EntryKind;
  /** coverage labels this entry satisfies (see REQUIRED_FEATURES) */
  features: string[];
  /** permission bits (07777) requested */
  mode?: number;
  uid?: number;
  gid?: number;
  /** apparent size of a regular file */
  size?: number;
  /** symlink target */
  target?: string;
  /** device numbers */
  rdev?: { major: number; minor: number };
  /** xattr names set on this entry (latin1 of the raw bytes) */
  xattrs?: string[];
  /** for kind 'hardlink': the first name of the inode */
  linkOf?: string;
  /** mtime requested, ns since the epoch, as a decimal string (bigint-safe JSON) */
  mtimeNs?: string;
  /** data extents of a sparse file: [offset, length] */
  dataExtents?: Array<[number, number]>;
}

export interface SkippedItem {
  path: string;
  what: string;
  reason: string;
}

export interface TreeManifest {
  root: string;
  seed: number;
  large: boolean;
  /** entries of the many-entries directory /dirs/many */
  fileCount: number;
  entries: ManifestEntry[];
  /** entries per kind ('hardlink' counts extra names), plus 'total' */
  counts: Record<EntryKind | 'total', number>;
  /** xattrs set per namespace */
  xattrNamespaces: Record<'user' | 'trusted' | 'security' | 'system', number>;
  /** feature label → paths that satisfy it */
  features: Record<string, string[]>;
  /** labels of REQUIRED_FEATURES (for this `large` setting) that no entry satisfies */
  missingFeatures: string[];
  /** what the host refused */
  skipped: SkippedItem[];
  /** sum of the apparent sizes of regular files (each inode once) */
  apparentBytes: number;
  /** how mtimes were set and what precision lands on this host */
  mtime: {
    method: 'utimensat';
    /** every requested mtime read back exactly (ns) */
    exact: number;
    /** entries whose mtime came back different from the request */
    mismatched: Array<{ path: string; requested: string; actual: string }>;
    /** what Node's fs.lutimesSync lands for a sample fractional value, for the record */
    nodeLutimesProbe: { requested: string; landed: string; negativeRequested: string; negativeLanded: string };
  };
  generateMs: number;
}

/** Every coverage label the generator is expected to produce ('large' ones only with large). */
export const REQUIRED_FEATURES: readonly string[] = [
  'file:empty',
  'file:1byte',
  'file:4096',
  'file:1MiB',
  'file:1MiB+1',
  'file:dedup',
  'file:random',
  'file:text',
  'file:sparse',
  'file:inline-tail',
  'dir:many',
  'dir:deep',
  'dir:empty',
  'dir:0700',
  'dir:1777',
  'symlink:short',
  'symlink:1000',
  'symlink:4095',
  'symlink:dangling',
  'symlink:dir',
  'symlink:absolute',
  'hardlink:3',
  'hardlink:empty',
  'chr',
  'chr:bigdev',
  'blk',
  'fifo',
  'sock',
  'xattr:user',
  'xattr:user-binary',
  'xattr:user-empty',
  'xattr:user-longname',
  'xattr:user-shared',
  'xattr:trusted',
  'xattr:trusted-symlink',
  'xattr:security',
  'xattr:security.capability',
  'xattr:acl-access-file',
  'xattr:acl-access-dir',
  'xattr:acl-default',
  'uid:>65535',
  'uid:2^31-2',
  'uid:ordinary',
  'mode:setuid',
  'mode:setgid',
  'mode:setgid-dir',
  'mode:0000',
  'mtime:ns',
  'mtime:pre1970',
  'mtime:2100',
  'mtime:epoch',
  'name:cjk',
  'name:emoji',
  'name:255',
  'name:255-utf8',
  'name:sort-dots',
];
export const LARGE_FEATURES: readonly string[] = ['file:sparse-4GiB'];

const MiB = 1 << 20;
const KiB = 1024;

/** mulberry32: small, fast, deterministic. */
class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }
  u32(): number {
    let t = (this.s = (this.s + 0x6d2b79f5) | 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  int(n: number): number {
    return this.u32() % n;
  }
  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    let i = 0;
    for (; i + 4 <= n; i += 4) b.writeUInt32LE(this.u32(), i);
    for (; i < n; i++) b[i] = this.u32() & 0xff;
    return b;
  }
  /** compressible English-like text */
  text(n: number): Buffer {
    const words = ['lorem', 'ipsum', 'dolor', 'sit', 'amet', 'nydus', 'rafs', 'erofs', 'chunk', 'blob', 'image', 'layer',
      'lazy', 'loading', 'container', 'bootstrap', 'inode', 'dirent', 'xattr', 'the', 'a', 'of', 'and', 'to', 'in'];
    const parts: string[] = [];
    let len = 0;
    let line = 0;
    while (len < n) {
      const w = words[this.int(words.length)];
      const sep = ++line % 12 === 0 ? '\n' : ' ';
      parts.push(w + sep);
      len += w.length + 1;
    }
    return Buffer.from(parts.join(''), 'latin1').subarray(0, n);
  }
}

// ---- binary xattr values -----------------------------------------------------------------------

/** struct vfs_cap_data, VFS_CAP_REVISION_2, effective flag, permitted = given capability bits */
export function vfsCapV2(capBits: number[]): Buffer {
  const VFS_CAP_REVISION_2 = 0x02000000;
  const VFS_CAP_FLAGS_EFFECTIVE = 0x1;
  const b = Buffer.alloc(20);
  const permitted = [0, 0];
  for (const c of capBits) permitted[c >> 5] |= 1 << (c & 31);
  b.writeUInt32LE((VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE) >>> 0, 0);
  b.writeUInt32LE(permitted[0] >>> 0, 4); // data[0].permitted
  b.writeUInt32LE(0, 8); // data[0].inheritable
  b.writeUInt32LE(permitted[1] >>> 0, 12); // data[1].permitted
  b.writeUInt32LE(0, 16); // data[1].inheritable
  return b;
}
export const CAP_NET_BIND_SERVICE = 10;

export const ACL_USER_OBJ = 0x01;
export const ACL_USER = 0x02;
export const ACL_GROUP_OBJ = 0x04;
export const ACL_GROUP = 0x08;
export const ACL_MASK = 0x10;
export const ACL_OTHER = 0x20;
const ACL_UNDEFINED_ID = 0xffffffff;

/** posix_acl_xattr value: le32 version 2, then { le16 tag, le16 perm, le32 id } sorted by tag, id. */
export function posixAcl(entries: Array<{ tag: number; perm: number; id?: number }>): Buffer {
  const sorted = [...entries].sort((a, b) => a.tag - b.tag || (a.id ?? 0) - (b.id ?? 0));
  const buf = Buffer.alloc(4 + 8 * sorted.length);
  buf.writeUInt32LE(2, 0);
  sorted.forEach((e, i) => {
    buf.writeUInt16LE(e.tag, 4 + 8 * i);
    buf.writeUInt16LE(e.perm, 6 + 8 * i);
    buf.writeUInt32LE(e.tag === ACL_USER || e.tag === ACL_GROUP ? e.id! >>> 0 : ACL_UNDEFINED_ID, 8 + 8 * i);
  });
  return buf;
}
/** The mode permission bits an access ACL implies (owner = USER_OBJ, group = MASK or GROUP_OBJ, other). */
function aclMode(entries: Array<{ tag: number; perm: number }>): number {
  const get = (t: number) => entries.find((e) => e.tag === t)?.perm;
  return ((get(ACL_USER_OBJ) ?? 0) << 6) | ((get(ACL_MASK) ?? get(ACL_GROUP_OBJ) ?? 0) << 3) | (get(ACL_OTHER) ?? 0);
}

// ---- the generator -----------------------------------------------------------------------------

interface Pending {
  rel: string;
  mtimeNs: bigint;
}

class Gen {
  readonly rng: Rng;
  readonly entries: ManifestEntry[] = [];
  readonly skipped: SkippedItem[] = [];
  readonly times: Pending[] = [];
  readonly xattrNs = { user: 0, trusted: 0, security: 0, system: 0 };
  readonly isRoot = typeof process.getuid === 'function' && process.getuid() === 0;

  constructor(readonly root: string, seed: number) {
    this.rng = new Rng(seed);
  }

  abs(rel: string): string {
    return rel === '/' ? this.root : path.join(this.root, rel);
  }

  /** A mtime for an ordinary entry: 2023..2026 with random nanoseconds. */
  randomMtime(): bigint {
    return BigInt(1_690_000_000 + this.rng.int(100_000_000)) * 1_000_000_000n + BigInt(this.rng.int(1_000_000_000));
  }

  private record(e: ManifestEntry, mtimeNs?: bigint): ManifestEntry {
    if (e.kind !== 'hardlink') {
      const t = mtimeNs ?? this.randomMtime();
      e.mtimeNs = t.toString();
      this.times.push({ rel: e.path, mtimeNs: t });
    }
    this.entries.push(e);
    return e;
  }

  /** Run a privileged/optional step; on failure record it as skipped (and return false). */
  try(rel: string, what: string, f: () => void): boolean {
    try {
      f();
      return true;
    } catch (e) {
      const err = e as NodeJS.ErrnoException & { context?: { code?: string } };
      const reason = e instanceof NydusError ? `${err.context?.code ?? e.code}: ${e.message}` : err.message;
      this.skipped.push({ path: rel, what, reason });
      return false;
    }
  }

  /** lchown + chmod (not for symlinks), honouring the order that keeps setuid/setgid bits. */
  owner(e: ManifestEntry, uid: number | undefined, gid: number | undefined, mode: number | undefined): void {
    const p = this.abs(e.path);
    if (uid !== undefined || gid !== undefined) {
      const u = uid ?? 0;
      const g = gid ?? 0;
      if (this.try(e.path, `lchown ${u}:${g}`, () => fs.lchownSync(p, u, g))) {
        e.uid = u;
        e.gid = g;
      } else {
        e.features = e.features.filter((f) => !f.startsWith('uid:'));
      }
    }
    if (mode !== undefined && e.kind !== 'symlink') {
      fs.chmodSync(p, mode);
      e.mode = mode;
    }
  }

  xattr(e: ManifestEntry, name: string | Buffer, value: Buffer, feature?: string): boolean {
    const nameStr = typeof name === 'string' ? name : name.toString('latin1');
    const ok = this.try(e.path, `lsetxattr ${nameStr}`, () => native.lsetxattr(this.abs(e.path), name, value));
    if (ok) {
      (e.xattrs ??= []).push(nameStr);
      const ns = nameStr.slice(0, nameStr.indexOf('.')) as keyof Gen['xattrNs'];
      if (ns in this.xattrNs) this.xattrNs[ns]++;
      if (feature && !e.features.includes(feature)) e.features.push(feature);
    }
    return ok;
  }

  dir(rel: string, opts: { mode?: number; uid?: number; gid?: number; features?: string[]; mtimeNs?: bigint } = {}): ManifestEntry {
    if (rel !== '/') fs.mkdirSync(this.abs(rel));
    const e = this.record({ path: rel, kind: 'dir', features: opts.features ?? [] }, opts.mtimeNs);
    this.owner(e, opts.uid, opts.gid, opts.mode ?? 0o755);
    return e;
  }

  file(rel: string, content: Buffer | ((fd: number) => number), opts: { mode?: number; uid?: number; gid?: number; features?: string[]; mtimeNs?: bigint } = {}): ManifestEntry {
    const p = this.abs(rel);
    let size: number;
    if (typeof content === 'function') {
      const fd = fs.openSync(p, 'wx', 0o600);
      try {
        size = content(fd);
      } finally {
        fs.closeSync(fd);
      }
    } else {
      fs.writeFileSync(p, content, { flag: 'wx', mode: 0o600 });
      size = content.length;
    }
    const e = this.record({ path: rel, kind: 'file', features: opts.features ?? [], size }, opts.mtimeNs);
    this.owner(e, opts.uid, opts.gid, opts.mode ?? 0o644);
    return e;
  }

  symlink(rel: string, target: string, opts: { uid?: number; gid?: number; features?: string[]; mtimeNs?: bigint } = {}): ManifestEntry {
    fs.symlinkSync(target, this.abs(rel));
    const e = this.record({ path: rel, kind: 'symlink', features: opts.features ?? [], target }, opts.mtimeNs);
    this.owner(e, opts.uid, opts.gid, undefined);
    return e;
  }

  hardlink(rel: string, of: ManifestEntry, features: string[] = []): ManifestEntry | undefined {
    fs.linkSync(this.abs(of.path), this.abs(rel));
    return this.record({ path: rel, kind: 'hardlink', features, linkOf: of.path });
  }

  node(rel: string, kind: 'chr' | 'blk' | 'fifo' | 'sock', mode: number, dev?: [number, number], opts: { uid?: number; gid?: number; features?: string[] } = {}): ManifestEntry | undefined {
    const type = { chr: native.S_IFCHR, blk: native.S_IFBLK, fifo: native.S_IFIFO, sock: native.S_IFSOCK }[kind];
    const [major, minor] = dev ?? [0, 0];
    if (!this.try(rel, `mknod ${kind}${dev ? ` ${major}:${minor}` : ''}`, () => native.mknod(this.abs(rel), type | 0o600, major, minor))) return undefined;
    const e = this.record({ path: rel, kind, features: opts.features ?? [kind], ...(dev ? { rdev: { major, minor } } : {}) });
    this.owner(e, opts.uid, opts.gid, mode);
    return e;
  }
}

function fileWith(size: number, extents: Array<[number, Buffer]>): (fd: number) => number {
  return (fd) => {
    fs.ftruncateSync(fd, size);
    for (const [off, data] of extents) fs.writeSync(fd, data, 0, data.length, off);
    return size;
  };
}

/** Build the tree under `root` (created if missing, must be empty if it exists). */
export async function generateTree(root: string, opts: { large?: boolean; seed?: number; fileCount?: number } = {}): Promise<TreeManifest> {
  const t0 = process.hrtime.bigint();
  const seed = opts.seed ?? 1;
  const large = opts.large ?? false;
  const fileCount = opts.fileCount ?? 3000;
  if (!Number.isInteger(fileCount) || fileCount < 1) throw new NydusError('ERR_INVALID_ARGUMENT', `fileCount must be a positive integer, got ${fileCount}`, { fileCount });
  root = path.resolve(root);
  fs.mkdirSync(root, { recursive: true });
  if (fs.readdirSync(root).length > 0) throw new NydusError('ERR_INVALID_ARGUMENT', `tree root ${root} is not empty`, { root });

  const g = new Gen(root, seed);
  const rng = g.rng;
  g.dir('/', { mode: 0o755 });

  // ---- regular files ----
  g.dir('/files');
  g.file('/files/empty', Buffer.alloc(0), { features: ['file:empty'] });
  g.file('/files/one-byte', Buffer.from('x'), { features: ['file:1byte'] });
  g.file('/files/exact-4096', rng.bytes(4096), { features: ['file:4096'] });
  g.file('/files/exact-1MiB', rng.bytes(MiB), { features: ['file:1MiB'] });
  g.file('/files/1MiB-plus-1', rng.bytes(MiB + 1), { features: ['file:1MiB+1'] });
  g.file('/files/small-text', rng.text(3000), { features: ['file:inline-tail'] });
  g.file('/files/4097', rng.bytes(4097), { features: ['file:inline-tail'] });
  const chunkA = rng.bytes(MiB);
  const chunkB = rng.bytes(MiB);
  g.file('/files/dedup-a', Buffer.concat([chunkA, chunkA, chunkA, chunkA, chunkB, chunkA]), { features: ['file:dedup'] });
  g.file('/files/dedup-b', Buffer.concat([chunkB, chunkA, chunkA, rng.bytes(1000)]), { features: ['file:dedup'] });
  g.file('/files/random-3MiB', rng.bytes(3 * MiB + 777), { features: ['file:random'] });
  g.file('/files/text-5MiB', rng.text(5 * MiB + 333), { features: ['file:text'] });
  {
    const size = 9 * MiB + 17;
    const ext: Array<[number, Buffer]> = [
      [0, rng.bytes(5000)],
      [4 * MiB - 100, rng.bytes(200)], // crosses the chunk boundary at 4 MiB
      [7 * MiB, rng.text(64 * KiB)],
    ];
    const e = g.file('/files/sparse', fileWith(size, ext), { features: ['file:sparse'] });
    e.dataExtents = ext.map(([o, d]) => [o, d.length]);
  }
  g.file('/files/mode-0000', Buffer.from('nobody may read me\n'), { mode: 0o000, features: ['mode:0000'] });
  g.file('/files/mode-0600', Buffer.from('private\n'), { mode: 0o600 });
  g.file('/files/mode-0777', Buffer.from('#!/bin/sh\necho hi\n'), { mode: 0o777 });
  g.file('/files/mode-0444', Buffer.from('read only\n'), { mode: 0o444 });
  if (large) {
    g.dir('/large');
    const size = 4 * 1024 * MiB + 12345;
    const ext: Array<[number, Buffer]> = [
      [0, rng.bytes(8192)],
      [2 * 1024 * MiB - 50, rng.bytes(100)],
      [size - 4000, rng.bytes(4000)],
    ];
    const e = g.file('/large/sparse-4GiB', fileWith(size, ext), { features: ['file:sparse-4GiB', 'file:sparse'] });
    e.dataExtents = ext.map(([o, d]) => [o, d.length]);
  }

  // ---- directories ----
  g.dir('/dirs');
  g.dir('/dirs/many', { features: ['dir:many'] });
  for (let i = 0; i < fileCount; i++) {
    // 8..60 byte names so the dirents spill over many 4 KiB blocks
    const pad = 'abcdefghijklmnopqrstuvwxyz0123456789'.repeat(2);
    const name = `e${i.toString().padStart(5, '0')}-${pad.slice(0, rng.int(53))}`;
    if (i % 500 === 499) g.dir(`/dirs/many/${name}`);
    else g.file(`/dirs/many/${name}`, i % 3 === 0 ? Buffer.alloc(0) : Buffer.from(name.slice(0, 1 + (i % 40))));
  }
  {
    let p = '/dirs/deep';
    g.dir(p, { features: ['dir:deep'] });
    for (let i = 1; i <= 45; i++) {
      p += `/level-${i.toString().padStart(2, '0')}`;
      g.dir(p);
    }
    g.file(`${p}/bottom`, Buffer.from('you found the bottom\n'));
  }
  g.dir('/dirs/empty', { features: ['dir:empty'] });
  g.dir('/dirs/empty-0700', { mode: 0o700, features: ['dir:empty', 'dir:0700'] });
  g.dir('/dirs/private-0700', { mode: 0o700, features: ['dir:0700'] });
  g.file('/dirs/private-0700/secret', Buffer.from('s3cr3t\n'), { mode: 0o600 });
  g.dir('/dirs/sticky-1777', { mode: 0o1777, features: ['dir:1777'] });
  g.file('/dirs/sticky-1777/tmpfile', Buffer.from('tmp\n'), { uid: 1000, gid: 1000, features: ['uid:ordinary'] });
  g.dir('/dirs/setgid-2775', { mode: 0o2775, gid: 100, features: ['mode:setgid-dir'] });
  g.file('/dirs/setgid-2775/inherits', Buffer.from('g\n'), { gid: 100 });

  // ---- symlinks ----
  g.dir('/links');
  g.symlink('/links/short', '../files/one-byte', { features: ['symlink:short'] });
  {
    const comp = 'long-target-component/';
    const t1000 = comp.repeat(Math.ceil(1000 / comp.length)).slice(0, 999) + 'x';
    const t4095 = comp.repeat(Math.ceil(4095 / comp.length)).slice(0, 4094) + 'y';
    g.symlink('/links/long-1000', t1000, { features: ['symlink:1000', 'symlink:dangling'] });
    g.symlink('/links/long-4095', t4095, { features: ['symlink:4095', 'symlink:dangling'] });
  }
  g.symlink('/links/dangling', 'does/not/exist', { features: ['symlink:dangling'] });
  g.symlink('/links/to-dir', '../dirs/deep', { features: ['symlink:dir'] });
  g.symlink('/links/absolute', '/etc/hostname', { features: ['symlink:absolute'] });
  g.symlink('/links/owned-100000', 'x', { uid: 100000, gid: 100000, features: ['uid:>65535'] });

  // ---- hardlinks ----
  g.dir('/hardlinks');
  g.dir('/hardlinks/a');
  g.dir('/hardlinks/b');
  const h1 = g.file('/hardlinks/a/one', rng.text(10000), { features: ['hardlink:3'] });
  g.hardlink('/hardlinks/b/two', h1, ['hardlink:3']);
  g.hardlink('/hardlinks/three', h1, ['hardlink:3']);
  const he = g.file('/hardlinks/empty-1', Buffer.alloc(0), { features: ['hardlink:empty', 'file:empty'] });
  g.hardlink('/hardlinks/b/empty-2', he, ['hardlink:empty']);

  // ---- special files ----
  g.dir('/special');
  g.node('/special/null', 'chr', 0o666, [1, 3], { features: ['chr'] });
  g.node('/special/chr-259-70000', 'chr', 0o640, [259, 70000], { features: ['chr', 'chr:bigdev'], uid: 0, gid: 6 });
  g.node('/special/chr-4095-1048575', 'chr', 0o600, [4095, 0xfffff], { features: ['chr', 'chr:bigdev'] });
  g.node('/special/loop0', 'blk', 0o660, [7, 0], { features: ['blk'], gid: 6 });
  g.node('/special/fifo', 'fifo', 0o644, undefined, { features: ['fifo'] });
  g.node('/special/socket', 'sock', 0o755, undefined, { features: ['sock'] });

  // ---- xattrs ----
  g.dir('/xattrs');
  {
    const e = g.file('/xattrs/user', Buffer.from('has user xattrs\n'));
    g.xattr(e, 'user.plain', Buffer.from('hello'), 'xattr:user');
    g.xattr(e, 'user.binary', Buffer.from(Array.from({ length: 256 }, (_, i) => i)), 'xattr:user-binary');
    g.xattr(e, 'user.with-nul', Buffer.from([0x61, 0, 0x62, 0, 0]), 'xattr:user-binary');
    g.xattr(e, 'user.empty', Buffer.alloc(0), 'xattr:user-empty');
    g.xattr(e, 'user.' + 'n'.repeat(250), Buffer.from('long name'), 'xattr:user-longname'); // 255-byte name: the maximum
    g.xattr(e, Buffer.from('user.名前', 'utf8'), Buffer.from('utf-8 name'), 'xattr:user');
    g.xattr(e, 'user.random', rng.bytes(1000), 'xattr:user-binary');
    g.xattr(e, 'user.shared', Buffer.from('same on many inodes'), 'xattr:user-shared');
  }
  for (const rel of ['/files/empty', '/files/exact-4096', '/files/1MiB-plus-1', '/dirs/empty']) {
    const e = g.entries.find((x) => x.path === rel)!;
    g.xattr(e, 'user.shared', Buffer.from('same on many inodes'), 'xattr:user-shared');
  }
  {
    const d = g.dir('/xattrs/dir-with-xattrs');
    g.xattr(d, 'user.on-dir', Buffer.from('dir value'), 'xattr:user');
    g.xattr(d, 'trusted.on-dir', Buffer.from('trusted dir value'), 'xattr:trusted');
    const t = g.file('/xattrs/trusted', Buffer.from('t\n'));
    g.xattr(t, 'trusted.overlay.opaque', Buffer.from('y'), 'xattr:trusted');
    g.xattr(t, 'trusted.binary', rng.bytes(64), 'xattr:trusted');
    const l = g.symlink('/xattrs/symlink-trusted', '../files/one-byte');
    g.xattr(l, 'trusted.on-symlink', Buffer.from('link xattr'), 'xattr:trusted-symlink');
    g.xattr(l, 'security.on-symlink', Buffer.from('link sec'), 'xattr:security');
    const s = g.file('/xattrs/security', Buffer.from('s\n'));
    g.xattr(s, 'security.nydus-test', Buffer.from('label'), 'xattr:security');
    const c = g.file('/xattrs/cap-net-bind', Buffer.from('#!/bin/sh\nexec true\n'), { mode: 0o755 });
    g.xattr(c, 'security.capability', vfsCapV2([CAP_NET_BIND_SERVICE]), 'xattr:security.capability');

    const fileAcl = [
      { tag: ACL_USER_OBJ, perm: 6 },
      { tag: ACL_USER, perm: 4, id: 1000 },
      { tag: ACL_USER, perm: 6, id: 100000 },
      { tag: ACL_GROUP_OBJ, perm: 4 },
      { tag: ACL_GROUP, perm: 6, id: 2000 },
      { tag: ACL_MASK, perm: 6 },
      { tag: ACL_OTHER, perm: 0 },
    ];
    const af = g.file('/xattrs/acl-file', Buffer.from('acl\n'), { mode: aclMode(fileAcl) });
    g.xattr(af, 'system.posix_acl_access', posixAcl(fileAcl), 'xattr:acl-access-file');

    const dirAcl = [
      { tag: ACL_USER_OBJ, perm: 7 },
      { tag: ACL_USER, perm: 5, id: 1000 },
      { tag: ACL_GROUP_OBJ, perm: 5 },
      { tag: ACL_MASK, perm: 5 },
      { tag: ACL_OTHER, perm: 0 },
    ];
    const defAcl = [
      { tag: ACL_USER_OBJ, perm: 7 },
      { tag: ACL_GROUP_OBJ, perm: 5 },
      { tag: ACL_GROUP, perm: 7, id: 3000 },
      { tag: ACL_MASK, perm: 7 },
      { tag: ACL_OTHER, perm: 5 },
    ];
    const ad = g.dir('/xattrs/acl-dir', { mode: aclMode(dirAcl) });
    g.xattr(ad, 'system.posix_acl_access', posixAcl(dirAcl), 'xattr:acl-access-dir');
    g.xattr(ad, 'system.posix_acl_default', posixAcl(defAcl), 'xattr:acl-default');
    g.file('/xattrs/acl-dir/inherited', Buffer.from('inherits the default ACL\n'), { mode: 0o640 });
  }

  // ---- owners and special mode bits ----
  g.dir('/owners');
  g.file('/owners/uid-100000', Buffer.from('a\n'), { uid: 100000, gid: 100000, features: ['uid:>65535'] });
  g.file('/owners/uid-2147483646', Buffer.from('b\n'), { uid: 2 ** 31 - 2, gid: 2 ** 31 - 2, features: ['uid:2^31-2', 'uid:>65535'] });
  g.file('/owners/uid-1000', Buffer.from('c\n'), { uid: 1000, gid: 1000, features: ['uid:ordinary'] });
  g.file('/owners/uid-65534', Buffer.from('d\n'), { uid: 65534, gid: 65534, features: ['uid:ordinary'] });
  g.dir('/owners/dir-100000', { uid: 100000, gid: 2 ** 31 - 2, features: ['uid:>65535'] });
  g.file('/owners/setuid', Buffer.from('#!/bin/sh\n'), { mode: 0o4755, features: ['mode:setuid'] });
  g.file('/owners/setgid', Buffer.from('#!/bin/sh\n'), { mode: 0o2755, gid: 50, features: ['mode:setgid'] });
  g.file('/owners/setuid-setgid-1000', Buffer.from('#!/bin/sh\n'), { mode: 0o6750, uid: 1000, gid: 1000, features: ['mode:setuid', 'mode:setgid', 'uid:ordinary'] });
  g.file('/owners/sticky-file', Buffer.from('t\n'), { mode: 0o1644 });

  // ---- times ----
  g.dir('/times');
  g.file('/times/ns', Buffer.from('1\n'), { mtimeNs: 1_700_000_000_123_456_789n, features: ['mtime:ns'] });
  g.file('/times/ns-1', Buffer.from('2\n'), { mtimeNs: 1_700_000_000_000_000_001n, features: ['mtime:ns'] });
  g.file('/times/ns-999999999', Buffer.from('3\n'), { mtimeNs: 1_700_000_000_999_999_999n, features: ['mtime:ns'] });
  g.file('/times/pre-1970', Buffer.from('4\n'), { mtimeNs: -1_234_567_890_123_456_789n, features: ['mtime:pre1970', 'mtime:ns'] });
  g.file('/times/just-before-epoch', Buffer.from('5\n'), { mtimeNs: -1n, features: ['mtime:pre1970'] });
  g.file('/times/epoch', Buffer.from('6\n'), { mtimeNs: 0n, features: ['mtime:epoch'] });
  g.file('/times/year-2100', Buffer.from('7\n'), { mtimeNs: 4_102_444_800_987_654_321n, features: ['mtime:2100', 'mtime:ns'] });
  g.file('/times/after-2038', Buffer.from('8\n'), { mtimeNs: 2_147_483_648_000_000_500n, features: ['mtime:ns'] });
  g.symlink('/times/symlink-pre-1970', 'epoch', { mtimeNs: -86_400_000_000_001n, features: ['mtime:pre1970'] });
  g.dir('/times/dir-2100', { mtimeNs: 4_102_444_800_000_000_042n, features: ['mtime:2100'] });

  // ---- names ----
  g.dir('/names');
  g.file('/names/日本語のファイル名', Buffer.from('cjk\n'), { features: ['name:cjk'] });
  g.dir('/names/目录', { features: ['name:cjk'] });
  g.file('/names/emoji-😀🚀🐳', Buffer.from('emoji\n'), { features: ['name:emoji'] });
  g.file('/names/' + 'n'.repeat(255), Buffer.from('255\n'), { features: ['name:255'] });
  g.file('/names/' + 'é'.repeat(127) + 'x', Buffer.from('255 utf8\n'), { features: ['name:255', 'name:255-utf8'] }); // 2*127+1 bytes
  for (const n of ['!', '-', '.a', '..b', '...', '.-', '0', 'A', 'a', '~', ' space', 'tab\tname']) {
    g.file(`/names/${n}`, Buffer.from(n), { features: ['name:sort-dots'] });
  }
  g.dir('/names/.hidden-dir', { features: ['name:sort-dots'] });

  // ---- mtimes last: deepest first, directories after their contents, the root last ----
  const depth = (p: string) => (p === '/' ? 0 : p.split('/').length - 1);
  const order = [...g.times].sort((a, b) => depth(b.rel) - depth(a.rel));
  for (const t of order) native.lutimens(g.abs(t.rel), t.mtimeNs, t.mtimeNs);
  let exact = 0;
  const mismatched: TreeManifest['mtime']['mismatched'] = [];
  for (const t of g.times) {
    const actual = fs.lstatSync(g.abs(t.rel), { bigint: true }).mtimeNs;
    if (actual === t.mtimeNs) exact++;
    else mismatched.push({ path: t.rel, requested: t.mtimeNs.toString(), actual: actual.toString() });
  }

  // ---- manifest ----
  const counts: TreeManifest['counts'] = { file: 0, dir: 0, symlink: 0, hardlink: 0, chr: 0, blk: 0, fifo: 0, sock: 0, total: 0 };
  const features: Record<string, string[]> = {};
  let apparentBytes = 0;
  for (const e of g.entries) {
    counts[e.kind]++;
    counts.total++;
    if (e.kind === 'file') apparentBytes += e.size ?? 0;
    for (const f of e.features) (features[f] ??= []).push(e.path);
  }
  const required = large ? [...REQUIRED_FEATURES, ...LARGE_FEATURES] : REQUIRED_FEATURES;
  const missingFeatures = required.filter((f) => !features[f]?.length);

  return {
    root,
    seed,
    large,
    fileCount,
    entries: g.entries,
    counts,
    xattrNamespaces: { ...g.xattrNs },
    features,
    missingFeatures,
    skipped: g.skipped.map(({ path: p, what, reason }) => ({ path: p, what, reason })),
    apparentBytes,
    mtime: { method: 'utimensat', exact, mismatched, nodeLutimesProbe: probeNodeLutimes(root) },
    generateMs: Number(process.hrtime.bigint() - t0) / 1e6,
  };
}

/** What fs.lutimesSync lands for 1700000000.123456789 and -1234567890.5 (temp file, removed). */
function probeNodeLutimes(root: string): TreeManifest['mtime']['nodeLutimesProbe'] {
  const p = path.join(os.tmpdir(), `.tree-gen-probe-${process.pid}-${Date.now()}`);
  try {
    fs.writeFileSync(p, '');
    fs.lutimesSync(p, 1700000000.123456789, 1700000000.123456789);
    const landed = fs.lstatSync(p, { bigint: true }).mtimeNs.toString();
    fs.lutimesSync(p, -1234567890.5, -1234567890.5);
    const negativeLanded = fs.lstatSync(p, { bigint: true }).mtimeNs.toString();
    return { requested: '1700000000123456789', landed, negativeRequested: '-1234567890500000000', negativeLanded };
  } catch (e) {
    const why = `probe failed: ${(e as Error).message}`;
    return { requested: '1700000000123456789', landed: why, negativeRequested: '-1234567890500000000', negativeLanded: why };
  } finally {
    fs.rmSync(p, { force: true });
  }
}

// ---- CLI ----------------------------------------------------------------------------------------

function usage(code = 2): never {
  (code ? process.stderr : process.stdout).write('usage: node dist/images/tree-gen.js DIR [--large] [--seed N] [--file-count N] [--json]\n');
  process.exit(code);
}

async function main(argv: string[]): Promise<void> {
  let dir: string | undefined;
  let large = false;
  let seed: number | undefined;
  let fileCount: number | undefined;
  let json = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--large') large = true;
    else if (a === '--json') json = true;
    else if (a === '--seed' || a === '--file-count') {
      const v = Number(argv[++i]);
      if (!Number.isInteger(v)) usage();
      if (a === '--seed') seed = v;
      else fileCount = v;
    } else if (a === '-h' || a === '--help') usage(0);
    else if (!a.startsWith('-') && dir === undefined) dir = a;
    else usage();
  }
  if (!dir) usage();
  const m = await generateTree(dir, { large, seed, fileCount });
  if (json) {
    process.stdout.write(JSON.stringify(m, null, 2) + '\n');
  } else {
    const { entries: _e, features, ...summary } = m;
    void _e;
    process.stdout.write(JSON.stringify({ ...summary, features: Object.fromEntries(Object.entries(features).map(([k, v]) => [k, v.length])) }, null, 2) + '\n');
  }
  if (m.missingFeatures.length) process.stderr.write(`tree-gen: not covered on this host: ${m.missingFeatures.join(', ')}\n`);
}

if (require.main === module) {
  main(process.argv.slice(2)).catch((e: unknown) => {
    process.stderr.write(`tree-gen: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  });
}
