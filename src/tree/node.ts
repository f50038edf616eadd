/**
 * The in-memory filesystem tree shared by every source (directory, tar, bootstrap reader),
 * the layer merge and the bootstrap writer. Names are raw bytes (tar may carry non-UTF-8);
 * hardlinks are several TreeNodes that share one Inode object.
 */
import { S_IFMT, S_IFDIR, S_IFREG, S_IFLNK, S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK } from '../format/constants';

/** One chunk of a regular file, located in a data blob of the image. */
export interface ChunkRef {
  /** index into the image's blob table */
  blobIndex: number;
  /** index in that blob's ci array */
  ciIndex: number;
  digest: Buffer;
  compressedOffset: number;
  compressedSize: number;
  uncompressedOffset: number;
  uncompressedSize: number;
  compressed: boolean;
  /** offset of this chunk inside the file */
  fileOffset: number;
}

export interface Inode {
  /** full st_mode, type bits included */
  mode: number;
  uid: number;
  gid: number;
  mtime: number;
  mtimeNsec: number;
  /** regular files: byte size; symlinks: target length; others 0 */
  size: number;
  rdevMajor: number;
  rdevMinor: number;
  /** symlink target bytes */
  symlink?: Buffer;
  /** xattr name (latin1-decoded bytes) -> value */
  xattrs: Map<string, Buffer>;
  /** regular files: chunks in file order */
  chunks: ChunkRef[];
}

export interface TreeNode {
  name: Buffer;
  inode: Inode;
  /** directories only; key = name as latin1 string (byte-exact) */
  children?: Map<string, TreeNode>;
}

export function nameKey(name: Buffer): string {
  return name.toString('latin1');
}

export function newInode(mode: number, init: Partial<Inode> = {}): Inode {
  return {
    mode, uid: 0, gid: 0, mtime: 0, mtimeNsec: 0, size: 0, rdevMajor: 0, rdevMinor: 0,
    xattrs: new Map(), chunks: [], ...init,
  };
}

export function newDir(name: Buffer, init: Partial<Inode> = {}): TreeNode {
  return { name, inode: newInode(S_IFDIR | 0o755, init), children: new Map() };
}

export const isDir = (i: Inode): boolean => (i.mode & S_IFMT) === S_IFDIR;
export const isReg = (i: Inode): boolean => (i.mode & S_IFMT) === S_IFREG;
export const isSymlink = (i: Inode): boolean => (i.mode & S_IFMT) === S_IFLNK;
export const isChr = (i: Inode): boolean => (i.mode & S_IFMT) === S_IFCHR;
export const isBlk = (i: Inode): boolean => (i.mode & S_IFMT) === S_IFBLK;
export const isFifo = (i: Inode): boolean => (i.mode & S_IFMT) === S_IFIFO;
export const isSock = (i: Inode): boolean => (i.mode & S_IFMT) === S_IFSOCK;

/** Children sorted by raw name bytes (the EROFS dirent order). */
export function sortedChildren(n: TreeNode): TreeNode[] {
  if (!n.children) return [];
  return [...n.children.values()].sort((a, b) => Buffer.compare(a.name, b.name));
}

/** Depth-first walk, parents before children, siblings in byte order. `path` is '/'-joined bytes. */
export function* walkTree(root: TreeNode, path = '/'): Generator<{ node: TreeNode; path: string; parent?: TreeNode }> {
  const stack: { node: TreeNode; path: string; parent?: TreeNode }[] = [{ node: root, path }];
  while (stack.length) {
    const cur = stack.pop()!;
    yield cur;
    const kids = sortedChildren(cur.node);
    for (let i = kids.length - 1; i >= 0; i--) {
      const k = kids[i];
      const p = cur.path === '/' ? '/' + nameKey(k.name) : cur.path + '/' + nameKey(k.name);
      stack.push({ node: k, path: p, parent: cur.node });
    }
  }
}

/** Split an absolute or relative path into raw name components (no '.', no '..', no empties). */
export function splitPath(p: Buffer | string): Buffer[] {
  const b = typeof p === 'string' ? Buffer.from(p, 'latin1') : p;
  const parts: Buffer[] = [];
  let start = 0;
  for (let i = 0; i <= b.length; i++) {
    if (i === b.length || b[i] === 0x2f) {
      if (i > start) parts.push(b.subarray(start, i));
      start = i + 1;
    }
  }
  return parts;
}

export function lookupPath(root: TreeNode, path: string | Buffer): TreeNode | undefined {
  let cur: TreeNode | undefined = root;
  for (const part of splitPath(path)) {
    const s = nameKey(part);
    if (s === '.') continue;
    if (!cur?.children) return undefined;
    cur = cur.children.get(s);
    if (!cur) return undefined;
  }
  return cur;
}

/** Linux new_encode_dev, truncated to 32 bits (what EROFS stores in i_u). */
export function encodeRdev(major: number, minor: number): number {
  return ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xff) << 12)) >>> 0;
}
export function decodeRdev(dev: number): { major: number; minor: number } {
  return { major: (dev & 0xfff00) >>> 8, minor: ((dev & 0xff) | ((dev >>> 12) & 0xfff00)) >>> 0 };
}
