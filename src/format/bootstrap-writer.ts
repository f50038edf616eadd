/**
 * Lays out a TreeNode tree as a RAFS v6 bootstrap (a mountable EROFS image whose regular files
 * are chunk-based and point into the data blobs of the device table). Tree in, bytes out: into
 * one buffer, or into a file through a small window (writeBootstrapFile).
 *
 * Layout (spec rafs-v6.md §1.1): SB @1024, ext SB @1152, device table @1408, blob table (4K
 * aligned), prefetch table, then the metadata area at meta_addr whose first block is unused so
 * that the root inode gets nid 128, then the 80-byte chunk table (4K aligned).
 *
 * Deliberate differences from nydus-image, for kernel correctness (README "Format notes"):
 * inodes are compact only when that loses nothing (mtime 0, small ids and sizes), so mtimes and
 * rdev always survive; hardlinks of any non-directory type share one nid; xattrs are sorted.
 */
import {
  EROFS_BLOCK_SIZE as BLK, EROFS_BLKSZBITS, EROFS_SLOT_SIZE, EROFS_SUPER_OFFSET, EROFS_SUPER_MAGIC,
  EROFS_FEATURE_COMPAT_RAFS_V6, RAFS_V6_INCOMPAT, RAFS_EXT_SUPER_OFFSET, RAFS_DEVT_SLOTOFF,
  RAFS_DEVICE_TABLE_OFFSET, RAFS_DEVICE_SLOT_SIZE, RAFS_BLOB_ENTRY_SIZE, RAFS_CHUNK_INFO_SIZE,
  RAFS_MAX_BLOBS, RAFS_MAX_METADATA_SIZE, Layout, CHUNK_FORMAT_INDEXES, EROFS_NAME_LEN, fileTypeOfMode,
  alignUp, S_IFMT, S_IFDIR, S_IFREG, S_IFLNK,
  S_IFCHR, S_IFBLK, RAFS_CHUNK_INDEX_SIZE, ChunkFlag,
} from './constants';
import {
  encodeSuperBlock, encodeSuperBlockExt, encodeDeviceSlot, encodeBlobEntry, encodeInode,
  encodeChunkIndex, encodeChunkInfo, BlobEntry, inodeSizeOf,
} from './layout';
import { TreeNode, Inode, encodeRdev, lookupPath, ChunkRef, forEachNode } from '../tree/node';
import { invalidArgument } from '../errors';
import { encodeXattrs, encodeDirData, encodeDirents, dirDataSize, byKey, DirEntry } from './bootstrap-encode';
import { MemoryOut, FileOut, Out } from './bootstrap-out';

export { encodeXattrs, encodeDirData };

export interface BootstrapInput {
  root: TreeNode;
  /** blob table, in order; blobIndex is rewritten to the position */
  blobs: BlobEntry[];
  chunkSize: number;
  /** RafsSuperFlags (compressor, digester, EXPLICIT_UID_GID, …); HAS_XATTR is added when needed */
  flags: number;
  /** absolute paths whose nids go to the prefetch table (nydus `--prefetch-policy fs`) */
  prefetchPaths?: string[];
}

export interface BootstrapOutput {
  data: Buffer;
  inodeCount: number;
  chunkTableEntries: number;
  /** nid of every placed inode, for tests and inspect */
  nids: Map<Inode, number>;
}

/** writeBootstrapFile()'s result: the bytes went to the file. */
export type BootstrapFileOutput = Omit<BootstrapOutput, 'data'> & { size: number };

const NO_BYTES = Buffer.alloc(0);
function needsExtended(i: Inode, nlink: number): boolean {
  return i.uid > 0xffff || i.gid > 0xffff || nlink > 0xffff || i.size > 0xffffffff || i.mtime !== 0 || i.mtimeNsec !== 0;
}

/** Lay out the image in memory and return its bytes. */
export function writeBootstrap(input: BootstrapInput): BootstrapOutput {
  const layout = layOut(input);
  const out = new MemoryOut(layout.totalSize);
  emit(layout, out);
  return withNids(layout, { data: out.buf, inodeCount: layout.count, chunkTableEntries: layout.chunks.length }) as BootstrapOutput;
}

