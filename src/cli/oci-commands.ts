/**
 * `convert` and `check-image`: the nydusify commands. Image references are `oci:DIR[:TAG]`
 * (an OCI layout directory) or registry references (`host[:port]/repo[:tag]`, Docker CLI rules).
 */
import { Command, Option } from 'commander';
import * as os from 'node:os';
import type { ConvertProgress } from '../oci/convert';
import type { Closable } from '../oci/open';
import type { ImageSource } from '../oci/types';
import type { CompressorName, DigesterName } from '../format/constants';
import { Progress, human, emitJson } from './progress';
import { NydusError } from '../errors';

function bar(done: number, total: number, width = 16): string {
  const f = total > 0 ? Math.min(1, done / total) : 1;
  const n = Math.round(f * width);
  return `[${'#'.repeat(n)}${'.'.repeat(width - n)}] ${String(Math.floor(f * 100)).padStart(3)}%`;
}

/** One redrawn status line: how many layers are done and a bar per layer in flight. */
class LayerBars {
  private readonly prog = new Progress('convert');
  private readonly active = new Map<number, { bytes: number; total: number }>();
  private done = 0;
  private count = 0;
  private pushing: string | undefined;
  update(p: ConvertProgress): void {
    if (p.phase === 'layer') {
      this.count = p.count;
      if (p.done) {
        this.active.delete(p.index);
        this.done++;
      } else {
        this.active.set(p.index, { bytes: p.bytes, total: p.total });
      }
      const bars = [...this.active].sort(([a], [b]) => a - b).map(([i, s]) => `layer ${i + 1} ${bar(s.bytes, s.total)} ${human(s.bytes)}/${human(s.total)}`);
      this.prog.update(`${this.done}/${this.count} layers${bars.length ? ' | ' + bars.join(' | ') : ''}`, p.done);
    } else if (p.phase === 'merge') {
      this.prog.update(`merging ${this.count} layer bootstraps`, true);
    } else {
      this.pushing = `push ${p.what} ${p.digest.slice(7, 19)} ${bar(p.bytes, p.total)} ${human(p.bytes)}/${human(p.total)}`;
      this.prog.update(this.pushing, p.done);
    }
  }
  finish(): void {
    this.prog.done();
  }
}

