/** Small temp-dir helpers for tests. Base: $NYDUS_TS_TMP if set, else os.tmpdir(). */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export function tmpBase(): string {
  return process.env.NYDUS_TS_TMP || os.tmpdir();
}

/** A fresh empty directory `<base>/<prefix>XXXXXX`. */
export function makeTmpDir(prefix = 'nydus-ts-'): string {
  const base = tmpBase();
  fs.mkdirSync(base, { recursive: true });
  return fs.mkdtempSync(path.join(base, prefix));
}

/**
 * Remove a directory made by makeTmpDir, even one with mode-0000 files or 0700 dirs owned by
 * others (we may not be root). Never throws.
 */
export function removeTmpDir(dir: string): void {
  try {
    fs.rmSync(dir, { recursive: true, force: true, maxRetries: 2 });
  } catch {
    // best effort: a test's cleanup must not hide its real result
  }
}

/** Run `f` with a fresh temp dir, removed afterwards unless $NYDUS_TS_KEEP_TMP is set. */
export async function withTmpDir<T>(prefix: string, f: (dir: string) => Promise<T> | T): Promise<T> {
  const dir = makeTmpDir(prefix);
  try {
    return await f(dir);
  } finally {
    if (!process.env.NYDUS_TS_KEEP_TMP) removeTmpDir(dir);
  }
}

export function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}
