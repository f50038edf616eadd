/**
 * `create --prefetch-list FILE`: build the image as usual into a private directory, then write
 * its new blob again with the listed chunks first, in access order (relayout.ts), and the
 * bootstrap with the prefetch table naming the files. The builder itself is untouched: its speed
 * work and this order stay independent, at the cost of copying the new blob once.
 * Blobs of a parent image or chunk dictionary are never rewritten (other images use them).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createImage, CreateOptions, BuildReport } from '../builder/build';
import { NydusError } from '../errors';
import { readAccessOrder } from './access-list';
import { relayoutImage, RelayoutReport } from './relayout';

export type OptimizedBuildReport = BuildReport & { relayout: RelayoutReport };

/** A `createImage` that applies the start-up order of `listFile` (validated before building). */
export function createOptimized(listFile: string, withPatterns: boolean): (opts: CreateOptions) => Promise<OptimizedBuildReport> {
  if (withPatterns) throw new NydusError('ERR_INVALID_ARGUMENT', '--prefetch-list and --prefetch-patterns both set the prefetch table: give one');
  const order = readAccessOrder(listFile);
  return async (opts) => {
    fs.mkdirSync(opts.blobDir, { recursive: true });
    const tmp = fs.mkdtempSync(path.join(opts.blobDir, '.create-optimized-'));
    try {
      const tmpBoot = path.join(tmp, 'image.boot');
      const report = await createImage({ ...opts, bootstrap: tmpBoot, blobDir: tmp, prefetchPatterns: undefined });
      const r = await relayoutImage({
        bootstrap: tmpBoot, blobDir: tmp, order, outputBootstrap: opts.bootstrap, outputBlobDir: opts.blobDir,
        onlyBlobs: new Set(report.blob_id ? [report.blob_id] : []), copyUnchanged: false, onWarning: opts.onWarning,
      });
      const mine = r.blobs.find((b) => b.source_id === report.blob_id);
      if (report.blob_id && !mine?.changed) {
        // none of the listed reads falls on this build's data: keep its blob as built
        fs.renameSync(path.join(tmp, report.blob_id), path.join(opts.blobDir, report.blob_id));
      }
      const newId = mine?.changed ? mine.blob_id : report.blob_id;
      const sizes = { ...report.stats.blob_sizes };
      if (report.blob_id && mine?.changed) {
        delete sizes[report.blob_id];
        sizes[mine.blob_id] = { compressed: mine.compressed_size, uncompressed: sizes[report.blob_id]?.uncompressed ?? report.stats.blob_uncompressed_size, chunks: mine.chunks };
      }
      return {
        ...report,
        bootstrap: opts.bootstrap,
        blobs: report.blobs.map((id) => (id === report.blob_id ? newId! : id)),
        blob_id: newId,
        stats: { ...report.stats, bootstrap_size: fs.statSync(opts.bootstrap).size, blob_compressed_size: mine?.changed ? mine.compressed_size : report.stats.blob_compressed_size, blob_sizes: sizes },
        relayout: r,
      };
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  };
}
