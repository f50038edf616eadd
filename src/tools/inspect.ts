/**
 * `inspect`: read-only queries over a bootstrap (stats, ls, stat, blobs, chunks, prefetch),
 * as text for people and as JSON for tools.
 */
import { OpenedImage } from './image';
import { TreeNode, Inode, walkTree, lookupPath, sortedChildren, nameKey, isDir, isReg, isSymlink, isChr, isBlk } from '../tree/node';
import { S_IFMT, S_IFDIR, S_IFREG, S_IFLNK, S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK } from '../format/constants';
import { NydusError } from '../errors';

export interface EntryInfo {
  path: string;
  type: 'file' | 'dir' | 'symlink' | 'chardev' | 'blockdev' | 'fifo' | 'socket' | 'unknown';
  nid: number;
  mode: string;
  uid: number;
  gid: number;
  size: number;
  mtime: string;
  nlink: number;
  target?: string;
  rdev?: string;
  xattrs?: Record<string, string>;
  chunks?: number;
}

const TYPE_NAMES: Record<number, EntryInfo['type']> = {
  [S_IFREG]: 'file', [S_IFDIR]: 'dir', [S_IFLNK]: 'symlink', [S_IFCHR]: 'chardev',
  [S_IFBLK]: 'blockdev', [S_IFIFO]: 'fifo', [S_IFSOCK]: 'socket',
};
const TYPE_CHAR: Record<string, string> = { file: '-', dir: 'd', symlink: 'l', chardev: 'c', blockdev: 'b', fifo: 'p', socket: 's', unknown: '?' };

export function modeString(mode: number): string {
  const perms = 'rwxrwxrwx';
  let s = '';
  for (let i = 0; i < 9; i++) s += mode & (1 << (8 - i)) ? perms[i] : '-';
  const a = s.split('');
  if (mode & 0o4000) a[2] = a[2] === 'x' ? 's' : 'S';
  if (mode & 0o2000) a[5] = a[5] === 'x' ? 's' : 'S';
  if (mode & 0o1000) a[8] = a[8] === 'x' ? 't' : 'T';
  return a.join('');
}

export function mtimeString(i: Inode): string {
  return `${i.mtime}.${String(i.mtimeNsec).padStart(9, '0')}`;
}

function printable(s: string): string {
  // names are raw bytes decoded as latin1; show them as UTF-8 when valid, else escaped
  const b = Buffer.from(s, 'latin1');
  const u = b.toString('utf8');
  if (Buffer.from(u, 'utf8').equals(b)) return u;
  return [...b].map((x) => (x >= 0x20 && x < 0x7f ? String.fromCharCode(x) : '\\x' + x.toString(16).padStart(2, '0'))).join('');
}

export function entryInfo(img: OpenedImage, node: TreeNode, path: string, nlink: number): EntryInfo {
  const i = node.inode;
  const type = TYPE_NAMES[i.mode & S_IFMT] ?? 'unknown';
  const info: EntryInfo = {
    path: printable(path), type, nid: img.boot.nidOf.get(i) ?? -1, mode: (i.mode & 0o7777).toString(8).padStart(4, '0'),
    uid: i.uid, gid: i.gid, size: isDir(i) ? img.boot.headerOf.get(i)?.size ?? 0 : i.size, mtime: mtimeString(i), nlink,
  };
  if (isSymlink(i)) info.target = printable(i.symlink?.toString('latin1') ?? '');
  if (isChr(i) || isBlk(i)) info.rdev = `${i.rdevMajor},${i.rdevMinor}`;
  if (i.xattrs.size) info.xattrs = Object.fromEntries([...i.xattrs].sort(([a], [b]) => (a < b ? -1 : 1)).map(([k, v]) => [printable(k), v.toString('hex')]));
  if (isReg(i)) info.chunks = i.chunks.length;
  return info;
}

export function formatEntry(e: EntryInfo): string {
  let s = `${TYPE_CHAR[e.type]}${modeString(parseInt(e.mode, 8))} ${e.nlink} ${e.uid} ${e.gid} ${e.rdev ?? e.size} ${e.mtime} ${e.path}`;
  if (e.target !== undefined) s += ` -> ${e.target}`;
  if (e.xattrs) s += ' ' + Object.entries(e.xattrs).map(([k, v]) => `${k}=0x${v}`).join(' ');
  return s;
}

function nlinks(img: OpenedImage): Map<Inode, number> {
  const m = new Map<Inode, number>();
  for (const { node } of walkTree(img.boot.root)) {
    if (isDir(node.inode)) m.set(node.inode, 2 + sortedChildren(node).filter((k) => isDir(k.inode)).length);
    else m.set(node.inode, (m.get(node.inode) ?? 0) + 1);
  }
  return m;
}

