/**
 * A modelled network link for benchmarks: a network namespace of our own (`nts-<tag>`) joined to
 * the host by a veth pair, private addresses 10.213.<n>.0/30 (host .1, namespace .2), and a `tbf`
 * qdisc on the egress of BOTH ends (host → namespace carries requests and pushes, namespace →
 * host carries what a registry sends), so the link has one configured rate in each direction.
 * Everything that crosses it is counted by the veth's own counters
 * (/sys/class/net/<host end>/statistics), whoever sent it: these are bytes on the wire, with
 * Ethernet, IP and TCP headers.
 *
 * tbf parameters (see tbfParams): at R bytes/s, a bucket (`burst`) of max(64 KiB, 2 ms × R): at
 * least one 64 KiB GSO super-packet of veth (tbf would otherwise split each one into MTU-sized
 * segments), and no more than a few ms of traffic, so a transfer gains at most one burst's time
 * (64 KiB at 100 Mbit/s = 5 ms) over the exact rate after an idle period. Queue: `limit` =
 * 50 ms × R + burst, so a TCP sender's window fits without drops (drops would make the rate
 * fall short of the configured one) while a request queued behind a bulk transfer waits at most
 * 50 ms. Unlimited: no qdisc (veth's default, noqueue).
 *
 * The kernel here has no netem, so an added round-trip time comes from a small userspace relay
 * (bench/lib/delay-relay.ts) on the host in front of the link.
 *
 * Set-up is idempotent: whatever a crashed earlier run left with the same tag (processes in the
 * namespace, the namespace, the veth) is removed first; destroy() removes it again.
 */
import * as fs from 'node:fs';
import { spawn, spawnSync, ChildProcess } from 'node:child_process';

export interface LinkCounters {
  /** bytes the host received from the namespace (downloads) */
  rx_bytes: number;
  /** bytes the host sent into the namespace (requests, uploads) */
  tx_bytes: number;
  rx_packets: number;
  tx_packets: number;
}

export interface ShapedLink {
  tag: string;
  netns: string;
  hostIf: string;
  nsIf: string;
  /** the host's address on the link */
  hostAddr: string;
  /** the namespace's address on the link (where its servers listen) */
  nsAddr: string;
  /** Mbit/s, or null = unlimited */
  rateMbit: number | null;
  /** change the rate of both ends (null = unlimited) */
  setRate(mbit: number | null): void;
  counters(): LinkCounters;
  /** the qdisc statistics of both ends (`tc -s qdisc`), for drops and overlimits */
  qdiscStats(): { host: string; ns: string };
  /** spawn a command inside the namespace (`ip netns exec`) */
  spawnInside(cmd: string, args: string[], o?: { stdio?: any; env?: NodeJS.ProcessEnv }): ChildProcess;
  /** the argv prefix that runs a command inside the namespace */
  prefix: string[];
  destroy(): void;
}

export interface LinkOptions {
  /** 1–7 characters [a-z0-9]: names the namespace (nts-TAG) and the veth ends (nts-TAG-h / -n) */
  tag: string;
  /** third octet of 10.213.X.0/30 (0–255) */
  subnet: number;
  rateMbit: number | null;
}

const ip = (args: string[]): string => {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')} failed: ${(r.stderr || r.error?.message || '').trim()}`);
  return r.stdout;
};

const tc = (args: string[]): void => {
  const r = spawnSync('tc', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`tc ${args.join(' ')} failed: ${(r.stderr || r.error?.message || '').trim()}`);
};

/** tbf's rate, bucket and queue length (bytes) for a rate in Mbit/s (see the file's comment). */
export function tbfParams(mbit: number): { rateBit: number; burst: number; limit: number } {
  const bytesPerS = (mbit * 1e6) / 8;
  const burst = Math.max(64 * 1024, Math.ceil(bytesPerS * 0.002));
  return { rateBit: Math.round(mbit * 1e6), burst, limit: Math.ceil(bytesPerS * 0.05) + burst };
}

function netnsExists(ns: string): boolean {
  return fs.existsSync(`/run/netns/${ns}`);
}

function linkExists(name: string): boolean {
  return fs.existsSync(`/sys/class/net/${name}`);
}

/** Remove what a run with this tag left: the processes in its namespace, the namespace, the veth. */
export function removeLink(tag: string): void {
  const ns = `nts-${tag}`;
  if (netnsExists(ns)) {
    // the processes in OUR namespace (named by our tag): a registry or server of a crashed run
    const pids = (spawnSync('ip', ['netns', 'pids', ns], { encoding: 'utf8' }).stdout || '').split('\n').map(Number).filter((p) => p > 0);
    for (const p of pids) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        // gone
      }
    }
    for (let i = 0; i < 100 && pids.some(alive); i++) spawnSync('sleep', ['0.05']);
    spawnSync('ip', ['netns', 'del', ns]);
  }
  // deleting the namespace deletes its end and with it the pair; a pair whose peer was moved
  // elsewhere would survive, so the host end goes explicitly
  if (linkExists(`nts-${tag}-h`)) spawnSync('ip', ['link', 'del', `nts-${tag}-h`]);
}

