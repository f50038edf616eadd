/** Disk usage of a directory tree as containerd's fs.DiskUsage counts it: allocated blocks and inodes, hardlinks once. */
import * as fs from 'node:fs';
import * as path from 'node:path';

export interface DiskUsage {
  size: number;
  inodes: number;
}

export async function diskUsage(root: string): Promise<DiskUsage> {
  const seen = new Set<string>();
  let size = 0;
  const visit = async (p: string): Promise<void> => {
    let st: fs.Stats;
    try {
      st = await fs.promises.lstat(p);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return; // removed while we walk
      throw e;
    }
    const ino = `${st.dev}:${st.ino}`;
    if (!seen.has(ino)) {
      seen.add(ino);
      size += st.blocks * 512;
    }
    if (!st.isDirectory()) return;
    let names: string[];
    try {
      names = await fs.promises.readdir(p);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw e;
    }
    for (const name of names) await visit(path.join(p, name));
  };
  await visit(root);
  return { size, inodes: seen.size };
}