/**
 * writeBootstrap() straight into `fd` (from offset 0, `size` bytes) through a small window, not
 * a buffer of the whole image: a tree of 10^5 inodes has a bootstrap of ~10 MiB.
 */
export function writeBootstrapFile(input: BootstrapInput, fd: number): BootstrapFileOutput {
  const layout = layOut(input);
  const out = new FileOut(fd);
  emit(layout, out);
  out.end(layout.totalSize);
  return withNids(layout, { size: layout.totalSize, inodeCount: layout.count, chunkTableEntries: layout.chunks.length }) as BootstrapFileOutput;
}

function withNids<T extends object>(l: Placement, o: T): T & { nids: Map<Inode, number> } {
  // Built on first use: most callers only want the bytes, and this map has an entry per inode.
  let nids: Map<Inode, number> | undefined;
  Object.defineProperty(o, 'nids', {
    enumerable: true,
    get: () => (nids ??= new Map(l.inodes.map((inode, i) => [inode, l.offsets[i] / EROFS_SLOT_SIZE]))),
  });
  return o as T & { nids: Map<Inode, number> };
}

const EXTENDED = 1;
const INLINE_TAIL = 2;

/**
 * Where every inode goes. One entry per inode in parallel arrays, indexed in placement order
 * (ino = index + 1): no object per inode (trees of 10^5 inodes).
 */
interface Placement {
  input: BootstrapInput;
  count: number;
  inodes: Inode[];
  nodes: TreeNode[];
  /** placement index of the parent directory (the root's is itself) */
  parents: Int32Array;
  nlinks: Uint32Array;
  flags: Uint8Array;
  /** directory / symlink payload size (-1: none) */
  dataSizes: Int32Array;
  /** full data blocks stored outside the inode (FLAT_PLAIN part) */
  dataBlocks: Uint32Array;
  recordSizes: Uint32Array;
  /** relative to metaAddr (the metadata is at most 2 GiB) */
  offsets: Uint32Array;
  /** absolute block address of the data blocks, when dataBlocks > 0 */
  dataBlkaddrs: Uint32Array;
  /** encoded xattr areas of the inodes that have xattrs */
  xattrs: Map<number, Buffer>;
  /** directories: children and their keys in byte order (sorted once) */
  dirs: Map<number, { kids: TreeNode[]; keys: string[] }>;
  placedBy: Map<Inode, number>;
  hasXattr: boolean;
  metaAddr: number;
  metaEnd: number;
  blobTableOffset: number;
  prefetchOffset: number;
  prefetchInodes: Inode[];
  chunks: ChunkRef[];
  totalSize: number;
}

/** Path of a placed inode, for error messages (not stored: it would cost a string per inode). */
function pathOf(l: Placement, i: number): string {
  const parts: string[] = [];
  for (let p = i; p !== 0; p = l.parents[p]) parts.push(l.nodes[p].name.toString('latin1'));
  return '/' + parts.reverse().join('/');
}

