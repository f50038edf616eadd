/**
 * `nydus-ts optimize --image REF --target REF2` (or local outputs): rebuild a nydus image that
 * lives in a registry (or an OCI layout) with its start-up chunks first (relayout.ts), and push
 * it. Only the blobs that hold start-up chunks are downloaded and rewritten; the others keep
 * their digests and are copied to the target only if it lacks them. The config keeps everything
 * but `rootfs.diff_ids` (the new blob digests and the new bootstrap layer).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ImageSink, ImageSource, Descriptor, ImageConfig, MediaTypes, Platform } from '../oci/types';
import { readNydusManifest, extractBootstrapLayer, makeBootstrapLayer, makeNydusManifest, nydusBlobDescriptor, jsonBytes, validateNydusManifest } from '../oci/nydus-image';
import { downloadBlob } from '../oci/convert';
import { NydusError, invalidArgument } from '../errors';
import { AccessOrder } from './access-list';
import { relayoutImage, RelayoutReport } from './relayout';

export interface RebuildImageOptions {
  source: ImageSource;
  /** push the optimized image here */
  sink?: ImageSink;
  /** and/or write it here: the bootstrap and every blob it uses */
  outputBootstrap?: string;
  outputBlobDir?: string;
  order: AccessOrder;
  prefetchFiles?: 'all' | 'whole' | 'none';
  platform?: Platform;
  /** scratch space (a private subdirectory is made and removed) */
  workDir: string;
  onProgress?: (msg: string) => void;
  onWarning?: (msg: string) => void;
}

export interface RebuildImageSummary {
  source: string;
  source_manifest_digest: string;
  target: string | null;
  target_manifest_digest: string | null;
  relayout: RelayoutReport;
  blobs: Array<{ source_id: string; blob_id: string; changed: boolean; size: number; pushed: boolean }>;
  bytes: { downloaded: number; pushed: number };
}

