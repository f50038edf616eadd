/**
 * Lays out a TreeNode tree as a RAFS v6 bootstrap (a mountable EROFS image whose regular files
 * are chunk-based and point into the data blobs of the device table). Pure: tree in, bytes out.
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
  RAFS_MAX_BLOBS, RAFS_MAX_METADATA_SIZE, Layout, CHUNK_FORMAT_INDEXES, XATTR_PREFIXES,
  EROFS_DIRENT_SIZE, EROFS_NAME_LEN, fileTypeOfMode, alignUp, S_IFMT, S_IFDIR, S_IFREG, S_IFLNK,
  S_IFCHR, S_IFBLK, RAFS_CHUNK_INDEX_SIZE, ChunkFlag,
} from './constants';
import {
  encodeSuperBlock, encodeSuperBlockExt, encodeDeviceSlot, encodeBlobEntry, encodeInode,
  encodeDirent, encodeChunkIndex, encodeChunkInfo, BlobEntry, inodeSizeOf,
} from './layout';
import { TreeNode, Inode, encodeRdev, lookupPath, ChunkRef } from '../tree/node';
import { invalidArgument } from '../errors';

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

/** One inode's place in the image (one per inode: trees of 10^5 inodes keep this small). */
interface Placed {
  inode: Inode;
  node: TreeNode;
  parent: Placed | null;
  extended: boolean;
  xattrBody: Buffer; // encoded xattr area (header + entries) or empty
  /** directories: children and their names (map keys: latin1 strings of the name bytes) in byte order, sorted once */
  kids: TreeNode[] | null;
  keys: string[] | null;
  /** directory/symlink payload size (-1: none); directory payloads are encoded in pass 3 */
  dataSize: number;
  inlineTail: boolean;
  /** number of full data blocks stored outside the inode (FLAT_PLAIN part) */
  dataBlocks: number;
  recordSize: number;
  offset: number; // relative to meta_addr
  dataBlkaddr: number; // absolute block address of data blocks, when dataBlocks > 0
  nlink: number;
  ino: number;
}

const NO_BYTES = Buffer.alloc(0);

/** Path of a placed inode, for error messages (not stored: it would cost a string per inode). */
function pathOf(pl: Placed): string {
  const parts: string[] = [];
  for (let p: Placed | null = pl; p && p.parent; p = p.parent) parts.push(p.node.name.toString('latin1'));
  return '/' + parts.reverse().join('/');
}

