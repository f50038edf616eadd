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

/**
 * The xattr map of every inode without xattrs (a tree can hold hundreds of thousands of inodes;
 * an empty Map each costs ~200 bytes). Read-only: code that changes xattrs copies the map first.
 */
class NoXattrs extends Map<string, Buffer> {
  override set(name: string): this {
    throw new Error(`internal: cannot set xattr ${name} on the shared empty xattr map (copy it first)`);
  }
  override delete(): boolean {
    return false;
  }
  override clear(): void {
    /* nothing to clear */
  }
}
export const NO_XATTRS: Map<string, Buffer> = new NoXattrs();

/** The chunk list of every inode without chunks (frozen: code that changes chunks assigns a new array). */
export const NO_CHUNKS: ChunkRef[] = Object.freeze([]) as unknown as ChunkRef[];

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

/**
 * Children sorted by raw name bytes (the EROFS dirent order). Sorted by their keys, which are
 * the names as latin1 strings (nameKey): string order is byte order, and a key costs nothing
 * to read where a node may build its name Buffer on demand (KeyedNode).
 */
export function sortedChildren(n: TreeNode): TreeNode[] {
  if (!n.children) return [];
  const entries = [...n.children];
  entries.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  return entries.map((e) => e[1]);
}

/**
 * A tree node whose name is kept only as its key (the latin1 string of the name bytes), the
 * Buffer being made when asked for: a Buffer object costs ~200 bytes, and the directory source
 * makes one node per entry of trees with 10^5 entries.
 */
export class KeyedNode implements TreeNode {
  children?: Map<string, TreeNode>;
  constructor(readonly key: string, public inode: Inode) {}
  get name(): Buffer {
    return Buffer.from(this.key, 'latin1');
  }
  set name(b: Buffer) {
    (this as { key: string }).key = nameKey(b);
  }
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

/** Every node of the tree (hardlinks once per name), in no particular order; no paths, no sorting. */
export function forEachNode(root: TreeNode, fn: (n: TreeNode) => void): void {
  const stack = [root];
  while (stack.length) {
    const n = stack.pop()!;
    fn(n);
    if (n.children) for (const c of n.children.values()) stack.push(c);
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
