/**
 * Fixed-size on-disk structures of RAFS v6 (EROFS + nydus extensions): pure encode/decode.
 * Field offsets follow ../shared/spec/rafs-v6.md §1–2 and kernel.md §3.
 */
import {
  EROFS_SUPER_MAGIC, RAFS_DEVICE_SLOT_SIZE, RAFS_BLOB_ENTRY_SIZE, RAFS_CHUNK_INFO_SIZE,
  EROFS_COMPACT_INODE_SIZE, EROFS_EXTENDED_INODE_SIZE, BLOB_CCT_HEADER_SIZE, BLOB_CCT_MAGIC,
  BLOB_TOC_ENTRY_SIZE, TAR_BLOCK, EROFS_DIRENT_SIZE,
} from './constants';
import { readU64, writeU64, readI64, writeI64, readCString, writeCString } from './bytes';

// ---------------------------------------------------------------- EROFS superblock (128 B @1024)
export interface SuperBlock {
  magic: number;
  checksum: number;
  featureCompat: number;
  blkszbits: number;
  extslots: number;
  rootNid: number;
  inos: number;
  buildTime: number;
  buildTimeNsec: number;
  blocks: number;
  metaBlkaddr: number;
  xattrBlkaddr: number;
  uuid: Buffer;
  volumeName: Buffer;
  featureIncompat: number;
  u1: number;
  extraDevices: number;
  devtSlotoff: number;
  dirblkbits: number;
  xattrPrefixCount: number;
  xattrPrefixStart: number;
  packedNid: number;
}
export const SUPER_BLOCK_SIZE = 128;

export function decodeSuperBlock(b: Buffer): SuperBlock {
  return {
    magic: b.readUInt32LE(0),
    checksum: b.readUInt32LE(4),
    featureCompat: b.readUInt32LE(8),
    blkszbits: b.readUInt8(12),
    extslots: b.readUInt8(13),
    rootNid: b.readUInt16LE(14),
    inos: readU64(b, 16),
    buildTime: readU64(b, 24),
    buildTimeNsec: b.readUInt32LE(32),
    blocks: b.readUInt32LE(36),
    metaBlkaddr: b.readUInt32LE(40),
    xattrBlkaddr: b.readUInt32LE(44),
    uuid: Buffer.from(b.subarray(48, 64)),
    volumeName: Buffer.from(b.subarray(64, 80)),
    featureIncompat: b.readUInt32LE(80),
    u1: b.readUInt16LE(84),
    extraDevices: b.readUInt16LE(86),
    devtSlotoff: b.readUInt16LE(88),
    dirblkbits: b.readUInt8(90),
    xattrPrefixCount: b.readUInt8(91),
    xattrPrefixStart: b.readUInt32LE(92),
    packedNid: readU64(b, 96),
  };
}

export function encodeSuperBlock(s: Partial<SuperBlock>): Buffer {
  const b = Buffer.alloc(SUPER_BLOCK_SIZE);
  b.writeUInt32LE(s.magic ?? EROFS_SUPER_MAGIC, 0);
  b.writeUInt32LE(s.checksum ?? 0, 4);
  b.writeUInt32LE(s.featureCompat ?? 0, 8);
  b.writeUInt8(s.blkszbits ?? 12, 12);
  b.writeUInt8(s.extslots ?? 0, 13);
  b.writeUInt16LE(s.rootNid ?? 0, 14);
  writeU64(b, 16, s.inos ?? 0);
  writeU64(b, 24, s.buildTime ?? 0);
  b.writeUInt32LE(s.buildTimeNsec ?? 0, 32);
  b.writeUInt32LE(s.blocks ?? 0, 36);
  b.writeUInt32LE(s.metaBlkaddr ?? 0, 40);
  b.writeUInt32LE(s.xattrBlkaddr ?? 0, 44);
  if (s.uuid) s.uuid.copy(b, 48, 0, 16);
  if (s.volumeName) s.volumeName.copy(b, 64, 0, 16);
  b.writeUInt32LE(s.featureIncompat ?? 0, 80);
  b.writeUInt16LE(s.u1 ?? 0, 84);
  b.writeUInt16LE(s.extraDevices ?? 0, 86);
  b.writeUInt16LE(s.devtSlotoff ?? 0, 88);
  b.writeUInt8(s.dirblkbits ?? 0, 90);
  b.writeUInt8(s.xattrPrefixCount ?? 0, 91);
  b.writeUInt32LE(s.xattrPrefixStart ?? 0, 92);
  writeU64(b, 96, s.packedNid ?? 0);
  return b;
}

