/**
 * Blob backends: where the daemon reads a blob's compressed bytes from. `localfs` lives here;
 * remote backends (registry, HTTP, S3, proxy) implement the same BlobBackend interface.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LRUCache } from 'lru-cache';
import { BlobBackend } from '../daemon/interfaces';
import { NydusError } from '../errors';

export interface LocalFsConfig {
  /** directory holding `<blob id>` files */
  dir?: string;
  /** more directories searched after `dir` */
  alt_dirs?: string[];
  /** a single blob file serving every blob id (nydusd `blob_file`) */
  blob_file?: string;
}

export class LocalFsBackend implements BlobBackend {
  readonly kind = 'localfs';
  private readonly fds = new LRUCache<string, { fd: number; size: number }>({
    max: 256,
    dispose: (v) => fs.close(v.fd, () => undefined),
  });

  constructor(private readonly cfg: LocalFsConfig) {
    if (!cfg.dir && !cfg.blob_file) throw new NydusError('ERR_INVALID_ARGUMENT', 'localfs backend needs "dir" or "blob_file"');
  }

  private open(blobId: string): { fd: number; size: number } {
    const hit = this.fds.get(blobId);
    if (hit) return hit;
    if (!/^[0-9a-zA-Z._-]+$/.test(blobId)) throw new NydusError('ERR_NOT_FOUND', `blob id "${blobId}" is not a valid file name`);
    const candidates = this.cfg.blob_file ? [this.cfg.blob_file] : [this.cfg.dir!, ...(this.cfg.alt_dirs ?? [])].map((d) => path.join(d, blobId));
    for (const p of candidates) {
      try {
        const fd = fs.openSync(p, 'r');
        const v = { fd, size: fs.fstatSync(fd).size };
        this.fds.set(blobId, v);
        return v;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new NydusError('ERR_BACKEND', `localfs: cannot open ${p}: ${(e as Error).message}`, { blobId });
      }
    }
    throw new NydusError('ERR_NOT_FOUND', `localfs: blob ${blobId} not found in ${candidates.join(', ')}`, { blobId });
  }

  async readRange(blobId: string, offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const { fd, size } = this.open(blobId);
    if (offset < 0 || length < 0 || offset + length > size) {
      throw new NydusError('ERR_BACKEND', `localfs: range ${offset}+${length} lies beyond blob ${blobId} (${size} bytes)`, { blobId, offset, length });
    }
    const buf = into && into.length >= length ? into.subarray(0, length) : Buffer.allocUnsafe(length);
    let got = 0;
    while (got < length) {
      const n = await new Promise<number>((resolve, reject) => fs.read(fd, buf, got, length - got, offset + got, (err, r) => (err ? reject(err) : resolve(r))));
      if (n === 0) throw new NydusError('ERR_BACKEND', `localfs: short read of blob ${blobId} at ${offset + got}`, { blobId });
      got += n;
    }
    return buf;
  }

  async close(): Promise<void> {
    this.fds.clear();
  }
}
