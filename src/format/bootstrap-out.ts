/** Where the bootstrap writer puts its bytes: one buffer, or a file through a small window. */
import * as fs from 'node:fs';

/** Where emit() puts bytes: region(off, len) is [buffer, index] for file offsets [off, off + len). */
export interface Out {
  region(off: number, len: number): [Buffer, number];
  /** nothing will be written before `off` any more */
  advance(off: number): void;
}

export class MemoryOut implements Out {
  readonly buf: Buffer;
  constructor(size: number) {
    this.buf = Buffer.alloc(size);
  }
  region(off: number): [Buffer, number] {
    return [this.buf, off];
  }
  advance(): void {
    /* all in memory */
  }
}

/** A zero-filled window over the file: bytes before advance()'s offset are written and dropped. */
export class FileOut implements Out {
  private buf = Buffer.alloc(256 * 1024);
  private start = 0;
  constructor(private readonly fd: number) {}

  region(off: number, len: number): [Buffer, number] {
    if (off < this.start) throw new Error(`internal: bootstrap write at ${off}, already written up to ${this.start}`);
    const need = off + len - this.start;
    if (need > this.buf.length) {
      const g = Buffer.alloc(Math.max(need, this.buf.length * 2));
      this.buf.copy(g);
      this.buf = g;
    }
    return [this.buf, off - this.start];
  }

  advance(off: number): void {
    const n = off - this.start;
    if (n < 64 * 1024) return; // write in pieces of some size
    this.write(n);
    this.buf.copyWithin(0, n);
    this.buf.fill(0, this.buf.length - n);
    this.start = off;
  }

  /** Write the rest, up to `size` bytes in all. */
  end(size: number): void {
    this.region(size, 0);
    this.write(size - this.start);
    this.start = size;
  }

  private write(n: number): void {
    let done = 0;
    while (done < n) done += fs.writeSync(this.fd, this.buf, done, n - done, this.start + done);
  }
}