// ------------------------------------------------------- nydus extension superblock (256 B @1152)
export interface SuperBlockExt {
  flags: number;
  blobTableOffset: number;
  blobTableSize: number;
  chunkSize: number;
  chunkTableOffset: number;
  chunkTableSize: number;
  prefetchTableOffset: number;
  prefetchTableSize: number;
  padding: number;
  reservedNonZero: boolean;
}
export const SUPER_BLOCK_EXT_SIZE = 256;

export function decodeSuperBlockExt(b: Buffer): SuperBlockExt {
  return {
    flags: readU64(b, 0),
    blobTableOffset: readU64(b, 8),
    blobTableSize: b.readUInt32LE(16),
    chunkSize: b.readUInt32LE(20),
    chunkTableOffset: readU64(b, 24),
    chunkTableSize: readU64(b, 32),
    prefetchTableOffset: readU64(b, 40),
    prefetchTableSize: b.readUInt32LE(48),
    padding: b.readUInt32LE(52),
    reservedNonZero: b.subarray(56, 256).some((x) => x !== 0),
  };
}

export function encodeSuperBlockExt(e: Omit<SuperBlockExt, 'padding' | 'reservedNonZero'>): Buffer {
  const b = Buffer.alloc(SUPER_BLOCK_EXT_SIZE);
  writeU64(b, 0, e.flags);
  writeU64(b, 8, e.blobTableOffset);
  b.writeUInt32LE(e.blobTableSize, 16);
  b.writeUInt32LE(e.chunkSize, 20);
  writeU64(b, 24, e.chunkTableOffset);
  writeU64(b, 32, e.chunkTableSize);
  writeU64(b, 40, e.prefetchTableOffset);
  b.writeUInt32LE(e.prefetchTableSize, 48);
  return b;
}

// ------------------------------------------------------------------- device slot (128 B)
export interface DeviceSlot {
  tag: string;
  blocks: number;
  mappedBlkaddr: number;
}
export function decodeDeviceSlot(b: Buffer): DeviceSlot {
  return { tag: readCString(b, 0, 64), blocks: b.readUInt32LE(64), mappedBlkaddr: b.readUInt32LE(68) };
}
export function encodeDeviceSlot(d: DeviceSlot): Buffer {
  const b = Buffer.alloc(RAFS_DEVICE_SLOT_SIZE);
  writeCString(b, 0, 64, d.tag);
  b.writeUInt32LE(d.blocks, 64);
  b.writeUInt32LE(d.mappedBlkaddr, 68);
  return b;
}