function layOut(input: BootstrapInput): Placement {
  const { root, chunkSize } = input;
  const blobs = input.blobs;
  if (blobs.length > RAFS_MAX_BLOBS) throw invalidArgument(`too many blobs (${blobs.length}); RAFS v6 allows ${RAFS_MAX_BLOBS}`);
  if ((root.inode.mode & S_IFMT) !== S_IFDIR) throw invalidArgument('the root of an image must be a directory');
  const chunkBits = Math.log2(chunkSize);
  if (!Number.isInteger(chunkBits) || chunkBits < 12 || chunkBits > 24) throw invalidArgument(`chunk size 0x${chunkSize.toString(16)} must be a power of two in [0x1000, 0x1000000]`);
  // at most one place per node (hardlinks take fewer): the arrays are sized once
  let nodes = 0;
  forEachNode(root, () => nodes++);
  const l: Placement = {
    input, count: 0, inodes: new Array<Inode>(nodes), nodes: new Array<TreeNode>(nodes), parents: new Int32Array(nodes),
    nlinks: new Uint32Array(nodes), flags: new Uint8Array(nodes), dataSizes: new Int32Array(nodes), dataBlocks: new Uint32Array(nodes),
    recordSizes: new Uint32Array(nodes), offsets: new Uint32Array(nodes), dataBlkaddrs: new Uint32Array(nodes), xattrs: new Map(),
    dirs: new Map(), placedBy: new Map(), hasXattr: false, metaAddr: 0, metaEnd: 0, blobTableOffset: 0, prefetchOffset: 0,
    prefetchInodes: [], chunks: [], totalSize: 0,
  };

  // ---- pass 1: placement order (nydus: dir, its non-dir children, then subdirs recursively);
  // a non-directory met again is a hardlink: it keeps its first place and counts a link
  const place = (n: TreeNode, parent: number, path: string): number => {
    const inode = n.inode;
    const type = inode.mode & S_IFMT;
    const i = l.count++;
    let nlink = 1;
    let dataSize = -1;
    if (type === S_IFDIR) {
      const keys = [...n.children!.keys()].sort(byKey);
      const kids = keys.map((k) => n.children!.get(k)!);
      nlink = 2;
      for (let k = 0; k < kids.length; k++) {
        const key = keys[k];
        if (key.length === 0 || key.length > EROFS_NAME_LEN || key.includes('/') || key.includes('\0')) {
          throw invalidArgument(`${path}: invalid entry name "${key}" (${key.length} bytes)`);
        }
        if ((kids[k].inode.mode & S_IFMT) === S_IFDIR) nlink++;
      }
      dataSize = dirDataSize(keys);
      l.dirs.set(i, { kids, keys });
    } else if (type === S_IFLNK) {
      dataSize = inode.symlink?.length ?? 0;
      if (dataSize === 0 || dataSize >= BLK) throw invalidArgument(`${path}: symlink target of ${dataSize} bytes (must be 1..4095)`);
    } else if (type === S_IFREG) {
      const c = Math.ceil(inode.size / chunkSize);
      if (inode.chunks.length !== c) throw invalidArgument(`${path}: file of ${inode.size} bytes has ${inode.chunks.length} chunks, expected ${c}`);
    } else if (![S_IFCHR, S_IFBLK, 0o010000, 0o140000].includes(type)) {
      throw invalidArgument(`${path}: unsupported file type 0${type.toString(8)}`);
    }
    if (inode.xattrs.size) {
      l.xattrs.set(i, encodeXattrs(inode.xattrs, path));
      l.hasXattr = true;
    }
    l.inodes[i] = inode;
    l.nodes[i] = n;
    l.parents[i] = parent < 0 ? i : parent;
    l.nlinks[i] = nlink;
    l.dataSizes[i] = dataSize;
    l.placedBy.set(inode, i);
    return i;
  };
  const visit = (dir: number, path: string): void => {
    const { kids, keys } = l.dirs.get(dir)!;
    const prefix = path === '/' ? '/' : path + '/';
    for (let k = 0; k < kids.length; k++) {
      const c = kids[k];
      if ((c.inode.mode & S_IFMT) === S_IFDIR) continue;
      const seen = l.placedBy.get(c.inode);
      if (seen === undefined) place(c, dir, prefix + keys[k]);
      else l.nlinks[seen]++;
    }
    for (let k = 0; k < kids.length; k++) {
      const c = kids[k];
      if ((c.inode.mode & S_IFMT) !== S_IFDIR) continue;
      if (l.placedBy.has(c.inode)) throw invalidArgument(`${prefix + keys[k]}: a directory cannot be hardlinked`);
      visit(place(c, dir, prefix + keys[k]), prefix + keys[k]);
    }
  };
  visit(place(root, -1, '/'), '/');
  l.inodes.length = l.count;
  l.nodes.length = l.count;

  // ---- record sizes (the link counts are final now)
  for (let i = 0; i < l.count; i++) {
    const inode = l.inodes[i];
    const extended = needsExtended(inode, l.nlinks[i]);
    const headerSize = inodeSizeOf(extended) + (l.xattrs.get(i)?.length ?? 0);
    const dataSize = l.dataSizes[i];
    let recordSize = headerSize;
    let flags = extended ? EXTENDED : 0;
    let dataBlocks = 0;
    if (dataSize >= 0) {
      const tail = dataSize % BLK;
      if (tail !== 0 && headerSize + tail <= BLK) {
        flags |= INLINE_TAIL;
        dataBlocks = Math.floor(dataSize / BLK);
        recordSize = headerSize + tail;
      } else {
        dataBlocks = Math.ceil(dataSize / BLK);
      }
    } else if ((inode.mode & S_IFMT) === S_IFREG) {
      recordSize = alignUp(headerSize, RAFS_CHUNK_INDEX_SIZE) + RAFS_CHUNK_INDEX_SIZE * inode.chunks.length;
    }
    l.flags[i] = flags;
    l.dataBlocks[i] = dataBlocks;
    l.recordSizes[i] = recordSize;
  }

  // ---- fixed header area
  const nblobs = blobs.length;
  l.blobTableOffset = alignUp(RAFS_DEVICE_TABLE_OFFSET + RAFS_DEVICE_SLOT_SIZE * nblobs, BLK);
  for (const p of input.prefetchPaths ?? []) {
    const n = lookupPath(root, p);
    if (n && !l.prefetchInodes.includes(n.inode)) l.prefetchInodes.push(n.inode);
  }
  l.prefetchOffset = l.blobTableOffset + RAFS_BLOB_ENTRY_SIZE * nblobs;
  l.metaAddr = alignUp(l.prefetchOffset + l.prefetchInodes.length * 4, BLK);

  // ---- pass 2: allocate offsets (relative to metaAddr). Block 0 of the area stays empty.
  // Records only move forward; a directory's data blocks come right after its record's block.
  let nextBlock = 1;
  let cur = 0;
  let curEnd = 0; // end of the block `cur` is in (cur === curEnd: need a new block)
  for (let i = 0; i < l.count; i++) {
    const size = alignUp(l.recordSizes[i], EROFS_SLOT_SIZE);
    if (size <= BLK) {
      if (curEnd - cur < size) {
        cur = nextBlock++ * BLK;
        curEnd = cur + BLK;
      }
      l.offsets[i] = cur;
      cur += size;
    } else {
      const nb = Math.ceil(size / BLK);
      const start = nextBlock * BLK;
      nextBlock += nb;
      l.offsets[i] = start;
      cur = start + size;
      curEnd = start + nb * BLK;
    }
    l.dataBlkaddrs[i] = l.dataBlocks[i] > 0 ? l.metaAddr / BLK + nextBlock : 0;
    nextBlock += l.dataBlocks[i];
  }
  l.metaEnd = l.metaAddr + nextBlock * BLK;
  if (l.offsets[0] / EROFS_SLOT_SIZE > 0xffff) throw new Error('internal: root nid does not fit 16 bits');

  // ---- chunk table: one entry per distinct (digest, blob index), sorted; the last reference
  // in placement order describes it (its file offset). Sorted with the placement sequence as
  // the last key, each group's last element is that reference (no map keyed by digest).
  const refs: ChunkRef[] = [];
  for (let i = 0; i < l.count; i++) for (const c of l.inodes[i].chunks) refs.push(c);
  // digests copied once into one buffer (a ChunkRef's may be a getter that makes a view)
  const dig = Buffer.allocUnsafe(refs.length * 32);
  refs.forEach((c, k) => c.digest.copy(dig, k * 32, 0, 32));
  const cmpDigest = (a: number, b: number): number => dig.compare(dig, b * 32, b * 32 + 32, a * 32, a * 32 + 32);
  const order = Int32Array.from(refs.keys());
  order.sort((a, b) => cmpDigest(a, b) || refs[a].blobIndex - refs[b].blobIndex || a - b);
  for (let j = 0; j < order.length; j++) {
    const c = order[j];
    const next = j + 1 < order.length ? order[j + 1] : -1;
    if (next >= 0 && refs[next].blobIndex === refs[c].blobIndex && cmpDigest(c, next) === 0) continue;
    l.chunks.push(refs[c]);
  }
  l.totalSize = alignUp(l.metaEnd + l.chunks.length * RAFS_CHUNK_INFO_SIZE, BLK);
  if (l.totalSize > RAFS_MAX_METADATA_SIZE) throw invalidArgument(`bootstrap would be ${l.totalSize} bytes, over the 2 GiB RAFS limit`);
  return l;
}

