/**
 * `export`: flatten a RAFS v6 image into one plain EROFS disk image: the bootstrap blocks, then
 * each blob's uncompressed data at its device-table `mapped_blkaddr`. The chunk indexes are
 * rewritten to point at device 0 (absolute blocks) and the device count is set to 0, so the
 * result is a single-device EROFS image that `mount -o loop` and fsck.erofs (which has no
 * flat-device mode) both accept with no daemon. Also writes a single blob's uncompressed space
 * (the content of its fscache cache file), usable as an EROFS extra device.
 */
import * as fs from 'node:fs';
import { writeAtomically } from '../util/atomic-file';
import { readBootstrap, RafsBootstrap } from '../format/bootstrap-reader';
import { EROFS_BLOCK_SIZE, EROFS_SUPER_OFFSET, EROFS_FEATURE_INCOMPAT_CHUNKED_FILE, alignUp } from '../format/constants';
import { xattrAreaSize } from '../format/layout';
import { readBlobMeta } from '../blob/blob-meta';
import { LocalBlobFile, blobPath, decodeChunk } from '../blob/local-blob';
import { digestReady } from '../codec/digest';
import { NydusError } from '../errors';
import { BlobChunk } from '../format/layout';

function digestsByCi(b: RafsBootstrap, blobIndex: number): Map<number, Buffer> {
  const m = new Map<number, Buffer>();
  for (const c of b.chunkTable) if (c.blobIndex === blobIndex) m.set(c.index, c.digest);
  return m;
}

/** Write the uncompressed chunks of blob `blobIndex` into `fd` at `base` (+ uncompressed offset). */
async function writeBlobData(boot: RafsBootstrap, blobIndex: number, blobDir: string, fd: number, base: number, onChunk?: () => void): Promise<void> {
  const entry = boot.blobs[blobIndex];
  const file = new LocalBlobFile(blobPath(blobDir, entry.blobId));
  try {
    const meta = await readBlobMeta(entry, file.readAt);
    const digests = digestsByCi(boot, blobIndex);
    for (const c of meta.chunks) {
      const raw = file.readAtSync(c.compressedOffset, c.compressedSize);
      const data = decodeChunk(entry, c, raw, digests.get(c.index));
      fs.writeSync(fd, data, 0, data.length, base + c.uncompressedOffset);
      onChunk?.();
    }
  } finally {
    file.close();
  }
}

export async function exportBlobData(bootstrapFile: string, blobDir: string, blobId: string, output: string): Promise<void> {
  await digestReady();
  const boot = readBootstrap(fs.readFileSync(bootstrapFile), { name: bootstrapFile });
  const idx = boot.blobs.findIndex((b) => b.blobId === blobId);
  if (idx < 0) throw new NydusError('ERR_NOT_FOUND', `blob ${blobId} is not in ${bootstrapFile}`);
  await writeAtomically(output, async (fd) => {
    fs.ftruncateSync(fd, boot.blobs[idx].uncompressedSize);
    await writeBlobData(boot, idx, blobDir, fd, 0);
  });
}

export interface ExportReport {
  output: string;
  size: number;
  blobs: { blob_id: string; mapped_blkaddr: number; blocks: number }[];
}

export async function exportImage(bootstrapFile: string, blobDir: string, output: string, onProgress?: (done: number, total: number) => void): Promise<ExportReport> {
  await digestReady();
  const data = fs.readFileSync(bootstrapFile);
  const boot = readBootstrap(data, { name: bootstrapFile });
  let end = data.length;
  for (const d of boot.devices) {
    if (d.mappedBlkaddr * EROFS_BLOCK_SIZE < end && boot.devices.length > 0) {
      throw new NydusError('ERR_BAD_BOOTSTRAP', `${bootstrapFile}: device ${d.tag} has mapped_blkaddr ${d.mappedBlkaddr}, which overlaps earlier data; cannot export`, {});
    }
    end = (d.mappedBlkaddr + d.blocks) * EROFS_BLOCK_SIZE;
  }
  const total = boot.blobs.reduce((n, b) => n + b.chunkCount, 0);
  let done = 0;
  await writeAtomically(output, async (fd) => {
    const flat = flattenBootstrap(data, boot, end);
    fs.writeSync(fd, flat, 0, flat.length, 0);
    fs.ftruncateSync(fd, end);
    for (let i = 0; i < boot.blobs.length; i++) {
      await writeBlobData(boot, i, blobDir, fd, boot.devices[i].mappedBlkaddr * EROFS_BLOCK_SIZE, () => onProgress?.(++done, total));
    }
  });
  return { output, size: end, blobs: boot.devices.map((d) => ({ blob_id: d.tag, mapped_blkaddr: d.mappedBlkaddr, blocks: d.blocks })) };
}

/** Rewrite chunk indexes of every regular file to device 0 at `mapped_blkaddr + blkaddr`. */
function flattenBootstrap(data: Buffer, boot: RafsBootstrap, end: number): Buffer {
  const out = Buffer.from(data);
  const metaAddr = boot.sb.metaBlkaddr * EROFS_BLOCK_SIZE;
  for (const [inode, nid] of boot.nidOf) {
    if (inode.chunks.length === 0) continue;
    const h = boot.headerOf.get(inode)!;
    const headerSize = (h.extended ? 64 : 32) + xattrAreaSize(h.xattrIcount);
    let at = metaAddr + alignUp(nid * 32 + headerSize, 8);
    for (const c of inode.chunks) {
      out.writeUInt16LE(0, at);
      out.writeUInt16LE(0, at + 2);
      out.writeUInt32LE(boot.devices[c.blobIndex].mappedBlkaddr + c.uncompressedOffset / EROFS_BLOCK_SIZE, at + 4);
      at += 8;
    }
  }
  const sb = EROFS_SUPER_OFFSET;
  out.writeUInt32LE(end / EROFS_BLOCK_SIZE, sb + 36); // s_blocks: the whole disk
  out.writeUInt32LE(EROFS_FEATURE_INCOMPAT_CHUNKED_FILE, sb + 80);
  out.writeUInt16LE(0, sb + 86); // no extra devices
  return out;
}

export type { BlobChunk };
