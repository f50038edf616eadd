/**
 * The start-up benchmark's network model (bench/lib/netmodel.ts), checked for real: a network
 * namespace of ours, a veth pair with tbf on both ends, a server inside the namespace.
 *
 * This is the one place a test measures throughput: the benchmark's premise is that the shaped
 * link runs at its configured rate, so the test checks that a transfer over it comes within
 * 10 % of 100 Mbit/s (the issue asks for exactly this). At 100 Mbit/s the CPU is not the
 * bottleneck even on a loaded 2-core machine; a load can only slow a transfer, never speed it
 * up past the qdisc, so a transfer that is too slow is retried (up to 3 times) while one that
 * is too fast fails at once. Also: the veth counters count every byte of the transfer, the
 * delay relay passes bytes unchanged and keeps up with the rate, and set-up removes what a
 * crashed earlier run left.
 */
import { test, after } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as http from 'node:http';
import { createLink, removeLink, startByteServer, expectedByte, countersDelta, tbfParams, ShapedLink, ByteServer } from '../bench/lib/netmodel';
import { startDelayRelay } from '../bench/lib/delay-relay';

const TAG = 'nmtest';
const SUBNET = 254;
const RATE_MBIT = 100;
const BYTES = 12 << 20;

if (process.getuid?.() !== 0) throw new Error('network-model tests need root (network namespaces, veth, tc)');

let link: ShapedLink | undefined;
let server: ByteServer | undefined;
after(async () => {
  await server?.stop();
  removeLink(TAG);
});

/** GET url; checks every byte against the server's pattern; seconds from request to last byte. */
function fetchBytes(url: string, n: number): Promise<{ seconds: number; bytes: number; wrong: number }> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const req = http.get(`${url}/bytes/${n}`, { agent: false }, (res) => {
      let bytes = 0;
      let wrong = 0;
      res.on('data', (b: Buffer) => {
        for (let i = 0; i < b.length; i++) if (b[i] !== expectedByte(bytes + i)) wrong++;
        bytes += b.length;
      });
      res.on('end', () => resolve({ seconds: Number(process.hrtime.bigint() - t0) / 1e9, bytes, wrong }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.setTimeout(30_000, () => req.destroy(new Error(`GET ${url}: no progress for 30 s`)));
  });
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

test('the shaped link carries a transfer at its configured rate (±10 %), and the veth counters count it', async () => {
  assert.ok(link, 'set up by the first test');
  server = await startByteServer(link, 8080);
  await fetchBytes(server.url, 1024); // the server's first answer out of the way
  const r = await measuredRate(server.url, link);
  const p = tbfParams(RATE_MBIT);
  assert.ok(r.mbit >= RATE_MBIT * 0.9, `the link carried only ${r.mbit.toFixed(1)} Mbit/s in the best of ${r.attempts.length} attempts (${r.attempts.map((x) => x.toFixed(1)).join(', ')}); tbf burst ${p.burst} B, limit ${p.limit} B\n${link.qdiscStats().ns}`);
  // every payload byte crossed the veth, plus Ethernet/IP/TCP headers (~4.5 % at MTU 1500)
  assert.ok(r.wire >= r.payload, `veth counted ${r.wire} bytes for a ${r.payload}-byte body`);
  assert.ok(r.wire <= r.payload * 1.1, `veth counted ${r.wire} bytes for a ${r.payload}-byte body: more than headers explain`);
});

test('the delay relay passes every byte unchanged and keeps up with the shaped rate', async () => {
  assert.ok(link && server, 'set up by the earlier tests');
  const relay = await startDelayRelay({ listenHost: '127.0.0.1', targetHost: link.nsAddr, targetPort: 8080, rttMs: 20 });
  try {
    const r = await measuredRate(`http://127.0.0.1:${relay.port}`, link);
    assert.ok(r.mbit >= RATE_MBIT * 0.9, `through the relay the link carried only ${r.mbit.toFixed(1)} Mbit/s (attempts ${r.attempts.map((x) => x.toFixed(1)).join(', ')})`);
  } finally {
    await relay.stop();
  }
});
