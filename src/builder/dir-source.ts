/**
 * Reads a directory tree into TreeNodes (metadata, xattrs, hardlinks) and lists its regular files
 * for chunking. Paths are handled as raw bytes so non-UTF-8 names survive.
 */
import * as fs from 'node:fs';
import { TreeNode, Inode, splitPath, nameKey, NO_XATTRS, NO_CHUNKS, KeyedNode } from '../tree/node';
import { S_IFMT, S_IFDIR, S_IFREG, S_IFLNK, S_IFCHR, S_IFBLK } from '../format/constants';
import { llistxattr, lgetxattr, devMajor, devMinor, lseek, SEEK_DATA } from '../sys/native';
import { zeroView } from './chunk-sink';
import { NydusError } from '../errors';
import { storableXattrs } from './xattrs';

export interface DirFile {
  /** the path to open (a string when its bytes are ASCII, raw bytes otherwise) */
  path: Buffer | string;
  /** the path for messages (UTF-8 decoded) */
  display: string;
  inode: Inode;
  /** st_blocks (512-byte units), to spot sparse files */
  blocks: number;
}

/** A regular file found by the walk; its display path is made only when a message needs it. */
class FoundFile implements DirFile {
  constructor(readonly path: Buffer | string, private readonly dir: string, private readonly key: string, readonly inode: Inode, readonly blocks: number) {}
  get display(): string {
    return displayOf(this.dir, this.key);
  }
}

const SLASH = Buffer.from('/');
const ASCII = /^[\x01-\x7f]*$/;

/** `dir/key` as fs takes it: a string while every byte is ASCII (no Buffer per entry), else bytes. */
function join(dir: Buffer | string, key: string): Buffer | string {
  if (typeof dir === 'string' && ASCII.test(key)) return dir + '/' + key;
  return Buffer.concat([typeof dir === 'string' ? Buffer.from(dir) : dir, SLASH, Buffer.from(key, 'latin1')]);
}

/** The display path of entry `key` of the directory displayed as `dir` (for messages only). */
function displayOf(dir: string, key: string): string {
  return key === '' ? dir : dir + '/' + Buffer.from(key, 'latin1').toString();
}

function readXattrs(p: Buffer | string, dir: string, key: string, warn: (m: string) => void): Map<string, Buffer> {
  let names: string[];
  try {
    names = llistxattr(p);
  } catch (e) {
    const display = displayOf(dir, key);
    throw new NydusError('ERR_IO', `${display}: cannot list xattrs: ${(e as Error).message}`, { path: display }, { cause: e });
  }
  if (!names.length) return NO_XATTRS;
  const m = new Map<string, Buffer>();
  for (const n of names.sort()) {
    // Security modules may list names they refuse to return (e.g. security.selinux on some setups).
    try {
      m.set(n, lgetxattr(p, n));
    } catch (e) {
      if ((e as NydusError).context?.code === 'ENODATA') continue;
      throw e;
    }
  }
  return storableXattrs(m, displayOf(dir, key), warn);
}

const NS = 1_000_000_000n;

/** `dir` and `key` name the entry in messages (see displayOf; key '' for the root). */
function inodeFromStat(st: fs.BigIntStats, p: Buffer | string, dir: string, key: string, warn: (m: string) => void): Inode {
  const mode = Number(st.mode);
  const mtimeNs = st.mtimeNs;
  let sec = mtimeNs / NS;
  let nsec = mtimeNs - sec * NS;
  if (nsec < 0n) {
    sec -= 1n;
    nsec += NS;
  }
  // One literal, one shape; no per-inode empty Map or array (NO_XATTRS, NO_CHUNKS).
  const inode: Inode = {
    mode, uid: Number(st.uid), gid: Number(st.gid), mtime: Number(sec), mtimeNsec: Number(nsec), size: 0,
    rdevMajor: 0, rdevMinor: 0, xattrs: readXattrs(p, dir, key, warn), chunks: NO_CHUNKS,
  };
  const type = mode & S_IFMT;
  if (type === S_IFREG) inode.size = Number(st.size);
  if (type === S_IFLNK) {
    // a copy from node's shared pool: readlink's own buffer has a backing store of its own
    inode.symlink = Buffer.from(fs.readlinkSync(p, { encoding: 'buffer' }));
    inode.size = inode.symlink.length;
  }
  if (type === S_IFCHR || type === S_IFBLK) {
    inode.rdevMajor = devMajor(st.rdev);
    inode.rdevMinor = devMinor(st.rdev);
  }
  return inode;
}

