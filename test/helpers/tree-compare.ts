/**
 * Snapshot a directory tree into a comparable map and diff two snapshots.
 *
 *   snapshotTree(root, opts?) → Map<relpath, EntrySnapshot>   ('/' is the root itself)
 *   diffTrees(expected, actual, opts?) → string[]              (empty when equal)
 *
 * Paths are '/'-rooted; a name that is not valid UTF-8 is shown with \xNN escapes (and a
 * literal backslash in such a name as \\), so keys are always printable and unique.
 * Content is hashed (sha256) in 1 MiB reads with double buffering: the next read runs on the
 * threadpool while the current buffer is hashed.
 */
import * as fs from 'node:fs';
import * as crypto from 'node:crypto';
import * as path from 'node:path';
import * as native from '../../src/sys/native';

export type EntryType = 'file' | 'dir' | 'symlink' | 'chr' | 'blk' | 'fifo' | 'sock';

export interface EntrySnapshot {
  path: string;
  type: EntryType;
  /** permission bits incl. setuid/setgid/sticky (mode & 0o7777) */
  mode: number;
  uid: number;
  gid: number;
  /** ns since the epoch (negative before 1970) */
  mtimeNs: bigint;
  /** st_size (for symlinks: target length; for dirs: filesystem-specific) */
  size: number;
  /**
   * sha256 hex of the content, regular files only (absent with { hash: false });
   * 'unreadable:EACCES' when the file cannot be opened (not root and mode 0000)
   */
  sha256?: string;
  /** symlink target, hex of the raw bytes */
  targetHex?: string;
  /** symlink target, latin1 of the raw bytes (readable for ASCII) */
  target?: string;
  /** device numbers of chr/blk */
  rdev?: { major: number; minor: number };
  /** xattr name (latin1 of raw bytes) → hex value, names sorted */
  xattrs: Record<string, string>;
  nlink: number;
  /** for non-directories: sorted paths in this tree sharing dev+ino (length 1 when unique) */
  links?: string[];
  /** dev:ino in the source tree (for debugging; never compared) */
  ino: string;
}

export interface SnapshotOptions {
  /** hash file contents (default true) */
  hash?: boolean;
  /** read xattrs (default true) */
  xattrs?: boolean;
}

export type IgnoreKey = 'mtime' | 'dirMtime' | 'nlink' | 'dirSize' | 'xattrs' | 'uidgid' | 'rootMeta';

export interface DiffOptions {
  ignore?: IgnoreKey[];
  /** only xattrs for which this returns true are compared */
  xattrFilter?: (name: string) => boolean;
  /** compare directory sizes too (off by default: they differ between filesystems) */
  compareDirSize?: boolean;
}

const HASH_BUF = 1 << 20;

function typeOf(st: fs.BigIntStats): EntryType {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isCharacterDevice()) return 'chr';
  if (st.isBlockDevice()) return 'blk';
  if (st.isFIFO()) return 'fifo';
  return 'sock';
}

/** Printable form of a raw name: UTF-8 when valid, else \xNN escapes (backslash doubled). */
export function showName(name: Buffer): string {
  const s = name.toString('utf8');
  if (Buffer.from(s, 'utf8').equals(name)) return s;
  let out = '';
  for (const b of name) {
    if (b === 0x5c) out += '\\\\';
    else if (b >= 0x20 && b < 0x7f) out += String.fromCharCode(b);
    else out += `\\x${b.toString(16).padStart(2, '0')}`;
  }
  return out;
}

const ZEROS = Buffer.alloc(HASH_BUF);

/** Hash [pos, end) of an open file into h, reading with a 1 MiB double buffer. */
async function hashRange(fh: fs.promises.FileHandle, h: crypto.Hash, pos: number, end: number): Promise<void> {
  let bufs = [Buffer.allocUnsafe(HASH_BUF), Buffer.allocUnsafe(HASH_BUF)];
  const next = (p: number) => fh.read(bufs[0], 0, Math.min(HASH_BUF, end - p), p);
  if (pos >= end) return;
  let pending = next(pos);
  for (;;) {
    const { bytesRead } = await pending;
    if (bytesRead === 0) return; // file shrank under us: hash what there is
    pos += bytesRead;
    const cur = bufs[0];
    bufs = [bufs[1], bufs[0]];
    if (pos < end) pending = next(pos);
    h.update(bytesRead === HASH_BUF ? cur : cur.subarray(0, bytesRead));
    if (pos >= end) return;
  }
}

