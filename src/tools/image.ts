/**
 * Opening an image for the tools: a bootstrap file, or a data blob whose bootstrap is inlined
 * (`image.boot` section found through the blob's TOC). Blob files are resolved in a blob
 * directory; a blob with an inlined bootstrap serves as its own data blob.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readBootstrap, RafsBootstrap } from '../format/bootstrap-reader';
import { EROFS_SUPER_OFFSET, EROFS_SUPER_MAGIC, TAR_BLOCK, BLOB_TOC_ENTRY_SIZE, TocFlag } from '../format/constants';
import { decodeSectionTarHeader, decodeTocEntry, TocEntry } from '../format/layout';
import { decompress } from '../codec/compress';
import { sha256Hex } from '../codec/digest';
import { NydusError, BadBlobError } from '../errors';

export interface OpenedImage {
  source: string;
  boot: RafsBootstrap;
  bootstrapBytes: Buffer;
  /** set when the bootstrap came out of a blob with inlined meta */
  inlinedIn?: string;
  blobFile(blobId: string): string | undefined;
}

/** Read a blob's TOC from its tail (reverse tar), or undefined if it has none. */
export function readTocFromFile(data: Buffer): TocEntry[] | undefined {
  if (data.length < TAR_BLOCK) return undefined;
  const hdr = decodeSectionTarHeader(data.subarray(data.length - TAR_BLOCK));
  if (!hdr || hdr.name !== 'rafs.blob.toc' || hdr.size % BLOB_TOC_ENTRY_SIZE !== 0 || hdr.size + TAR_BLOCK > data.length) return undefined;
  const start = data.length - TAR_BLOCK - hdr.size;
  const out: TocEntry[] = [];
  for (let off = 0; off < hdr.size; off += BLOB_TOC_ENTRY_SIZE) out.push(decodeTocEntry(data, start + off));
  return out;
}

export function extractInlinedBootstrap(data: Buffer, name: string): Buffer | undefined {
  const toc = readTocFromFile(data);
  const e = toc?.find((t) => t.name === 'image.boot');
  if (!e) return undefined;
  if (e.compressedOffset + e.compressedSize > data.length) throw new BadBlobError(`${name}: image.boot section lies beyond the file`);
  const raw = data.subarray(e.compressedOffset, e.compressedOffset + e.compressedSize);
  const boot = e.flags & TocFlag.ZSTD ? decompress('zstd', raw, e.uncompressedSize) : e.flags & TocFlag.LZ4_BLOCK ? decompress('lz4_block', raw, e.uncompressedSize) : Buffer.from(raw);
  if (sha256Hex(boot) !== e.digest.toString('hex')) throw new BadBlobError(`${name}: inlined bootstrap digest does not match its TOC entry`);
  return boot;
}

export function openImage(file: string, blobDir?: string): OpenedImage {
  let data: Buffer;
  try {
    data = fs.readFileSync(file);
  } catch (e) {
    throw new NydusError('ERR_INVALID_ARGUMENT', `${file}: ${(e as Error).message}`, { path: file });
  }
  let bootBytes = data;
  let inlinedIn: string | undefined;
  const isErofs = data.length >= EROFS_SUPER_OFFSET + 4 && data.readUInt32LE(EROFS_SUPER_OFFSET) === EROFS_SUPER_MAGIC;
  if (!isErofs) {
    const inner = extractInlinedBootstrap(data, file);
    if (inner) {
      bootBytes = inner;
      inlinedIn = file;
    }
  }
  const boot = readBootstrap(bootBytes, { name: inlinedIn ? `${file} (inlined bootstrap)` : file });
  if (inlinedIn) {
    // The inlined bootstrap names its own blob with a placeholder or an old id: the file is it.
    const own = path.basename(file);
    if (boot.blobs.length === 1) {
      boot.blobs[0].blobId = own;
      boot.devices[0].tag = own;
    }
  }
  const dir = blobDir ?? (inlinedIn ? path.dirname(file) : undefined);
  return {
    source: file,
    boot,
    bootstrapBytes: bootBytes,
    inlinedIn,
    blobFile: (id) => {
      if (inlinedIn && id === path.basename(inlinedIn)) return inlinedIn;
      return dir ? path.join(dir, id) : undefined;
    },
  };
}
