/**
 * Decodes and validates a RAFS v6 bootstrap (spec rafs-v6.md §1.15 and the loader rules of §1.2–1.6,
 * plus the EROFS directory rules of kernel.md §3.7). Pure: a Buffer in, a tree and tables out.
 * Every read is bounds-checked, so truncated or fuzzed input yields BadBootstrapError naming the
 * structure or inode path, never a crash or a hang.
 */
import {
  EROFS_BLOCK_SIZE as BLK, EROFS_SUPER_OFFSET, EROFS_SUPER_MAGIC, EROFS_FEATURE_COMPAT_RAFS_V6,
  RAFS_V6_INCOMPAT, RAFS_EXT_SUPER_OFFSET, RAFS_DEVICE_TABLE_OFFSET, RAFS_DEVICE_SLOT_SIZE,
  RAFS_BLOB_ENTRY_SIZE, RAFS_CHUNK_INFO_SIZE, RAFS_MAX_BLOBS, Layout, CHUNK_FORMAT_INDEXES,
  CHUNK_FORMAT_BLKBITS_MASK, XATTR_PREFIXES, EROFS_DIRENT_SIZE, S_IFMT, S_IFDIR, S_IFREG, S_IFLNK,
  S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK, fileTypeOfMode, BlobFeature, compressorFromSuperFlags,
  digesterFromSuperFlags, CompressorName, DigesterName, COMPRESSOR_BY_ID, DIGESTER_BY_ID,
  RAFS_CHUNK_INDEX_SIZE, alignUp, EROFS_NULL_ADDR, SuperFlags, MIN_CHUNK_SIZE, MAX_CHUNK_SIZE,
} from './constants';
import {
  decodeSuperBlock, decodeSuperBlockExt, decodeDeviceSlot, decodeBlobEntry, decodeInode,
  decodeDirent, decodeChunkIndex, chunkIndexFields, decodeChunkInfo, SuperBlock, SuperBlockExt,
  DeviceSlot, BlobEntry, ChunkInfo, InodeHeader, inodeSizeOf, xattrAreaSize,
} from './layout';
import { TreeNode, Inode, ChunkRef, newInode, decodeRdev } from '../tree/node';
import { BadBootstrapError } from '../errors';

/**
 * What a reader of blobs needs (the daemon): superblocks, device and blob tables, chunk table,
 * prefetch table. Decoding these costs O(chunks), not O(inodes): the daemon serves the bootstrap's
 * bytes as they are and the kernel walks the inodes itself.
 */
export interface RafsBootstrapTables {
  size: number;
  sb: SuperBlock;
  ext: SuperBlockExt;
  devices: DeviceSlot[];
  blobs: BlobEntry[];
  chunkSize: number;
  flags: number;
  compressor: CompressorName;
  digester: DigesterName;
  /** bootstrap chunk table (80-byte entries) in file order */
  chunkTable: ChunkInfo[];
  prefetchNids: number[];
}

export interface RafsBootstrap extends RafsBootstrapTables {
  root: TreeNode;
  rootNid: number;
  /** nid of each decoded inode */
  nidOf: Map<Inode, number>;
  /** decoded header of each inode */
  headerOf: Map<Inode, InodeHeader>;
  inodeCount: number;
}

export interface ReadOptions {
  /** name for error messages (the file path) */
  name?: string;
  /** verify directory ordering, '.'/'..', chunk-table consistency (check uses it; default true) */
  strict?: boolean;
}

class Cursor {
  constructor(readonly buf: Buffer, readonly name: string) {}
  slice(off: number, len: number, what: string): Buffer {
    if (!Number.isSafeInteger(off) || !Number.isSafeInteger(len) || off < 0 || len < 0 || off + len > this.buf.length) {
      throw new BadBootstrapError(`${this.name}: ${what} at offset ${off} (+${len}) lies outside the ${this.buf.length}-byte bootstrap`, { offset: off, length: len, what });
    }
    return this.buf.subarray(off, off + len);
  }
}