function hashZeros(h: crypto.Hash, n: number): void {
  for (; n >= HASH_BUF; n -= HASH_BUF) h.update(ZEROS);
  if (n > 0) h.update(ZEROS.subarray(0, n));
}

/**
 * sha256 hex of a file, streamed with a 1 MiB double buffer. A sparse file (fewer blocks than
 * its size) is walked with SEEK_DATA/SEEK_HOLE: holes are hashed from a zero buffer instead of
 * being read, so a 4 GiB sparse file costs only the sha256 of 4 GiB of zeros and does not fill
 * the page cache.
 */
export async function hashFile(file: string | Buffer): Promise<string> {
  const h = crypto.createHash('sha256');
  const fh = await fs.promises.open(file, 'r');
  try {
    const st = await fh.stat({ bigint: true });
    const size = Number(st.size);
    if (st.blocks * 512n >= st.size) {
      await hashRange(fh, h, 0, size);
    } else {
      let pos = 0;
      while (pos < size) {
        let data = native.lseek(fh.fd, pos, native.SEEK_DATA, file);
        if (data < 0 || data > size) data = size;
        hashZeros(h, data - pos);
        if (data >= size) break;
        let hole = native.lseek(fh.fd, data, native.SEEK_HOLE, file);
        if (hole < 0 || hole > size) hole = size;
        await hashRange(fh, h, data, hole);
        pos = hole;
      }
    }
  } finally {
    await fh.close();
  }
  return h.digest('hex');
}

/** 'sec.nsec' with nsec in [0, 1e9) (the stat convention; sec negative before 1970). */
export function formatNs(ns: bigint): string {
  const { sec, nsec } = native.nsToTimespec(ns);
  return `${sec}.${nsec.toString().padStart(9, '0')}`;
}

function readXattrs(p: Buffer): Record<string, string> {
  const names = native.llistxattr(p).sort();
  const out: Record<string, string> = {};
  for (const n of names) out[n] = native.lgetxattr(p, n).toString('hex');
  return out;
}

/** Walk `root` (not following symlinks) and snapshot every entry. */
export async function snapshotTree(root: string, opts: SnapshotOptions = {}): Promise<Map<string, EntrySnapshot>> {
  const hash = opts.hash ?? true;
  const wantXattrs = opts.xattrs ?? true;
  const out = new Map<string, EntrySnapshot>();
  const byIno = new Map<string, string[]>();
  // depth-first, children in byte order, so the map's order is stable
  const stack: Array<{ abs: Buffer; rel: string }> = [{ abs: Buffer.from(path.resolve(root)), rel: '/' }];
  while (stack.length) {
    const { abs, rel } = stack.pop()!;
    const st = await fs.promises.lstat(abs, { bigint: true });
    const type = typeOf(st);
    const e: EntrySnapshot = {
      path: rel,
      type,
      mode: Number(st.mode & 0o7777n),
      uid: Number(st.uid),
      gid: Number(st.gid),
      mtimeNs: st.mtimeNs,
      size: Number(st.size),
      xattrs: wantXattrs ? readXattrs(abs) : {},
      nlink: Number(st.nlink),
      ino: `${st.dev}:${st.ino}`,
    };
    if (type === 'file' && hash) {
      try {
        e.sha256 = await hashFile(abs);
      } catch (err) {
        // e.g. a mode-0000 file when not root: keep going, and make it visible in diffs
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'EACCES' && code !== 'EPERM') throw err;
        e.sha256 = `unreadable:${code}`;
      }
    }
    if (type === 'symlink') {
      const t = (await fs.promises.readlink(abs, { encoding: 'buffer' })) as Buffer;
      e.targetHex = t.toString('hex');
      e.target = t.toString('latin1');
    }
    if (type === 'chr' || type === 'blk') e.rdev = { major: native.devMajor(st.rdev), minor: native.devMinor(st.rdev) };
    if (type !== 'dir') {
      const list = byIno.get(e.ino) ?? [];
      list.push(rel);
      byIno.set(e.ino, list);
    }
    out.set(rel, e);
    if (type === 'dir') {
      const names = (await fs.promises.readdir(abs, { encoding: 'buffer' })) as Buffer[];
      names.sort(Buffer.compare);
      for (let i = names.length - 1; i >= 0; i--) {
        stack.push({ abs: Buffer.concat([abs, Buffer.from('/'), names[i]]), rel: (rel === '/' ? '/' : rel + '/') + showName(names[i]) });
      }
    }
  }
  for (const list of byIno.values()) {
    list.sort();
    for (const p of list) out.get(p)!.links = list;
  }
  return out;
}

