#!/usr/bin/env node
/**
 * nydus-ts command line: a thin layer over the library in src/. Each command prints a short
 * human summary; `--output-json FILE` (or `-` for stdout) writes the machine-readable report.
 */
import { Command, Option } from 'commander';
import * as fs from 'node:fs';
import type { SourceType } from '../builder/build';
import type { CompressorName, DigesterName } from '../format/constants';
import { VERSION } from '../version';
import { NydusError } from '../errors';
import { Progress, human, emitJson } from './progress';
import { addDaemonCommands } from './daemon-commands';
import { addOciCommands } from './oci-commands';
import { addSnapshotterCommands } from './snapshotter-commands';
import { addCacheCommands } from './cache-commands';
import { addScrubCommand } from './scrub-command';
import { addOptimizeCommands } from './optimize-commands';

// Start-up loads only commander and the light modules above: each command's implementation is
// imported inside its action (`await import(…)`, a lazy require), so `--version`, `--help` and
// e.g. `mount` do not pay for the builder, the tools, the daemon or the converter.

function readPatterns(file: string | undefined): string[] | undefined {
  if (!file) return undefined;
  let text: string;
  try {
    text = fs.readFileSync(file === '-' ? 0 : file, 'utf8');
  } catch (e) {
    throw new NydusError('ERR_INVALID_ARGUMENT', `--prefetch-patterns ${file}: ${(e as Error).message}`);
  }
  return text.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#')).map((l) => {
    if (!l.startsWith('/')) throw new NydusError('ERR_INVALID_ARGUMENT', `--prefetch-patterns ${file}: "${l}" must be an absolute path`);
    return l;
  });
}

