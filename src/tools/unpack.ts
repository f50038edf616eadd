/**
 * `unpack`: write an image back out as a pax tar (every entry type, ownership, nanosecond
 * mtimes, xattrs, hardlinks). File data is read chunk by chunk from the blobs and each chunk's
 * digest is verified before it is written.
 */
import * as fs from 'node:fs';
import { writeAtomically } from '../util/atomic-file';
import { openImage } from './image';
import { tarHeader, padLen, TAR_TRAILER, TarHeaderFields, sparseMapBlock } from './tar-writer';
import { digest } from '../codec/digest';
import { DigesterName } from '../format/constants';
import { walkTree, Inode, isDir, isReg, isSymlink, isChr, isBlk, isFifo, isSock } from '../tree/node';
import { readBlobMeta } from '../blob/blob-meta';
import { LocalBlobFile, decodeChunk } from '../blob/local-blob';
import { digestReady } from '../codec/digest';
import { BlobChunk } from '../format/layout';
import { NydusError } from '../errors';

export interface UnpackReport {
  output: string;
  entries: number;
  bytes: number;
  skipped_sockets: number;
}

const zeroDigests = new Map<string, Buffer>();
function zeroDigest(algo: DigesterName, size: number): Buffer {
  const k = `${algo}:${size}`;
  let d = zeroDigests.get(k);
  if (!d) zeroDigests.set(k, (d = digest(algo, Buffer.alloc(size))));
  return d;
}

export async function unpackImage(bootstrap: string, blobDir: string | undefined, output: string, onProgress?: (bytes: number) => void): Promise<UnpackReport> {
  await digestReady();
  const img = openImage(bootstrap, blobDir);
  const boot = img.boot;
  const files = new Map<number, LocalBlobFile>();
  const metas = new Map<number, Map<number, BlobChunk>>();
  const blobOf = async (i: number): Promise<{ f: LocalBlobFile; ci: Map<number, BlobChunk> }> => {
    let f = files.get(i);
    if (!f) {
      const p = img.blobFile(boot.blobs[i].blobId);
      if (!p) throw new NydusError('ERR_INVALID_ARGUMENT', `${bootstrap}: --blob-dir is needed to read file data`);
      f = new LocalBlobFile(p);
      files.set(i, f);
      const meta = await readBlobMeta(boot.blobs[i], f.readAt);
      metas.set(i, new Map(meta.chunks.map((c) => [c.index, c])));
    }
    return { f, ci: metas.get(i)! };
  };

  let pos = 0;
  let fd = -1;
  const write = (b: Buffer): void => {
    let off = 0;
    while (off < b.length) off += fs.writeSync(fd, b, off, b.length - off);
    pos += b.length;
  };
  let entries = 0;
  let skipped = 0;
  const firstPath = new Map<Inode, Buffer>();
  try {
    await writeAtomically(output, async (out) => {
      fd = out;
      for (const { node, path: p } of walkTree(boot.root)) {
        const i = node.inode;
        const rel = p === '/' ? Buffer.from('./') : Buffer.from('.' + p + (isDir(i) ? '/' : ''), 'latin1');
        const base: Omit<TarHeaderFields, 'type'> = {
          path: rel, mode: i.mode, uid: i.uid, gid: i.gid, size: 0, mtime: i.mtime, mtimeNsec: i.mtimeNsec, xattrs: i.xattrs,
        };
        if (isSock(i)) {
          skipped++; // tar cannot represent sockets (GNU tar skips them too)
          continue;
        }
        if (!isDir(i) && firstPath.has(i)) {
          write(tarHeader({ ...base, type: '1', linkpath: firstPath.get(i), xattrs: undefined }));
          entries++;
          continue;
        }
        if (!isDir(i)) firstPath.set(i, rel);
        if (isDir(i)) write(tarHeader({ ...base, type: '5' }));
        else if (isSymlink(i)) write(tarHeader({ ...base, type: '2', linkpath: i.symlink }));
        else if (isChr(i) || isBlk(i)) write(tarHeader({ ...base, type: isChr(i) ? '3' : '4', devMajor: i.rdevMajor, devMinor: i.rdevMinor }));
        else if (isFifo(i)) write(tarHeader({ ...base, type: '6' }));
        else if (isReg(i)) {
          // All-zero chunks become holes (PAX 1.0 sparse file), so sparse files stay small.
          const zero = i.chunks.map((c) => c.digest.equals(zeroDigest(boot.digester, c.uncompressedSize)));
          const holes = zero.filter(Boolean).length;
          let dataChunks = i.chunks;
          if (holes > 0) {
            const regions: { offset: number; length: number }[] = [];
            i.chunks.forEach((c, k) => {
              if (zero[k]) return;
              const last = regions[regions.length - 1];
              if (last && last.offset + last.length === c.fileOffset) last.length += c.uncompressedSize;
              else regions.push({ offset: c.fileOffset, length: c.uncompressedSize });
            });
            if (zero[zero.length - 1]) regions.push({ offset: i.size, length: 0 });
            const dataBytes = regions.reduce((n, r) => n + r.length, 0);
            write(tarHeader({ ...base, type: '0', size: i.size }, { dataBytes, mapBlock: sparseMapBlock(regions) }));
            write(sparseMapBlock(regions));
            dataChunks = i.chunks.filter((_, k) => !zero[k]);
          } else {
            write(tarHeader({ ...base, type: '0', size: i.size }));
          }
          let stored = 0;
          for (const c of dataChunks) {
            const { f, ci } = await blobOf(c.blobIndex);
            const bc = ci.get(c.ciIndex);
            if (!bc) throw new NydusError('ERR_BAD_BLOB', `${p}: chunk ci ${c.ciIndex} missing in blob ${boot.blobs[c.blobIndex].blobId}`);
            const digest = c.digest.some((x) => x !== 0) ? c.digest : undefined;
            const data = decodeChunk(boot.blobs[c.blobIndex], bc, f.readAtSync(bc.compressedOffset, bc.compressedSize), digest);
            write(data);
            stored += data.length;
            onProgress?.(pos);
          }
          write(Buffer.alloc(padLen(stored + (holes > 0 ? 0 : 0))));
        }
        entries++;
      }
      write(TAR_TRAILER);
    });
  } finally {
    for (const f of files.values()) f.close();
  }
  return { output, entries, bytes: pos, skipped_sockets: skipped };
}
