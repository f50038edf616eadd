/**
 * Encoders of the bootstrap's variable parts: an inode's inline xattr area and a directory's
 * dirent blocks (names given as latin1 strings of their bytes, the tree's map keys).
 */
import { EROFS_BLOCK_SIZE as BLK, XATTR_PREFIXES, EROFS_DIRENT_SIZE, alignUp } from './constants';
import { encodeDirent } from './layout';
import { invalidArgument } from '../errors';

const NO_BYTES = Buffer.alloc(0);

/** Order of latin1 name strings: that of their bytes. */
export function byKey(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Encode the inline xattr area of an inode (empty buffer when it has none). */
export function encodeXattrs(xattrs: Map<string, Buffer>, where: string): Buffer {
  if (xattrs.size === 0) return NO_BYTES;
  const names = [...xattrs.keys()].sort((a, b) => Buffer.compare(Buffer.from(a, 'latin1'), Buffer.from(b, 'latin1')));
  const parts: Buffer[] = [Buffer.alloc(12)];
  for (const name of names) {
    const value = xattrs.get(name)!;
    const p = XATTR_PREFIXES.find((x) => (x.whole ? name === x.prefix : name.startsWith(x.prefix)));
    if (!p) throw invalidArgument(`${where}: xattr "${name}" is not in a namespace EROFS can store (user., trusted., security., system.posix_acl_*)`, { path: where, xattr: name });
    const suffix = Buffer.from(name.slice(p.prefix.length), 'latin1');
    if (suffix.length > 255) throw invalidArgument(`${where}: xattr name "${name}" is too long`, { path: where });
    if (value.length > 0xffff) throw invalidArgument(`${where}: xattr "${name}" value of ${value.length} bytes exceeds 65535`, { path: where });
    const len = alignUp(4 + suffix.length + value.length, 4);
    const e = Buffer.alloc(len);
    e.writeUInt8(suffix.length, 0);
    e.writeUInt8(p.index, 1);
    e.writeUInt16LE(value.length, 2);
    suffix.copy(e, 4);
    value.copy(e, 4 + suffix.length);
    parts.push(e);
  }
  const body = Buffer.concat(parts);
  if ((body.length - 12) / 4 + 1 > 0xffff) throw invalidArgument(`${where}: xattrs too large for one inode`, { path: where });
  return body;
}

/** Build the dirent blocks of a directory: `.`, `..` and children, globally sorted by bytes. */
export function encodeDirData(entries: { name: Buffer; nid: number; fileType: number }[]): Buffer {
  return encodeDirents(entries.map((e) => ({ key: e.name.toString('latin1'), nid: e.nid, fileType: e.fileType })));
}

export interface DirEntry {
  /** the name's bytes as a latin1 string */
  key: string;
  nid: number;
  fileType: number;
}

/** encodeDirData for names given as latin1 strings (sorted here, in byte order). */
export function encodeDirents(entries: DirEntry[]): Buffer {
  const sorted = entries.sort((a, b) => byKey(a.key, b.key));
  const blocks: Buffer[] = [];
  let i = 0;
  while (i < sorted.length) {
    // Fill one block: as many entries as fit (12 B dirent + name each).
    let used = 0;
    let j = i;
    while (j < sorted.length && used + EROFS_DIRENT_SIZE + sorted[j].key.length <= BLK) {
      used += EROFS_DIRENT_SIZE + sorted[j].key.length;
      j++;
    }
    const n = j - i;
    const isLast = j === sorted.length;
    const blk = Buffer.alloc(isLast ? used : BLK);
    let nameoff = n * EROFS_DIRENT_SIZE;
    for (let k = 0; k < n; k++) {
      const e = sorted[i + k];
      encodeDirent(blk, k * EROFS_DIRENT_SIZE, { nid: e.nid, nameoff, fileType: e.fileType });
      nameoff += blk.write(e.key, nameoff, 'latin1');
    }
    blocks.push(blk);
    i = j;
  }
  return blocks.length === 1 ? blocks[0] : Buffer.concat(blocks);
}

/** Size of a directory's dirent data, without knowing nids (for layout); `keys` in byte order. */
export function dirDataSize(keys: string[]): number {
  let total = 0;
  let used = 0;
  const add = (len: number): void => {
    if (used + EROFS_DIRENT_SIZE + len > BLK) {
      total += BLK;
      used = 0;
    }
    used += EROFS_DIRENT_SIZE + len;
  };
  // '.' and '..' go where their bytes sort among the names
  let dots = 0;
  for (const k of keys) {
    while (dots < 2 && byKey(DOT_KEYS[dots], k) < 0) add(DOT_KEYS[dots++].length);
    add(k.length);
  }
  while (dots < 2) add(DOT_KEYS[dots++].length);
  return total + used;
}

const DOT_KEYS = ['.', '..'];
