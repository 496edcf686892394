/**
 * The resolver against aardvark-dns (Debian's, as netavark runs it), side by
 * side in one run, on networks of the same size (DNS_BENCH_SIZE containers,
 * default 50): queries per second and p99 latency under a fixed concurrency,
 * how soon a new container's name answers, and each resolver's memory.
 *
 * Everything happens inside a private namespace standing in for the host:
 * two bridge networks made by our bin/bridge (one with dns.enabled, served
 * by `cni-ts dns`, started by the first ADD; one without, whose records are
 * written the way netavark writes them for aardvark-dns: one file per
 * network in its config directory, `aardvark-dns --config DIR -p 53 run`,
 * SIGHUP after each change). The load comes from a client container of each
 * network, asking A records of random names of its network over UDP.
 * Timings are reported, never asserted.
 */
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const SIZE = Number(process.env.DNS_BENCH_SIZE ?? 50);
const QUERIES = Number(process.env.DNS_BENCH_QUERIES ?? 20000);
const CONCURRENCY = Number(process.env.DNS_BENCH_CONCURRENCY ?? 16);
const ROUNDS = Number(process.env.DNS_BENCH_ROUNDS ?? 2);
const AARDVARK = ['/usr/lib/podman/aardvark-dns', '/usr/libexec/podman/aardvark-dns', '/usr/bin/aardvark-dns'].find((p) => fs.existsSync(p));
const root = process.cwd();
const BRIDGE = path.join(root, 'bin/bridge');

const id = `${process.pid}`;
const host = `bdns-${id}-h`;
const work = fs.mkdtempSync(path.join(os.tmpdir(), `bench-dns-${id}-`));
const dnsDir = path.join(work, 'dns');
const aardDir = path.join(work, 'aardvark-dns');
const namespaces: string[] = [];

function sh(cmd: string, args: string[], input?: string): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', input });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}${r.stdout}`);
  return r.stdout;
}

