/**
 * Reads the chunk-info (ci) array of a data blob through any random-access source (local file,
 * HTTP range reads): `ci_offset` + `ci_compressed_size` bytes, then the 4 KiB CCT header, all
 * cross-checked against the bootstrap's blob-table entry (spec rafs-v6.md §2.3–2.5).
 */
import {
  BlobFeature, BLOB_CCT_MAGIC, BLOB_CCT_HEADER_SIZE, BLOB_CI_V1_SIZE, BLOB_CI_V2_SIZE,
  COMPRESSOR_BY_ID, TAR_BLOCK, BLOB_TOC_ENTRY_SIZE, EROFS_BLOCK_SIZE,
} from '../format/constants';
import { BlobChunk, BlobEntry, decodeCctHeader, decodeCiV1, decodeCiV2, decodeSectionTarHeader, decodeTocEntry, TocEntry } from '../format/layout';
import { decompress } from '../codec/compress';
import { BadBlobError } from '../errors';

/** A random-access byte source: returns exactly `length` bytes at `offset` or throws. */
export type ReadAt = (offset: number, length: number) => Promise<Buffer>;

export interface BlobMeta {
  entry: BlobEntry;
  chunks: BlobChunk[];
}

export async function readBlobMeta(entry: BlobEntry, readAt: ReadAt): Promise<BlobMeta> {
  const id = entry.blobId;
  if (entry.features & (BlobFeature.ZRAN | BlobFeature.BATCH | BlobFeature.ENCRYPTED | BlobFeature.SEPARATE)) {
    throw new BadBlobError(`blob ${id}: features 0x${entry.features.toString(16)} (zran/batch/encrypted/separate) are not supported yet`, { blobId: id });
  }
  const raw = await readAt(entry.ciOffset, entry.ciCompressedSize + BLOB_CCT_HEADER_SIZE);
  const header = decodeCctHeader(raw.subarray(entry.ciCompressedSize));
  if (header.magic !== BLOB_CCT_MAGIC || header.magic2 !== BLOB_CCT_MAGIC) throw new BadBlobError(`blob ${id}: no chunk-info header at offset ${entry.ciOffset + entry.ciCompressedSize}`, { blobId: id });
  if (header.ciEntries !== entry.chunkCount || header.ciOffset !== entry.ciOffset ||
      header.ciCompressedSize !== entry.ciCompressedSize || header.ciUncompressedSize !== entry.ciUncompressedSize ||
      header.ciCompressor !== entry.ciCompressor) {
    throw new BadBlobError(`blob ${id}: chunk-info header disagrees with the bootstrap's blob table`, { blobId: id, header });
  }
  const algo = COMPRESSOR_BY_ID[entry.ciCompressor];
  if (!algo) throw new BadBlobError(`blob ${id}: unknown ci compressor ${entry.ciCompressor}`);
  const ciData = algo === 'none' ? raw.subarray(0, entry.ciCompressedSize) : decompress(algo, raw.subarray(0, entry.ciCompressedSize), entry.ciUncompressedSize);
  const v2 = (entry.features & BlobFeature.CHUNK_INFO_V2) !== 0;
  const size = v2 ? BLOB_CI_V2_SIZE : BLOB_CI_V1_SIZE;
  if (ciData.length < entry.chunkCount * size) throw new BadBlobError(`blob ${id}: chunk-info array too short`);
  const chunks: BlobChunk[] = [];
  let prevEnd = 0;
  for (let i = 0; i < entry.chunkCount; i++) {
    const c = v2 ? decodeCiV2(ciData, i * size, i) : decodeCiV1(ciData, i * size, i);
    if (c.uncompressedOffset % EROFS_BLOCK_SIZE !== 0) throw new BadBlobError(`blob ${id}: chunk ${i} uncompressed offset ${c.uncompressedOffset} is not 4K aligned`);
    if (c.uncompressedOffset < prevEnd) throw new BadBlobError(`blob ${id}: chunk ${i} overlaps the previous chunk`);
    if (c.uncompressedOffset + c.uncompressedSize > entry.uncompressedSize) throw new BadBlobError(`blob ${id}: chunk ${i} ends beyond the uncompressed size`);
    if (c.compressedOffset + c.compressedSize > entry.compressedSize) throw new BadBlobError(`blob ${id}: chunk ${i} compressed range ends beyond the blob (${entry.compressedSize} bytes)`);
    if (c.uncompressedSize > entry.chunkSize) throw new BadBlobError(`blob ${id}: chunk ${i} is larger than the chunk size`);
    prevEnd = c.uncompressedOffset + c.uncompressedSize;
    chunks.push(c);
  }
  return { entry, chunks };
}

/** Find the chunk containing uncompressed byte `off` (binary search over ascending offsets). */
export function findChunk(chunks: BlobChunk[], off: number): number {
  let lo = 0;
  let hi = chunks.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const c = chunks[mid];
    if (off < c.uncompressedOffset) hi = mid - 1;
    else if (off >= c.uncompressedOffset + Math.max(c.uncompressedSize, 1)) lo = mid + 1;
    else return mid;
  }
  // Offsets in the 4K padding after a chunk belong to that chunk.
  return hi >= 0 && off < chunks[hi].uncompressedOffset + Math.ceil(chunks[hi].uncompressedSize / EROFS_BLOCK_SIZE) * EROFS_BLOCK_SIZE ? hi : -1;
}

/** Walk the reverse-tar sections from the end of a blob with HAS_TOC and return its TOC. */
export async function readBlobToc(entry: BlobEntry, readAt: ReadAt): Promise<TocEntry[]> {
  const id = entry.blobId;
  if (!(entry.features & BlobFeature.HAS_TOC) || entry.blobTocSize < TAR_BLOCK) return [];
  const tocBytes = await readAt(entry.compressedSize - entry.blobTocSize, entry.blobTocSize);
  const hdr = decodeSectionTarHeader(tocBytes.subarray(tocBytes.length - TAR_BLOCK));
  if (!hdr || hdr.name !== 'rafs.blob.toc' || hdr.size !== tocBytes.length - TAR_BLOCK || hdr.size % BLOB_TOC_ENTRY_SIZE !== 0) {
    throw new BadBlobError(`blob ${id}: TOC tar header missing or inconsistent`, { blobId: id });
  }
  const out: TocEntry[] = [];
  for (let off = 0; off < hdr.size; off += BLOB_TOC_ENTRY_SIZE) out.push(decodeTocEntry(tocBytes, off));
  return out;
}
