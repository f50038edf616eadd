/**
 * Rewrite a nydus image so that the chunks a workload reads come first in each blob, contiguous
 * and in access order — file by file in the order of their first read, each file's chunks that
 * were read in file order — and the bootstrap's prefetch table names the files read (`nydus-ts
 * optimize`, `create|convert --prefetch-list`). Then the start-up set is one range at the start
 * of each blob that holds part of it, in the order a prefetcher walks the table: a prefetcher or
 * the read amplification fetches it in one or a few large requests instead of one small request
 * per file. (Strict chunk-by-chunk access order would interleave files — the loader reading the
 * C library while the shell starts — and break the table's files into many short runs.)
 *
 * Works on any RAFS v6 image we can read (ours or nydus-image's, any source): the bootstrap is
 * read into a tree, each affected blob is written anew from the compressed chunks of the old one
 * (copied as they are, never recompressed; each one decompressed and checked against its digest
 * on the way, so a corrupt source never becomes a "valid" image), chunk references are pointed at
 * the new positions and the bootstrap is written again. Blobs that hold no start-up chunk are
 * left as they are (same id, same bytes): layers nobody read stay shared with the original.
 * Chunks no file references (whited-out data of lower layers) are dropped from rewritten blobs.
 *
 * Outputs are written under temporary names and renamed; on failure nothing new is left behind.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readBootstrap } from '../format/bootstrap-reader';
import { writeBootstrap } from '../format/bootstrap-writer';
import { BlobFeature } from '../format/constants';
import { BlobChunk, BlobEntry } from '../format/layout';
import { BlobWriter } from '../blob/blob-writer';
import { LocalBlobFile, blobCodecs, blobPath, decodeChunk } from '../blob/local-blob';
import { digestReady } from '../codec/digest';
import { ChunkRef, Inode, TreeNode, walkTree, isReg, lookupPath } from '../tree/node';
import { writeFileAtomic } from '../util/atomic-file';
import { NydusError, invalidArgument } from '../errors';
import { AccessOrder, expandOrder } from './access-list';

export interface RelayoutOptions {
  /** the input bootstrap file */
  bootstrap: string;
  /** where the input blobs are (`<dir>/<blob id>`) */
  blobDir: string;
  order: AccessOrder;
  outputBootstrap: string;
  /** where rewritten blobs go (may be `blobDir`) */
  outputBlobDir: string;
  /**
   * copy unchanged blobs into `outputBlobDir` when it differs from `blobDir` (default true);
   * false when the caller reuses them from elsewhere (a registry that has them)
   */
  copyUnchanged?: boolean;
  /** rewrite only these blobs (e.g. the one a layer build made, never its parent's) */
  onlyBlobs?: Set<string>;
  /**
   * a blob that is not in `blobDir`: fetch it and return its path, or undefined when it cannot
   * be had (it is then left as it is, with a warning)
   */
  fetchBlob?: (blobId: string) => Promise<string | undefined>;
  /**
   * which files of the order the prefetch table names: `whole` (default: only files every chunk
   * of which was read, since a prefetcher fetches whole files and a partly read large file would
   * cost its unread chunks too; on Node.js at 100 Mbit/s 25 MiB instead of 36 and 0.9× the time,
   * bench/README.md), `all` (every file read, nydusify's choice), `none` (no table)
   */
  prefetchFiles?: 'all' | 'whole' | 'none';
  onProgress?: (done: number, total: number) => void;
  onWarning?: (msg: string) => void;
}

export interface RelayoutBlobReport {
  /** the blob in the input image */
  source_id: string;
  /** the blob in the output image (= source_id when unchanged) */
  blob_id: string;
  changed: boolean;
  compressed_size: number;
  chunks: number;
  /** chunks of the start-up set, at the start of the blob (see the file comment for the order) */
  startup_chunks: number;
  /** the start-up set's range: [0, startup_compressed_bytes) of the blob */
  startup_compressed_bytes: number;
  startup_uncompressed_bytes: number;
  /** chunks of the old blob no file uses (not copied) */
  dropped_chunks: number;
  /** start-up chunks this blob holds but that stayed in place (the blob was not rewritten) */
  startup_chunks_elsewhere?: number;
}

export interface RelayoutReport {
  bootstrap: string;
  blob_dir: string;
  blobs: RelayoutBlobReport[];
  /** files named in the prefetch table */
  prefetch_files: number;
  /** start-up chunks placed first in rewritten blobs (all blobs), and their compressed bytes */
  startup_chunks: number;
  startup_compressed_bytes: number;
  /** paths of the order that the image does not have */
  missing_paths: string[];
}

const keyOf = (c: { blobIndex: number; ciIndex: number }): string => `${c.blobIndex}:${c.ciIndex}`;

