/**
 * CLI for start-up optimization: `optimize` (record what a workload reads from a lazy mount,
 * write it as a prefetch list, rebuild the image with those chunks first) and `trace`
 * (start / show / stop an access trace of an existing daemon mount, e.g. a container's rootfs).
 * The implementations (src/optimize/*) load inside the actions.
 */
import { Command, Option } from 'commander';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { NydusError } from '../errors';
import { DEFAULT_IMAGE_WORK_DIR } from '../oci/defaults';
import { DEFAULT_APISOCK, DEFAULT_FSCACHE } from './daemon-commands';
import { Progress, human, emitJson } from './progress';
import type { AccessList } from '../optimize/access-list';
import type { MountTrace } from '../kernel/access-trace';

const collect = (v: string, prev: string[] = []): string[] => [...prev, v];

function jsonTarget(o: { json?: boolean; outputJson?: string }): string | undefined {
  if (o.json && o.outputJson && o.outputJson !== '-') throw new NydusError('ERR_INVALID_ARGUMENT', '--json prints the report on stdout; -J writes it to a file: give one');
  return o.json ? '-' : o.outputJson;
}

/** Map a raw daemon trace onto its bootstrap, and write the list / trace files asked for. */
async function writeTraceOutputs(raw: MountTrace, bootstrapFile: string, o: { saveTrace?: string; saveList?: string }, reference?: string): Promise<AccessList> {
  const { readBootstrap } = await import('../format/bootstrap-reader');
  const { resolveTrace, assertNotEmpty, writeAccessList, writePrefetchList } = await import('../optimize/access-list');
  let bytes: Buffer;
  try {
    bytes = fs.readFileSync(bootstrapFile);
  } catch (e) {
    throw new NydusError('ERR_INVALID_ARGUMENT', `bootstrap ${bootstrapFile}: ${(e as Error).message}`, { path: bootstrapFile });
  }
  const list = resolveTrace(raw, readBootstrap(bytes, { name: bootstrapFile }), bytes, reference);
  assertNotEmpty(list, `trace of ${raw.mountpoint}`);
  if (o.saveTrace) writeAccessList(o.saveTrace, list);
  if (o.saveList) writePrefetchList(o.saveList, list);
  return list;
}

function describeList(list: AccessList): string {
  const s = list.stats;
  return `${s.files_read} files read (${human(s.read_bytes)} in ${list.reads.length} ranges), ${s.files_opened} opened; ${s.read_events} read events, ${s.opens} opens` +
    (s.unmapped_reads ? `, ${s.unmapped_reads} reads outside file data` : '') + (s.dropped ? `, ${s.dropped} events DROPPED (trace limit)` : '');
}