export async function rebuildImage(o: RebuildImageOptions): Promise<RebuildImageSummary> {
  if (!o.sink && !o.outputBootstrap) throw invalidArgument('nothing to write: give a target image or an output bootstrap and blob dir');
  if (o.outputBootstrap && !o.outputBlobDir) throw invalidArgument('--output-bootstrap needs --output-blob-dir');
  fs.mkdirSync(o.workDir, { recursive: true });
  const run = fs.mkdtempSync(path.join(o.workDir, '.nydus-optimize-'));
  try {
    const m = await o.source.manifest({ platform: o.platform, nydus: true });
    const name = `${o.source.name}: manifest ${m.descriptor.digest}`;
    const parts = readNydusManifest(m.manifest, name);
    const config = JSON.parse((await o.source.blob(m.manifest.config)).toString('utf8')) as ImageConfig;
    const { bootstrap } = await extractBootstrapLayer(await o.source.blob(parts.bootstrap), `${o.source.name}: bootstrap layer ${parts.bootstrap.digest}`);
    const inBoot = path.join(run, 'source.boot');
    fs.writeFileSync(inBoot, bootstrap);
    const srcDir = path.join(run, 'source');
    const outDir = o.outputBlobDir ?? path.join(run, 'out');
    fs.mkdirSync(srcDir);
    const descOf = new Map(parts.blobIds.map((id, i) => [id, parts.blobs[i]]));
    let downloaded = 0;
    const fetchBlob = async (id: string): Promise<string | undefined> => {
      const desc = descOf.get(id);
      if (!desc) return undefined; // a chunk-dictionary blob of another image
      const file = path.join(srcDir, id);
      if (!fs.existsSync(file)) {
        o.onProgress?.(`downloading blob ${id.slice(0, 12)} (${desc.size} bytes)`);
        await downloadBlob(o.source, desc, file);
        downloaded += desc.size;
      }
      return file;
    };
    const outBoot = o.outputBootstrap ?? path.join(run, 'optimized.boot');
    const relayout = await relayoutImage({
      bootstrap: inBoot, blobDir: srcDir, order: o.order, outputBootstrap: outBoot, outputBlobDir: outDir,
      // local outputs hold every blob of the image; a push reuses the unchanged ones
      copyUnchanged: o.outputBootstrap !== undefined, fetchBlob, prefetchFiles: o.prefetchFiles,
      onWarning: o.onWarning,
      onProgress: (d, t) => o.onProgress?.(`rewriting blobs: ${d}/${t} chunks`),
    });
    const summary: RebuildImageSummary = {
      source: o.source.name, source_manifest_digest: m.descriptor.digest, target: o.sink?.name ?? null, target_manifest_digest: null,
      relayout, blobs: [], bytes: { downloaded, pushed: 0 },
    };
    const newId = new Map(relayout.blobs.map((b) => [b.source_id, b]));
    if (!o.sink) {
      summary.blobs = parts.blobIds.map((id) => {
        const b = newId.get(id)!;
        return { source_id: id, blob_id: b.blob_id, changed: b.changed, size: b.changed ? b.compressed_size : descOf.get(id)!.size, pushed: false };
      });
      summary.bytes.downloaded = downloaded;
      return summary;
    }
    // push: the data blobs in manifest order, then the bootstrap layer, config and manifest
    const sink = o.sink;
    const blobDescs: Descriptor[] = [];
    for (const id of parts.blobIds) {
      const b = newId.get(id);
      if (!b) throw new NydusError('ERR_BAD_MANIFEST', `${name}: layer blob ${id} is not in the image's bootstrap`, { blobId: id });
      const size = b.changed ? fs.statSync(path.join(outDir, b.blob_id)).size : descOf.get(id)!.size;
      const desc = b.changed ? nydusBlobDescriptor(b.blob_id, size) : { ...descOf.get(id)! };
      blobDescs.push(desc);
      let pushed = false;
      if (!(await sink.hasBlob(desc))) {
        const file = b.changed ? path.join(outDir, b.blob_id) : (await fetchBlob(id))!;
        o.onProgress?.(`pushing blob ${b.blob_id.slice(0, 12)} (${size} bytes)`);
        await sink.pushBlob(desc, { path: file });
        summary.bytes.pushed += size;
        pushed = true;
      }
      summary.blobs.push({ source_id: id, blob_id: b.blob_id, changed: b.changed, size, pushed });
    }
    summary.bytes.downloaded = downloaded;
    const bl = makeBootstrapLayer(fs.readFileSync(outBoot), { referenceBlobIds: parts.referenceBlobIds });
    if (!(await sink.hasBlob(bl.descriptor))) {
      await sink.pushBlob(bl.descriptor, bl.gzip);
      summary.bytes.pushed += bl.gzip.length;
    }
    const newConfig = JSON.parse(JSON.stringify(config)) as ImageConfig;
    newConfig.rootfs = { type: 'layers', diff_ids: [...blobDescs.map((d) => d.digest), bl.diffId] };
    const cfg = jsonBytes(newConfig);
    const configDesc: Descriptor = { mediaType: m.manifest.config.mediaType ?? MediaTypes.ociConfig, digest: cfg.digest, size: cfg.raw.length };
    if (!(await sink.hasBlob(configDesc))) await sink.pushBlob(configDesc, cfg.raw);
    const man = makeNydusManifest({ config: configDesc, blobs: blobDescs, bootstrap: bl.descriptor, annotations: m.manifest.annotations });
    const problems = validateNydusManifest(man.manifest, newConfig);
    if (problems.length) throw new Error(`internal: the optimized manifest does not validate: ${problems.join('; ')}`);
    summary.target_manifest_digest = await sink.pushManifest(man.raw, MediaTypes.ociManifest);
    return summary;
  } finally {
    fs.rmSync(run, { recursive: true, force: true });
  }
}