/** Order of latin1 name strings: that of their bytes. */
function byKey(a: string, b: string): number {
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

interface DirEntry {
  /** the name's bytes as a latin1 string */
  key: string;
  nid: number;
  fileType: number;
}

/** encodeDirData for names given as latin1 strings (sorted here, in byte order). */
function encodeDirents(entries: DirEntry[]): Buffer {
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
function dirDataSize(keys: string[]): number {
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

function needsExtended(i: Inode, nlink: number): boolean {
  return i.uid > 0xffff || i.gid > 0xffff || nlink > 0xffff || i.size > 0xffffffff || i.mtime !== 0 || i.mtimeNsec !== 0;
}

export function writeBootstrap(input: BootstrapInput): BootstrapOutput {
  const { root, chunkSize } = input;
  const blobs = input.blobs;
  if (blobs.length > RAFS_MAX_BLOBS) throw invalidArgument(`too many blobs (${blobs.length}); RAFS v6 allows ${RAFS_MAX_BLOBS}`);
  if ((root.inode.mode & S_IFMT) !== S_IFDIR) throw invalidArgument('the root of an image must be a directory');
  const chunkBits = Math.log2(chunkSize);
  if (!Number.isInteger(chunkBits) || chunkBits < 12 || chunkBits > 24) throw invalidArgument(`chunk size 0x${chunkSize.toString(16)} must be a power of two in [0x1000, 0x1000000]`);

  // ---- pass 0: reference counts (hardlinks share Inode objects)
  const refs = new Map<Inode, number>();
  const countRefs = (n: TreeNode): void => {
    refs.set(n.inode, (refs.get(n.inode) ?? 0) + 1);
    if (n.children) for (const c of n.children.values()) countRefs(c);
  };
  countRefs(root);

  // ---- pass 1: placement order (nydus: dir, its non-dir children, then subdirs recursively)
  const order: Placed[] = [];
  const placedBy = new Map<Inode, Placed>();
  let nextIno = 1;
  let hasXattr = false;
  const placeOne = (n: TreeNode, parent: Placed | null, p: string): Placed => {
    const inode = n.inode;
    const type = inode.mode & S_IFMT;
    let nlink = refs.get(inode) ?? 1;
    let dataSize = -1;
    let kids: TreeNode[] | null = null;
    let keys: string[] | null = null;
    if (type === S_IFDIR) {
      if (nlink > 1) throw invalidArgument(`${p}: a directory cannot be hardlinked`);
      keys = [...n.children!.keys()].sort(byKey);
      kids = keys.map((k) => n.children!.get(k)!);
      nlink = 2;
      for (let i = 0; i < kids.length; i++) {
        const key = keys[i];
        if (key.length === 0 || key.length > EROFS_NAME_LEN || key.includes('/') || key.includes('\0')) {
          throw invalidArgument(`${p}: invalid entry name "${key}" (${key.length} bytes)`);
        }
        if ((kids[i].inode.mode & S_IFMT) === S_IFDIR) nlink++;
      }
      dataSize = dirDataSize(keys);
    } else if (type === S_IFLNK) {
      dataSize = inode.symlink?.length ?? 0;
      if (dataSize === 0 || dataSize >= BLK) throw invalidArgument(`${p}: symlink target of ${dataSize} bytes (must be 1..4095)`);
    } else if (type === S_IFREG) {
      // chunks are validated when encoded
    } else if (![S_IFCHR, S_IFBLK, 0o010000, 0o140000].includes(type)) {
      throw invalidArgument(`${p}: unsupported file type 0${type.toString(8)}`);
    }
    const xattrBody = encodeXattrs(inode.xattrs, p);
    if (xattrBody.length) hasXattr = true;
    const extended = needsExtended(inode, nlink);
    const headerSize = inodeSizeOf(extended) + xattrBody.length;
    let recordSize = headerSize;
    let inlineTail = false;
    let dataBlocks = 0;
    if (dataSize >= 0) {
      const tail = dataSize % BLK;
      if (tail !== 0 && headerSize + tail <= BLK) {
        inlineTail = true;
        dataBlocks = Math.floor(dataSize / BLK);
        recordSize = headerSize + tail;
      } else {
        dataBlocks = Math.ceil(dataSize / BLK);
      }
    } else if (type === S_IFREG) {
      const c = Math.ceil(inode.size / chunkSize);
      if (inode.chunks.length !== c) throw invalidArgument(`${p}: file of ${inode.size} bytes has ${inode.chunks.length} chunks, expected ${c}`);
      recordSize = alignUp(headerSize, RAFS_CHUNK_INDEX_SIZE) + RAFS_CHUNK_INDEX_SIZE * c;
    }
    const pl: Placed = {
      inode, node: n, parent, extended, xattrBody, kids, keys, dataSize, inlineTail, dataBlocks,
      recordSize, offset: 0, dataBlkaddr: 0, nlink, ino: nextIno++,
    };
    order.push(pl);
    placedBy.set(inode, pl);
    return pl;
  };
  const visit = (dir: Placed, path: string): void => {
    const kids = dir.kids!;
    const keys = dir.keys!;
    const prefix = path === '/' ? '/' : path + '/';
    // hardlinks: placed once, where first met
    for (let i = 0; i < kids.length; i++) {
      const k = kids[i];
      if ((k.inode.mode & S_IFMT) !== S_IFDIR && !placedBy.has(k.inode)) placeOne(k, dir, prefix + keys[i]);
    }
    for (let i = 0; i < kids.length; i++) {
      const k = kids[i];
      if ((k.inode.mode & S_IFMT) === S_IFDIR) visit(placeOne(k, dir, prefix + keys[i]), prefix + keys[i]);
    }
  };
  visit(placeOne(root, null, '/'), '/');
  refs.clear();

  // ---- fixed header area
  const nblobs = blobs.length;
  const blobTableOffset = alignUp(RAFS_DEVICE_TABLE_OFFSET + RAFS_DEVICE_SLOT_SIZE * nblobs, BLK);
  const blobTableSize = RAFS_BLOB_ENTRY_SIZE * nblobs;
  const prefetchInodes: Inode[] = [];
  for (const p of input.prefetchPaths ?? []) {
    const n = lookupPath(root, p);
    if (n && !prefetchInodes.includes(n.inode)) prefetchInodes.push(n.inode);
  }
  const prefetchOffset = blobTableOffset + blobTableSize;
  const prefetchSize = prefetchInodes.length * 4;
  const metaAddr = alignUp(prefetchOffset + prefetchSize, BLK);

  // ---- pass 2: allocate offsets (relative to metaAddr). Block 0 of the area stays empty.
  let nextBlock = 1;
  let cur = 0;
  let curEnd = 0; // end of the block `cur` is in (cur === curEnd: need a new block)
  const allocBlocks = (n: number): number => {
    const b = nextBlock;
    nextBlock += n;
    return b;
  };
  for (const pl of order) {
    const size = alignUp(pl.recordSize, EROFS_SLOT_SIZE);
    if (size <= BLK) {
      if (curEnd - cur < size) {
        cur = allocBlocks(1) * BLK;
        curEnd = cur + BLK;
      }
      pl.offset = cur;
      cur += size;
    } else {
      const nb = Math.ceil(size / BLK);
      const start = allocBlocks(nb) * BLK;
      pl.offset = start;
      cur = start + size;
      curEnd = start + nb * BLK;
    }
    if (pl.dataBlocks > 0) pl.dataBlkaddr = metaAddr / BLK + allocBlocks(pl.dataBlocks);
  }
  const metaEnd = metaAddr + nextBlock * BLK;
  const nidOf = (i: Inode): number => placedBy.get(i)!.offset / EROFS_SLOT_SIZE;
  if (nidOf(root.inode) > 0xffff) throw new Error('internal: root nid does not fit 16 bits');

  // ---- chunk table: one entry per distinct (digest, blob index), sorted; last writer wins
  const chunkMap = new Map<string, ChunkRef>();
  for (const pl of order) {
    for (const c of pl.inode.chunks) chunkMap.set(c.digest.toString('latin1') + c.blobIndex, c);
  }
  const chunkList = [...chunkMap.values()];
  chunkMap.clear();
  chunkList.sort((ca, cb) => Buffer.compare(ca.digest, cb.digest) || ca.blobIndex - cb.blobIndex || ca.ciIndex - cb.ciIndex);
  const chunkTableOffset = metaEnd;
  const chunkTableSize = chunkList.length * RAFS_CHUNK_INFO_SIZE;
  const totalSize = alignUp(chunkTableOffset + chunkTableSize, BLK);
  if (totalSize > RAFS_MAX_METADATA_SIZE) throw invalidArgument(`bootstrap would be ${totalSize} bytes, over the 2 GiB RAFS limit`);

  const out = Buffer.alloc(totalSize);

  // ---- superblocks, device table, blob table, prefetch table
  let mapped = totalSize;
  let blobBlocks = 0;
  blobs.forEach((b, i) => {
    const blocks = Math.ceil(b.uncompressedSize / BLK);
    if (blocks === 0) throw invalidArgument(`blob ${b.blobId} has no data`);
    if (!/^[0-9a-f]{64}$/.test(b.blobId)) throw invalidArgument(`blob id "${b.blobId}" is not 64 lowercase hex characters`);
    const mappedBlkaddr = alignUp(mapped, 512 * 1024) / BLK;
    mapped = (mappedBlkaddr + blocks) * BLK;
    blobBlocks += blocks;
    encodeDeviceSlot({ tag: b.blobId, blocks, mappedBlkaddr }).copy(out, RAFS_DEVICE_TABLE_OFFSET + i * RAFS_DEVICE_SLOT_SIZE);
    if (b.chunkSize !== chunkSize) throw invalidArgument(`blob ${b.blobId} has chunk size ${b.chunkSize}, image uses ${chunkSize}`);
    encodeBlobEntry({ ...b, blobIndex: i }).copy(out, blobTableOffset + i * RAFS_BLOB_ENTRY_SIZE);
  });
  const flags = input.flags | (hasXattr ? 0x20 : 0);
  encodeSuperBlock({
    magic: EROFS_SUPER_MAGIC,
    featureCompat: EROFS_FEATURE_COMPAT_RAFS_V6,
    blkszbits: EROFS_BLKSZBITS,
    rootNid: nidOf(root.inode),
    inos: order.length,
    blocks: blobBlocks || 1,
    metaBlkaddr: metaAddr / BLK,
    featureIncompat: RAFS_V6_INCOMPAT,
    extraDevices: nblobs,
    devtSlotoff: RAFS_DEVT_SLOTOFF,
  }).copy(out, EROFS_SUPER_OFFSET);
  encodeSuperBlockExt({
    flags,
    blobTableOffset,
    blobTableSize,
    chunkSize,
    chunkTableOffset: chunkTableSize ? chunkTableOffset : 0,
    chunkTableSize,
    prefetchTableOffset: prefetchSize ? prefetchOffset : 0,
    prefetchTableSize: prefetchSize,
  }).copy(out, RAFS_EXT_SUPER_OFFSET);
  prefetchInodes.forEach((ino, i) => out.writeUInt32LE(nidOf(ino), prefetchOffset + i * 4));

  // ---- pass 3: encode inodes, xattrs, inline data, dirent blocks, chunk indexes
  const chunkFormat = CHUNK_FORMAT_INDEXES | (chunkBits - EROFS_BLKSZBITS);
  for (const pl of order) {
    const i = pl.inode;
    const type = i.mode & S_IFMT;
    const abs = metaAddr + pl.offset;
    let layout: number = Layout.FLAT_PLAIN;
    let u = 0;
    let size = 0;
    let data: Buffer | undefined;
    if (type === S_IFDIR) {
      const kids = pl.kids!;
      const keys = pl.keys!;
      const ents: DirEntry[] = [
        { key: '.', nid: nidOf(i), fileType: 2 },
        { key: '..', nid: nidOf((pl.parent ?? pl).inode), fileType: 2 },
      ];
      for (let k = 0; k < kids.length; k++) ents.push({ key: keys[k], nid: nidOf(kids[k].inode), fileType: fileTypeOfMode(kids[k].inode.mode) });
      data = encodeDirents(ents);
      if (data.length !== pl.dataSize) throw new Error(`internal: ${pathOf(pl)}: directory data of ${data.length} bytes, laid out for ${pl.dataSize}`);
      pl.kids = null;
      pl.keys = null;
    } else if (type === S_IFLNK) {
      data = i.symlink;
    }
    if (data) {
      size = data.length;
      layout = pl.inlineTail ? Layout.FLAT_INLINE : Layout.FLAT_PLAIN;
      u = pl.dataBlocks > 0 ? pl.dataBlkaddr : 0;
    } else if (type === S_IFREG) {
      layout = Layout.CHUNK_BASED;
      u = chunkFormat;
      size = i.size;
    } else if (type === S_IFCHR || type === S_IFBLK) {
      u = encodeRdev(i.rdevMajor, i.rdevMinor);
    }
    const xicount = pl.xattrBody.length ? (pl.xattrBody.length - 12) / 4 + 1 : 0;
    const head = encodeInode({
      extended: pl.extended, layout, xattrIcount: xicount, mode: i.mode, nlink: pl.nlink, size, u,
      ino: pl.ino, uid: i.uid, gid: i.gid, mtime: i.mtime, mtimeNsec: i.mtimeNsec,
    });
    head.copy(out, abs);
    pl.xattrBody.copy(out, abs + head.length);
    const headerEnd = abs + head.length + pl.xattrBody.length;
    if (data) {
      const fullBytes = pl.dataBlocks * BLK;
      if (pl.dataBlocks > 0) data.copy(out, pl.dataBlkaddr * BLK, 0, Math.min(fullBytes, data.length));
      if (pl.inlineTail) data.copy(out, headerEnd, fullBytes);
    } else if (type === S_IFREG) {
      let off = metaAddr + alignUp(pl.offset + head.length + pl.xattrBody.length, RAFS_CHUNK_INDEX_SIZE);
      for (const c of i.chunks) {
        if (c.blobIndex < 0 || c.blobIndex >= nblobs) throw invalidArgument(`${pathOf(pl)}: chunk refers to blob index ${c.blobIndex} of ${nblobs}`);
        if (c.uncompressedOffset % BLK !== 0) throw invalidArgument(`${pathOf(pl)}: chunk uncompressed offset ${c.uncompressedOffset} is not 4K aligned`);
        encodeChunkIndex(out, off, { ciIndex: c.ciIndex, blobIndex: c.blobIndex, blkaddr: c.uncompressedOffset / BLK });
        off += RAFS_CHUNK_INDEX_SIZE;
      }
    }
  }

  // ---- chunk table
  chunkList.forEach((c, idx) => {
    encodeChunkInfo({
      digest: c.digest, blobIndex: c.blobIndex, flags: c.compressed ? ChunkFlag.COMPRESSED : 0,
      compressedSize: c.compressedSize, uncompressedSize: c.uncompressedSize,
      compressedOffset: c.compressedOffset, uncompressedOffset: c.uncompressedOffset,
      fileOffset: c.fileOffset, index: c.ciIndex, crc32: 0,
    }).copy(out, chunkTableOffset + idx * RAFS_CHUNK_INFO_SIZE);
  });

  const result = { data: out, inodeCount: order.length, chunkTableEntries: chunkList.length } as BootstrapOutput;
  // Built on first use: most callers only want the bytes, and this map has an entry per inode.
  let nids: Map<Inode, number> | undefined;
  Object.defineProperty(result, 'nids', {
    enumerable: true,
    get: () => (nids ??= new Map(order.map((pl) => [pl.inode, nidOf(pl.inode)]))),
  });
  return result;
}