function emit(l: Placement, out: Out): void {
  const { input, metaAddr } = l;
  const { blobs, chunkSize } = input;
  const nblobs = blobs.length;
  const nidOf = (inode: Inode): number => l.offsets[l.placedBy.get(inode)!] / EROFS_SLOT_SIZE;
  const put = (b: Buffer, off: number): void => {
    const [buf, at] = out.region(off, b.length);
    b.copy(buf, at);
  };

  // ---- superblocks, device table, blob table, prefetch table
  let mapped = l.totalSize;
  let blobBlocks = 0;
  blobs.forEach((b, i) => {
    const blocks = Math.ceil(b.uncompressedSize / BLK);
    if (blocks === 0) throw invalidArgument(`blob ${b.blobId} has no data`);
    if (!/^[0-9a-f]{64}$/.test(b.blobId)) throw invalidArgument(`blob id "${b.blobId}" is not 64 lowercase hex characters`);
    const mappedBlkaddr = alignUp(mapped, 512 * 1024) / BLK;
    mapped = (mappedBlkaddr + blocks) * BLK;
    blobBlocks += blocks;
    put(encodeDeviceSlot({ tag: b.blobId, blocks, mappedBlkaddr }), RAFS_DEVICE_TABLE_OFFSET + i * RAFS_DEVICE_SLOT_SIZE);
    if (b.chunkSize !== chunkSize) throw invalidArgument(`blob ${b.blobId} has chunk size ${b.chunkSize}, image uses ${chunkSize}`);
    put(encodeBlobEntry({ ...b, blobIndex: i }), l.blobTableOffset + i * RAFS_BLOB_ENTRY_SIZE);
  });
  const chunkTableSize = l.chunks.length * RAFS_CHUNK_INFO_SIZE;
  const prefetchSize = l.prefetchInodes.length * 4;
  put(encodeSuperBlock({
    magic: EROFS_SUPER_MAGIC,
    featureCompat: EROFS_FEATURE_COMPAT_RAFS_V6,
    blkszbits: EROFS_BLKSZBITS,
    rootNid: l.offsets[0] / EROFS_SLOT_SIZE,
    inos: l.count,
    blocks: blobBlocks || 1,
    metaBlkaddr: metaAddr / BLK,
    featureIncompat: RAFS_V6_INCOMPAT,
    extraDevices: nblobs,
    devtSlotoff: RAFS_DEVT_SLOTOFF,
  }), EROFS_SUPER_OFFSET);
  put(encodeSuperBlockExt({
    flags: input.flags | (l.hasXattr ? 0x20 : 0),
    blobTableOffset: l.blobTableOffset,
    blobTableSize: RAFS_BLOB_ENTRY_SIZE * nblobs,
    chunkSize,
    chunkTableOffset: chunkTableSize ? l.metaEnd : 0,
    chunkTableSize,
    prefetchTableOffset: prefetchSize ? l.prefetchOffset : 0,
    prefetchTableSize: prefetchSize,
  }), RAFS_EXT_SUPER_OFFSET);
  l.prefetchInodes.forEach((inode, i) => {
    const [buf, at] = out.region(l.prefetchOffset + i * 4, 4);
    buf.writeUInt32LE(nidOf(inode), at);
  });

  // ---- pass 3: encode inodes, xattrs, inline data, dirent blocks, chunk indexes
  const chunkFormat = CHUNK_FORMAT_INDEXES | (Math.log2(chunkSize) - EROFS_BLKSZBITS);
  for (let p = 0; p < l.count; p++) {
    const i = l.inodes[p];
    const type = i.mode & S_IFMT;
    const abs = metaAddr + l.offsets[p];
    out.advance(abs - (abs % BLK));
    const flags = l.flags[p];
    const dataBlocks = l.dataBlocks[p];
    let layout: number = Layout.FLAT_PLAIN;
    let u = 0;
    let size = 0;
    let data: Buffer | undefined;
    if (type === S_IFDIR) {
      const { kids, keys } = l.dirs.get(p)!;
      const ents: DirEntry[] = [
        { key: '.', nid: nidOf(i), fileType: 2 },
        { key: '..', nid: l.offsets[l.parents[p]] / EROFS_SLOT_SIZE, fileType: 2 },
      ];
      for (let k = 0; k < kids.length; k++) ents.push({ key: keys[k], nid: nidOf(kids[k].inode), fileType: fileTypeOfMode(kids[k].inode.mode) });
      data = encodeDirents(ents);
      if (data.length !== l.dataSizes[p]) throw new Error(`internal: ${pathOf(l, p)}: directory data of ${data.length} bytes, laid out for ${l.dataSizes[p]}`);
      l.dirs.delete(p);
    } else if (type === S_IFLNK) {
      data = i.symlink;
    }
    if (data) {
      size = data.length;
      layout = flags & INLINE_TAIL ? Layout.FLAT_INLINE : Layout.FLAT_PLAIN;
      u = dataBlocks > 0 ? l.dataBlkaddrs[p] : 0;
    } else if (type === S_IFREG) {
      layout = Layout.CHUNK_BASED;
      u = chunkFormat;
      size = i.size;
    } else if (type === S_IFCHR || type === S_IFBLK) {
      u = encodeRdev(i.rdevMajor, i.rdevMinor);
    }
    const xattrBody = l.xattrs.get(p) ?? NO_BYTES;
    const xicount = xattrBody.length ? (xattrBody.length - 12) / 4 + 1 : 0;
    const head = encodeInode({
      extended: (flags & EXTENDED) !== 0, layout, xattrIcount: xicount, mode: i.mode, nlink: l.nlinks[p], size, u,
      ino: p + 1, uid: i.uid, gid: i.gid, mtime: i.mtime, mtimeNsec: i.mtimeNsec,
    });
    put(head, abs);
    if (xattrBody.length) put(xattrBody, abs + head.length);
    const headerEnd = abs + head.length + xattrBody.length;
    if (data) {
      const fullBytes = dataBlocks * BLK;
      if (dataBlocks > 0) {
        const n = Math.min(fullBytes, data.length);
        const [buf, at] = out.region(l.dataBlkaddrs[p] * BLK, n);
        data.copy(buf, at, 0, n);
      }
      if (flags & INLINE_TAIL) {
        const [buf, at] = out.region(headerEnd, data.length - fullBytes);
        data.copy(buf, at, fullBytes);
      }
    } else if (type === S_IFREG) {
      const start = metaAddr + alignUp(l.offsets[p] + head.length + xattrBody.length, RAFS_CHUNK_INDEX_SIZE);
      const [buf, at] = out.region(start, RAFS_CHUNK_INDEX_SIZE * i.chunks.length);
      let off = at;
      for (const c of i.chunks) {
        if (c.blobIndex < 0 || c.blobIndex >= nblobs) throw invalidArgument(`${pathOf(l, p)}: chunk refers to blob index ${c.blobIndex} of ${nblobs}`);
        if (c.uncompressedOffset % BLK !== 0) throw invalidArgument(`${pathOf(l, p)}: chunk uncompressed offset ${c.uncompressedOffset} is not 4K aligned`);
        encodeChunkIndex(buf, off, { ciIndex: c.ciIndex, blobIndex: c.blobIndex, blkaddr: c.uncompressedOffset / BLK });
        off += RAFS_CHUNK_INDEX_SIZE;
      }
    }
  }

  // ---- chunk table
  out.advance(l.metaEnd);
  l.chunks.forEach((c, idx) => {
    put(encodeChunkInfo({
      digest: c.digest, blobIndex: c.blobIndex, flags: c.compressed ? ChunkFlag.COMPRESSED : 0,
      compressedSize: c.compressedSize, uncompressedSize: c.uncompressedSize,
      compressedOffset: c.compressedOffset, uncompressedOffset: c.uncompressedOffset,
      fileOffset: c.fileOffset, index: c.ciIndex, crc32: 0,
    }), l.metaEnd + idx * RAFS_CHUNK_INFO_SIZE);
    if ((idx & 1023) === 1023) out.advance(l.metaEnd + (idx + 1) * RAFS_CHUNK_INFO_SIZE);
  });
}
