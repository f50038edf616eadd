/**
 * Numbers of the RAFS v6 / EROFS on-disk format (see ../shared/spec/rafs-v6.md §1–2 and
 * kernel.md §3). Pure data: no I/O anywhere under src/format.
 */
export const EROFS_SUPER_OFFSET = 1024;
export const EROFS_SUPER_MAGIC = 0xe0f5e1e2;
export const EROFS_BLKSZBITS = 12;
export const EROFS_BLOCK_SIZE = 1 << EROFS_BLKSZBITS;
export const EROFS_SLOT_SIZE = 32; // inode slot; nid = offset / 32
export const EROFS_COMPACT_INODE_SIZE = 32;
export const EROFS_EXTENDED_INODE_SIZE = 64;
export const EROFS_DIRENT_SIZE = 12;
export const EROFS_XATTR_HEADER_SIZE = 12;
export const EROFS_NAME_LEN = 255;
export const EROFS_NULL_ADDR = 0xffffffff;

export const EROFS_FEATURE_COMPAT_RAFS_V6 = 0x4000_0000;
export const EROFS_FEATURE_INCOMPAT_CHUNKED_FILE = 0x4;
export const EROFS_FEATURE_INCOMPAT_DEVICE_TABLE = 0x8;
export const RAFS_V6_INCOMPAT = EROFS_FEATURE_INCOMPAT_CHUNKED_FILE | EROFS_FEATURE_INCOMPAT_DEVICE_TABLE;

export const RAFS_EXT_SUPER_OFFSET = 1152;
export const RAFS_EXT_SUPER_SIZE = 256;
export const RAFS_DEVT_SLOTOFF = 11; // device table at 11 * 128 = 1408
export const RAFS_DEVICE_SLOT_SIZE = 128;
export const RAFS_DEVICE_TABLE_OFFSET = RAFS_DEVT_SLOTOFF * RAFS_DEVICE_SLOT_SIZE;
export const RAFS_BLOB_ENTRY_SIZE = 256;
export const RAFS_CHUNK_INFO_SIZE = 80; // bootstrap chunk table entry (RafsV5ChunkInfo)
export const RAFS_CHUNK_INDEX_SIZE = 8; // inode chunk index (erofs_inode_chunk_index)
export const RAFS_MAX_BLOBS = 254;
export const RAFS_MAX_CHUNKS_PER_BLOB = 1 << 24;
export const RAFS_MAX_METADATA_SIZE = 0x8000_0000;
export const RAFS_BLOB_ID_LEN = 64;

export const DEFAULT_CHUNK_SIZE = 0x100000;
export const MIN_CHUNK_SIZE = 0x1000;
export const MAX_CHUNK_SIZE = 0x1000000;

/** i_format data layouts */
export const Layout = {
  FLAT_PLAIN: 0,
  COMPRESSED_FULL: 1,
  FLAT_INLINE: 2,
  COMPRESSED_COMPACT: 3,
  CHUNK_BASED: 4,
} as const;

export const CHUNK_FORMAT_INDEXES = 0x20;
export const CHUNK_FORMAT_BLKBITS_MASK = 0x1f;

/** dirent file types */
export const FileType = {
  UNKNOWN: 0,
  REG: 1,
  DIR: 2,
  CHR: 3,
  BLK: 4,
  FIFO: 5,
  SOCK: 6,
  SYMLINK: 7,
} as const;

export const S_IFMT = 0o170000;
export const S_IFSOCK = 0o140000;
export const S_IFLNK = 0o120000;
export const S_IFREG = 0o100000;
export const S_IFBLK = 0o060000;
export const S_IFDIR = 0o040000;
export const S_IFCHR = 0o020000;
export const S_IFIFO = 0o010000;

export function fileTypeOfMode(mode: number): number {
  switch (mode & S_IFMT) {
    case S_IFREG: return FileType.REG;
    case S_IFDIR: return FileType.DIR;
    case S_IFCHR: return FileType.CHR;
    case S_IFBLK: return FileType.BLK;
    case S_IFIFO: return FileType.FIFO;
    case S_IFSOCK: return FileType.SOCK;
    case S_IFLNK: return FileType.SYMLINK;
    default: return FileType.UNKNOWN;
  }
}

/** RafsSuperFlags (extension superblock s_flags) */
export const SuperFlags = {
  COMPRESSION_NONE: 0x1,
  COMPRESSION_LZ4: 0x2,
  HASH_BLAKE3: 0x4,
  HASH_SHA256: 0x8,
  EXPLICIT_UID_GID: 0x10,
  HAS_XATTR: 0x20,
  COMPRESSION_GZIP: 0x40,
  COMPRESSION_ZSTD: 0x80,
  INLINED_CHUNK_DIGEST: 0x100,
  TARTFS_MODE: 0x200,
  ENCRYPTION_NONE: 0x0100_0000,
  ENCRYPTION_ASE_128_XTS: 0x0200_0000,
} as const;