export function buildProgram(): Command {
  const program = new Command();
  program
    .name('nydus-ts')
    .description('Lazy-loading container images: build, check and serve RAFS v6 (Nydus-compatible) images')
    .version(VERSION)
    .showHelpAfterError()
    .configureHelp({ sortSubcommands: false });

  program
    .command('create')
    .description('build a RAFS v6 bootstrap and a chunked data blob from a directory, tar or tar.gz')
    .argument('<source>', "directory, tar or tar.gz file ('-' reads a tar from stdin)")
    .addOption(new Option('-t, --type <type>', 'source type').choices(['dir', 'tar', 'targz', 'dir-rafs', 'tar-rafs', 'targz-rafs']))
    .requiredOption('-B, --bootstrap <file>', 'bootstrap output file')
    .requiredOption('-D, --blob-dir <dir>', 'directory for the data blob (named by its sha256)')
    .option('--chunk-size <size>', 'chunk size, power of two 0x1000..0x1000000', '0x100000')
    .addOption(new Option('-c, --compressor <algo>', 'chunk compressor').choices(['zstd', 'lz4_block', 'none']).default('zstd'))
    .addOption(new Option('--digester <algo>', 'chunk digest').choices(['blake3', 'sha256']).default('blake3'))
    .option('--parent-bootstrap <file>', 'build this layer on top of a parent image (whiteouts applied, chunks deduplicated)')
    .option('--chunk-dict <file>', 'deduplicate against the chunks of another bootstrap (nydus: bootstrap=FILE)')
    .option('--prefetch-patterns <file>', "absolute paths, one per line, stored in the prefetch table and written first ('-' = stdin)")
    .option('--prefetch-list <file>', 'start-up order from `nydus-ts optimize` (--save-trace JSON: byte ranges in access order, or paths one per line): those chunks first in the blob, the files in the prefetch table')
    .addOption(new Option('--whiteout-spec <spec>', 'whiteout convention of the source').choices(['oci', 'overlayfs', 'none']).default('oci'))
    .option('--no-blob-toc', 'omit the chunk digest array and TOC from the blob (nydus default without --features blob-toc)')
    .option('--threads <n>', 'worker threads for hashing and compression (default: CPU count)')
    .option('-J, --output-json <file>', "write the build report as JSON ('-' = stdout)")
    .action(async (source: string, o) => {
      // the build runs on a thread of its own (src/builder/build-thread.ts: bounded memory)
      const { createImageOnThread } = await import('../builder/build-thread');
      const { parseChunkSize } = await import('../builder/chunk-size');
      let type: SourceType = 'dir';
      const t = (o.type as string | undefined)?.replace(/-rafs$/, '');
      if (t) type = t as SourceType;
      else if (source === '-') type = 'tar';
      else if (fs.existsSync(source) && fs.statSync(source).isFile()) type = /\.(tgz|gz)$/.test(source) ? 'targz' : 'tar';
      const prog = new Progress('create');
      // --prefetch-list: build, then rewrite the new blob in start-up order (src/optimize/create-optimized.ts)
      const build = o.prefetchList ? (await import('../optimize/create-optimized')).createOptimized(o.prefetchList, o.prefetchPatterns !== undefined) : createImageOnThread;
      const report = await build({
        type, source, bootstrap: o.bootstrap, blobDir: o.blobDir, chunkSize: parseChunkSize(o.chunkSize),
        compressor: o.compressor as CompressorName, digester: o.digester as DigesterName,
        parentBootstrap: o.parentBootstrap, chunkDict: o.chunkDict, prefetchPatterns: readPatterns(o.prefetchPatterns),
        whiteoutSpec: o.whiteoutSpec, blobToc: o.blobToc, threads: o.threads ? Number(o.threads) : undefined,
        onWarning: (m) => process.stderr.write(`warning: ${m}\n`),
        onProgress: (s) => prog.update(`${s.files} files, ${human(s.bytesIn)} read, ${s.chunks} chunks (${s.dedupChunks} deduplicated)`),
      });
      prog.done();
      const s = report.stats;
      process.stderr.write(
        `bootstrap ${report.bootstrap} (${human(s.bootstrap_size)}, ${s.inodes} inodes)\n` +
        (report.blob_id ? `blob ${report.blob_id} (${human(s.blob_compressed_size)} compressed, ${human(s.blob_uncompressed_size)} uncompressed, ${s.new_chunks} chunks)\n` : 'no new blob (no new chunk data)\n') +
        `${s.chunks} chunks, ${s.dedup_chunks} deduplicated (${human(s.dedup_uncompressed_size)})\n`,
      );
      emitJson(o.outputJson, report);
    });

  program
    .command('merge')
    .description('merge per-layer bootstraps (lower to upper) into one image, applying OCI whiteouts')
    .argument('<bootstraps...>', 'layer bootstraps, lowest first')
    .requiredOption('-B, --bootstrap <file>', 'merged bootstrap output')
    .option('--blob-digests <list>', 'comma-separated blob ids replacing each layer bootstrap\'s blob id')
    .option('--parent-bootstrap <file>', 'a bootstrap placed below the first layer')
    .option('--prefetch-patterns <file>', 'absolute paths for the prefetch table')
    .option('-J, --output-json <file>', "write the report as JSON ('-' = stdout)")
    .action(async (boots: string[], o) => {
      const { mergeImages } = await import('../builder/build');
      const report = mergeImages({
        bootstraps: boots, output: o.bootstrap, parentBootstrap: o.parentBootstrap,
        blobDigests: o.blobDigests ? String(o.blobDigests).split(',').filter(Boolean) : undefined,
        prefetchPatterns: readPatterns(o.prefetchPatterns),
      });
      process.stderr.write(`merged ${boots.length} layers into ${report.bootstrap}: ${report.inodes} inodes, ${report.blobs.length} blobs\n`);
      emitJson(o.outputJson, report);
    });

  program
    .command('check')
    .description('validate a bootstrap (and, with --blob-dir, every chunk of every blob); exit 0 only if all is well')
    .argument('<bootstrap>', 'bootstrap file, or a blob with an inlined bootstrap')
    .option('-D, --blob-dir <dir>', 'verify the blobs found here (<dir>/<blob id>)')
    .option('-v, --verbose', 'list every file and blob as it is checked')
    .option('-J, --output-json <file>', "write the report as JSON ('-' = stdout)")
    .action(async (file: string, o) => {
      const { checkImage } = await import('../tools/check');
      const report = await checkImage(file, o.blobDir, o.verbose ? (s) => process.stdout.write(s + '\n') : undefined);
      if (o.outputJson !== '-') {
        for (const b of report.blob_details) {
          process.stdout.write(`blob ${b.blob_id}: ${b.compressed_size} compressed, ${b.uncompressed_size} uncompressed, chunk size 0x${b.chunk_size.toString(16)}, ${b.chunk_count} chunks, features ${b.features}${b.verified_chunks !== null ? `, ${b.verified_chunks} chunks verified` : ''}\n`);
        }
        for (const w of report.warnings) process.stderr.write(`warning: ${w}\n`);
        for (const e of report.errors) process.stderr.write(`error: ${e}\n`);
        process.stdout.write(report.ok ? `${file}: OK (${report.inodes} inodes, ${report.blobs.length} blobs)\n` : `${file}: ${report.errors.length} problem(s) found\n`);
      }
      emitJson(o.outputJson, report);
      if (!report.ok) process.exitCode = 1;
    });

  const inspect = program
    .command('inspect')
    .description('show what is inside a bootstrap: stats | ls [-R] PATH | stat PATH | blobs | chunks PATH | prefetch')
    .argument('<bootstrap>', 'bootstrap file, or a blob with an inlined bootstrap')
    .argument('[query...]', 'stats (default), ls [-R] PATH, stat PATH, blobs, chunks PATH, prefetch')
    .option('-R, --recursive', 'with ls: list the whole subtree')
    .option('--json', 'print JSON instead of text')
    .option('-J, --output-json <file>', "write the result as JSON ('-' = stdout)");
  inspect.action(async (file: string, query: string[], o) => {
    const { openImage } = await import('../tools/image');
    const { inspectLs, inspectStat, inspectChunks, inspectBlobs, inspectStats, inspectPrefetch, formatEntry } = await import('../tools/inspect');
    const img = openImage(file);
    const [cmd = 'stats', ...rest] = query;
    const recursive = o.recursive === true;
    const arg = rest[0];
    const need = (): string => {
      if (!arg) throw new NydusError('ERR_INVALID_ARGUMENT', `inspect ${cmd} needs a PATH`);
      return arg;
    };
    let result: unknown;
    let text: string;
    switch (cmd) {
      case 'stats':
        result = inspectStats(img);
        text = Object.entries(result as Record<string, unknown>).map(([k, v]) => `${k}: ${typeof v === 'object' ? JSON.stringify(v) : v}`).join('\n');
        break;
      case 'ls': {
        const entries = inspectLs(img, arg ?? '/', recursive);
        result = entries;
        text = entries.map(formatEntry).join('\n');
        break;
      }
      case 'stat':
        result = inspectStat(img, need());
        text = JSON.stringify(result, null, 2);
        break;
      case 'chunks':
        result = inspectChunks(img, need());
        text = (result as Record<string, unknown>[]).map((c) => `${c.file_offset}\tblob ${c.blob_index}\tci ${c.ci_index}\t${c.compressed_offset}+${c.compressed_size} -> ${c.uncompressed_offset}+${c.uncompressed_size}\t${c.digest}`).join('\n');
        break;
      case 'blobs':
        result = inspectBlobs(img);
        text = (result as Record<string, unknown>[]).map((b) => Object.entries(b).map(([k, v]) => `${k}: ${v}`).join('\n')).join('\n\n');
        break;
      case 'prefetch':
        result = inspectPrefetch(img);
        text = (result as { nid: number; path: string | null }[]).map((p) => `${p.nid}\t${p.path ?? '?'}`).join('\n');
        break;
      default:
        throw new NydusError('ERR_INVALID_ARGUMENT', `inspect: unknown query "${cmd}" (use stats, ls, stat, blobs, chunks, prefetch)`);
    }
    if (o.json) process.stdout.write(JSON.stringify(result, null, 2) + '\n');
    else if (text) process.stdout.write(text + '\n');
    emitJson(o.outputJson, result);
  });

  program
    .command('export')
    .description('write a plain EROFS disk image (bootstrap + uncompressed blob data) that mounts with -o loop, no daemon')
    .requiredOption('-B, --bootstrap <file>', 'bootstrap')
    .requiredOption('-D, --blob-dir <dir>', 'directory holding the blobs')
    .requiredOption('-O, --output <file>', 'disk image to write')
    .option('-J, --output-json <file>', "write the report as JSON ('-' = stdout)")
    .action(async (o) => {
      const { exportImage } = await import('../tools/export');
      const prog = new Progress('export');
      const r = await exportImage(o.bootstrap, o.blobDir, o.output, (d, t) => prog.update(`${d}/${t} chunks`));
      prog.done();
      process.stderr.write(`wrote ${r.output} (${human(r.size)})\n`);
      emitJson(o.outputJson, r);
    });

  program
    .command('unpack')
    .description('write the image back out as a tar (pax: xattrs, nanosecond mtimes, hardlinks)')
    .requiredOption('-B, --bootstrap <file>', 'bootstrap')
    .option('-D, --blob-dir <dir>', 'directory holding the blobs')
    .requiredOption('-O, --output <file>', 'tar file to write')
    .option('-J, --output-json <file>', "write the report as JSON ('-' = stdout)")
    .action(async (o) => {
      const { unpackImage } = await import('../tools/unpack');
      const prog = new Progress('unpack');
      const r = await unpackImage(o.bootstrap, o.blobDir, o.output, (b) => prog.update(human(b)));
      prog.done();
      process.stderr.write(`wrote ${r.output}: ${r.entries} entries, ${human(r.bytes)}${r.skipped_sockets ? `, ${r.skipped_sockets} sockets skipped (tar cannot hold them)` : ''}\n`);
      emitJson(o.outputJson, r);
    });

  addDaemonCommands(program);
  addOciCommands(program);
  addSnapshotterCommands(program);
  addOptimizeCommands(program);
  // `cache usage|gc` (cache-commands.ts); further `cache` subcommands attach to this group
  const cache = addCacheCommands(program);
  addScrubCommand(cache);
  return program;
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  program.exitOverride();
  try {
    await program.parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (e) {
    const err = e as { code?: string; exitCode?: number; message?: string };
    if (typeof err.code === 'string' && err.code.startsWith('commander.')) {
      // help/version print and exit 0; usage errors were already printed by commander
      return err.exitCode ?? 1;
    }
    if (e instanceof NydusError) {
      process.stderr.write(`nydus-ts: error: ${e.message}\n`);
      return 1;
    }
    process.stderr.write(`nydus-ts: internal error: ${(e as Error)?.stack ?? String(e)}\n`);
    return 2;
  }
}

if (require.main === module) {
  main(process.argv).then((code) => {
    process.exitCode = code;
  });
}
