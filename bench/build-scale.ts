/**
 * The build benchmark's N× tree (bench/build-bench.ts --scale): N copies of the source under one
 * directory, the file bytes of copy i XORed with the byte i. Same tree shape, sizes and
 * compressibility in every copy, but no chunk repeats another copy's, so the image really holds
 * N× the data (copies alone would deduplicate to the source's chunks). Made once, then reused
 * while the source is unchanged (a marker file records what it was made from).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';

/** Returns the tree's root, `dir`/tree (the marker is `dir`/made-from, outside the tree). */
export function makeScaledTree(src: string, dir: string, n: number, log: (m: string) => void): string {
  const marker = path.join(dir, 'made-from');
  const tree = path.join(dir, 'tree');
  const want = JSON.stringify({ src: path.resolve(src), n, mtime: fs.statSync(src).mtimeMs });
  if (fs.existsSync(marker) && fs.readFileSync(marker, 'utf8') === want) return tree;
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(tree, { recursive: true });
  for (let i = 0; i < n; i++) {
    const copy = path.join(tree, `c${i}`);
    const r = spawnSync('cp', ['-a', '--', src, copy], { stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`cp -a ${src} ${copy}: ${r.stderr.trim() || `exit ${r.status}`}`);
    if (i > 0) xorTree(copy, i);
    log(`scaled tree: copy ${i + 1}/${n} done`);
  }
  fs.writeFileSync(marker, want);
  return tree;
}

/** XOR every regular file's bytes (each inode once) with `key`, keeping its times. */
function xorTree(root: string, key: number): void {
  const k32 = (key * 0x01010101) >>> 0;
  const seen = new Set<number>();
  const stack = [root];
  while (stack.length) {
    const d = stack.pop()!;
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) stack.push(p);
      if (!e.isFile()) continue;
      const st = fs.lstatSync(p);
      if (seen.has(st.ino)) continue;
      seen.add(st.ino);
      const b = fs.readFileSync(p);
      const words = b.byteOffset % 4 === 0 ? new Uint32Array(b.buffer, b.byteOffset, b.length >> 2) : new Uint32Array(0);
      for (let j = 0; j < words.length; j++) words[j] ^= k32;
      for (let j = words.length * 4; j < b.length; j++) b[j] ^= key;
      fs.writeFileSync(p, b);
      fs.utimesSync(p, st.atime, st.mtime);
    }
  }
}