// ------------------------------------------------------------------- blob table entry (256 B)
export interface BlobEntry {
  blobId: string;
  blobIndex: number;
  chunkSize: number;
  chunkCount: number;
  compressionAlgo: number;
  digestAlgo: number;
  features: number;
  compressedSize: number;
  uncompressedSize: number;
  blobTocSize: number;
  ciCompressor: number;
  ciOffset: number;
  ciCompressedSize: number;
  ciUncompressedSize: number;
  blobTocDigest: Buffer;
  blobMetaDigest: Buffer;
  blobMetaSize: number;
  cipherIv: Buffer;
  cipherAlgo: number;
}
export function decodeBlobEntry(b: Buffer): BlobEntry {
  return {
    blobId: readCString(b, 0, 64),
    blobIndex: b.readUInt32LE(64),
    chunkSize: b.readUInt32LE(68),
    chunkCount: b.readUInt32LE(72),
    compressionAlgo: b.readUInt32LE(76),
    digestAlgo: b.readUInt32LE(80),
    features: b.readUInt32LE(84),
    compressedSize: readU64(b, 88),
    uncompressedSize: readU64(b, 96),
    blobTocSize: b.readUInt32LE(104),
    ciCompressor: b.readUInt32LE(108),
    ciOffset: readU64(b, 112),
    ciCompressedSize: readU64(b, 120),
    ciUncompressedSize: readU64(b, 128),
    blobTocDigest: Buffer.from(b.subarray(136, 168)),
    blobMetaDigest: Buffer.from(b.subarray(168, 200)),
    blobMetaSize: readU64(b, 200),
    cipherIv: Buffer.from(b.subarray(208, 216)),
    cipherAlgo: b.readUInt32LE(216),
  };
}
export function encodeBlobEntry(e: BlobEntry): Buffer {
  const b = Buffer.alloc(RAFS_BLOB_ENTRY_SIZE);
  writeCString(b, 0, 64, e.blobId);
  b.writeUInt32LE(e.blobIndex, 64);
  b.writeUInt32LE(e.chunkSize, 68);
  b.writeUInt32LE(e.chunkCount, 72);
  b.writeUInt32LE(e.compressionAlgo, 76);
  b.writeUInt32LE(e.digestAlgo, 80);
  b.writeUInt32LE(e.features >>> 0, 84);
  writeU64(b, 88, e.compressedSize);
  writeU64(b, 96, e.uncompressedSize);
  b.writeUInt32LE(e.blobTocSize, 104);
  b.writeUInt32LE(e.ciCompressor, 108);
  writeU64(b, 112, e.ciOffset);
  writeU64(b, 120, e.ciCompressedSize);
  writeU64(b, 128, e.ciUncompressedSize);
  e.blobTocDigest.copy(b, 136, 0, 32);
  e.blobMetaDigest.copy(b, 168, 0, 32);
  writeU64(b, 200, e.blobMetaSize);
  e.cipherIv.copy(b, 208, 0, 8);
  b.writeUInt32LE(e.cipherAlgo, 216);
  return b;
}

// ------------------------------------------------------------------- inodes (32 / 64 B)
export interface InodeHeader {
  extended: boolean;
  layout: number;
  formatRaw: number;
  xattrIcount: number;
  mode: number;
  nlink: number;
  size: number;
  u: number;
  ino: number;
  uid: number;
  gid: number;
  mtime: number; // seconds (compact inodes: superblock build time)
  mtimeNsec: number;
}

export function inodeSizeOf(extended: boolean): number {
  return extended ? EROFS_EXTENDED_INODE_SIZE : EROFS_COMPACT_INODE_SIZE;
}

/** Decode an inode at `b[0..]`; `b` must hold 64 bytes if bit 0 of i_format is set. */
export function decodeInode(b: Buffer, buildTime = 0, buildTimeNsec = 0): InodeHeader {
  const format = b.readUInt16LE(0);
  const extended = (format & 1) === 1;
  const layout = (format >> 1) & 0x7;
  if (!extended) {
    return {
      extended, layout, formatRaw: format,
      xattrIcount: b.readUInt16LE(2),
      mode: b.readUInt16LE(4),
      nlink: b.readUInt16LE(6),
      size: b.readUInt32LE(8),
      u: b.readUInt32LE(16),
      ino: b.readUInt32LE(20),
      uid: b.readUInt16LE(24),
      gid: b.readUInt16LE(26),
      mtime: buildTime,
      mtimeNsec: buildTimeNsec,
    };
  }
  return {
    extended, layout, formatRaw: format,
    xattrIcount: b.readUInt16LE(2),
    mode: b.readUInt16LE(4),
    size: readU64(b, 8),
    u: b.readUInt32LE(16),
    ino: b.readUInt32LE(20),
    uid: b.readUInt32LE(24),
    gid: b.readUInt32LE(28),
    mtime: readI64(b, 32),
    mtimeNsec: b.readUInt32LE(40),
    nlink: b.readUInt32LE(44),
  };
}