const PREFIX_BY_INDEX = new Map(XATTR_PREFIXES.map((p) => [p.index, p.prefix]));

/** Decode and validate the tables of a bootstrap, not its inodes (see RafsBootstrapTables). */
export function readBootstrapTables(buf: Buffer, opts: Pick<ReadOptions, 'name'> = {}): RafsBootstrapTables {
  const name = opts.name ?? 'bootstrap';
  const cur = new Cursor(buf, name);
  const fail = (msg: string, ctx: Record<string, unknown> = {}): never => {
    throw new BadBootstrapError(`${name}: ${msg}`, ctx);
  };

  // ---- superblock
  const sb = decodeSuperBlock(cur.slice(EROFS_SUPER_OFFSET, 128, 'EROFS superblock'));
  if (sb.magic !== EROFS_SUPER_MAGIC) {
    if (buf.length >= 4 && buf.readUInt32LE(0) === 0x53464152) fail('this is a RAFS v5 bootstrap; only RAFS v6 is supported');
    fail(`bad EROFS magic 0x${sb.magic.toString(16)} (expected 0xe0f5e1e2)`);
  }
  if (sb.checksum !== 0) fail(`superblock checksum field is 0x${sb.checksum.toString(16)}; RAFS v6 requires 0`);
  if (!(sb.featureCompat & EROFS_FEATURE_COMPAT_RAFS_V6)) fail(`feature_compat 0x${sb.featureCompat.toString(16)} lacks the RAFS v6 bit 0x40000000`);
  if (sb.blkszbits !== 12) fail(`block size bits ${sb.blkszbits} (RAFS v6 images use 12 = 4 KiB)`);
  if (sb.extslots !== 0) fail(`sb_extslots ${sb.extslots} must be 0`);
  if (sb.featureIncompat !== RAFS_V6_INCOMPAT) fail(`feature_incompat 0x${sb.featureIncompat.toString(16)} must be exactly 0xc (chunked files + device table)`);
  if (sb.u1 !== 0) fail('available_compr_algs must be 0');
  if (sb.xattrBlkaddr !== 0) fail('shared xattrs (xattr_blkaddr != 0) are not supported by RAFS v6');
  if (sb.devtSlotoff !== 11) fail(`devt_slotoff ${sb.devtSlotoff} must be 11`);
  if (sb.extraDevices > RAFS_MAX_BLOBS) fail(`${sb.extraDevices} extra devices exceed the limit of ${RAFS_MAX_BLOBS}`);
  if (buf.length % BLK !== 0) fail(`size ${buf.length} is not a multiple of 4096`);

  // ---- extension superblock
  const ext = decodeSuperBlockExt(cur.slice(RAFS_EXT_SUPER_OFFSET, 256, 'RAFS extension superblock'));
  const compressor = compressorFromSuperFlags(ext.flags) ?? fail(`flags 0x${ext.flags.toString(16)} must name exactly one compressor`);
  const digester = digesterFromSuperFlags(ext.flags) ?? fail(`flags 0x${ext.flags.toString(16)} must name exactly one digest algorithm`);
  if (ext.flags & SuperFlags.TARTFS_MODE) fail('tarfs-mode bootstraps are not supported');
  const chunkSize = ext.chunkSize;
  if (chunkSize < MIN_CHUNK_SIZE || chunkSize > MAX_CHUNK_SIZE || (chunkSize & (chunkSize - 1)) !== 0) fail(`chunk size 0x${chunkSize.toString(16)} is not a power of two in [4 KiB, 16 MiB]`);
  const nblobs = sb.extraDevices;
  if (ext.blobTableSize !== nblobs * RAFS_BLOB_ENTRY_SIZE) fail(`blob table size ${ext.blobTableSize} does not match ${nblobs} devices`);
  if (nblobs > 0) {
    if (ext.blobTableOffset % BLK !== 0 || ext.blobTableOffset < RAFS_DEVICE_TABLE_OFFSET + nblobs * RAFS_DEVICE_SLOT_SIZE) fail(`blob table offset ${ext.blobTableOffset} is not 4K aligned after the device table`);
  }
  if (ext.chunkTableSize % RAFS_CHUNK_INFO_SIZE !== 0) fail(`chunk table size ${ext.chunkTableSize} is not a multiple of 80`);
  if (ext.chunkTableSize > 0 && ext.chunkTableOffset % BLK !== 0) fail(`chunk table offset ${ext.chunkTableOffset} is not 4K aligned`);
  if (ext.prefetchTableSize % 4 !== 0) fail(`prefetch table size ${ext.prefetchTableSize} is not a multiple of 4`);

  // ---- device table and blob table
  const devices: DeviceSlot[] = [];
  const blobs: BlobEntry[] = [];
  const seenTags = new Set<string>();
  for (let i = 0; i < nblobs; i++) {
    const d = decodeDeviceSlot(cur.slice(RAFS_DEVICE_TABLE_OFFSET + i * RAFS_DEVICE_SLOT_SIZE, RAFS_DEVICE_SLOT_SIZE, `device slot ${i}`));
    if (d.tag.length !== 64) fail(`device ${i + 1}: tag "${d.tag}" must be a 64-character blob id`);
    if (seenTags.has(d.tag)) fail(`device ${i + 1}: duplicate tag ${d.tag}`);
    seenTags.add(d.tag);
    if (d.blocks === 0) fail(`device ${i + 1} (${d.tag}): zero blocks`);
    devices.push(d);
    const b = decodeBlobEntry(cur.slice(ext.blobTableOffset + i * RAFS_BLOB_ENTRY_SIZE, RAFS_BLOB_ENTRY_SIZE, `blob table entry ${i}`));
    const where = `blob ${i} (${b.blobId})`;
    if (b.blobId.length !== 64) fail(`${where}: blob id must be 64 characters`);
    if (b.blobIndex !== i) fail(`${where}: blob_index ${b.blobIndex} != position ${i}`);
    if (b.chunkSize !== chunkSize) fail(`${where}: chunk size 0x${b.chunkSize.toString(16)} != image chunk size 0x${chunkSize.toString(16)}`);
    if (b.chunkCount > 1 << 24) fail(`${where}: chunk count ${b.chunkCount} exceeds 2^24`);
    if (!COMPRESSOR_BY_ID[b.compressionAlgo]) fail(`${where}: unknown compression algorithm ${b.compressionAlgo}`);
    if (!DIGESTER_BY_ID[b.digestAlgo]) fail(`${where}: unknown digest algorithm ${b.digestAlgo}`);
    if (!COMPRESSOR_BY_ID[b.ciCompressor]) fail(`${where}: unknown ci compressor ${b.ciCompressor}`);
    if (!(b.features & BlobFeature.ALIGNED)) fail(`${where}: the ALIGNED feature is required for RAFS v6 blobs`);
    if (b.features & BlobFeature.V5_NO_EXT_BLOB_TABLE) fail(`${where}: feature bit 0x80000000 is internal and invalid on disk`);
    if ((b.features & 0xffff) & ~0x0fff) fail(`${where}: unknown incompatible features 0x${b.features.toString(16)}`);
    if (b.ciCompressedSize > b.ciUncompressedSize) fail(`${where}: compressed chunk-info size exceeds its uncompressed size`);
    const v2 = (b.features & BlobFeature.CHUNK_INFO_V2) !== 0;
    const extraCtx = b.features & (BlobFeature.BATCH | BlobFeature.ZRAN | BlobFeature.ENCRYPTED);
    if (!(b.features & BlobFeature.IS_CHUNKDICT_GENERATED)) {
      if (v2 && !extraCtx && b.ciUncompressedSize !== 24 * b.chunkCount) fail(`${where}: v2 chunk-info size ${b.ciUncompressedSize} != 24 x ${b.chunkCount}`);
      if (!v2 && b.ciUncompressedSize !== 16 * b.chunkCount) fail(`${where}: v1 chunk-info size ${b.ciUncompressedSize} != 16 x ${b.chunkCount}`);
    }
    if (b.uncompressedSize % BLK !== 0) fail(`${where}: uncompressed size ${b.uncompressedSize} is not 4K aligned`);
    if (b.uncompressedSize / BLK !== d.blocks) fail(`${where}: device blocks ${d.blocks} != uncompressed size / 4096`);
    if (d.tag !== b.blobId) fail(`${where}: device tag ${d.tag} differs from the blob id`);
    if (b.cipherAlgo > 1) fail(`${where}: unsupported cipher ${b.cipherAlgo}`);
    blobs.push(b);
  }

  // ---- chunk table
  const chunkTable: ChunkInfo[] = [];
  if (ext.chunkTableSize > 0) {
    const t = cur.slice(ext.chunkTableOffset, ext.chunkTableSize, 'chunk table');
    for (let off = 0; off < t.length; off += RAFS_CHUNK_INFO_SIZE) {
      const c = decodeChunkInfo(t, off);
      if (c.blobIndex >= nblobs) fail(`chunk table entry ${off / 80}: blob index ${c.blobIndex} out of range (${nblobs} blobs)`);
      chunkTable.push(c);
    }
  }

  // ---- prefetch table
  const prefetchNids: number[] = [];
  if (ext.prefetchTableSize > 0) {
    const t = cur.slice(ext.prefetchTableOffset, ext.prefetchTableSize, 'prefetch table');
    for (let off = 0; off < t.length; off += 4) {
      const nid = t.readUInt32LE(off);
      if (nid === 0) break;
      prefetchNids.push(nid);
    }
  }
  return { size: buf.length, sb, ext, devices, blobs, chunkSize, flags: ext.flags, compressor, digester, chunkTable, prefetchNids };
}