/**
 * Scan `rootPath`. Returns the tree and the regular files in data order: files matching the
 * prefetch patterns first (pattern order), then the rest breadth-first, as nydus-image does.
 */
export function scanDirectory(rootPath: string, prefetch: string[] = [], warn: (m: string) => void = () => undefined): { root: TreeNode; files: DirFile[] } {
  const walk = walkDirectory(rootPath, warn);
  const files = [...walk.files];
  const root = walk.root;
  if (prefetch.length) {
    const order = new Map<Inode, number>();
    prefetch.forEach((pat, i) => {
      const parts = splitPath(pat).map(nameKey);
      const prefix = '/' + parts.join('/');
      for (const f of files) {
        const rel = f.display.slice(rootPath.length);
        if (!order.has(f.inode) && (prefix === '/' || rel === prefix || rel.startsWith(prefix + '/'))) order.set(f.inode, i);
      }
    });
    const first = files.filter((f) => order.has(f.inode)).sort((a, b) => order.get(a.inode)! - order.get(b.inode)!);
    const rest = files.filter((f) => !order.has(f.inode));
    return { root, files: [...first, ...rest] };
  }
  return { root, files };
}

/**
 * Walk `rootPath` breadth-first (nydus' data order), one directory at a time: `files` yields
 * each regular file (hardlinks once) as soon as its directory is read, so the builder chunks
 * files while the walk goes on. `root` is the tree, complete once `files` is exhausted.
 */
export function walkDirectory(rootPath: string, warn: (m: string) => void = () => undefined): { root: TreeNode; files: Generator<DirFile, void> } {
  let st: fs.BigIntStats;
  try {
    st = fs.lstatSync(rootPath, { bigint: true });
  } catch (e) {
    throw new NydusError('ERR_INVALID_ARGUMENT', `source directory ${rootPath}: ${(e as Error).message}`, { path: rootPath });
  }
  if ((Number(st.mode) & S_IFMT) !== S_IFDIR) throw new NydusError('ERR_INVALID_ARGUMENT', `source ${rootPath} is not a directory`, { path: rootPath });
  const root: TreeNode = { name: Buffer.from('/'), inode: inodeFromStat(st, rootPath, rootPath, '', warn), children: new Map() };
  return { root, files: walk(root, rootPath, warn) };
}