export function encodeInode(i: Omit<InodeHeader, 'formatRaw'>): Buffer {
  const format = (i.extended ? 1 : 0) | (i.layout << 1);
  if (!i.extended) {
    const b = Buffer.alloc(EROFS_COMPACT_INODE_SIZE);
    b.writeUInt16LE(format, 0);
    b.writeUInt16LE(i.xattrIcount, 2);
    b.writeUInt16LE(i.mode, 4);
    b.writeUInt16LE(i.nlink, 6);
    b.writeUInt32LE(i.size, 8);
    b.writeUInt32LE(i.u >>> 0, 16);
    b.writeUInt32LE(i.ino >>> 0, 20);
    b.writeUInt16LE(i.uid, 24);
    b.writeUInt16LE(i.gid, 26);
    return b;
  }
  const b = Buffer.alloc(EROFS_EXTENDED_INODE_SIZE);
  b.writeUInt16LE(format, 0);
  b.writeUInt16LE(i.xattrIcount, 2);
  b.writeUInt16LE(i.mode, 4);
  writeU64(b, 8, i.size);
  b.writeUInt32LE(i.u >>> 0, 16);
  b.writeUInt32LE(i.ino >>> 0, 20);
  b.writeUInt32LE(i.uid >>> 0, 24);
  b.writeUInt32LE(i.gid >>> 0, 28);
  writeI64(b, 32, i.mtime);
  b.writeUInt32LE(i.mtimeNsec, 40);
  b.writeUInt32LE(i.nlink >>> 0, 44);
  return b;
}

/** xattr area byte size from i_xattr_icount */
export function xattrAreaSize(icount: number): number {
  return icount === 0 ? 0 : 12 + (icount - 1) * 4;
}

// ------------------------------------------------------------------- dirent (12 B)
export interface Dirent {
  nid: number;
  nameoff: number;
  fileType: number;
}
export function decodeDirent(b: Buffer, off: number): Dirent {
  return { nid: readU64(b, off), nameoff: b.readUInt16LE(off + 8), fileType: b.readUInt8(off + 10) };
}
export function encodeDirent(b: Buffer, off: number, d: Dirent): void {
  writeU64(b, off, d.nid);
  b.writeUInt16LE(d.nameoff, off + 8);
  b.writeUInt8(d.fileType, off + 10);
  b.writeUInt8(0, off + 11);
}
export { EROFS_DIRENT_SIZE };

// --------------------------------------------------------- inode chunk index (8 B, INDEXES format)
export interface ChunkIndex {
  /** ci index inside the blob (24 bits) */
  ciIndex: number;
  /** blob-table index (0-based); device id = blobIndex + 1 */
  blobIndex: number;
  blkaddr: number;
}
export function decodeChunkIndex(b: Buffer, off: number): { advise: number; deviceId: number; blkaddr: number } {
  return { advise: b.readUInt16LE(off), deviceId: b.readUInt16LE(off + 2), blkaddr: b.readUInt32LE(off + 4) };
}
export function chunkIndexFields(raw: { advise: number; deviceId: number; blkaddr: number }): ChunkIndex {
  const ciIndex = ((raw.deviceId >> 8) << 16) | raw.advise;
  return { ciIndex, blobIndex: (raw.deviceId & 0xff) - 1, blkaddr: raw.blkaddr };
}
export function encodeChunkIndex(b: Buffer, off: number, c: ChunkIndex): void {
  b.writeUInt16LE(c.ciIndex & 0xffff, off);
  b.writeUInt16LE((((c.ciIndex >> 16) & 0xff) << 8) | ((c.blobIndex + 1) & 0xff), off + 2);
  b.writeUInt32LE(c.blkaddr >>> 0, off + 4);
}

// --------------------------------------------------------- bootstrap chunk table entry (80 B)
export interface ChunkInfo {
  digest: Buffer;
  blobIndex: number;
  flags: number;
  compressedSize: number;
  uncompressedSize: number;
  compressedOffset: number;
  uncompressedOffset: number;
  fileOffset: number;
  index: number;
  crc32: number;
}
export function decodeChunkInfo(b: Buffer, off: number): ChunkInfo {
  return {
    digest: Buffer.from(b.subarray(off, off + 32)),
    blobIndex: b.readUInt32LE(off + 32),
    flags: b.readUInt32LE(off + 36),
    compressedSize: b.readUInt32LE(off + 40),
    uncompressedSize: b.readUInt32LE(off + 44),
    compressedOffset: readU64(b, off + 48),
    uncompressedOffset: readU64(b, off + 56),
    fileOffset: readU64(b, off + 64),
    index: b.readUInt32LE(off + 72),
    crc32: b.readUInt32LE(off + 76),
  };
}
export function encodeChunkInfo(c: ChunkInfo): Buffer {
  const b = Buffer.alloc(RAFS_CHUNK_INFO_SIZE);
  c.digest.copy(b, 0, 0, 32);
  b.writeUInt32LE(c.blobIndex, 32);
  b.writeUInt32LE(c.flags, 36);
  b.writeUInt32LE(c.compressedSize, 40);
  b.writeUInt32LE(c.uncompressedSize, 44);
  writeU64(b, 48, c.compressedOffset);
  writeU64(b, 56, c.uncompressedOffset);
  writeU64(b, 64, c.fileOffset);
  b.writeUInt32LE(c.index, 72);
  b.writeUInt32LE(c.crc32 >>> 0, 76);
  return b;
}