const oct = (m: number) => m.toString(8).padStart(4, '0');
const short = (hex: string | undefined) => (hex === undefined ? '(none)' : hex.length > 64 ? `${hex.slice(0, 64)}…(${hex.length / 2} bytes)` : hex || '(empty)');

/** Differences, as "<path>: <what> <expected> != <actual>" lines, sorted by path. Empty when equal. */
export function diffTrees(expected: Map<string, EntrySnapshot>, actual: Map<string, EntrySnapshot>, opts: DiffOptions = {}): string[] {
  const ig = new Set<IgnoreKey>(opts.ignore ?? []);
  const keep = opts.xattrFilter ?? (() => true);
  const out: Array<[string, string]> = [];
  const add = (p: string, msg: string) => out.push([p, `${p}: ${msg}`]);

  for (const [p, e] of expected) {
    const a = actual.get(p);
    if (!a) {
      add(p, 'missing in actual');
      continue;
    }
    if (e.type !== a.type) {
      add(p, `type ${e.type} != ${a.type}`);
      continue;
    }
    const meta = !(p === '/' && ig.has('rootMeta'));
    const isDir = e.type === 'dir';
    if (meta && e.mode !== a.mode) add(p, `mode ${oct(e.mode)} != ${oct(a.mode)}`);
    if (meta && !ig.has('uidgid')) {
      if (e.uid !== a.uid) add(p, `uid ${e.uid} != ${a.uid}`);
      if (e.gid !== a.gid) add(p, `gid ${e.gid} != ${a.gid}`);
    }
    if (meta && !ig.has('mtime') && !(isDir && ig.has('dirMtime')) && e.mtimeNs !== a.mtimeNs) {
      add(p, `mtime ${formatNs(e.mtimeNs)} != ${formatNs(a.mtimeNs)}`);
    }
    if ((!isDir || (opts.compareDirSize && !ig.has('dirSize'))) && e.size !== a.size) add(p, `size ${e.size} != ${a.size}`);
    if (e.sha256 !== undefined && a.sha256 !== undefined && e.sha256 !== a.sha256) add(p, `content sha256 ${e.sha256} != ${a.sha256}`);
    if (e.targetHex !== a.targetHex) add(p, `symlink target ${JSON.stringify(e.target)} != ${JSON.stringify(a.target)}`);
    if (e.rdev && a.rdev && (e.rdev.major !== a.rdev.major || e.rdev.minor !== a.rdev.minor)) {
      add(p, `rdev ${e.rdev.major}:${e.rdev.minor} != ${a.rdev.major}:${a.rdev.minor}`);
    }
    if (meta && !ig.has('xattrs')) {
      const names = new Set([...Object.keys(e.xattrs), ...Object.keys(a.xattrs)].filter(keep));
      for (const n of [...names].sort()) {
        const ev = e.xattrs[n];
        const av = a.xattrs[n];
        if (ev === av) continue;
        if (av === undefined) add(p, `xattr ${JSON.stringify(n)} missing in actual`);
        else if (ev === undefined) add(p, `xattr ${JSON.stringify(n)} unexpected in actual`);
        else add(p, `xattr ${JSON.stringify(n)} ${short(ev)} != ${short(av)}`);
      }
    }
    if (!ig.has('nlink') && e.nlink !== a.nlink) add(p, `nlink ${e.nlink} != ${a.nlink}`);
    if (!isDir && e.links && a.links && e.links.join('\0') !== a.links.join('\0')) {
      add(p, `hardlinks [${e.links.join(', ')}] != [${a.links.join(', ')}]`);
    }
  }
  for (const p of actual.keys()) if (!expected.has(p)) add(p, 'unexpected in actual (missing in expected)');
  // stable: by path, then in the order found
  return out
    .map((x, i) => [x, i] as const)
    .sort((x, y) => (x[0][0] < y[0][0] ? -1 : x[0][0] > y[0][0] ? 1 : x[1] - y[1]))
    .map((x) => x[0][1]);
}
