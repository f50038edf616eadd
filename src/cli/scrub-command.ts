/**
 * `nydus-ts cache scrub`: ask the running daemon to re-read every cached chunk, verify its digest
 * and evict damaged ones (src/daemon/scrub.ts), follow it with a progress line on a terminal,
 * and print what it found.
 */
import { Command } from 'commander';
import * as path from 'node:path';
import { NydusError } from '../errors';
import { Progress, human } from './progress';
import { DEFAULT_APISOCK, apiRequest } from './daemon-commands';
import { DEFAULT_MANUAL_SCRUB_RATE_MB, parseScrubRate } from '../daemon/scrub-config';

const POLL_MS = 300;

async function call(sock: string, method: string, p: string): Promise<any> {
  let r: { status: number; body: any };
  try {
    r = await apiRequest(sock, method, p);
  } catch (e) {
    throw new NydusError('ERR_DAEMON', `no daemon answers on ${sock}: scrub runs in the daemon (start it, or pass --apisock): ${(e as Error).message}`, { sock });
  }
  if (r.status >= 300) throw new NydusError('ERR_DAEMON', `daemon API ${method} ${p}: HTTP ${r.status}: ${r.body?.message ?? JSON.stringify(r.body)}`, { status: r.status });
  return r.body;
}

function printReport(r: any): void {
  const out = (s: string): boolean => process.stdout.write(s + '\n');
  for (const f of r.findings ?? []) {
    out(`damaged: blob ${f.blob_id} chunk ${f.chunk_index} at ${f.offset}+${f.size}: ${f.actual_digest ? `digest ${f.actual_digest}, expected ${f.expected_digest}` : `unreadable (${f.error})`}${f.evicted ? ' — evicted, the next read fetches it again' : f.error ? ` — ${f.error}` : ''}`);
  }
  for (const s of r.skipped ?? []) process.stderr.write(`skipped blob ${s.blob_id}: ${s.reason}\n`);
  out(`scrub ${r.state}: ${r.blobs_done}/${r.blobs_total} blob(s), ${r.chunks_verified} chunk(s) verified (${human(r.bytes_verified)}), ${r.damaged_chunks} damaged chunk(s)${r.damaged_chunks > r.findings.length ? ` (the first ${r.findings.length} listed)` : ''}${r.chunks_unverifiable ? `, ${r.chunks_unverifiable} without a recorded digest` : ''}, ${r.skipped.length} blob(s) skipped${r.error ? `: ${r.error}` : ''}`);
  if (r.damaged_chunks) {
    process.stderr.write('note: bytes of damaged chunks that are already in the page cache stay there until evicted: run `echo 3 > /proc/sys/vm/drop_caches` (or remount the affected images) so that readers get the refetched bytes\n');
  }
}

export function addScrubCommand(cache: Command): void {
  cache
    .command('scrub')
    .description('re-read every chunk in the cache, verify its digest against the image, and evict damaged ones so the next read fetches them again from the backend; runs in the daemon')
    .option('-A, --apisock <sock>', 'daemon API socket', DEFAULT_APISOCK)
    .option('-I, --image <id>', 'only the blobs of this registered image (its fsid / registration id)')
    .option('--rate <MB/s>', `read at most this many MB/s from the cache (0: unlimited)`, String(DEFAULT_MANUAL_SCRUB_RATE_MB))
    .option('--status', 'show the running or last scrub instead of starting one')
    .option('--cancel', 'cancel the running scrub')
    .option('--json', 'print the report as JSON')
    .action(async (o) => {
      const sock = path.resolve(o.apisock);
      const emit = (r: any): void => {
        if (o.json) process.stdout.write(JSON.stringify(r, null, 2) + '\n');
        else if (r) printReport(r);
        else process.stdout.write('no scrub has run since the daemon started\n');
      };
      if (o.status || o.cancel) {
        if (o.status && o.cancel) throw new NydusError('ERR_INVALID_ARGUMENT', '--status and --cancel: give one');
        emit(await call(sock, o.cancel ? 'DELETE' : 'GET', '/api/v1/cache/scrub'));
        return;
      }
      const rate = parseScrubRate('--rate', o.rate);
      const q = new URLSearchParams({ rate: String(rate) });
      if (o.image !== undefined) q.set('image', o.image);
      let r = await call(sock, 'POST', `/api/v1/cache/scrub?${q}`);
      const id = r.id;
      const prog = new Progress('scrub');
      const onSigint = (): void => {
        // the scrub runs in the daemon: stop it too, then leave
        void apiRequest(sock, 'DELETE', '/api/v1/cache/scrub').finally(() => process.exit(130));
      };
      process.once('SIGINT', onSigint);
      try {
        while (r.state === 'running') {
          prog.update(`blob ${Math.min(r.blobs_done + 1, r.blobs_total)}/${r.blobs_total}, ${r.chunks_done}/${r.chunks_total} chunks, ${human(r.bytes_verified)} verified, ${r.damaged_chunks} damaged`);
          await new Promise((res) => setTimeout(res, POLL_MS));
          r = await call(sock, 'GET', '/api/v1/cache/scrub');
          if (!r || r.id !== id) throw new NydusError('ERR_DAEMON', `scrub ${id} was interrupted (the daemon's serving process restarted); run it again`);
        }
      } finally {
        process.off('SIGINT', onSigint);
        prog.done();
      }
      emit(r);
      if (r.state !== 'done') process.exitCode = 1;
    });
}
