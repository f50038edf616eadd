/**
 * Reads a directory tree into TreeNodes (metadata, xattrs, hardlinks) and lists its regular files
 * for chunking. Paths are handled as raw bytes so non-UTF-8 names survive.
 */
import * as fs from 'node:fs';
import { TreeNode, Inode, newInode, splitPath, nameKey } from '../tree/node';
import { S_IFMT, S_IFDIR, S_IFREG, S_IFLNK, S_IFCHR, S_IFBLK } from '../format/constants';
import { llistxattr, lgetxattr, devMajor, devMinor, lseek, SEEK_DATA } from '../sys/native';
import { zeroView } from './chunk-sink';
import { NydusError } from '../errors';
import { storableXattrs } from './xattrs';

export interface DirFile {
  path: Buffer;
  display: string;
  inode: Inode;
  /** st_blocks (512-byte units), to spot sparse files */
  blocks: number;
}

function join(a: Buffer, b: Buffer): Buffer {
  return Buffer.concat([a, Buffer.from('/'), b]);
}

function readXattrs(p: Buffer, display: string, warn: (m: string) => void): Map<string, Buffer> {
  const m = new Map<string, Buffer>();
  let names: string[];
  try {
    names = llistxattr(p);
  } catch (e) {
    throw new NydusError('ERR_IO', `${display}: cannot list xattrs: ${(e as Error).message}`, { path: display }, { cause: e });
  }
  for (const n of names.sort()) {
    // Security modules may list names they refuse to return (e.g. security.selinux on some setups).
    try {
      m.set(n, lgetxattr(p, n));
    } catch (e) {
      if ((e as NydusError).context?.code === 'ENODATA') continue;
      throw e;
    }
  }
  return storableXattrs(m, display, warn);
}

function inodeFromStat(st: fs.BigIntStats, p: Buffer, display: string, warn: (m: string) => void): Inode {
  const mode = Number(st.mode);
  const mtimeNs = st.mtimeNs;
  const mtime = Number(mtimeNs / 1_000_000_000n) - (mtimeNs < 0n && mtimeNs % 1_000_000_000n !== 0n ? 1 : 0);
  const nsec = Number(((mtimeNs % 1_000_000_000n) + 1_000_000_000n) % 1_000_000_000n);
  const inode = newInode(mode, {
    uid: Number(st.uid), gid: Number(st.gid), mtime, mtimeNsec: nsec,
    xattrs: readXattrs(p, display, warn),
  });
  const type = mode & S_IFMT;
  if (type === S_IFREG) inode.size = Number(st.size);
  if (type === S_IFLNK) {
    inode.symlink = fs.readlinkSync(p, { encoding: 'buffer' });
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
  const rootBuf = Buffer.from(rootPath);
  let st: fs.BigIntStats;
  try {
    st = fs.lstatSync(rootBuf, { bigint: true });
  } catch (e) {
    throw new NydusError('ERR_INVALID_ARGUMENT', `source directory ${rootPath}: ${(e as Error).message}`, { path: rootPath });
  }
  if ((Number(st.mode) & S_IFMT) !== S_IFDIR) throw new NydusError('ERR_INVALID_ARGUMENT', `source ${rootPath} is not a directory`, { path: rootPath });
  const root: TreeNode = { name: Buffer.from('/'), inode: inodeFromStat(st, rootBuf, rootPath, warn), children: new Map() };
  const links = new Map<string, Inode>();
  const files: DirFile[] = [];
  const seenFiles = new Set<Inode>();
  const rootDev = st.dev;
  // Breadth-first so data order matches nydus' BFS dump.
  let level: { node: TreeNode; path: Buffer; rel: string }[] = [{ node: root, path: rootBuf, rel: '' }];
  while (level.length) {
    const next: typeof level = [];
    for (const dir of level) {
      let names: Buffer[];
      try {
        names = fs.readdirSync(dir.path, { encoding: 'buffer' });
      } catch (e) {
        throw new NydusError('ERR_IO', `${rootPath}${dir.rel || '/'}: cannot read directory: ${(e as Error).message}`, { path: dir.rel });
      }
      names.sort(Buffer.compare);
      for (const name of names) {
        const p = join(dir.path, name);
        const rel = dir.rel + '/' + name.toString();
        const cst = fs.lstatSync(p, { bigint: true });
        const type = Number(cst.mode) & S_IFMT;
        let inode: Inode;
        const linkKey = `${cst.dev}:${cst.ino}`;
        if (type !== S_IFDIR && cst.nlink > 1n && links.has(linkKey)) {
          inode = links.get(linkKey)!;
        } else {
          inode = inodeFromStat(cst, p, rootPath + rel, warn);
          if (type !== S_IFDIR && cst.nlink > 1n) links.set(linkKey, inode);
        }
        const node: TreeNode = { name, inode };
        dir.node.children!.set(nameKey(name), node);
        if (type === S_IFDIR) {
          node.children = new Map();
          if (cst.dev !== rootDev) {
            // Another filesystem is mounted here; include it like `cp -a` would, noting nothing.
          }
          next.push({ node, path: p, rel });
        } else if (type === S_IFREG && !seenFiles.has(inode)) {
          seenFiles.add(inode);
          files.push({ path: p, display: rootPath + rel, inode, blocks: Number(cst.blocks) });
        }
      }
    }
    level = next;
  }
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
 * Stream a file in chunk-sized reads (each a fresh buffer handed to the pipeline). Chunks that
 * lie entirely in a hole of a sparse file are not read: they come as `zeroView(n)`.
 *
 * The open/read/close calls are synchronous on purpose: most files of a rootfs are a few KiB,
 * and three thread-pool round trips per file (fs.promises) left the workers idle most of the
 * time (bench/README.md: 2.4 s -> 1.4 s on a Debian rootfs). The generator still yields, so
 * the sink's in-flight limit lets worker results be committed between reads.
 */
export async function* readFileChunks(p: Buffer, size: number, chunkSize: number, display: string, blocks?: number): AsyncGenerator<Buffer> {
  let fd: number;
  try {
    fd = fs.openSync(p, 'r');
  } catch (e) {
    throw new NydusError('ERR_IO', `${display}: cannot open: ${(e as Error).message}`, { path: display });
  }
  // Only files with fewer allocated blocks than their size can have holes.
  const sparse = blocks !== undefined && blocks * 512 < size;
  let nextData = 0; // next offset known to hold data (SEEK_DATA), or Infinity past the last
  try {
    let pos = 0;
    while (pos < size) {
      const want = Math.min(chunkSize, size - pos);
      if (sparse && nextData < pos + want) {
        if (nextData < pos) {
          const d = lseek(fd, pos, SEEK_DATA, display);
          nextData = d < 0 ? Infinity : d;
        }
      }
      if (sparse && nextData >= pos + want) {
        pos += want;
        yield zeroView(want);
        continue;
      }
      const buf = Buffer.allocUnsafe(want);
      let got = 0;
      while (got < want) {
        const bytesRead = fs.readSync(fd, buf, got, want - got, pos + got);
        if (bytesRead === 0) throw new NydusError('ERR_IO', `${display}: file shrank while building (expected ${size} bytes)`, { path: display });
        got += bytesRead;
      }
      pos += want;
      yield buf;
    }
  } finally {
    fs.closeSync(fd);
  }
}