/** Running (a zombie no longer holds the namespace, and our own unreaped children are zombies). */
function alive(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

/** Refuse a subnet another interface of this host already uses (we only ever address our own veth). */
function checkSubnetFree(prefix: string, ownIf: string): void {
  const addrs = JSON.parse(ip(['-j', '-4', 'addr', 'show'])) as Array<{ ifname: string; addr_info: Array<{ local: string }> }>;
  for (const i of addrs) {
    if (i.ifname === ownIf) continue;
    for (const a of i.addr_info) if (a.local.startsWith(prefix)) throw new Error(`${a.local} on ${i.ifname} is in ${prefix}0/30, the benchmark link's subnet: pick another subnet`);
  }
}

export function createLink(o: LinkOptions): ShapedLink {
  if (!/^[a-z0-9]{1,7}$/.test(o.tag)) throw new Error(`link tag ${JSON.stringify(o.tag)}: 1–7 characters a-z0-9`);
  if (!Number.isInteger(o.subnet) || o.subnet < 0 || o.subnet > 255) throw new Error(`link subnet ${o.subnet}: 0–255`);
  const netns = `nts-${o.tag}`;
  const hostIf = `nts-${o.tag}-h`;
  const nsIf = `nts-${o.tag}-n`;
  const prefix = `10.213.${o.subnet}.`;
  const hostAddr = `${prefix}1`;
  const nsAddr = `${prefix}2`;
  // one run per tag: a second one would tear down the first's link as a crashed run's leftover
  const lock = `/run/nts-${o.tag}.lock`;
  let owner = 0;
  try {
    owner = Number(fs.readFileSync(lock, 'utf8'));
  } catch {
    // no lock: nobody else
  }
  if (owner > 0 && owner !== process.pid && alive(owner)) throw new Error(`link ${o.tag} is in use by process ${owner} (another benchmark run); wait for it to end`);
  fs.writeFileSync(lock, String(process.pid));
  removeLink(o.tag);
  checkSubnetFree(prefix, hostIf);
  try {
    ip(['netns', 'add', netns]);
    ip(['link', 'add', hostIf, 'type', 'veth', 'peer', 'name', nsIf, 'netns', netns]);
    // no IPv6 on the link: its router solicitations and neighbour discovery would be counted too
    fs.writeFileSync(`/proc/sys/net/ipv6/conf/${hostIf}/disable_ipv6`, '1');
    const r = spawnSync('ip', ['netns', 'exec', netns, 'sh', '-c', `echo 1 > /proc/sys/net/ipv6/conf/${nsIf}/disable_ipv6`], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`disabling IPv6 on ${nsIf}: ${r.stderr.trim()}`);
    ip(['addr', 'add', `${hostAddr}/30`, 'dev', hostIf]);
    ip(['-n', netns, 'addr', 'add', `${nsAddr}/30`, 'dev', nsIf]);
    ip(['link', 'set', hostIf, 'up']);
    ip(['-n', netns, 'link', 'set', nsIf, 'up']);
    ip(['-n', netns, 'link', 'set', 'lo', 'up']);
  } catch (e) {
    removeLink(o.tag);
    throw e;
  }
  const nsPrefix = ['ip', 'netns', 'exec', netns];
  const setRate = (mbit: number | null): void => {
    for (const pre of [[], ['-n', netns]]) {
      const dev = pre.length ? nsIf : hostIf;
      if (mbit === null) {
        spawnSync('tc', [...pre, 'qdisc', 'del', 'dev', dev, 'root']); // absent already: fine
      } else {
        if (!(mbit > 0)) throw new Error(`link rate ${mbit} Mbit/s: must be > 0`);
        const p = tbfParams(mbit);
        tc([...pre, 'qdisc', 'replace', 'dev', dev, 'root', 'tbf', 'rate', `${p.rateBit}bit`, 'burst', String(p.burst), 'limit', String(p.limit)]);
      }
    }
    link.rateMbit = mbit;
  };
  const stat = (k: string): number => Number(fs.readFileSync(`/sys/class/net/${hostIf}/statistics/${k}`, 'utf8'));
  const link: ShapedLink = {
    tag: o.tag, netns, hostIf, nsIf, hostAddr, nsAddr, rateMbit: null, setRate, prefix: nsPrefix,
    counters: () => ({ rx_bytes: stat('rx_bytes'), tx_bytes: stat('tx_bytes'), rx_packets: stat('rx_packets'), tx_packets: stat('tx_packets') }),
    qdiscStats: () => ({
      host: spawnSync('tc', ['-s', 'qdisc', 'show', 'dev', hostIf], { encoding: 'utf8' }).stdout.trim(),
      ns: spawnSync('tc', ['-n', netns, '-s', 'qdisc', 'show', 'dev', nsIf], { encoding: 'utf8' }).stdout.trim(),
    }),
    spawnInside: (cmd, args, so = {}) => spawn(nsPrefix[0], [...nsPrefix.slice(1), cmd, ...args], { stdio: so.stdio ?? 'ignore', env: so.env ?? process.env }),
    destroy: () => {
      removeLink(o.tag);
      fs.rmSync(lock, { force: true });
    },
  };
  setRate(o.rateMbit);
  return link;
}

/** Difference of two counter readings. */
export function countersDelta(a: LinkCounters, b: LinkCounters): LinkCounters {
  return { rx_bytes: b.rx_bytes - a.rx_bytes, tx_bytes: b.tx_bytes - a.tx_bytes, rx_packets: b.rx_packets - a.rx_packets, tx_packets: b.tx_packets - a.tx_packets };
}

/** `100` → "100 Mbit/s", null → "unlimited" */
export const rateLabel = (mbit: number | null): string => (mbit === null ? 'unlimited' : mbit >= 1000 && mbit % 1000 === 0 ? `${mbit / 1000} Gbit/s` : `${mbit} Mbit/s`);

/** "100m" / "100" → 100, "1g" → 1000, "unlimited" / "0" → null */
export function parseRate(s: string): number | null {
  const m = /^(\d+(?:\.\d+)?)\s*([mg]?)(?:bit)?(?:\/s)?$/i.exec(s.trim());
  if (/^(unlimited|none|inf|0)$/i.test(s.trim())) return null;
  if (!m) throw new Error(`rate ${JSON.stringify(s)}: e.g. 100m, 1g or unlimited`);
  return Number(m[1]) * (m[2].toLowerCase() === 'g' ? 1000 : 1);
}

// ---------------------------------------------------------------------------------------------
// a byte server inside the namespace (the link's self-check and its test)

/** The server's source: GET /bytes/N answers N deterministic bytes (byte i = i * 7 mod 251). */
const BYTE_SERVER = `
const http = require('node:http');
const block = Buffer.alloc(1 << 20);
for (let i = 0; i < block.length; i++) block[i] = (i * 7) % 251;
const srv = http.createServer((req, res) => {
  const m = /^\\/bytes\\/(\\d+)$/.exec(req.url || '');
  if (!m) { res.writeHead(404).end(); return; }
  let left = Number(m[1]);
  res.writeHead(200, { 'content-length': String(left), 'content-type': 'application/octet-stream' });
  const pump = () => {
    while (left > 0) {
      const n = Math.min(left, block.length);
      left -= n;
      if (!res.write(block.subarray(0, n))) { res.once('drain', pump); return; }
    }
    res.end();
  };
  pump();
});
srv.listen(Number(process.argv[2]), process.argv[1], () => process.stdout.write('listening\\n'));
`;

/** The byte at offset i of what GET /bytes/N sends (blocks of 1 MiB repeat the pattern). */
export const expectedByte = (i: number): number => ((i % (1 << 20)) * 7) % 251;

export interface ByteServer { url: string; stop(): Promise<void> }

/**
 * Start the byte server inside the link's namespace on nsAddr:port. `nice` (e.g. -15) raises its
 * scheduling priority, so that other load on the machine does not starve the sender.
 */
export async function startByteServer(link: ShapedLink, port: number, nice = 0): Promise<ByteServer> {
  const argv = [process.execPath, '-e', BYTE_SERVER, link.nsAddr, String(port)];
  const [cmd, ...args] = nice ? ['nice', '-n', String(nice), ...argv] : argv;
  const p = link.spawnInside(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  p.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  await new Promise<void>((resolve, reject) => {
    p.stdout!.on('data', (d: Buffer) => (d.toString().includes('listening') ? resolve() : undefined));
    p.once('exit', (c) => reject(new Error(`byte server in ${link.netns} exited (${c}): ${err.trim()}`)));
  });
  return {
    url: `http://${link.nsAddr}:${port}`,
    stop: async () => {
      if (p.exitCode !== null || p.signalCode !== null) return;
      const gone = new Promise((r) => p.once('exit', r));
      p.kill('SIGKILL');
      await gone;
    },
  };
}
