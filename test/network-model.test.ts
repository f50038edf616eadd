/**
 * The start-up benchmark's network model (bench/lib/netmodel.ts), checked for real: a network
 * namespace of ours, a veth pair with tbf on both ends, a server inside the namespace.
 *
 * This is the one place a test measures throughput: the benchmark's premise is that the shaped
 * link runs at its configured rate, so the test checks that a transfer over it comes within
 * 10 % of 100 Mbit/s (the issue asks for exactly this). At 100 Mbit/s the CPU is not the
 * bottleneck, but on a loaded 2-core machine the scheduler can keep a sender or a reader off the
 * CPU long enough to idle the link; so the server and the client (curl, timing itself) run at a
 * raised priority (nice -15), and a transfer that is too slow is retried (up to 3 times), while
 * one that is too fast fails at once (load cannot make a transfer faster than the qdisc). Also:
 * the veth counters count every byte of the transfer, the delay relay passes bytes unchanged,
 * and set-up removes what a crashed earlier run left.
 */
import { test, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { createLink, startByteServer, expectedByte, countersDelta, tbfParams, ShapedLink, ByteServer } from '../bench/lib/netmodel';
import { startDelayRelay } from '../bench/lib/delay-relay';

const execFileP = promisify(execFile);
const TAG = 'nmtest';
const SUBNET = 254;
const RATE_MBIT = 100;
const BYTES = 12 << 20;
const NICE = -15;

if (process.getuid?.() !== 0) throw new Error('network-model tests need root (network namespaces, veth, tc)');

let link: ShapedLink | undefined;
let server: ByteServer | undefined;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nydus-netmodel-'));
after(async () => {
  await server?.stop();
  link?.destroy();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** GET url with curl (at a raised priority) into a file; seconds curl measured, and the count of wrong bytes. */
async function fetchBytes(url: string, n: number): Promise<{ seconds: number; bytes: number; wrong: number }> {
  const file = path.join(dir, 'body');
  const r = await execFileP('nice', ['-n', String(NICE), 'curl', '-sf', '--max-time', '60', '-o', file, '-w', '%{time_total} %{size_download}', `${url}/bytes/${n}`]);
  const [seconds, bytes] = r.stdout.trim().split(' ').map(Number);
  const body = fs.readFileSync(file);
  let wrong = 0;
  for (let i = 0; i < body.length; i++) if (body[i] !== expectedByte(i)) wrong++;
  return { seconds, bytes, wrong: wrong + Math.abs(body.length - bytes) };
}

/** Wire rate (Mbit/s, from the veth counters) of one transfer, retried while load holds it below the band. */
async function measuredRate(url: string, l: ShapedLink): Promise<{ mbit: number; attempts: number[]; payload: number; wire: number }> {
  const attempts: number[] = [];
  for (;;) {
    const c0 = l.counters();
    const r = await fetchBytes(url, BYTES);
    const d = countersDelta(c0, l.counters());
    assert.equal(r.bytes, BYTES, 'the whole body arrived');
    assert.equal(r.wrong, 0, 'every byte as sent');
    const mbit = (d.rx_bytes * 8) / r.seconds / 1e6;
    attempts.push(mbit);
    assert.ok(mbit <= RATE_MBIT * 1.1, `the link carried ${mbit.toFixed(1)} Mbit/s, more than ${RATE_MBIT} Mbit/s + 10 %: tbf does not limit it (attempts ${attempts.map((x) => x.toFixed(1)).join(', ')})`);
    if (mbit >= RATE_MBIT * 0.9 || attempts.length === 3) return { mbit, attempts, payload: r.bytes, wire: d.rx_bytes };
  }
}

test('set-up removes what a crashed earlier run left (its namespace, processes and veth)', async () => {
  const first = createLink({ tag: TAG, subnet: SUBNET, rateMbit: RATE_MBIT });
  const leftover = first.spawnInside('sleep', ['600']);
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(leftover.exitCode, null, 'a process runs inside the namespace');
  // no destroy(): the next set-up must cope
  link = createLink({ tag: TAG, subnet: SUBNET, rateMbit: RATE_MBIT });
  await new Promise<void>((r) => (leftover.exitCode !== null || leftover.signalCode !== null ? r() : leftover.once('exit', () => r())));
  assert.equal(leftover.signalCode, 'SIGKILL', "the old namespace's process was killed");
  assert.ok(fs.existsSync(`/sys/class/net/${link.hostIf}`), 'a fresh host end exists');
  assert.match(link.qdiscStats().host, /tbf .*rate 100Mbit/, 'tbf on the host end');
  assert.match(link.qdiscStats().ns, /tbf .*rate 100Mbit/, 'tbf on the namespace end');
});

test('the shaped link carries a transfer at its configured rate (±10 %), and the veth counters count it', async (t) => {
  assert.ok(link, 'set up by the first test');
  server = await startByteServer(link, 8080, NICE);
  await fetchBytes(server.url, 1024); // the server's first answer out of the way
  const r = await measuredRate(server.url, link);
  t.diagnostic(`wire rate ${r.attempts.map((x) => x.toFixed(1)).join(', ')} Mbit/s; ${r.wire} bytes on the veth for ${r.payload}`);
  const p = tbfParams(RATE_MBIT);
  assert.ok(r.mbit >= RATE_MBIT * 0.9, `the link carried only ${r.mbit.toFixed(1)} Mbit/s in the best of ${r.attempts.length} attempts (${r.attempts.map((x) => x.toFixed(1)).join(', ')}); tbf burst ${p.burst} B, limit ${p.limit} B\n${link.qdiscStats().ns}`);
  // every payload byte crossed the veth, plus Ethernet/IP/TCP headers (~2 % here: GSO packets carry one header for many segments)
  assert.ok(r.wire >= r.payload, `veth counted ${r.wire} bytes for a ${r.payload}-byte body`);
  assert.ok(r.wire <= r.payload * 1.1, `veth counted ${r.wire} bytes for a ${r.payload}-byte body: more than headers explain`);
});

test('the delay relay passes every byte unchanged, and its transfer stays within the shaped rate', async (t) => {
  assert.ok(link && server, 'set up by the earlier tests');
  const relay = await startDelayRelay({ listenHost: '127.0.0.1', targetHost: link.nsAddr, targetPort: 8080, rttMs: 20, nice: NICE });
  try {
    const c0 = link.counters();
    const r = await fetchBytes(`http://127.0.0.1:${relay.port}`, BYTES);
    const d = countersDelta(c0, link.counters());
    assert.equal(r.bytes, BYTES, 'the whole body arrived through the relay');
    assert.equal(r.wrong, 0, 'every byte as sent');
    assert.ok(d.rx_bytes >= BYTES, 'the relayed body crossed the link');
    t.diagnostic(`through the relay: ${((d.rx_bytes * 8) / r.seconds / 1e6).toFixed(1)} Mbit/s`);
    // whether it keeps up is measured by the benchmark (it reports the relay's rate against the link's)
    assert.ok((d.rx_bytes * 8) / r.seconds / 1e6 <= RATE_MBIT * 1.1, 'no faster than the link');
  } finally {
    await relay.stop();
  }
});