export function addOciCommands(program: Command): void {
  program
    .command('convert')
    .description('convert an OCI/Docker image into a nydus (RAFS v6) image, layer by layer, streamed (like nydusify convert)')
    .requiredOption('--source <ref>', 'source image: registry reference or oci:DIR[:TAG]')
    .requiredOption('--target <ref>', 'target image: registry reference or oci:DIR[:TAG]')
    .option('--platform <os/arch[/variant]>', 'platform to convert from a multi-platform source', 'linux/amd64')
    .addOption(new Option('--compressor <algo>', 'chunk compressor').choices(['zstd', 'lz4_block', 'none']).default('zstd'))
    .addOption(new Option('--digester <algo>', 'chunk digest').choices(['blake3', 'sha256']).default('blake3'))
    .option('--chunk-size <size>', 'chunk size, power of two 0x1000..0x1000000', '0x100000')
    .option('--chunk-dict-ref <ref>', 'a nydus image whose chunks are reused (its blobs are referenced, copied to the target if missing)')
    .option('--insecure', 'talk plain http to the registries')
    .option('--work-dir <dir>', 'scratch space for layer bootstraps and blobs (removed afterwards)', os.tmpdir())
    .option('--concurrency <n>', 'layers converted at once', '2')
    .option('--prefetch-list <file>', 'start-up order from `nydus-ts optimize` (--save-trace JSON, or paths one per line): those chunks first in the blobs, the files in the prefetch table')
    .option('-J, --output-json <file>', "write the summary as JSON ('-' = stdout)")
    .action(async (o) => {
      // implementations load on use (see main.ts)
      const { parsePlatform } = await import('../oci/layout');
      const { openSource, openSink, closeAll } = await import('../oci/open');
      const { convert } = await import('../oci/convert');
      const { parseChunkSize } = await import('../builder/build');
      const platform = parsePlatform(o.platform);
      const concurrency = Number(o.concurrency);
      if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 64) throw new NydusError("ERR_INVALID_ARGUMENT", `--concurrency ${o.concurrency}: expected 1..64`);
      const prefetchOrder = o.prefetchList ? (await import('../optimize/access-list')).readAccessOrder(o.prefetchList) : undefined;
      const opened: Closable[] = [];
      try {
        const source = openSource(o.source, { insecure: o.insecure });
        opened.push(source);
        const sink = openSink(o.target, { insecure: o.insecure });
        opened.push(sink);
        let dict: (ImageSource & Closable) | undefined;
        if (o.chunkDictRef) {
          dict = openSource(o.chunkDictRef, { insecure: o.insecure });
          opened.push(dict);
        }
        const bars = new LayerBars();
        const summary = await convert(source, sink, {
          platform, compressor: o.compressor as CompressorName, digester: o.digester as DigesterName,
          chunkSize: parseChunkSize(o.chunkSize), chunkDictSource: dict, workDir: o.workDir, concurrency, prefetchOrder,
          onProgress: (p) => bars.update(p),
          onWarning: (m) => process.stderr.write(`warning: ${m}\n`),
        }).finally(() => bars.finish());
        if (o.outputJson !== '-') {
          for (const l of summary.layers) {
            process.stderr.write(`layer ${l.index + 1}/${summary.layers.length} ${l.source_digest.slice(0, 19)} (${human(l.source_size)}): ` +
              (l.blob_id ? `blob ${l.blob_id.slice(0, 12)} ${human(l.blob_size)}, ${l.new_chunks}/${l.chunks} chunks new` : 'no new data, no blob') + '\n');
          }
          const pushed = summary.blobs.filter((b) => b.pushed);
          const refs = summary.blobs.filter((b) => b.reference).length;
          process.stderr.write(`bootstrap layer ${summary.bootstrap.digest.slice(0, 19)} (${human(summary.bootstrap.size)}, ${summary.bootstrap.inodes} inodes)\n` +
            `${summary.blobs.length} blobs${refs ? ` (${refs} from the chunk dictionary)` : ''}: ${pushed.length} uploaded (${human(pushed.reduce((n, b) => n + b.size, 0))}), ${summary.blobs.length - pushed.length} already in the target\n`);
          process.stdout.write(`${summary.target}@${summary.target_manifest_digest}\n`);
        }
        emitJson(o.outputJson, summary);
      } finally {
        await closeAll(...opened);
      }
    });

  program
    .command('check-image')
    .description('check a converted image against its source (like nydusify check): manifest, bootstrap, blobs and every entry; exit 1 on any difference')
    .requiredOption('--source <ref>', 'the original image: registry reference or oci:DIR[:TAG]')
    .requiredOption('--target <ref>', 'the nydus image: registry reference or oci:DIR[:TAG]')
    .option('--platform <os/arch[/variant]>', 'platform to check', 'linux/amd64')
    .option('--insecure', 'talk plain http to the registries')
    .option('--work-dir <dir>', 'scratch space for the target blobs (removed afterwards)', os.tmpdir())
    .option('-J, --output-json <file>', "write the report as JSON ('-' = stdout)")
    .action(async (o) => {
      const { parsePlatform } = await import('../oci/layout');
      const { openSource, closeAll } = await import('../oci/open');
      const { checkConversion } = await import('../oci/convert');
      const platform = parsePlatform(o.platform);
      const opened: Closable[] = [];
      try {
        const source = openSource(o.source, { insecure: o.insecure });
        opened.push(source);
        const target = openSource(o.target, { insecure: o.insecure });
        opened.push(target);
        const prog = new Progress('check-image');
        const r = await checkConversion(source, target, { platform, workDir: o.workDir, onProgress: (m) => prog.update(m, true) }).finally(() => prog.done());
        if (o.outputJson !== '-') {
          for (const w of r.warnings) process.stderr.write(`warning: ${w}\n`);
          for (const e of r.errors) process.stdout.write(`error: ${e}\n`);
          for (const d of r.differences) process.stdout.write(`diff: ${d}\n`);
          process.stdout.write(r.ok
            ? `${r.target}: OK, same as ${r.source} (${r.entries.source} entries, ${r.files_compared} files, ${human(r.bytes_compared)} compared)\n`
            : `${r.target}: ${r.errors.length} error(s), ${r.differences.length} difference(s) against ${r.source}\n`);
        }
        emitJson(o.outputJson, r);
        if (!r.ok) process.exitCode = 1;
      } finally {
        await closeAll(...opened);
      }
    });
}