/** BlobFeatures (blob table / CCT header) */
export const BlobFeature = {
  ALIGNED: 0x1,
  INLINED_FS_META: 0x2,
  CHUNK_INFO_V2: 0x4,
  ZRAN: 0x8,
  SEPARATE: 0x10,
  INLINED_CHUNK_DIGEST: 0x20,
  TARFS: 0x40,
  BATCH: 0x80,
  ENCRYPTED: 0x100,
  IS_CHUNKDICT_GENERATED: 0x200,
  IS_SEPARATED_WITH_PREFETCH_FILES: 0x400,
  EXTERNAL: 0x800,
  HAS_TAR_HEADER: 0x1000_0000,
  HAS_TOC: 0x2000_0000,
  CAP_TAR_TOC: 0x4000_0000,
  V5_NO_EXT_BLOB_TABLE: 0x8000_0000,
} as const;

/** Bootstrap chunk-table (80 B) flags */
export const ChunkFlag = {
  COMPRESSED: 0x1,
  HOLE: 0x2,
  ENCRYPTED: 0x4,
  BATCH: 0x8,
  HAS_CRC32: 0x10,
} as const;

export type CompressorName = 'none' | 'lz4_block' | 'gzip' | 'zstd';
export type DigesterName = 'blake3' | 'sha256';

/** compression_algo numbers in the blob table / CCT header */
export const COMPRESSOR_IDS: Record<CompressorName, number> = { none: 0, lz4_block: 1, gzip: 2, zstd: 3 };
export const COMPRESSOR_BY_ID: CompressorName[] = ['none', 'lz4_block', 'gzip', 'zstd'];
export const DIGESTER_IDS: Record<DigesterName, number> = { blake3: 0, sha256: 1 };
export const DIGESTER_BY_ID: DigesterName[] = ['blake3', 'sha256'];

export function compressorSuperFlag(c: CompressorName): number {
  switch (c) {
    case 'none': return SuperFlags.COMPRESSION_NONE;
    case 'lz4_block': return SuperFlags.COMPRESSION_LZ4;
    case 'gzip': return SuperFlags.COMPRESSION_GZIP;
    case 'zstd': return SuperFlags.COMPRESSION_ZSTD;
  }
}

export function compressorFromSuperFlags(flags: number): CompressorName | undefined {
  const found: CompressorName[] = [];
  if (flags & SuperFlags.COMPRESSION_NONE) found.push('none');
  if (flags & SuperFlags.COMPRESSION_LZ4) found.push('lz4_block');
  if (flags & SuperFlags.COMPRESSION_GZIP) found.push('gzip');
  if (flags & SuperFlags.COMPRESSION_ZSTD) found.push('zstd');
  return found.length === 1 ? found[0] : undefined;
}

export function digesterFromSuperFlags(flags: number): DigesterName | undefined {
  const b = (flags & SuperFlags.HASH_BLAKE3) !== 0;
  const s = (flags & SuperFlags.HASH_SHA256) !== 0;
  if (b === s) return undefined;
  return b ? 'blake3' : 'sha256';
}

/** xattr short-prefix table, first match wins (nydus/EROFS order). */
export const XATTR_PREFIXES: { index: number; prefix: string; whole: boolean }[] = [
  { index: 1, prefix: 'user.', whole: false },
  { index: 2, prefix: 'system.posix_acl_access', whole: true },
  { index: 3, prefix: 'system.posix_acl_default', whole: true },
  { index: 4, prefix: 'trusted.', whole: false },
  { index: 6, prefix: 'security.', whole: false },
];

export const BLOB_CCT_MAGIC = 0xb10bb10b;
export const BLOB_CCT_HEADER_SIZE = 4096;
export const BLOB_CI_V1_SIZE = 16;
export const BLOB_CI_V2_SIZE = 24;
export const BLOB_TOC_ENTRY_SIZE = 128;
export const TAR_BLOCK = 512;

export const TOC_NAMES = {
  blob: 'image.blob',
  meta: 'blob.meta',
  metaHeader: 'blob.meta.header',
  digest: 'blob.digest',
  boot: 'image.boot',
  toc: 'rafs.blob.toc',
} as const;

/** TOC entry compression flags */
export const TocFlag = { NONE: 0x1, ZSTD: 0x2, LZ4_BLOCK: 0x4 } as const;

export function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}
export function alignDown(n: number, a: number): number {
  return Math.floor(n / a) * a;
}
export function isPowerOfTwo(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0 || (n > 0x40000000 && Number.isInteger(Math.log2(n)));
}
