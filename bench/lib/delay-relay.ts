/**
 * A userspace TCP relay that adds a round-trip time (this kernel has no netem): it listens on
 * the host, connects each client to the target (a server behind the shaped link) and delays
 * every byte by RTT/2 in each direction. A new connection also pays one RTT before its first
 * request goes out, as a TCP handshake would (request at +1.5 RTT, first answer byte at
 * +2 RTT). What it does not model: TCP's own reaction to the delay (slow start, window growth
 * over a long path); the relay buffers up to 64 MiB per direction, so a transfer is limited by
 * the link's rate, not by a window over the RTT.
 *
 * It runs as its own process (startDelayRelay), so that the benchmark's event loop and clocks do
 * not share a thread with the copying. Whether it keeps up with the link's rate is measured by
 * the benchmark (a transfer through it against one straight over the link) and reported.
 *
 *   node dist/bench/lib/delay-relay.js LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT RTT_MS
 * prints "listening PORT" once it accepts connections.
 */
import * as net from 'node:net';
import { spawn } from 'node:child_process';

const HIGH_WATER = 64 << 20;
const LOW_WATER = 16 << 20;

/** Copy `src` to `dst`, each chunk no sooner than `delayMs` after it arrived (and not before `notBefore()`). */
function delayedPipe(src: net.Socket, dst: net.Socket, delayMs: number, notBefore: () => number): void {
  const queue: Array<{ due: number; buf: Buffer }> = [];
  let queued = 0;
  let timer: NodeJS.Timeout | undefined;
  let ended = false;
  let waitingDrain = false;
  const flush = (): void => {
    timer = undefined;
    const t = performance.now();
    while (queue.length && queue[0].due <= t + 0.5 && !waitingDrain) {
      const { buf } = queue.shift()!;
      queued -= buf.length;
      if (!dst.write(buf)) {
        waitingDrain = true;
        dst.once('drain', () => {
          waitingDrain = false;
          flush();
        });
      }
    }
    if (queued < LOW_WATER && src.isPaused()) src.resume();
    if (queue.length && !waitingDrain) timer = setTimeout(flush, Math.max(0, queue[0].due - performance.now()));
    else if (!queue.length && ended) dst.end();
  };
  src.on('data', (buf: Buffer) => {
    queue.push({ due: Math.max(performance.now(), notBefore()) + delayMs, buf });
    queued += buf.length;
    if (queued > HIGH_WATER) src.pause();
    if (!timer && !waitingDrain) timer = setTimeout(flush, Math.max(0, queue[0].due - performance.now()));
  });
  src.on('end', () => {
    ended = true;
    if (!queue.length && !waitingDrain) dst.end();
  });
}

function serve(listenHost: string, listenPort: number, targetHost: string, targetPort: number, rttMs: number): void {
  const half = rttMs / 2;
  // half-open sockets: an end is passed on only after the bytes queued before it are delivered
  const server = net.createServer({ allowHalfOpen: true }, (client) => {
    const accepted = performance.now();
    const upstream = net.connect({ host: targetHost, port: targetPort, allowHalfOpen: true });
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    const kill = (): void => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', kill);
    upstream.on('error', kill);
    // both directions ended: nothing more to carry
    let ends = 0;
    const ended = (): void => {
      if (++ends === 2) setImmediate(kill);
    };
    client.on('finish', ended);
    upstream.on('finish', ended);
    // client → server: the handshake's RTT first, then half an RTT per byte; server → client: half an RTT
    delayedPipe(client, upstream, half, () => accepted + rttMs);
    delayedPipe(upstream, client, half, () => 0);
  });
  server.listen(listenPort, listenHost, () => {
    process.stdout.write(`listening ${(server.address() as net.AddressInfo).port}\n`);
  });
}

export interface DelayRelay { host: string; port: number; rttMs: number; stop(): Promise<void> }

/** Start the relay as a child process on listenHost (port chosen by the kernel); `nice` raises its priority. */
export async function startDelayRelay(o: { listenHost: string; targetHost: string; targetPort: number; rttMs: number; nice?: number }): Promise<DelayRelay> {
  const argv = [process.execPath, __filename, o.listenHost, '0', o.targetHost, String(o.targetPort), String(o.rttMs)];
  const [cmd, ...args] = o.nice ? ['nice', '-n', String(o.nice), ...argv] : argv;
  const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  p.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    p.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /listening (\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    p.once('exit', (c) => reject(new Error(`delay relay exited (${c}): ${err.trim()}`)));
  });
  const exited = new Promise((r) => p.once('exit', r));
  process.once('exit', () => p.kill('SIGKILL'));
  return {
    host: o.listenHost, port, rttMs: o.rttMs,
    stop: async () => {
      if (p.exitCode !== null || p.signalCode !== null) return;
      p.kill('SIGKILL');
      await exited;
    },
  };
}

if (require.main === module) {
  const [lh, lp, th, tp, rtt] = process.argv.slice(2);
  if (!th || !(Number(rtt) >= 0)) {
    process.stderr.write('usage: node delay-relay.js LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT RTT_MS\n');
    process.exit(2);
  }
  serve(lh, Number(lp), th, Number(tp), Number(rtt));
}