// --------------------------------------------------------- blob chunk-info (ci) entries
/** One chunk as described by a blob's ci array (what the daemon needs to fetch it). */
export interface BlobChunk {
  index: number;
  compressedOffset: number;
  compressedSize: number;
  uncompressedOffset: number;
  uncompressedSize: number;
  compressed: boolean;
  /** v2 only */
  flags?: number;
  data?: number;
}

export function encodeCiV1(b: Buffer, off: number, c: BlobChunk): void {
  const us = c.uncompressedSize - 1;
  const cs = c.compressedSize - 1;
  // uncomp_info: bits 12..43 offset (stored in place), 8..11 = us bits 20..23, 44..63 = us bits 0..19
  const uncomp = BigInt(c.uncompressedOffset) | (BigInt((us >>> 20) & 0xf) << 8n) | (BigInt(us & 0xfffff) << 44n);
  const comp = BigInt(c.compressedOffset) | (BigInt((cs >>> 20) & 0xf) << 40n) | (BigInt(cs & 0xfffff) << 44n);
  b.writeBigUInt64LE(uncomp, off);
  b.writeBigUInt64LE(comp, off + 8);
}

export function decodeCiV1(b: Buffer, off: number, index: number): BlobChunk {
  const uncomp = b.readBigUInt64LE(off);
  const comp = b.readBigUInt64LE(off + 8);
  const uncompressedOffset = Number(uncomp & 0xfff_ffff_f000n);
  const uncompressedSize = Number(((uncomp >> 8n) & 0xfn) << 20n | ((uncomp >> 44n) & 0xfffffn)) + 1;
  const compressedOffset = Number(comp & 0xff_ffff_ffffn);
  const compressedSize = Number(((comp >> 40n) & 0xfn) << 20n | ((comp >> 44n) & 0xfffffn)) + 1;
  return { index, compressedOffset, compressedSize, uncompressedOffset, uncompressedSize, compressed: compressedSize !== uncompressedSize };
}

export function decodeCiV2(b: Buffer, off: number, index: number): BlobChunk {
  const uncomp = b.readBigUInt64LE(off);
  const comp = b.readBigUInt64LE(off + 8);
  const data = b.readBigUInt64LE(off + 16);
  const flags = Number((uncomp >> 56n) & 0xffn);
  return {
    index,
    uncompressedOffset: Number(uncomp & 0xffff_ffffn) * 4096,
    uncompressedSize: Number((uncomp >> 32n) & 0xff_ffffn) + 1,
    compressedOffset: Number(comp & 0xff_ffff_ffffn),
    compressedSize: Number((comp >> 40n) & 0xff_ffffn),
    compressed: (flags & 0x1) !== 0,
    flags,
    data: Number(data),
  };
}

export function encodeCiV2(b: Buffer, off: number, c: BlobChunk): void {
  const flags = BigInt((c.flags ?? 0) | (c.compressed ? 1 : 0));
  const uncomp = BigInt(c.uncompressedOffset / 4096) | (BigInt(c.uncompressedSize - 1) << 32n) | (flags << 56n);
  const comp = BigInt(c.compressedOffset) | (BigInt(c.compressedSize) << 40n);
  b.writeBigUInt64LE(uncomp, off);
  b.writeBigUInt64LE(comp, off + 8);
  b.writeBigUInt64LE(BigInt(c.data ?? 0), off + 16);
}

