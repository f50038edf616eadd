/**
 * `create` on a worker thread of its own (the CLI's way to run createImage). The build keeps a
 * tree of every entry on its heap while it streams the data; on the main thread V8 lets the
 * young generation grow to 3 × 16 MiB as those objects survive, and its size cannot be set
 * once node runs. A worker's can (resourceLimits): the build's peak memory stays flat as trees
 * grow, and fewer fresh pages are touched (bench/README.md, "Build memory").
 *
 * The main thread only relays: progress and warnings come back as messages, the report or the
 * error (a NydusError keeps its code and context) when the build ends; a tar on stdin ('-') is
 * piped into the worker's stdin.
 */
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import type { CreateOptions, BuildReport } from './build';
import type { SinkStats } from './chunk-sink';
import { reviveError, serializeError, type SerializedError } from '../codec/thread-errors';

/** The build thread's young generation (two semi-spaces of a third each, plus large objects). */
const YOUNG_GENERATION_MB = 6;

/** What crosses to the thread: the options without callbacks and streams; a chunk size as given. */
type ThreadOptions = Omit<CreateOptions, 'onProgress' | 'onWarning' | 'stdin' | 'chunkSize'> & { chunkSize?: number | string };

type FromThread =
  | { type: 'progress'; stats: SinkStats }
  | { type: 'warning'; msg: string }
  | { type: 'done'; report: BuildReport }
  | { type: 'error'; error: SerializedError };

/**
 * createImage() on a worker thread. `chunkSize` may be the CLI's string (validated there, like
 * every other option). The callbacks run on the calling thread.
 */
export function createImageOnThread(opts: ThreadOptions & Pick<CreateOptions, 'onProgress' | 'onWarning' | 'stdin'>): Promise<BuildReport> {
  const { onProgress, onWarning, stdin, ...plain } = opts;
  const fromStdin = plain.source === '-';
  const worker = new Worker(__filename, {
    workerData: { nydusBuild: plain },
    resourceLimits: { maxYoungGenerationSizeMb: YOUNG_GENERATION_MB },
    stdin: fromStdin,
  });
  if (fromStdin) (stdin ?? process.stdin).pipe(worker.stdin!);
  return new Promise<BuildReport>((resolve, reject) => {
    let settled = false;
    const settle = (f: () => void): void => {
      if (!settled) f();
      settled = true;
    };
    worker.on('message', (m: FromThread) => {
      if (m.type === 'progress') onProgress?.(m.stats);
      else if (m.type === 'warning') onWarning?.(m.msg);
      else if (m.type === 'done') settle(() => resolve(m.report));
      else if (m.type === 'error') settle(() => reject(reviveError(m.error, 'the build thread')));
    });
    worker.on('error', (e) => settle(() => reject(e)));
    worker.on('exit', (code) => settle(() => reject(new Error(`the build thread exited with code ${code} before it finished`))));
  });
}


async function runOnThisThread(plain: ThreadOptions): Promise<void> {
  /* eslint-disable @typescript-eslint/no-require-imports */
  const { createImage, parseChunkSize } = require('./build') as typeof import('./build');
  /* eslint-enable @typescript-eslint/no-require-imports */
  const port = parentPort!;
  const send = (m: FromThread): void => port.postMessage(m);
  try {
    const report = await createImage({
      ...plain,
      chunkSize: parseChunkSize(plain.chunkSize),
      stdin: plain.source === '-' ? process.stdin : undefined,
      onProgress: (stats) => send({ type: 'progress', stats: { ...stats } }),
      onWarning: (msg) => send({ type: 'warning', msg }),
    });
    send({ type: 'done', report });
  } catch (e) {
    send({ type: 'error', error: serializeError(e) });
  }
}

if (!isMainThread && (workerData as { nydusBuild?: ThreadOptions } | null)?.nydusBuild) {
  void runOnThisThread((workerData as { nydusBuild: ThreadOptions }).nydusBuild);
}