/** Decode and validate a whole bootstrap: its tables, then every inode reachable from the root. */
export function readBootstrap(buf: Buffer, opts: ReadOptions = {}): RafsBootstrap {
  const name = opts.name ?? 'bootstrap';
  const strict = opts.strict ?? true;
  const cur = new Cursor(buf, name);
  const fail = (msg: string, ctx: Record<string, unknown> = {}): never => {
    throw new BadBootstrapError(`${name}: ${msg}`, ctx);
  };
  const tables = readBootstrapTables(buf, { name });
  const { sb, blobs, chunkSize, chunkTable } = tables;
  const nblobs = blobs.length;
  const chunkByAddr = new Map<string, ChunkInfo>();
  for (const c of chunkTable) chunkByAddr.set(`${c.blobIndex}:${c.index}:${c.uncompressedOffset / BLK}`, c);

  // ---- inodes
  const metaAddr = sb.metaBlkaddr * BLK;
  const inodeCache = new Map<number, { inode: Inode; header: InodeHeader; dir?: TreeNode }>();
  const nidOf = new Map<Inode, number>();
  const headerOf = new Map<Inode, InodeHeader>();
  const maxInodes = Math.floor(buf.length / 32) + 1;

  const readHeader = (nid: number, path: string): { h: InodeHeader; off: number; xattrOff: number; xattrSize: number } => {
    const off = metaAddr + nid * 32;
    const first = cur.slice(off, 32, `inode ${nid} of ${path}`);
    const ext64 = (first.readUInt16LE(0) & 1) === 1;
    const raw = cur.slice(off, inodeSizeOf(ext64), `inode ${nid} of ${path}`);
    const h = decodeInode(raw, sb.buildTime, sb.buildTimeNsec);
    if (h.formatRaw & 0xfff0) fail(`${path}: i_format 0x${h.formatRaw.toString(16)} has unknown bits`, { nid });
    if (h.layout !== Layout.FLAT_PLAIN && h.layout !== Layout.FLAT_INLINE && h.layout !== Layout.CHUNK_BASED) fail(`${path}: data layout ${h.layout} is not used by RAFS v6`, { nid });
    if (h.xattrIcount === 1) fail(`${path}: xattr icount 1 (header only) is invalid`, { nid });
    return { h, off, xattrOff: off + raw.length, xattrSize: xattrAreaSize(h.xattrIcount) };
  };

  const readXattrs = (at: number, size: number, path: string): Map<string, Buffer> => {
    const m = new Map<string, Buffer>();
    if (size === 0) return m;
    const area = cur.slice(at, size, `xattrs of ${path}`);
    if (area.readUInt8(4) !== 0) fail(`${path}: shared xattrs are not supported`);
    let p = 12;
    while (p < size) {
      if (p + 4 > size) fail(`${path}: xattr entry header runs past the xattr area`);
      const nameLen = area.readUInt8(p);
      const idx = area.readUInt8(p + 1);
      const valueSize = area.readUInt16LE(p + 2);
      const entryLen = alignUp(4 + nameLen + valueSize, 4);
      if (p + 4 + nameLen + valueSize > size) fail(`${path}: xattr entry runs past the xattr area`);
      const prefix = PREFIX_BY_INDEX.get(idx);
      if (prefix === undefined) fail(`${path}: unknown xattr name index ${idx}`);
      const suffix = area.subarray(p + 4, p + 4 + nameLen).toString('latin1');
      m.set(prefix + suffix, Buffer.from(area.subarray(p + 4 + nameLen, p + 4 + nameLen + valueSize)));
      p += entryLen;
    }
    return m;
  };

  /** Read a FLAT_PLAIN / FLAT_INLINE payload (directory blocks or symlink target). */
  const readFlatData = (h: InodeHeader, tailAt: number, path: string): Buffer => {
    const size = h.size;
    if (size > 1 << 30) fail(`${path}: data size ${size} is implausible`);
    if (h.layout === Layout.CHUNK_BASED) fail(`${path}: directories and symlinks cannot be chunk-based`);
    const nblocks = Math.ceil(size / BLK);
    if (h.layout === Layout.FLAT_PLAIN) {
      if (size === 0) return Buffer.alloc(0);
      return Buffer.from(cur.slice(h.u * BLK, size, `data blocks of ${path}`));
    }
    const fullBytes = (nblocks - 1) * BLK;
    const tail = size - fullBytes;
    if ((tailAt % BLK) + tail > BLK) fail(`${path}: inline data crosses a block boundary`);
    const parts: Buffer[] = [];
    if (fullBytes > 0) parts.push(cur.slice(h.u * BLK, fullBytes, `data blocks of ${path}`));
    parts.push(cur.slice(tailAt, tail, `inline tail of ${path}`));
    return Buffer.concat(parts);
  };

  const parseDirents = (data: Buffer, path: string): { name: Buffer; nid: number; fileType: number }[] => {
    const out: { name: Buffer; nid: number; fileType: number }[] = [];
    for (let bstart = 0; bstart < data.length; bstart += BLK) {
      const maxsize = Math.min(BLK, data.length - bstart);
      const blk = data.subarray(bstart, bstart + maxsize);
      if (maxsize < EROFS_DIRENT_SIZE) fail(`${path}: directory block at ${bstart} is too short`);
      const nameoff0 = blk.readUInt16LE(8);
      if (nameoff0 < EROFS_DIRENT_SIZE || nameoff0 >= maxsize || nameoff0 % EROFS_DIRENT_SIZE !== 0) fail(`${path}: bad first nameoff ${nameoff0} in directory block ${bstart / BLK}`);
      const n = nameoff0 / EROFS_DIRENT_SIZE;
      let prevEnd = nameoff0;
      for (let k = 0; k < n; k++) {
        const d = decodeDirent(blk, k * EROFS_DIRENT_SIZE);
        if (d.nameoff !== prevEnd) fail(`${path}: dirent ${k} of block ${bstart / BLK} has nameoff ${d.nameoff}, expected ${prevEnd}`);
        let end: number;
        if (k + 1 < n) end = blk.readUInt16LE((k + 1) * EROFS_DIRENT_SIZE + 8);
        else {
          const nul = blk.indexOf(0, d.nameoff);
          end = nul < 0 ? maxsize : nul;
        }
        if (end <= d.nameoff || end > maxsize || end - d.nameoff > 255) fail(`${path}: dirent ${k} of block ${bstart / BLK} has a bad name length`);
        if (d.fileType > 7) fail(`${path}: dirent file type ${d.fileType} is invalid`);
        const nm = Buffer.from(blk.subarray(d.nameoff, end));
        if (nm.includes(0x2f)) fail(`${path}: entry name "${nm.toString('latin1')}" contains '/'`);
        out.push({ name: nm, nid: d.nid, fileType: d.fileType });
        prevEnd = end;
      }
    }
    return out;
  };

  let visited = 0;
  const dirStack = new Set<number>();
  const loadInode = (nid: number, path: string, parentNid: number): { inode: Inode; header: InodeHeader; dirNode?: TreeNode } => {
    const cached = inodeCache.get(nid);
    if (cached) {
      if ((cached.header.mode & S_IFMT) === S_IFDIR) fail(`${path}: directory nid ${nid} is referenced twice (hardlinked directory or loop)`);
      return { inode: cached.inode, header: cached.header };
    }
    if (++visited > maxInodes) fail('more inodes than the bootstrap can hold (loop?)');
    const { h, xattrOff, xattrSize } = readHeader(nid, path);
    const xattrs = readXattrs(xattrOff, xattrSize, path);
    const inode = newInode(h.mode, { uid: h.uid, gid: h.gid, mtime: h.mtime, mtimeNsec: h.mtimeNsec, xattrs });
    const type = h.mode & S_IFMT;
    const tailAt = xattrOff + xattrSize;
    inodeCache.set(nid, { inode, header: h });
    nidOf.set(inode, nid);
    headerOf.set(inode, h);
    let dirNode: TreeNode | undefined;
    switch (type) {
      case S_IFDIR: {
        if (dirStack.has(nid)) fail(`${path}: directory loop at nid ${nid}`);
        dirStack.add(nid);
        const data = readFlatData(h, tailAt, path);
        const ents = parseDirents(data, path);
        dirNode = { name: Buffer.alloc(0), inode, children: new Map() };
        inodeCache.get(nid)!.dir = dirNode;
        let dot = 0;
        let dotdot = 0;
        for (let k = 0; k < ents.length; k++) {
          const e = ents[k];
          if (strict && k > 0 && Buffer.compare(ents[k - 1].name, e.name) >= 0) fail(`${path}: directory entries are not strictly sorted ("${ents[k - 1].name.toString('latin1')}" before "${e.name.toString('latin1')}")`);
          const nm = e.name.toString('latin1');
          if (nm === '.') {
            dot++;
            if (strict && e.nid !== nid) fail(`${path}: '.' points to nid ${e.nid}, not itself (${nid})`);
            continue;
          }
          if (nm === '..') {
            dotdot++;
            if (strict && e.nid !== parentNid) fail(`${path}: '..' points to nid ${e.nid}, not the parent (${parentNid})`);
            continue;
          }
          const childPath = (path === '/' ? '/' : path + '/') + nm;
          const child = loadInode(e.nid, childPath, nid);
          if (strict && fileTypeOfMode(child.header.mode) !== e.fileType) fail(`${childPath}: dirent type ${e.fileType} does not match the inode mode 0${child.header.mode.toString(8)}`);
          const node: TreeNode = child.dirNode
            ? { ...child.dirNode, name: e.name }
            : { name: e.name, inode: child.inode };
          if (child.dirNode) child.dirNode.name = e.name;
          dirNode.children!.set(nm, child.dirNode ?? node);
        }
        if (strict && (dot !== 1 || dotdot !== 1)) fail(`${path}: directory needs exactly one '.' and one '..' (found ${dot} and ${dotdot})`);
        dirStack.delete(nid);
        break;
      }
      case S_IFLNK: {
        const data = readFlatData(h, tailAt, path);
        if (data.length === 0) fail(`${path}: empty symlink target`);
        inode.symlink = data;
        inode.size = data.length;
        break;
      }
      case S_IFREG: {
        inode.size = h.size;
        if (h.layout !== Layout.CHUNK_BASED) {
          if (h.size === 0) break; // tolerate plain empty files
          fail(`${path}: regular file with layout ${h.layout}; RAFS v6 files are chunk-based`);
        }
        const fmt = h.u & 0xffff;
        if (!(fmt & CHUNK_FORMAT_INDEXES) || (fmt & ~(CHUNK_FORMAT_INDEXES | CHUNK_FORMAT_BLKBITS_MASK))) fail(`${path}: chunk format 0x${fmt.toString(16)} is not the 8-byte index format`);
        const n = Math.ceil(h.size / chunkSize);
        if (n > buf.length / 8) fail(`${path}: ${n} chunks cannot fit in the bootstrap`);
        let at = alignUp(tailAt - metaAddr, RAFS_CHUNK_INDEX_SIZE) + metaAddr;
        const idx = cur.slice(at, n * RAFS_CHUNK_INDEX_SIZE, `chunk indexes of ${path}`);
        for (let k = 0; k < n; k++) {
          const raw = decodeChunkIndex(idx, k * 8);
          const f = chunkIndexFields(raw);
          const fileOffset = k * chunkSize;
          const usize = Math.min(chunkSize, h.size - fileOffset);
          if (raw.blkaddr === EROFS_NULL_ADDR) fail(`${path}: chunk ${k} is a hole (EROFS_NULL_ADDR), which RAFS v6 never writes`);
          if (f.blobIndex < 0 || f.blobIndex >= nblobs) fail(`${path}: chunk ${k} refers to device ${f.blobIndex + 1}, but the image has ${nblobs} blobs`, { chunk: k });
          const blob = blobs[f.blobIndex];
          if (f.ciIndex >= blob.chunkCount) fail(`${path}: chunk ${k} has ci index ${f.ciIndex} >= chunk count ${blob.chunkCount} of blob ${blob.blobId}`, { chunk: k });
          if ((raw.blkaddr + Math.ceil(usize / BLK)) * BLK > blob.uncompressedSize) fail(`${path}: chunk ${k} (block ${raw.blkaddr}) lies beyond the end of blob ${blob.blobId}`, { chunk: k });
          const info = chunkByAddr.get(`${f.blobIndex}:${f.ciIndex}:${raw.blkaddr}`);
          if (strict && !info && chunkTable.length > 0) fail(`${path}: chunk ${k} (blob ${f.blobIndex}, ci ${f.ciIndex}, block ${raw.blkaddr}) has no entry in the chunk table`, { chunk: k });
          if (info && info.uncompressedSize !== usize) fail(`${path}: chunk ${k} size ${info.uncompressedSize} != expected ${usize}`, { chunk: k });
          const ref: ChunkRef = {
            blobIndex: f.blobIndex,
            ciIndex: f.ciIndex,
            digest: info ? info.digest : Buffer.alloc(32),
            compressedOffset: info?.compressedOffset ?? 0,
            compressedSize: info?.compressedSize ?? 0,
            uncompressedOffset: raw.blkaddr * BLK,
            uncompressedSize: usize,
            compressed: info ? (info.flags & 1) !== 0 : false,
            fileOffset,
          };
          inode.chunks.push(ref);
        }
        at += n * 8;
        break;
      }
      case S_IFCHR:
      case S_IFBLK: {
        const d = decodeRdev(h.u);
        inode.rdevMajor = d.major;
        inode.rdevMinor = d.minor;
        break;
      }
      case S_IFIFO:
      case S_IFSOCK:
        break;
      default:
        fail(`${path}: bogus file mode 0${h.mode.toString(8)}`, { nid });
    }
    return { inode, header: h, dirNode };
  };

  const rootNid = sb.rootNid;
  const rootLoaded = loadInode(rootNid, '/', rootNid);
  if (!rootLoaded.dirNode) fail(`root inode (nid ${rootNid}) is not a directory`);
  const root = rootLoaded.dirNode!;
  root.name = Buffer.from('/');

  return { ...tables, root, rootNid, nidOf, headerOf, inodeCount: inodeCache.size };
}