// --------------------------------------------------------- CCT header (4096 B)
export interface CctHeader {
  magic: number;
  features: number;
  ciCompressor: number;
  ciEntries: number;
  ciOffset: number;
  ciCompressedSize: number;
  ciUncompressedSize: number;
  ciZranOffset: number;
  ciZranSize: number;
  ciZranCount: number;
  magic2: number;
}
export function decodeCctHeader(b: Buffer): CctHeader {
  return {
    magic: b.readUInt32LE(0),
    features: b.readUInt32LE(4),
    ciCompressor: b.readUInt32LE(8),
    ciEntries: b.readUInt32LE(12),
    ciOffset: readU64(b, 16),
    ciCompressedSize: readU64(b, 24),
    ciUncompressedSize: readU64(b, 32),
    ciZranOffset: readU64(b, 40),
    ciZranSize: readU64(b, 48),
    ciZranCount: b.readUInt32LE(56),
    magic2: b.readUInt32LE(BLOB_CCT_HEADER_SIZE - 4),
  };
}
export function encodeCctHeader(h: Omit<CctHeader, 'magic' | 'magic2'>): Buffer {
  const b = Buffer.alloc(BLOB_CCT_HEADER_SIZE);
  b.writeUInt32LE(BLOB_CCT_MAGIC, 0);
  b.writeUInt32LE(h.features >>> 0, 4);
  b.writeUInt32LE(h.ciCompressor, 8);
  b.writeUInt32LE(h.ciEntries, 12);
  writeU64(b, 16, h.ciOffset);
  writeU64(b, 24, h.ciCompressedSize);
  writeU64(b, 32, h.ciUncompressedSize);
  writeU64(b, 40, h.ciZranOffset);
  writeU64(b, 48, h.ciZranSize);
  b.writeUInt32LE(h.ciZranCount, 56);
  b.writeUInt32LE(BLOB_CCT_MAGIC, BLOB_CCT_HEADER_SIZE - 4);
  return b;
}

// --------------------------------------------------------- reverse-tar section header (512 B)
/** GNU-ish tar header as nydus writes after each blob section (tar-rs style checksum). */
export function encodeSectionTarHeader(name: string, size: number): Buffer {
  const b = Buffer.alloc(TAR_BLOCK);
  writeCString(b, 0, 100, name);
  // mode/uid/gid left as zero bytes (nydus quirk)
  b.write(size.toString(8).padStart(11, '0') + '\0', 124, 12, 'latin1');
  b.write('00000000000\0', 136, 12, 'latin1');
  b.write('0', 156, 1, 'latin1');
  b.write('ustar  \0', 257, 8, 'latin1');
  b.fill(0x20, 148, 156);
  let sum = 0;
  for (const x of b) sum += x;
  b.write(sum.toString(8).padStart(7, '0') + '\0', 148, 8, 'latin1');
  return b;
}
export function decodeSectionTarHeader(b: Buffer): { name: string; size: number } | undefined {
  if (b.length < TAR_BLOCK) return undefined;
  const magic = b.subarray(257, 263).toString('latin1');
  if (magic !== 'ustar ' && magic !== 'ustar\0') return undefined;
  const name = readCString(b, 0, 100);
  const sizeStr = readCString(b, 124, 12).trim();
  const size = parseInt(sizeStr || '0', 8);
  if (!Number.isFinite(size)) return undefined;
  return { name, size };
}

// --------------------------------------------------------- TOC entry (128 B)
export interface TocEntry {
  flags: number;
  name: string;
  digest: Buffer; // sha256 of uncompressed content
  compressedOffset: number;
  compressedSize: number;
  uncompressedSize: number;
}
export function encodeTocEntry(e: TocEntry): Buffer {
  const b = Buffer.alloc(BLOB_TOC_ENTRY_SIZE);
  b.writeUInt32LE(e.flags, 0);
  writeCString(b, 8, 16, e.name);
  e.digest.copy(b, 24, 0, 32);
  writeU64(b, 56, e.compressedOffset);
  writeU64(b, 64, e.compressedSize);
  writeU64(b, 72, e.uncompressedSize);
  return b;
}
export function decodeTocEntry(b: Buffer, off: number): TocEntry {
  return {
    flags: b.readUInt32LE(off),
    name: readCString(b, off + 8, 16),
    digest: Buffer.from(b.subarray(off + 24, off + 56)),
    compressedOffset: readU64(b, off + 56),
    compressedSize: readU64(b, off + 64),
    uncompressedSize: readU64(b, off + 72),
  };
}
