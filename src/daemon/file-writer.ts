/**
 * A CacheWriter over an ordinary (sparse) file, for tests of the daemon core without a kernel
 * front end. Presence = SEEK_DATA/SEEK_HOLE extents. (The fanotify front end's cache file, with
 * its crash-consistent presence map, is src/kernel/blob-cache-file.ts.)
 */
import * as fs from 'node:fs';
import { CacheWriter } from './interfaces';
import { lseek, SEEK_DATA, SEEK_HOLE } from '../sys/native';
import { EROFS_BLOCK_SIZE } from '../format/constants';

export class SparseFileWriter implements CacheWriter {
  private readonly fd: number;
  constructor(readonly path: string, size: number) {
    this.fd = fs.openSync(path, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
    if (fs.fstatSync(this.fd).size !== size) fs.ftruncateSync(this.fd, size);
  }
  async write(offset: number, data: Buffer): Promise<void> {
    // Pad to whole 4K pages like the O_DIRECT cache writer does, so presence is page-granular.
    const padded = data.length % EROFS_BLOCK_SIZE === 0 ? data : Buffer.concat([data, Buffer.alloc(EROFS_BLOCK_SIZE - (data.length % EROFS_BLOCK_SIZE))]);
    let off = 0;
    while (off < padded.length) {
      off += await new Promise<number>((res, rej) => fs.write(this.fd, padded, off, padded.length - off, offset + off, (e, n) => (e ? rej(e) : res(n))));
    }
  }
  async presentRanges(): Promise<Array<[number, number]>> {
    const out: Array<[number, number]> = [];
    const size = fs.fstatSync(this.fd).size;
    let pos = 0;
    while (pos < size) {
      const d = lseek(this.fd, pos, SEEK_DATA, this.path);
      if (d < 0) break;
      const h = lseek(this.fd, d, SEEK_HOLE, this.path);
      out.push([d, h < 0 ? size : h]);
      pos = h < 0 ? size : h;
    }
    return out;
  }
  close(): void {
    fs.closeSync(this.fd);
  }
}
