/**
 * Compare two directory trees entry by entry (type, mode, owner, ns mtime, size, content hash,
 * symlink target, rdev, xattrs, hardlink groups):
 *   node dist/images/compare-trees.js EXPECTED ACTUAL      EXPECTED: a directory or a saved snapshot
 *   node dist/images/compare-trees.js --save FILE DIR      save DIR's snapshot as JSON
 * Prints the differences (at most 50) and exits 1 if there are any.
 */
import * as fs from 'node:fs';
import { snapshotTree, diffTrees, EntrySnapshot } from '../test/helpers/tree-compare';

function save(file: string, snap: Map<string, EntrySnapshot>): void {
  fs.writeFileSync(file, JSON.stringify([...snap.values()], (_k, v) => (typeof v === 'bigint' ? `${v}n` : v)));
}
function load(file: string): Map<string, EntrySnapshot> {
  const arr = JSON.parse(fs.readFileSync(file, 'utf8'), (_k, v) => (typeof v === 'string' && /^-?\d+n$/.test(v) ? BigInt(v.slice(0, -1)) : v)) as EntrySnapshot[];
  return new Map(arr.map((e) => [e.path, e]));
}

async function main(): Promise<number> {
  const args = process.argv.slice(2);
  if (args[0] === '--save' && args.length === 3) {
    const snap = await snapshotTree(args[2]);
    save(args[1], snap);
    process.stdout.write(`saved ${snap.size} entries of ${args[2]} to ${args[1]}\n`);
    return 0;
  }
  const [a, b] = args;
  if (!a || !b || a === '--help') {
    process.stdout.write('usage: compare-trees EXPECTED(dir|snapshot.json) ACTUAL | compare-trees --save FILE DIR\n');
    return a === '--help' ? 0 : 2;
  }
  const [sa, sb] = await Promise.all([a.endsWith('.json') ? load(a) : snapshotTree(a), snapshotTree(b)]);
  const diffs = diffTrees(sa, sb);
  for (const d of diffs.slice(0, 50)) process.stdout.write(d + '\n');
  process.stdout.write(diffs.length ? `${diffs.length} differences\n` : `identical: ${sa.size} entries compared (type, mode, owner, mtime, size, content, target, rdev, xattrs, hardlinks)\n`);
  return diffs.length ? 1 : 0;
}
main().then((c) => (process.exitCode = c));
