/** Outputs are written under a temporary name in the same directory and renamed when complete. */
import * as fs from 'node:fs';
import * as path from 'node:path';

/** Run `fill(fd)` on a temp file next to `output`, fsync, rename; on failure remove the temp file. */
export async function writeAtomically<T>(output: string, fill: (fd: number) => Promise<T> | T, mode = 0o644): Promise<T> {
  const dir = path.dirname(path.resolve(output));
  fs.mkdirSync(dir, { recursive: true });
  const tmp = path.join(dir, `.${path.basename(output)}.${process.pid}.tmp`);
  const fd = fs.openSync(tmp, 'w', mode);
  let result: T;
  try {
    result = await fill(fd);
    fs.fsyncSync(fd);
  } catch (e) {
    fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw e;
  }
  fs.closeSync(fd);
  fs.renameSync(tmp, output);
  return result;
}

/** Synchronous variant for small outputs (bootstraps, JSON reports). */
export function writeFileAtomic(file: string, data: Buffer | string): void {
  const dir = path.dirname(path.resolve(file));
  fs.mkdirSync(dir, { recursive: true });
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.tmp`);
  const fd = fs.openSync(tmp, 'w', 0o644);
  try {
    fs.writeFileSync(fd, data);
    fs.fsyncSync(fd);
  } catch (e) {
    fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw e;
  }
  fs.closeSync(fd);
  fs.renameSync(tmp, file);
}