function find(img: OpenedImage, p: string): TreeNode {
  const n = lookupPath(img.boot.root, Buffer.from(p, 'utf8'));
  if (!n) throw new NydusError('ERR_NOT_FOUND', `${img.source}: no such path ${p}`, { path: p });
  return n;
}

export function inspectLs(img: OpenedImage, p: string, recursive: boolean): EntryInfo[] {
  const start = find(img, p);
  const links = nlinks(img);
  const base = p === '/' || p === '' ? '/' : '/' + p.split('/').filter(Boolean).join('/');
  if (!start.children) return [entryInfo(img, start, base, links.get(start.inode) ?? 1)];
  const out: EntryInfo[] = [];
  if (recursive) {
    for (const { node, path } of walkTree(start, base)) out.push(entryInfo(img, node, path, links.get(node.inode) ?? 1));
  } else {
    for (const k of sortedChildren(start)) {
      const path = (base === '/' ? '/' : base + '/') + nameKey(k.name);
      out.push(entryInfo(img, k, path, links.get(k.inode) ?? 1));
    }
  }
  return out;
}

export function inspectStat(img: OpenedImage, p: string): EntryInfo & { chunk_list?: unknown[] } {
  const n = find(img, p);
  const links = nlinks(img);
  return { ...entryInfo(img, n, p, links.get(n.inode) ?? 1), chunk_list: inspectChunks(img, p) };
}

export function inspectChunks(img: OpenedImage, p: string): unknown[] {
  const n = find(img, p);
  return n.inode.chunks.map((c) => ({
    file_offset: c.fileOffset, blob_index: c.blobIndex, blob_id: img.boot.blobs[c.blobIndex]?.blobId,
    ci_index: c.ciIndex, digest: c.digest.toString('hex'), compressed_offset: c.compressedOffset,
    compressed_size: c.compressedSize, uncompressed_offset: c.uncompressedOffset,
    uncompressed_size: c.uncompressedSize, compressed: c.compressed,
  }));
}

export function inspectBlobs(img: OpenedImage): unknown[] {
  return img.boot.blobs.map((b, i) => ({
    index: i, blob_id: b.blobId, compressed_size: b.compressedSize, uncompressed_size: b.uncompressedSize,
    chunk_size: b.chunkSize, chunk_count: b.chunkCount, compressor: ['none', 'lz4_block', 'gzip', 'zstd'][b.compressionAlgo] ?? b.compressionAlgo,
    digester: ['blake3', 'sha256'][b.digestAlgo] ?? b.digestAlgo, features: '0x' + b.features.toString(16),
    ci_offset: b.ciOffset, ci_compressed_size: b.ciCompressedSize, ci_uncompressed_size: b.ciUncompressedSize,
    toc_size: b.blobTocSize, mapped_blkaddr: img.boot.devices[i].mappedBlkaddr,
  }));
}

export function inspectStats(img: OpenedImage): Record<string, unknown> {
  const b = img.boot;
  const counts: Record<string, number> = {};
  let bytes = 0;
  let chunks = 0;
  const seen = new Set<Inode>();
  for (const { node } of walkTree(b.root)) {
    if (seen.has(node.inode)) continue;
    seen.add(node.inode);
    const t = TYPE_NAMES[node.inode.mode & S_IFMT] ?? 'unknown';
    counts[t] = (counts[t] ?? 0) + 1;
    if (isReg(node.inode)) {
      bytes += node.inode.size;
      chunks += node.inode.chunks.length;
    }
  }
  return {
    bootstrap_size: b.size, fs_version: 6, block_size: 4096, root_nid: b.rootNid, meta_blkaddr: b.sb.metaBlkaddr,
    inodes: b.inodeCount, sb_inos: b.sb.inos, flags: '0x' + b.flags.toString(16), compressor: b.compressor,
    digester: b.digester, chunk_size: b.chunkSize, blobs: b.blobs.length, chunk_table_entries: b.chunkTable.length,
    prefetch_entries: b.prefetchNids.length, types: counts, file_bytes: bytes, file_chunks: chunks,
  };
}

export function inspectPrefetch(img: OpenedImage): unknown[] {
  const byNid = new Map<number, string>();
  for (const { node, path } of walkTree(img.boot.root)) {
    const nid = img.boot.nidOf.get(node.inode);
    if (nid !== undefined && !byNid.has(nid)) byNid.set(nid, path);
  }
  return img.boot.prefetchNids.map((nid) => ({ nid, path: byNid.get(nid) ?? null }));
}