function* walk(root: TreeNode, rootPath: string, warn: (m: string) => void): Generator<DirFile, void> {
  const links = new Map<string, Inode>();
  const seenFiles = new Set<Inode>();
  // Breadth-first so data order matches nydus' BFS dump. `display`: the directory for messages.
  let level: { node: TreeNode; path: Buffer | string; display: string }[] = [{ node: root, path: rootPath, display: rootPath }];
  while (level.length) {
    const next: typeof level = [];
    for (const dir of level) {
      // latin1 strings are the raw name bytes (and the children map's keys); comparing them
      // orders like the bytes do
      let keys: string[];
      try {
        keys = fs.readdirSync(dir.path, { encoding: 'latin1' });
      } catch (e) {
        throw new NydusError('ERR_IO', `${dir.display}: cannot read directory: ${(e as Error).message}`, { path: dir.display });
      }
      keys.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
      const found: DirFile[] = [];
      for (const key of keys) {
        const p = join(dir.path, key);
        const cst = fs.lstatSync(p, { bigint: true });
        const type = Number(cst.mode) & S_IFMT;
        let inode: Inode;
        const linkKey = type !== S_IFDIR && cst.nlink > 1n ? `${cst.dev}:${cst.ino}` : '';
        if (linkKey && links.has(linkKey)) {
          inode = links.get(linkKey)!;
        } else {
          inode = inodeFromStat(cst, p, dir.display, key, warn);
          if (linkKey) links.set(linkKey, inode);
        }
        const node = new KeyedNode(key, inode);
        dir.node.children!.set(key, node);
        if (type === S_IFDIR) {
          // Another filesystem mounted here is included, like `cp -a` would.
          node.children = new Map();
          next.push({ node, path: p, display: displayOf(dir.display, key) });
        } else if (type === S_IFREG && !seenFiles.has(inode)) {
          if (linkKey) seenFiles.add(inode);
          found.push(new FoundFile(p, dir.display, key, inode, Number(cst.blocks)));
        }
      }
      // A directory's entries are all in the tree before its files are handed out.
      yield* found;
    }
    level = next;
  }
}

/**
 * Open a regular file for the chunk sink: `read(dst, offset)` fills dst with the file's bytes
 * at offset (synchronous pread(2)s straight into the sink's memory: most files of a rootfs are
 * a few KiB, and thread-pool round trips per file left the workers idle, bench/README.md);
 * `isHole(offset, n)` is true when that range lies in a hole of a sparse file (found with
 * SEEK_DATA; such chunks are not read). Call `close()` in any case.
 */
export function openDirFile(f: DirFile): { read: (dst: Buffer, offset: number) => void; isHole?: (offset: number, n: number) => boolean; close: () => void } {
  let fd: number;
  try {
    fd = fs.openSync(f.path, 'r');
  } catch (e) {
    throw new NydusError('ERR_IO', `${f.display}: cannot open: ${(e as Error).message}`, { path: f.display });
  }
  const size = f.inode.size;
  const read = (dst: Buffer, offset: number): void => {
    let got = 0;
    while (got < dst.length) {
      const n = fs.readSync(fd, dst, got, dst.length - got, offset + got);
      if (n === 0) throw new NydusError('ERR_IO', `${f.display}: file shrank while building (expected ${size} bytes)`, { path: f.display });
      got += n;
    }
  };
  // Only files with fewer allocated blocks than their size can have holes.
  let isHole: ((offset: number, n: number) => boolean) | undefined;
  if (f.blocks * 512 < size) {
    let nextData = 0; // next offset known to hold data (SEEK_DATA), or Infinity past the last
    isHole = (offset, n) => {
      if (nextData < offset) {
        const d = lseek(fd, offset, SEEK_DATA, f.display);
        nextData = d < 0 ? Infinity : d;
      }
      return nextData >= offset + n;
    };
  }
  return { read, isHole, close: () => fs.closeSync(fd) };
}

/**
 * Stream a file in chunk-sized reads (each a fresh buffer). Chunks that lie entirely in a
 * hole of a sparse file are not read: they come as `zeroView(n)`. (The builder itself reads
 * through openDirFile() into its ring; this serves tools and the benchmark's breakdown.)
 */
export async function* readFileChunks(p: Buffer | string, size: number, chunkSize: number, display: string, blocks?: number): AsyncGenerator<Buffer> {
  const f = openDirFile({ path: p, display, inode: { size } as Inode, blocks: blocks ?? Math.ceil(size / 512) });
  try {
    for (let pos = 0; pos < size; pos += chunkSize) {
      const want = Math.min(chunkSize, size - pos);
      if (f.isHole?.(pos, want)) {
        yield zeroView(want);
        continue;
      }
      const buf = Buffer.allocUnsafe(want);
      f.read(buf, pos);
      yield buf;
    }
  } finally {
    f.close();
  }
}
