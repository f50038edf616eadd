/**
 * CLI for the cache's life cycle: `cache usage` (what is cached, per blob and image, and how full
 * the cache filesystem is) and `cache gc` (remove the data of blobs no registered image uses).
 * Both talk to a running daemon over its API socket; `usage` also works on a cache dir when no
 * daemon runs. Other `cache` subcommands (scrub) attach to the group this returns.
 */
import { Command } from 'commander';
import * as path from 'node:path';
import { NydusError } from '../errors';
import { human } from './progress';
import { DEFAULT_APISOCK, DEFAULT_FSCACHE, apiRequest } from './daemon-commands';
// The cache inspection code (../daemon/cache-usage) loads inside the actions.

/** The daemon's API answer, or undefined when nothing serves `sock`. */
async function daemonApi(sock: string, method: string, p: string): Promise<any | undefined> {
  let r: { status: number; body: any };
  try {
    r = await apiRequest(sock, method, p);
  } catch {
    return undefined; // no daemon on that socket
  }
  if (r.status >= 300) throw new NydusError('ERR_DAEMON', `daemon API ${method} ${p}: HTTP ${r.status}: ${r.body?.message ?? JSON.stringify(r.body)}`, { status: r.status });
  return r.body;
}

function ago(iso: string | null | undefined): string {
  if (!iso) return 'never';
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 120) return `${s} s ago`;
  if (s < 7200) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

const pct = (r: number | null | undefined): string => (typeof r === 'number' ? `${(r * 100).toFixed(1)}%` : '?');

/** The text form of a usage report (src/daemon/cache-usage.ts CacheUsage). */
export function printUsage(u: any): void {
  const w = (s: string): boolean => process.stdout.write(s + '\n');
  const fsu = u.filesystem;
  w(`cache ${u.cache_dir} (${u.frontend ?? 'unknown'} layout, ${u.source === 'daemon' ? 'from the running daemon' : 'offline: no daemon'})`);
  if (fsu) {
    w(`filesystem ${fsu.type}: ${human(fsu.used_bytes)} of ${human(fsu.total_bytes)} used (${pct(fsu.used_ratio)}), ${human(fsu.avail_bytes)} available; files ${fsu.files_used} of ${fsu.files_total} (${pct(fsu.files_used_ratio)})`);
  }
  const t = u.totals;
  w(`${t.blobs} blob(s), ${human(t.disk_bytes)} on disk${t.unreferenced_blobs ? `; ${t.unreferenced_blobs} unreferenced (${human(t.unreferenced_bytes)}): \`nydus-ts cache gc\` removes them` : ''}`);
  if (u.watermarks) {
    const wm = u.watermarks;
    w(`watermarks: space high ${pct(wm.space_high)} low ${pct(wm.space_low)}, files high ${pct(wm.files_high)} low ${pct(wm.files_low)}${wm.above_high ? ' — above high, culling' : ''}`);
  }
  for (const i of u.images ?? []) {
    w(`image ${i.id}${i.domain_id ? ` (domain ${i.domain_id})` : ''}${i.mounted ? ', mounted' : ''}: ${human(i.disk_bytes)} on disk, ${i.chunks_present ?? '?'}/${i.chunk_count ?? '?'} chunks, last access ${ago(i.last_access)}`);
  }
  for (const b of u.blobs ?? []) {
    const chunks = b.chunk_count != null ? `${b.chunks_present}/${b.chunk_count} chunks` : `${b.pages_present}/${b.pages} pages`;
    const state = [b.mounted ? 'mounted' : '', b.referenced ? `images ${b.images.join(',')}` : 'unreferenced'].filter(Boolean).join(', ');
    w(`blob ${b.blob_id}: ${human(b.disk_bytes)} on disk, ${chunks}, last access ${ago(b.last_access)} (${state})`);
  }
}

export function addCacheCommands(program: Command): Command {
  const cache = program
    .command('cache')
    .description('the cache directory: usage (per blob and image, and the filesystem), gc (drop the data of blobs no registered image uses)');

  cache
    .command('usage')
    .description('bytes on disk, chunks present / total and last access per blob and per image, mounted or not; totals for the cache dir and its filesystem (space and files). Asks the daemon on --apisock; with no daemon there, reads --cache-dir directly')
    .option('-A, --apisock <sock>', 'daemon API socket', DEFAULT_APISOCK)
    .option('--cache-dir <dir>', 'cache directory to read when no daemon answers on --apisock', DEFAULT_FSCACHE)
    .option('--json', 'print the report as JSON')
    .action(async (o) => {
      let u = await daemonApi(path.resolve(o.apisock), 'GET', '/api/v1/cache/usage');
      if (u === undefined) {
        const { offlineUsage } = await import('../daemon/cache-usage');
        u = offlineUsage(path.resolve(o.cacheDir));
      }
      if (o.json) process.stdout.write(JSON.stringify(u, null, 2) + '\n');
      else printUsage(u);
    });

  cache
    .command('gc')
    .description('remove the cached data of every blob that no registered image references (fanotify: its sparse file and presence map; fscache: cachefiles `cull` of the object); a blob in use is never removed. Needs the running daemon (it knows what is registered)')
    .option('-A, --apisock <sock>', 'daemon API socket', DEFAULT_APISOCK)
    .option('--dry-run', 'only list what would be removed')
    .option('--json', 'print the report as JSON')
    .action(async (o) => {
      const sock = path.resolve(o.apisock);
      const r = await daemonApi(sock, 'POST', `/api/v1/cache/gc${o.dryRun ? '?dry_run=true' : ''}`);
      if (r === undefined) throw new NydusError('ERR_DAEMON', `no daemon answers on ${sock}: gc needs the daemon, which knows the registered images (start it, or pass --apisock)`, { sock });
      if (o.json) {
        process.stdout.write(JSON.stringify(r, null, 2) + '\n');
        return;
      }
      for (const b of r.removed ?? []) process.stdout.write(`${o.dryRun ? 'would remove' : 'removed'} blob ${b.blob_id}: ${human(b.bytes)}\n`);
      for (const s of r.skipped ?? []) process.stderr.write(`kept blob ${s.blob_id}: ${s.reason}\n`);
      process.stdout.write(`${o.dryRun ? 'would free' : 'freed'} ${human(r.bytes_freed ?? 0)} in ${(r.removed ?? []).length} blob(s)\n`);
    });

  return cache;
}