export function addOptimizeCommands(program: Command): void {
  program
    .command('optimize')
    .description('record what a workload reads from a lazy mount of an image (files and byte ranges, in order), write it as a prefetch list, and rebuild the image with those chunks first in its blobs and named in its prefetch table')
    .argument('[command...]', 'the workload, after `--`: run in a chroot of the lazy mount (an overlay with a tmpfs for writes, /proc, /dev, /sys)')
    .option('-I, --image <ref>', 'a nydus image in a registry (or oci:DIR[:TAG] with --trace)')
    .option('-B, --bootstrap <file>', 'a local image: its bootstrap (with --blob-dir)')
    .option('-D, --blob-dir <dir>', 'a local image: the directory holding its blobs')
    .option('--trace <file>', 'do not run a workload: use this trace (--save-trace JSON) or path list (one per line, whole files)')
    .option('--save-trace <file>', 'write the access trace: files, ranges and reads in order (JSON; what --trace and create|convert --prefetch-list take)')
    .option('--save-list <file>', 'write the prefetch list: one path per line, in first-read order (what create --prefetch-patterns takes)')
    .option('--output-bootstrap <file>', 'rebuild: write the optimized bootstrap here (with --output-blob-dir)')
    .option('--output-blob-dir <dir>', 'rebuild: write the blobs of the optimized image here (unchanged ones are copied)')
    .option('--target <ref>', 'rebuild an --image and push it here (registry reference or oci:DIR[:TAG])')
    .addOption(new Option('--prefetch-files <which>', 'rebuild: files the prefetch table names: all files read, only those read whole (a prefetcher fetches whole files), or none').choices(['all', 'whole', 'none']).default('whole'))
    .option('--timeout <seconds>', 'stop the workload after this long and keep the trace (for servers that never exit)')
    .option('--allow-failure', 'keep the trace of a workload that exits non-zero (default: an error, nothing written)')
    .option('-e, --env <KEY=VALUE>', 'environment of the workload (repeatable; PATH and HOME=/root are set)', collect)
    .option('-w, --workdir <dir>', 'working directory of the workload inside the image', '/')
    .option('-u, --user <user[:group]>', 'run the workload as this user (chroot --userspec; working directory /)')
    .option('--insecure', '--image: plain http to the registry (loopback registries use http anyway)')
    .option('--platform <os/arch[/variant]>', '--image: platform to pick (default: this machine\'s)')
    .option('--creds <user:password>', '--image: registry credentials for the lazy mount (else $NYDUS_TS_REGISTRY_CREDS, then the Docker config)')
    .option('--registry-token <token>', '--image: a ready bearer token for the lazy mount')
    .option('-A, --apisock <sock>', 'daemon API socket (a daemon is started on it when none answers)', DEFAULT_APISOCK)
    .option('--cache-dir <dir>', 'cache directory for a daemon started by this command (on ext4, xfs or btrfs)', DEFAULT_FSCACHE)
    .option('--work-dir <dir>', 'scratch space: the mount point, the workload\'s tmpfs, downloaded blobs (removed afterwards)', os.tmpdir())
    .option('--bootstrap-cache <dir>', `--image: where fetched bootstraps are cached (default $NYDUS_TS_WORK_DIR or ${DEFAULT_IMAGE_WORK_DIR})`)
    .option('--json', 'print the report as JSON on stdout (the workload\'s stdout goes to stderr)')
    .option('-J, --output-json <file>', "write the report as JSON ('-' = stdout)")
    .addHelpText('after', `
Examples:
  nydus-ts optimize --image localhost:5000/py:nydus --target localhost:5000/py:nydus-opt \\
      --save-trace py.trace.json -- python3 -c 'import json, sqlite3, asyncio; print("ok")'
  nydus-ts optimize -B image.boot -D blobs --save-list startup.list --output-bootstrap opt.boot --output-blob-dir opt-blobs -- /bin/app --version
  nydus-ts optimize -B image.boot -D blobs --trace py.trace.json --output-bootstrap opt.boot --output-blob-dir opt-blobs

The workload's exit status: non-zero is an error and nothing is written unless --allow-failure;
a workload stopped by --timeout counts as done. A trace with no read is an error.`)
    .action(async (command: string[], o) => {
      const t0 = performance.now();
      const json = jsonTarget(o);
      const local = o.bootstrap !== undefined || o.blobDir !== undefined;
      if (o.image !== undefined && local) throw new NydusError('ERR_INVALID_ARGUMENT', '--image and --bootstrap/--blob-dir are mutually exclusive');
      if (o.image === undefined && !local) throw new NydusError('ERR_INVALID_ARGUMENT', 'no image: give --image REF, or --bootstrap FILE and --blob-dir DIR');
      if (local && (o.bootstrap === undefined || o.blobDir === undefined)) throw new NydusError('ERR_INVALID_ARGUMENT', '--bootstrap and --blob-dir go together');
      if (o.trace !== undefined && command.length) throw new NydusError('ERR_INVALID_ARGUMENT', '--trace replays a recorded trace: give it or a workload (`-- CMD ARGS`), not both');
      if (o.trace === undefined && command.length === 0) throw new NydusError('ERR_INVALID_ARGUMENT', 'no workload: give the command to record after `--` (or --trace FILE)');
      if (o.trace !== undefined && (o.saveTrace || o.saveList)) throw new NydusError('ERR_INVALID_ARGUMENT', '--save-trace/--save-list write a recorded trace; with --trace nothing is recorded');
      const rebuildLocal = o.outputBootstrap !== undefined || o.outputBlobDir !== undefined;
      if (rebuildLocal && (o.outputBootstrap === undefined || o.outputBlobDir === undefined)) throw new NydusError('ERR_INVALID_ARGUMENT', '--output-bootstrap and --output-blob-dir go together');
      if (o.target !== undefined && o.image === undefined) throw new NydusError('ERR_INVALID_ARGUMENT', '--target pushes a rebuilt registry image: it needs --image (for local images use --output-bootstrap/--output-blob-dir)');
      if (!o.saveTrace && !o.saveList && !rebuildLocal && o.target === undefined) {
        throw new NydusError('ERR_INVALID_ARGUMENT', 'nothing to write: give --save-trace, --save-list, --output-bootstrap/--output-blob-dir or --target');
      }
      let timeoutS: number | undefined;
      if (o.timeout !== undefined) {
        timeoutS = Number(o.timeout);
        if (!Number.isFinite(timeoutS) || timeoutS <= 0) throw new NydusError('ERR_INVALID_ARGUMENT', `--timeout ${o.timeout}: expected a positive number of seconds`);
      }
      if (o.image !== undefined && o.image.startsWith('oci:') && command.length) throw new NydusError('ERR_INVALID_ARGUMENT', `--image ${o.image}: an OCI layout cannot be mounted lazily; record on a registry image (or a local bootstrap), then rebuild with --trace`);
      const say = (m: string): void => void process.stderr.write(m + '\n');
      const prog = new Progress('optimize');
      const report: Record<string, unknown> = {};
      const { readAccessOrder, prefetchPathsOf, accessOrderOf } = await import('../optimize/access-list');

      // 1. the access order: recorded now, or read from --trace
      let order: import('../optimize/access-list').AccessOrder;
      if (o.trace !== undefined) {
        order = readAccessOrder(o.trace);
        report.trace = { file: o.trace, kind: order.kind, reads: order.reads.length, files: order.prefetchPaths.length };
      } else {
        const { recordWorkload } = await import('../optimize/record');
        const rec = await recordWorkload({
          source: o.image !== undefined
            ? { kind: 'image', reference: o.image, insecure: o.insecure === true, platform: o.platform, creds: o.creds, registryToken: o.registryToken, bootstrapCache: o.bootstrapCache }
            : { kind: 'local', bootstrap: o.bootstrap, blobDir: o.blobDir },
          sock: path.resolve(o.apisock), cacheDir: path.resolve(o.cacheDir), scratchDir: path.resolve(o.workDir),
          workload: { argv: command, env: o.env, cwd: o.workdir, user: o.user, timeoutS, stdout: json === '-' ? 'stderr' : 'inherit' },
          allowFailure: o.allowFailure === true,
          log: (m) => prog.update(m, true),
        });
        prog.done();
        const list = await writeTraceOutputs(rec.trace, rec.bootstrap, o, rec.reference);
        say(`recorded: ${describeList(list)}${rec.workload.timed_out ? ` (workload stopped after ${timeoutS} s)` : ''}`);
        if (o.saveTrace) say(`wrote the access trace to ${o.saveTrace}`);
        if (o.saveList) say(`wrote the prefetch list (${prefetchPathsOf(list).length} files) to ${o.saveList}`);
        order = accessOrderOf(list, 'the recorded trace');
        report.record = {
          image: rec.reference ?? rec.bootstrap, manifest_digest: rec.manifestDigest ?? null, workload: { argv: command, ...rec.workload },
          stats: list.stats, save_trace: o.saveTrace ?? null, save_list: o.saveList ?? null, timings_ms: rec.timings_ms,
        };
      }

      // 2. the rebuild
      if (rebuildLocal || o.target !== undefined) {
        const warn = (m: string): void => say(`warning: ${m}`);
        if (local) {
          const { relayoutImage } = await import('../optimize/relayout');
          const r = await relayoutImage({
            bootstrap: o.bootstrap, blobDir: o.blobDir, order, outputBootstrap: o.outputBootstrap, outputBlobDir: o.outputBlobDir,
            prefetchFiles: o.prefetchFiles, onWarning: warn, onProgress: (d, t) => prog.update(`rewriting blobs: ${d}/${t} chunks`),
          });
          prog.done();
          say(`optimized image: ${r.bootstrap}, blobs in ${r.blob_dir}: ${r.startup_chunks} start-up chunks (${human(r.startup_compressed_bytes)}) first, ${r.prefetch_files} files in the prefetch table`);
          report.rebuild = r;
        } else {
          const { openSource, openSink, closeAll } = await import('../oci/open');
          const { parsePlatform } = await import('../oci/layout');
          const { rebuildImage } = await import('../optimize/rebuild-image');
          const { hostPlatform } = await import('../oci/image-mount');
          const source = openSource(o.image, { insecure: o.insecure });
          const sink = o.target !== undefined ? openSink(o.target, { insecure: o.insecure }) : undefined;
          try {
            const r = await rebuildImage({
              source, sink, outputBootstrap: o.outputBootstrap, outputBlobDir: o.outputBlobDir, order, prefetchFiles: o.prefetchFiles,
              platform: o.platform ? parsePlatform(o.platform) : hostPlatform(), workDir: path.resolve(o.workDir),
              onProgress: (m) => prog.update(m), onWarning: warn,
            });
            prog.done();
            const changed = r.blobs.filter((b) => b.changed).length;
            say(`optimized image: ${r.relayout.startup_chunks} start-up chunks (${human(r.relayout.startup_compressed_bytes)}) first in ${changed} rewritten blob(s) of ${r.blobs.length}, ${r.relayout.prefetch_files} files in the prefetch table; ${human(r.bytes.downloaded)} downloaded, ${human(r.bytes.pushed)} pushed`);
            if (r.target) process.stderr.write(`${r.target}@${r.target_manifest_digest}\n`);
            report.rebuild = r;
          } finally {
            await closeAll(source, sink);
          }
        }
      }
      report.duration_s = (performance.now() - t0) / 1000;
      emitJson(json, report);
    });

  const trace = program
    .command('trace')
    .description('access traces of a daemon mount (fanotify front end): start one, run the workload (e.g. start a container on the mount), stop it and write the prefetch list');
  const common = (c: Command): Command => c
    .argument('<mountpoint>', 'a mount the daemon made (nydus-ts mount, or a container rootfs\'s lower mount)')
    .option('-A, --apisock <sock>', 'daemon API socket', DEFAULT_APISOCK);
  const outputs = (c: Command): Command => c
    .option('-B, --bootstrap <file>', 'map the trace onto this bootstrap (default: the one the daemon mounted)')
    .option('--save-trace <file>', 'write the access trace (JSON: files, ranges, reads in order)')
    .option('--save-list <file>', 'write the prefetch list (one path per line, first-read order)')
    .option('--raw <file>', 'write the daemon\'s raw trace (blob ranges and opened inodes, in kernel order)')
    .option('--json', 'print the access trace as JSON on stdout')
    .option('-J, --output-json <file>', "write the access trace as JSON ('-' = stdout)");
  common(trace.command('start').description('start recording what is read from a mount (start it before the workload touches the mount: cached pages raise no events)'))
    .option('--json', 'print the daemon\'s answer (the empty trace: mount, image, blobs) as JSON')
    .action(async (mnt: string, o) => {
      const { DaemonApiClient } = await import('../daemon/api-client');
      const c = new DaemonApiClient(path.resolve(o.apisock));
      let started: MountTrace;
      try {
        started = await c.startTrace(path.resolve(mnt));
      } finally {
        c.close();
      }
      process.stderr.write(`tracing ${started.mountpoint} (image ${started.id}); \`nydus-ts trace stop ${mnt} --save-trace FILE\` when the workload is done\n`);
      emitJson(o.json ? '-' : undefined, started);
    });
  for (const [name, stop] of [['show', false], ['stop', true]] as const) {
    outputs(common(trace.command(name).description(stop ? 'stop recording and write the trace' : 'write the trace so far (recording goes on)')))
      .action(async (mnt: string, o) => {
        const json = jsonTarget(o);
        const { DaemonApiClient } = await import('../daemon/api-client');
        const c = new DaemonApiClient(path.resolve(o.apisock));
        let raw: MountTrace;
        try {
          raw = stop ? await c.stopTrace(path.resolve(mnt)) : await c.getTrace(path.resolve(mnt));
        } finally {
          c.close();
        }
        if (o.raw) (await import('../util/atomic-file')).writeFileAtomic(o.raw, JSON.stringify(raw) + '\n');
        const list = await writeTraceOutputs(raw, o.bootstrap ?? raw.bootstrap, o);
        process.stderr.write(`${raw.mountpoint}: ${describeList(list)}\n`);
        emitJson(json, list);
      });
  }
}