export async function relayoutImage(o: RelayoutOptions): Promise<RelayoutReport> {
  await digestReady();
  let data: Buffer;
  try {
    data = fs.readFileSync(o.bootstrap);
  } catch (e) {
    throw invalidArgument(`bootstrap ${o.bootstrap}: ${(e as Error).message}`, { path: o.bootstrap });
  }
  const boot = readBootstrap(data, { name: o.bootstrap });
  const inodes = new Set<Inode>();
  for (const { node } of walkTree(boot.root)) if (isReg(node.inode)) inodes.add(node.inode);

  // every reference to each (blob, chunk), to repoint them all at once
  const refs = new Map<string, ChunkRef[]>();
  for (const inode of inodes) {
    for (const c of inode.chunks) {
      const k = keyOf(c);
      const list = refs.get(k);
      if (list) list.push(c);
      else refs.set(k, [c]);
    }
  }

  // The start-up chunks of each blob: the files in the order of their first read, each file's
  // chunks that were read in file order. That is the order a prefetcher walks the prefetch
  // table (ours and nydusd's: file by file, each file's chunks in order), so the table's files
  // are one contiguous range of the blob and a few merged requests fetch them. With `whole`,
  // the files read only in part (not in the table) come after the ones read whole.
  const { reads, missing } = expandOrder(o.order, boot.root);
  if (missing.length) o.onWarning?.(`${missing.length} path(s) of ${o.order.source} are not in ${o.bootstrap}, e.g. ${Buffer.from(missing[0], 'latin1').toString()}`);
  const cs = boot.chunkSize;
  const touched = new Map<Inode, Set<number>>();
  for (const r of reads) {
    let ks = touched.get(r.inode);
    if (!ks) touched.set(r.inode, (ks = new Set()));
    const last = Math.min(Math.floor((r.offset + r.length - 1) / cs), r.inode.chunks.length - 1);
    for (let k = Math.floor(r.offset / cs); k <= last; k++) ks.add(k);
  }
  const readWhole = (inode: Inode): boolean => touched.get(inode)?.size === inode.chunks.length;
  const mode = o.prefetchFiles ?? 'whole';
  const fileOrder = [...touched.keys()];
  if (mode === 'whole') fileOrder.sort((a, b) => Number(readWhole(b)) - Number(readWhole(a))); // stable: first-read order within each group
  const startup: string[][] = boot.blobs.map(() => []);
  const seen = new Set<string>();
  for (const inode of fileOrder) {
    for (const k of [...touched.get(inode)!].sort((a, b) => a - b)) {
      const c = inode.chunks[k];
      const key = keyOf(c);
      if (seen.has(key)) continue;
      seen.add(key);
      startup[c.blobIndex]?.push(key);
    }
  }
  if (seen.size === 0) throw invalidArgument(`${o.order.source}: none of its reads falls on file data of ${o.bootstrap} (a list for another image?)`);

  const written: string[] = [];
  const blobs: BlobEntry[] = [...boot.blobs];
  const reports: RelayoutBlobReport[] = [];
  const total = startup.reduce((n, s, bi) => n + (s.length && (!o.onlyBlobs || o.onlyBlobs.has(boot.blobs[bi].blobId)) ? boot.blobs[bi].chunkCount : 0), 0);
  let done = 0;
  try {
    for (let bi = 0; bi < boot.blobs.length; bi++) {
      const entry = boot.blobs[bi];
      let src: string | undefined = blobPath(o.blobDir, entry.blobId);
      let rewrite = startup[bi].length > 0 && (!o.onlyBlobs || o.onlyBlobs.has(entry.blobId));
      if (rewrite && !fs.existsSync(src)) {
        src = o.fetchBlob ? await o.fetchBlob(entry.blobId) : undefined;
        if (!src) {
          o.onWarning?.(`blob ${entry.blobId} holds ${startup[bi].length} start-up chunk(s) but is not available here; it stays as it is`);
          rewrite = false;
        }
      }
      if (!rewrite) {
        if ((o.copyUnchanged ?? true) && path.resolve(o.outputBlobDir) !== path.resolve(o.blobDir)) {
          const dst = blobPath(o.outputBlobDir, entry.blobId);
          if (!fs.existsSync(dst)) {
            if ((!src || !fs.existsSync(src)) && o.fetchBlob) src = await o.fetchBlob(entry.blobId);
            if (!src || !fs.existsSync(src)) throw new NydusError('ERR_NOT_FOUND', `blob ${entry.blobId} is not in ${o.blobDir}`, { blobId: entry.blobId });
            fs.mkdirSync(o.outputBlobDir, { recursive: true });
            fs.copyFileSync(src, dst + '.part');
            fs.renameSync(dst + '.part', dst);
            written.push(dst);
          }
        }
        reports.push({
          source_id: entry.blobId, blob_id: entry.blobId, changed: false, compressed_size: entry.compressedSize, chunks: entry.chunkCount,
          startup_chunks: 0, startup_compressed_bytes: 0, startup_uncompressed_bytes: 0, dropped_chunks: 0,
          ...(startup[bi].length ? { startup_chunks_elsewhere: startup[bi].length } : {}),
        });
        continue;
      }
      const file = new LocalBlobFile(src!);
      const { compressor, digester } = blobCodecs(entry);
      const writer = new BlobWriter({ dir: o.outputBlobDir, compressor, digester, chunkSize: entry.chunkSize || cs, toc: (entry.features & BlobFeature.HAS_TOC) !== 0 });
      const moved = new Map<string, BlobChunk>();
      let startupCompressed = 0;
      let startupUncompressed = 0;
      try {
        let lastCopied: BlobChunk | undefined;
        const copy = (key: string): void => {
          const c = refs.get(key)![0];
          const raw = file.readAtSync(c.compressedOffset, c.compressedSize);
          const old: BlobChunk = { index: c.ciIndex, compressedOffset: c.compressedOffset, compressedSize: c.compressedSize, uncompressedOffset: c.uncompressedOffset, uncompressedSize: c.uncompressedSize, compressed: c.compressed };
          decodeChunk(entry, old, raw, c.digest); // throws on a corrupt chunk
          lastCopied = writer.addChunk(raw, c.compressed, c.uncompressedSize, c.digest);
          moved.set(key, lastCopied);
          if (++done % 256 === 0) o.onProgress?.(done, total);
        };
        for (const key of startup[bi]) copy(key);
        startupCompressed = writer.compressedBytes;
        startupUncompressed = lastCopied ? lastCopied.uncompressedOffset + lastCopied.uncompressedSize : 0;
        // then the rest, in the old blob's order
        const rest = [...refs.keys()].filter((k) => !moved.has(k) && Number(k.slice(0, k.indexOf(':'))) === bi)
          .sort((a, b) => Number(a.slice(a.indexOf(':') + 1)) - Number(b.slice(b.indexOf(':') + 1)));
        for (const key of rest) copy(key);
      } catch (e) {
        writer.abort();
        throw e;
      } finally {
        file.close();
      }
      // (await: the builder's writer may finish asynchronously)
      const fin = (await writer.finish())!;
      written.push(fin.path);
      for (const [key, nc] of moved) {
        for (const r of refs.get(key)!) {
          r.ciIndex = nc.index;
          r.compressedOffset = nc.compressedOffset;
          r.compressedSize = nc.compressedSize;
          r.uncompressedOffset = nc.uncompressedOffset;
        }
      }
      blobs[bi] = { ...fin.entry, blobIndex: bi };
      reports.push({
        source_id: entry.blobId, blob_id: fin.blobId, changed: true, compressed_size: fin.entry.compressedSize, chunks: fin.entry.chunkCount,
        startup_chunks: startup[bi].length, startup_compressed_bytes: startupCompressed, startup_uncompressed_bytes: startupUncompressed,
        dropped_chunks: entry.chunkCount - fin.entry.chunkCount,
      });
    }
    o.onProgress?.(total, total);
    const prefetchPaths = mode === 'none' ? [] : mode === 'all' ? o.order.prefetchPaths : o.order.prefetchPaths.filter((p) => {
      const n = lookupPath(boot.root, p);
      return !!n && (!isReg(n.inode) || readWhole(n.inode));
    });
    const out = writeBootstrap({ root: boot.root, blobs, chunkSize: boot.chunkSize, flags: boot.flags, prefetchPaths });
    writeFileAtomic(o.outputBootstrap, out.data);
    return {
      bootstrap: o.outputBootstrap,
      blob_dir: o.outputBlobDir,
      blobs: reports,
      prefetch_files: prefetchCount(prefetchPaths, boot.root),
      startup_chunks: reports.reduce((n, b) => n + b.startup_chunks, 0),
      startup_compressed_bytes: reports.reduce((n, b) => n + b.startup_compressed_bytes, 0),
      missing_paths: missing.map((p) => Buffer.from(p, 'latin1').toString()),
    };
  } catch (e) {
    // a rewritten blob that happens to equal an input one is the input: never remove that
    for (const f of written) if (path.resolve(path.dirname(f)) !== path.resolve(o.blobDir) || !boot.blobs.some((b) => b.blobId === path.basename(f))) fs.rmSync(f, { force: true });
    throw e;
  }
}

/** how many inodes the prefetch table names (the writer skips paths the tree lacks) */
function prefetchCount(paths: string[], root: TreeNode): number {
  const seen = new Set<Inode>();
  for (const p of paths) {
    const n = lookupPath(root, p);
    if (n) seen.add(n.inode);
  }
  return seen.size;
}
