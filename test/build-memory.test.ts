/**
 * Issue #11: `nydus-ts create`'s memory is bounded and stays flat as the tree grows. The CLI
 * builds synthetic trees (unique data, so nothing deduplicates) and reports its own peak RSS
 * (getrusage's ru_maxrss, at exit, through a --require'd hook); the assertions are on bytes,
 * never on time. Time and the full-size figures are the benchmark's (npm run bench).
 */
import { test, before, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { makeTmpDir, removeTmpDir } from './helpers/tmp';
import { CLI } from './helpers/mount';

const MiB = 1 << 20;
let work: string;
let hook: string;

/** xorshift32 bytes: unique per seed, a little compressible (a quarter of the bytes repeat). */
function fill(buf: Buffer, seed: number): void {
  let x = seed >>> 0 || 1;
  for (let i = 0; i + 4 <= buf.length; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    buf.writeUInt32LE((i & 12) === 0 ? 0x61616161 : x >>> 0, i);
  }
}

/**
 * `dirs` directories of `perDir` small files (0.5–4 KiB), a symlink and a hardlink each, and
 * `bigMiB` MiB in 8 MiB files.
 */
function makeTree(root: string, dirs: number, perDir: number, bigMiB: number, seed: number): number {
  let entries = 0;
  const small = Buffer.alloc(4096);
  for (let d = 0; d < dirs; d++) {
    const dir = path.join(root, `d${d % 16}`, `dir-${d}`);
    fs.mkdirSync(dir, { recursive: true });
    for (let f = 0; f < perDir; f++) {
      fill(small, seed * 1_000_003 + d * 10_007 + f + 1);
      fs.writeFileSync(path.join(dir, `file-${f}.dat`), small.subarray(0, 512 + ((f * 977 + d) % 3584)));
      entries++;
    }
    fs.symlinkSync('file-0.dat', path.join(dir, 'link'));
    fs.linkSync(path.join(dir, 'file-1.dat'), path.join(dir, 'hard'));
    entries += 3;
  }
  const big = Buffer.alloc(8 * MiB);
  for (let i = 0; i < bigMiB / 8; i++) {
    fill(big, seed * 7919 + i + 1);
    fs.writeFileSync(path.join(root, `big-${i}.bin`), big);
    entries++;
  }
  return entries;
}

/** Peak RSS of `nydus-ts create` of `src`, in bytes. */
function buildPeak(name: string, src: string): number {
  const out = path.join(work, name);
  const report = path.join(out, 'peak.json');
  const r = spawnSync(process.execPath, ['--require', hook, CLI, 'create', '-B', path.join(out, 'boot'), '-D', path.join(out, 'blobs'), src], {
    env: { ...process.env, NYDUS_TS_TEST_PEAK: report },
    encoding: 'utf8',
  });
  assert.equal(r.status, 0, `create ${src}: ${r.stderr}`);
  const peak = JSON.parse(fs.readFileSync(report, 'utf8')) as { maxRSS: number };
  fs.rmSync(out, { recursive: true, force: true });
  return peak.maxRSS * 1024;
}

let small: number;

before(() => {
  work = makeTmpDir('nydus-build-mem-');
  hook = path.join(work, 'peak-hook.js');
  fs.writeFileSync(hook, `process.on('exit', () => { require('fs').writeFileSync(process.env.NYDUS_TS_TEST_PEAK, JSON.stringify(process.resourceUsage())); });\n`);
  makeTree(path.join(work, 'small'), 40, 75, 0, 1);
  small = buildPeak('small', path.join(work, 'small'));
});

after(() => {
  if (!process.env.NYDUS_TS_KEEP_TMP) removeTmpDir(work);
});

test('peak memory stays under 128 MiB and grows little with 10× the entries', () => {
  const n = makeTree(path.join(work, 'many'), 400, 75, 0, 2);
  const many = buildPeak('many', path.join(work, 'many'));
  const grew = many - small;
  assert.ok(many <= 128 * MiB, `peak RSS ${(many / MiB).toFixed(1)} MiB for ${n} entries (limit 128 MiB)`);
  // The tree's metadata is all that grows: well under a KiB per added entry.
  assert.ok(grew <= (n * 9) / 10 * 1024, `peak RSS grew ${(grew / MiB).toFixed(1)} MiB from ${(small / MiB).toFixed(1)} MiB for ${n} entries`);
});

test('peak memory does not depend on the amount of data (bounded chunks in flight)', () => {
  makeTree(path.join(work, 'data'), 40, 75, 256, 3);
  const data = buildPeak('data', path.join(work, 'data'));
  assert.ok(data - small <= 8 * MiB, `256 MiB more data raised the peak RSS from ${(small / MiB).toFixed(1)} to ${(data / MiB).toFixed(1)} MiB`);
});