function netns(name: string): string {
  sh('ip', ['netns', 'add', name]);
  namespaces.push(name);
  sh('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
  return `/var/run/netns/${name}`;
}

interface Net {
  name: string;
  bridge: string;
  gateway: string;
  conf: Record<string, unknown>;
}

function network(n: number, dns: boolean): Net {
  const name = `bdns-${id}-n${n}`;
  const prefix = `10.${200 + n}.${process.pid % 250}`;
  return {
    name,
    bridge: `bd${id}n${n}`.slice(0, 15),
    gateway: `${prefix}.1`,
    conf: {
      cniVersion: '1.0.0',
      name,
      type: 'bridge',
      bridge: `bd${id}n${n}`.slice(0, 15),
      isGateway: true,
      ipam: { type: 'cluster-ipam', dataDir: path.join(work, 'ipam'), ranges: [[{ subnet: `${prefix}.0/24` }]] },
      ...(dns ? { dns: { enabled: true, dataDir: dnsDir, upstream: ['127.0.0.1:9'] } } : {}),
    },
  };
}

interface Added {
  ns: string;
  ip: string;
  cid: string;
  ms: number;
}

let seq = 0;
function add(net: Net, name: string): Added {
  const ns = `bdns-${id}-c${++seq}`;
  const nsPath = netns(ns);
  const cid = `${name}-${net.name}`;
  const env = {
    PATH: '/usr/sbin:/usr/bin:/sbin:/bin',
    CNI_COMMAND: 'ADD',
    CNI_CONTAINERID: cid,
    CNI_NETNS: nsPath,
    CNI_IFNAME: 'eth0',
    CNI_PATH: path.dirname(BRIDGE),
    CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAME=${name}`,
    CNI_TS_NO_DAEMON: '1',
  };
  const t0 = performance.now();
  const r = spawnSync('nsenter', [`--net=/var/run/netns/${host}`, '--', BRIDGE], { env, input: JSON.stringify(net.conf), encoding: 'utf8' });
  const ms = performance.now() - t0;
  if (r.status !== 0) throw new Error(`bridge ADD ${name}: ${r.stdout}${r.stderr}`);
  return { ns, ip: JSON.parse(r.stdout).ips[0].address.split('/')[0], cid, ms };
}

/**
 * The load generator, run inside a client namespace: CONCURRENCY queries in
 * flight, QUERIES in all, each a random name; prints qps and latencies.
 */
const LOAD = `
const dgram = require('dgram');
const [server, namesCsv, total, conc] = process.argv.slice(1);
const names = namesCsv.split(',');
function q(id, name) {
  const labels = name.split('.');
  const parts = [Buffer.from([id >> 8, id & 255, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0])];
  for (const l of labels) parts.push(Buffer.from([l.length]), Buffer.from(l));
  parts.push(Buffer.from([0, 0, 1, 0, 1]));
  return Buffer.concat(parts);
}
const sock = dgram.createSocket('udp4');
const pending = new Map();
const lat = [];
let sent = 0, done = 0, lost = 0, nextId = 1;
const start = process.hrtime.bigint();
function send() {
  if (sent >= +total) return;
  sent++;
  const id = nextId = (nextId + 1) & 0xffff;
  const t = process.hrtime.bigint();
  const timer = setTimeout(() => { pending.delete(id); lost++; finish(); }, 2000);
  pending.set(id, { t, timer });
  sock.send(q(id, names[Math.floor(Math.random() * names.length)]), 53, server);
}
function finish() {
  done++;
  if (done === +total) {
    const secs = Number(process.hrtime.bigint() - start) / 1e9;
    lat.sort((a, b) => a - b);
    const p = (x) => lat[Math.min(lat.length - 1, Math.floor(lat.length * x))] || 0;
    console.log(JSON.stringify({ qps: lat.length / secs, p50: p(0.5), p99: p(0.99), lost }));
    process.exit(0);
  }
  send();
}
sock.on('message', (m) => {
  const id = m.readUInt16BE(0);
  const e = pending.get(id);
  if (!e) return;
  pending.delete(id);
  clearTimeout(e.timer);
  if ((m[3] & 15) !== 0 || m.readUInt16BE(6) === 0) lost++;
  else lat.push(Number(process.hrtime.bigint() - e.t) / 1e6);
  finish();
});
for (let i = 0; i < +conc; i++) send();
`;

interface Load {
  qps: number;
  p50: number;
  p99: number;
  lost: number;
}

function load(clientNs: string, server: string, names: string[]): Load {
  const out = sh('ip', ['netns', 'exec', clientNs, process.execPath, '-e', LOAD, server, names.join(','), String(QUERIES), String(CONCURRENCY)]);
  return JSON.parse(out.trim()) as Load;
}

/** Started in clientNs before a change: resolves with the epoch ms at which name first answered. */
function watchFor(clientNs: string, server: string, name: string): Promise<number> {
  const script = `
const dgram = require('dgram'); const s = dgram.createSocket('udp4'); const [server, name] = process.argv.slice(1);
const labels = name.split('.'); const parts = [Buffer.from([0, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0])];
for (const l of labels) parts.push(Buffer.from([l.length]), Buffer.from(l)); parts.push(Buffer.from([0, 0, 1, 0, 1]));
const q = Buffer.concat(parts);
s.on('message', (m) => { if ((m[3] & 15) === 0 && m.readUInt16BE(6) > 0) { console.log(performance.timeOrigin + performance.now()); process.exit(0); } });
console.error('ready'); setInterval(() => s.send(q, 53, server), 1);`;
  return new Promise((resolve, reject) => {
    const child = spawn('ip', ['netns', 'exec', clientNs, process.execPath, '-e', script, server, name], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.on('close', () => (out.trim() ? resolve(Number(out.trim())) : reject(new Error('watcher ended without an answer'))));
    const t = setTimeout(() => child.kill(), 20_000);
    child.on('close', () => clearTimeout(t));
  });
}

function waitReady(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function rssKb(pid: number): number {
  const m = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : 0;
}

function pidFrom(file: string): number {
  return Number(fs.readFileSync(file, 'utf8').trim());
}

/** aardvark's config file for a network, as netavark writes it. */
function writeAardvark(net: Net, entries: Added[], names: string[]): void {
  fs.mkdirSync(aardDir, { recursive: true });
  const lines = [net.gateway, ...entries.map((e, i) => `${e.cid} ${e.ip}  ${names[i]}`)];
  const tmp = path.join(aardDir, `.${net.name}.tmp`);
  fs.writeFileSync(tmp, `${lines.join('\n')}\n`);
  fs.renameSync(tmp, path.join(aardDir, net.name));
}

async function main(): Promise<void> {
  if (!fs.existsSync(BRIDGE)) throw new Error('bin/bridge missing: run ./build.sh first');
  if (!AARDVARK) throw new Error('aardvark-dns not installed (apt-get install aardvark-dns)');
  netns(host);
  const ours = network(1, true);
  const theirs = network(2, false);
  const ourNames = Array.from({ length: SIZE }, (_, i) => `svc${i}`);
  for (const n of ourNames) add(ours, n);
  const theirAdds = ourNames.map((n) => add(theirs, n));
  const ourClient = add(ours, 'client');
  const theirClient = add(theirs, 'client');
  writeAardvark(theirs, [...theirAdds, theirClient], [...ourNames, 'client']);
  // as netavark: aardvark-dns --config DIR -p 53 run (it daemonizes and writes aardvark.pid)
  sh('ip', ['netns', 'exec', host, AARDVARK, '--config', aardDir, '-p', '53', 'run']);
  let aardPid = 0;
  for (let i = 0; i < 200 && !aardPid; i++) {
    try {
      aardPid = pidFrom(path.join(aardDir, 'aardvark.pid'));
    } catch {
      await waitReady(20);
    }
  }
  const ourPid = pidFrom(path.join(dnsDir, 'resolver.pid'));
  // warm both
  load(ourClient.ns, ours.gateway, ourNames.slice(0, 5));
  load(theirClient.ns, theirs.gateway, ourNames.slice(0, 5));

  const results: Record<'ours' | 'aardvark', Load[]> = { ours: [], aardvark: [] };
  for (let r = 0; r < ROUNDS; r++) {
    results.ours.push(load(ourClient.ns, ours.gateway, ourNames));
    results.aardvark.push(load(theirClient.ns, theirs.gateway, ourNames));
  }
  const best = (ls: Load[]) => ls.reduce((a, b) => (b.qps > a.qps ? b : a));
  const o = best(results.ours);
  const a = best(results.aardvark);

  // a new name: ours through a bridge ADD; aardvark through netavark's steps (config file, SIGHUP)
  const ourWatch = watchFor(ourClient.ns, ours.gateway, 'fresh');
  await waitReady(500);
  const addStart = performance.timeOrigin + performance.now();
  const fresh = add(ours, 'fresh');
  const addEnd = performance.timeOrigin + performance.now();
  const ourSeen = await ourWatch;
  const theirWatch = watchFor(theirClient.ns, theirs.gateway, 'fresh');
  await waitReady(500);
  const theirFresh = add(theirs, 'fresh');
  const writeStart = performance.timeOrigin + performance.now();
  writeAardvark(theirs, [...theirAdds, theirClient, theirFresh], [...ourNames, 'client', 'fresh']);
  process.kill(aardPid, 'SIGHUP');
  const theirSeen = await theirWatch;

  const ourRss = rssKb(ourPid) / 1024;
  const theirRss = rssKb(aardPid) / 1024;
  const rows = [
    ['', 'cni-ts dns', 'aardvark-dns', 'ratio (ours/theirs)'],
    ['queries/s', o.qps.toFixed(0), a.qps.toFixed(0), (o.qps / a.qps).toFixed(2)],
    ['p50 ms', o.p50.toFixed(3), a.p50.toFixed(3), (o.p50 / a.p50).toFixed(2)],
    ['p99 ms', o.p99.toFixed(3), a.p99.toFixed(3), (o.p99 / a.p99).toFixed(2)],
    ['unanswered', String(o.lost), String(a.lost), ''],
    ['RSS MB', ourRss.toFixed(1), theirRss.toFixed(1), (ourRss / theirRss).toFixed(2)],
    ['name visible, ms after change done', Math.max(0, ourSeen - addEnd).toFixed(1), Math.max(0, theirSeen - writeStart).toFixed(1), ''],
  ];
  const w = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  console.log(`dns: ${SIZE} names per network, ${QUERIES} A queries at ${CONCURRENCY} in flight, best of ${ROUNDS} rounds`);
  for (const r of rows) console.log(r.map((c, i) => c.padEnd(w[i])).join('  '));
  console.log(`(ours: the name answers ${(ourSeen - addStart).toFixed(1)} ms after the bridge ADD started; the ADD took ${fresh.ms.toFixed(1)} ms and returns once the resolver serves it.`);
  console.log(` aardvark: measured from netavark's config write + SIGHUP, its ADD work not included.)`);
  try {
    process.kill(aardPid, 'SIGTERM');
  } catch {
    // gone
  }
  try {
    process.kill(ourPid, 'SIGTERM');
  } catch {
    // gone
  }
}

main()
  .catch((e) => {
    console.error(e);
    process.exitCode = 1;
  })
  .finally(() => {
    // the resolvers this run started, also when it failed half-way
    for (const f of [path.join(dnsDir, 'resolver.pid'), path.join(aardDir, 'aardvark.pid')]) {
      try {
        process.kill(pidFrom(f), 'SIGTERM');
      } catch {
        // never started, or gone
      }
    }
    for (const ns of namespaces.reverse()) spawnSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
    fs.rmSync(work, { recursive: true, force: true });
  });
