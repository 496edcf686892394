/**
 * cluster-ipam on a real etcd (issue 5), started here on 127.0.0.1 with a
 * temp data dir, as the tests do:
 *
 *  1. 200 hosts (one process each, own nodeName and hostId) allocating 10
 *     addresses each at the same moment on one /16: duplicates, whether
 *     every host was served from its own blocks, total time; then all
 *     released, counting the keys left (block claims only, and the hosts'
 *     registrations).
 *  2. Exhaustion under load: more demand than blocks on a small subnet, so
 *     that hosts whose blocks are full must borrow: no duplicate, every
 *     borrow lies in another host's block.
 *  3. Median ADD/DEL of the etcd store, the local store and the reference
 *     host-local (exec'd) with the same ranges, and the etcd round trips per
 *     ADD once the host holds a block (the KV instrumented; must be <= 2).
 *
 * bench/run.sh bundles this file with etcd3 inside, and a bundle cannot
 * load etcd3 (it reads its .proto files next to its own module). So this
 * process never loads etcd3: it bundles this same file again with etcd3
 * left external, next to it in dist/bench, and runs that as the worker
 * processes, which find etcd3 in node_modules. Timings are reported, never
 * asserted; correctness findings make the bench exit non-zero.
 */
import { execFileSync, fork, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { startEtcd } from '../testkit/etcd-server';
import { median, runOnce, type Sample } from './lib';

const HOSTS = Number(process.env.BENCH_HOSTS ?? 200);
const PER_HOST = Number(process.env.BENCH_PER_HOST ?? 10);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 30);
/** The simulation measures how long 200 hosts take on this machine (two
 *  cores for 200 Node processes and etcd), so its bound is wide; ADDs past
 *  the default 5 s bound are counted instead. */
const REQUEST_TIMEOUT_MS = 60_000;
const DEFAULT_BOUND_MS = 5000;

// --- messages between the bench and its workers -------------------------

interface Allocated {
  containerId: string;
  ip: string;
  ms: number;
  /** etcd round trips (transactions + lease grants) of this ADD */
  trips: number;
}

type FromWorker =
  | { kind: 'ready' }
  | { kind: 'allocated'; node: string; allocations: Allocated[]; errors: string[]; claimed: number; borrowed: number }
  | { kind: 'released'; errors: string[] }
  | { kind: 'latency'; rows: LatencyRow[]; tripsPerAdd: number[]; tripsPerDel: number[] };

interface LatencyRow {
  what: string;
  add: number[];
  del: number[];
}

// --- worker side (the bundle with etcd3 external) ------------------------

async function hostWorker(endpoint: string, prefix: string, node: string, count: number, subnet: string, blockSize: number): Promise<void> {
  const { loadIpamConfig } = await import('../ipam/config');
  const { allocate, release } = await import('../ipam/allocator');
  const { EtcdKV } = await import('../shared/etcd/kv');
  const { EtcdStore } = await import('../ipam/etcd/store');
  const { formatIP } = await import('../shared/ip');
  const conf = loadIpamConfig({
    cniVersion: '1.1.0',
    name: 'bench',
    ipam: {
      type: 'cluster-ipam',
      store: 'etcd',
      ranges: [[{ subnet }]],
      etcd: { endpoints: [endpoint], keyPrefix: prefix, blockSize, nodeName: node, hostId: `machine-${node}`, requestTimeoutMs: REQUEST_TIMEOUT_MS },
    },
  });
  const inner = new EtcdKV({ endpoints: [endpoint], requestTimeoutMs: REQUEST_TIMEOUT_MS });
  const kv = counting(inner);
  // connect before the start line: the race is about allocating, not dialing
  await inner.txn({ success: [{ get: `${prefix}/hosts/${node}` }] }, Date.now() + REQUEST_TIMEOUT_MS);
  const send = (m: FromWorker): void => void process.send!(m);
  const next = waitFor();
  send({ kind: 'ready' });
  await next('go');

  const allocations: Allocated[] = [];
  const errors: string[] = [];
  let claimed = 0;
  let borrowed = 0;
  // one store per ADD, as one plugin call per ADD has; one connection for all
  for (let i = 0; i < count; i++) {
    const containerId = `${node}-c${i}`;
    const store = EtcdStore.open(conf, { kv, log: () => {} });
    const trips = kv.trips;
    const start = performance.now();
    try {
      const [a] = await allocate(store, conf.rangeSets, { containerId, ifname: 'eth0' });
      allocations.push({ containerId, ip: formatIP(a!.ip), ms: performance.now() - start, trips: kv.trips - trips });
    } catch (err) {
      errors.push(`${containerId}: ${(err as Error).message}`);
    }
    claimed += store.stats.claimed;
    borrowed += store.stats.borrowed;
    await store.close();
  }
  send({ kind: 'allocated', node, allocations, errors, claimed, borrowed });

  await next('release');
  const releaseErrors: string[] = [];
  // every container, failed ADDs too: a runtime DELs those as well
  for (let i = 0; i < count; i++) {
    const a = { containerId: `${node}-c${i}` };
    const store = EtcdStore.open(conf, { kv, log: () => {} });
    try {
      await release(store, { containerId: a.containerId, ifname: 'eth0' });
    } catch (err) {
      releaseErrors.push(`${a.containerId}: ${(err as Error).message}`);
    }
    await store.close();
  }
  inner.close();
  send({ kind: 'released', errors: releaseErrors });
  // Leave when told: a child that exits right after sending can have its
  // exit seen before its last message.
  await next('exit');
  process.disconnect();
}

async function latencyWorker(endpoint: string, prefix: string, rounds: number, dataDir: string): Promise<void> {
  const { loadIpamConfig } = await import('../ipam/config');
  const { allocate, release } = await import('../ipam/allocator');
  const { EtcdKV } = await import('../shared/etcd/kv');
  const { EtcdStore } = await import('../ipam/etcd/store');
  const { LocalStore } = await import('../ipam/local/store');
  const etcdConf = (node: string) =>
    loadIpamConfig({
      cniVersion: '1.1.0',
      name: 'latency',
      ipam: { type: 'cluster-ipam', store: 'etcd', ranges: [[{ subnet: '10.102.0.0/16' }]], etcd: { endpoints: [endpoint], keyPrefix: prefix, nodeName: node, hostId: `machine-${node}` } },
    });
  const localConf = loadIpamConfig({ cniVersion: '1.1.0', name: 'latency', ipam: { type: 'cluster-ipam', ranges: [[{ subnet: '10.102.0.0/16' }]], dataDir } });
  // container IDs are cluster-wide: each section uses its own
  let section = 'fresh';
  const owner = (i: number) => ({ containerId: `lat-${section}-${i}`, ifname: 'eth0' });
  const rows: LatencyRow[] = [];
  const time = async (fn: () => Promise<unknown>): Promise<number> => {
    const start = performance.now();
    await fn();
    return performance.now() - start;
  };

  // etcd, a new connection per call: what a plugin process pays
  {
    const conf = etcdConf('lat-fresh');
    // the block claim and the lease are a first call's cost, not a steady one's
    await (async () => {
      const s = EtcdStore.open(conf);
      await allocate(s, conf.rangeSets, owner(-1));
      await s.close();
    })();
    const row: LatencyRow = { what: 'etcd store, in-process, new connection per call', add: [], del: [] };
    for (let i = 0; i < rounds; i++) {
      const a = EtcdStore.open(conf);
      row.add.push(await time(() => allocate(a, conf.rangeSets, owner(i))));
      await a.close();
      const d = EtcdStore.open(conf);
      row.del.push(await time(() => release(d, owner(i))));
      await d.close();
    }
    rows.push(row);
  }
  // etcd, one connection, counted: the store's own cost and its round trips
  const tripsPerAdd: number[] = [];
  const tripsPerDel: number[] = [];
  {
    section = 'shared';
    const conf = etcdConf('lat-shared');
    const inner = new EtcdKV({ endpoints: [endpoint], requestTimeoutMs: 5000 });
    const kv = counting(inner);
    const first = EtcdStore.open(conf, { kv });
    await allocate(first, conf.rangeSets, owner(-1));
    const row: LatencyRow = { what: 'etcd store, in-process, connection reused', add: [], del: [] };
    for (let i = 0; i < rounds; i++) {
      const a = EtcdStore.open(conf, { kv });
      let before = kv.trips;
      row.add.push(await time(() => allocate(a, conf.rangeSets, owner(i))));
      tripsPerAdd.push(kv.trips - before);
      const d = EtcdStore.open(conf, { kv });
      before = kv.trips;
      row.del.push(await time(() => release(d, owner(i))));
      tripsPerDel.push(kv.trips - before);
    }
    inner.close();
    rows.push(row);
  }
  // the local store (files + flock), same ranges
  {
    section = 'local';
    const row: LatencyRow = { what: 'local store, in-process', add: [], del: [] };
    for (let i = 0; i < rounds; i++) {
      const a = LocalStore.open(localConf.dataDir, localConf.name);
      row.add.push(await time(() => allocate(a, localConf.rangeSets, owner(i))));
      await a.close();
      const d = LocalStore.open(localConf.dataDir, localConf.name);
      row.del.push(await time(() => release(d, owner(i))));
      await d.close();
    }
    rows.push(row);
  }
  const next = waitFor();
  process.send!({ kind: 'latency', rows, tripsPerAdd, tripsPerDel } satisfies FromWorker);
  await next('exit');
  process.disconnect();
}

type KV = import('../shared/etcd/kv').KV;

interface CountingKV extends KV {
  trips: number;
}

/** The KV with every round trip counted; close() is left to the owner of the connection. */
function counting(inner: KV): CountingKV {
  const kv: CountingKV = {
    trips: 0,
    txn: (req, deadline) => {
      kv.trips++;
      return inner.txn(req, deadline);
    },
    leaseGrant: (ttl, deadline) => {
      kv.trips++;
      return inner.leaseGrant(ttl, deadline);
    },
    leaseKeepAlive: (id, deadline) => {
      kv.trips++;
      return inner.leaseKeepAlive(id, deadline);
    },
    leaseRevoke: (id, deadline) => {
      kv.trips++;
      return inner.leaseRevoke(id, deadline);
    },
    watchPrefix: (prefix, onChange) => inner.watchPrefix(prefix, onChange),
    close: () => {},
  };
  return kv;
}

/** Resolves the returned function's promise when the parent sends that word. */
function waitFor(): (word: string) => Promise<void> {
  const waiting = new Map<string, () => void>();
  const seen = new Set<string>();
  process.on('message', (m: string) => {
    seen.add(m);
    waiting.get(m)?.();
  });
  return (word) => new Promise<void>((resolve) => (seen.has(word) ? resolve() : waiting.set(word, resolve)));
}

// --- bench side ------------------------------------------------------------

interface Worker {
  child: ChildProcess;
  next(kind: FromWorker['kind']): Promise<FromWorker>;
}

function startWorker(script: string, args: string[]): Worker {
  const child = fork(script, args, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv: [] });
  const queue: FromWorker[] = [];
  const waiting: { kind: string; resolve: (m: FromWorker) => void; reject: (e: Error) => void }[] = [];
  child.on('message', (m: FromWorker) => {
    const w = waiting.findIndex((x) => x.kind === m.kind);
    if (w >= 0) waiting.splice(w, 1)[0]!.resolve(m);
    else queue.push(m);
  });
  child.on('exit', (code) => {
    for (const w of waiting.splice(0)) w.reject(new Error(`worker ${args.join(' ')} exited with ${code}`));
  });
  return {
    child,
    next: (kind) =>
      new Promise((resolve, reject) => {
        const q = queue.findIndex((m) => m.kind === kind);
        if (q >= 0) resolve(queue.splice(q, 1)[0]!);
        else if (child.exitCode !== null) reject(new Error(`worker ${args.join(' ')} exited with ${child.exitCode}`));
        else waiting.push({ kind, resolve, reject });
      }),
  };
}

/** Keys under a prefix through etcd's JSON gateway: this process does not load etcd3. */
async function rangeKeys(endpoint: string, prefix: string): Promise<{ key: string; value: string }[]> {
  const b64 = (s: Buffer) => s.toString('base64');
  const key = Buffer.from(prefix);
  const end = Buffer.from(key);
  end[end.length - 1] = end[end.length - 1]! + 1;
  const res = await fetch(`${endpoint}/v3/kv/range`, { method: 'POST', body: JSON.stringify({ key: b64(key), range_end: b64(end) }) });
  const body = (await res.json()) as { kvs?: { key: string; value: string }[] };
  return (body.kvs ?? []).map((kv) => ({ key: Buffer.from(kv.key, 'base64').toString(), value: Buffer.from(kv.value ?? '', 'base64').toString() }));
}

function kinds(keys: { key: string }[], prefix: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const { key } of keys) {
    const parts = key.slice(prefix.length + 1).split('/');
    const kind = parts[0] === 'networks' ? parts[2]! : parts[0]!;
    out[kind] = (out[kind] ?? 0) + 1;
  }
  return out;
}

interface Simulation {
  hosts: number;
  perHost: number;
  allocated: number;
  duplicates: number;
  foreign: number;
  borrowed: number;
  misplacedBorrows: number;
  errors: string[];
  claims: number;
  totalMs: number;
  startMs: number;
  addMedianMs: number;
  addP99Ms: number;
  overBound: number;
  releaseMs: number;
  left: Record<string, number>;
}

async function simulate(script: string, endpoint: string, prefix: string, hosts: number, perHost: number, subnet: string, blockSize: number): Promise<Simulation> {
  const spawnStart = performance.now();
  const workers: Worker[] = [];
  for (let i = 0; i < hosts; i++) workers.push(startWorker(script, ['host', endpoint, prefix, `node-${i}`, String(perHost), subnet, String(blockSize)]));
  await Promise.all(workers.map((w) => w.next('ready')));
  const startMs = performance.now() - spawnStart;

  const t0 = performance.now();
  for (const w of workers) w.child.send('go');
  const results = (await Promise.all(workers.map((w) => w.next('allocated')))) as Extract<FromWorker, { kind: 'allocated' }>[];
  const totalMs = performance.now() - t0;

  const keys = await rangeKeys(endpoint, `${prefix}/`);
  const claims = new Map(keys.filter((k) => k.key.includes('/blocks/')).map((k) => [k.key.slice(k.key.lastIndexOf('/') + 1), k.value]));
  const ipKeys = new Map(keys.filter((k) => k.key.includes('/ips/')).map((k) => [k.key.slice(k.key.lastIndexOf('/') + 1), JSON.parse(k.value) as { node: string; block: string; borrowed?: boolean }]));
  const all = results.flatMap((r) => r.allocations.map((a) => ({ ...a, node: r.node })));
  let foreign = 0;
  let misplacedBorrows = 0;
  for (const a of all) {
    const v = ipKeys.get(a.ip);
    const claimant = v ? claims.get(v.block) : undefined;
    if (!v || v.node !== a.node) misplacedBorrows++;
    else if (v.borrowed) {
      if (claimant === a.node) misplacedBorrows++;
      foreign++;
    } else if (claimant !== a.node) misplacedBorrows++;
  }
  const ms = all.map((a) => a.ms).sort((x, y) => x - y);

  const r0 = performance.now();
  for (const w of workers) w.child.send('release');
  const released = (await Promise.all(workers.map((w) => w.next('released')))) as Extract<FromWorker, { kind: 'released' }>[];
  const releaseMs = performance.now() - r0;
  for (const w of workers) w.child.send('exit');
  const left = kinds(await rangeKeys(endpoint, `${prefix}/`), prefix);

  return {
    hosts,
    perHost,
    allocated: all.length,
    duplicates: all.length - new Set(all.map((a) => a.ip)).size,
    foreign,
    borrowed: results.reduce((n, r) => n + r.borrowed, 0),
    misplacedBorrows,
    errors: [...results.flatMap((r) => r.errors), ...released.flatMap((r) => r.errors)],
    claims: claims.size,
    totalMs,
    startMs,
    addMedianMs: median(ms),
    addP99Ms: ms[Math.min(ms.length - 1, Math.floor(ms.length * 0.99))] ?? 0,
    overBound: ms.filter((x) => x > DEFAULT_BOUND_MS).length,
    releaseMs,
    left,
  };
}

function table(head: string[], rows: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const fmt = (cols: string[]) => cols.map((c, i) => c.padEnd(widths[i]!)).join('  ');
  return [fmt(head), fmt(widths.map((w) => '-'.repeat(w))), ...rows.map(fmt)].join('\n');
}

/** ADD then DEL of one container through an executable, the way a runtime calls an IPAM plugin. */
function execCycle(binary: string, conf: string, i: number, netns: string): { add: Sample; del: Sample } {
  // an IPAM plugin touches no interface, but the protocol wants a namespace
  const env = { CNI_CONTAINERID: `exec-${path.basename(binary)}-${i}`, CNI_NETNS: `/var/run/netns/${netns}`, CNI_IFNAME: 'eth0', CNI_PATH: path.dirname(binary) };
  const add = runOnce({ binary, env: { ...env, CNI_COMMAND: 'ADD' }, stdin: conf });
  const del = runOnce({ binary, env: { ...env, CNI_COMMAND: 'DEL' }, stdin: conf });
  return { add, del };
}

async function main(): Promise<void> {
  const root = process.cwd();
  // The local store's flock comes from the native binding, which a bundle in
  // dist/bench cannot find from its own path; the workers inherit this.
  process.env.NETLINK_TS_NATIVE ??= path.join(root, 'dist/netlink_native.node');
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-etcd-ipam-'));
  // the worker bundle: this file again, etcd3 external (see the header)
  const script = path.join(root, 'dist/bench/etcd-ipam-worker.js');
  execFileSync(path.join(root, 'node_modules/.bin/esbuild'), [
    path.join(root, 'bench/etcd-ipam.ts'),
    '--bundle',
    '--platform=node',
    '--format=cjs',
    '--log-level=warning',
    '--external:etcd3',
    `--outfile=${script}`,
  ]);
  const etcd = await startEtcd();
  let failed = false;
  const problem = (what: string) => {
    failed = true;
    console.log(`PROBLEM: ${what}`);
  };
  try {
    // 1. the cluster
    console.log(`${HOSTS} hosts x ${PER_HOST} addresses on 10.100.0.0/16 in /26 blocks (etcd ${etcd.endpoint}, one process per host)...`);
    const sim = await simulate(script, etcd.endpoint, '/bench-sim', HOSTS, PER_HOST, '10.100.0.0/16', 26);
    // 2. exhaustion under load: 16 blocks of /28 for 12 hosts taking 20 each
    console.log('exhaustion: 12 hosts x 20 addresses on 10.101.0.0/24 in /28 blocks (16 blocks)...');
    const ex = await simulate(script, etcd.endpoint, '/bench-exhaust', 12, 20, '10.101.0.0/24', 28);

    const simRows = [sim, ex].map((s, i) => [
      i === 0 ? `${s.hosts} hosts x ${s.perHost}, /16, /26 blocks` : `${s.hosts} hosts x ${s.perHost}, /24, /28 blocks`,
      String(s.allocated),
      String(s.duplicates),
      String(s.claims),
      `${s.borrowed}`,
      String(s.misplacedBorrows),
      (s.totalMs / 1000).toFixed(2),
      s.addMedianMs.toFixed(1),
      s.addP99Ms.toFixed(1),
      String(s.overBound),
      (s.releaseMs / 1000).toFixed(2),
      Object.entries(s.left).map(([k, n]) => `${k}:${n}`).join(' '),
    ]);
    console.log();
    console.log(
      table(['simulation', 'allocated', 'dups', 'blocks', 'borrowed', 'misplaced', 'total s', 'ADD p50 ms', 'ADD p99 ms', `ADDs > ${DEFAULT_BOUND_MS / 1000} s`, 'release s', 'keys left after release'], simRows),
    );
    console.log(`(workers started and connected in ${(sim.startMs / 1000).toFixed(1)} s and ${(ex.startMs / 1000).toFixed(1)} s, not counted in "total")`);
    for (const s of [sim, ex]) {
      if (s.allocated !== s.hosts * s.perHost) problem(`${s.allocated} of ${s.hosts * s.perHost} allocated: ${s.errors.slice(0, 3).join('; ')}`);
      if (s.duplicates > 0) problem(`${s.duplicates} duplicate addresses`);
      if (s.misplacedBorrows > 0) problem(`${s.misplacedBorrows} allocations outside the host's own blocks without a borrow mark, or marked borrowed in its own block`);
      if (s.borrowed !== s.foreign) problem(`stores counted ${s.borrowed} borrows, etcd holds ${s.foreign}`);
      for (const k of ['ips', 'owners', 'leaks']) if (s.left[k]) problem(`${s.left[k]} ${k} keys left after release`);
      if (s.errors.length) problem(`errors: ${s.errors.slice(0, 5).join('; ')}`);
    }
    if (sim.borrowed > 0) problem(`${sim.borrowed} borrows on a /16 with room for every host`);

    // 3. latency: the stores in-process, host-local and our executable exec'd
    console.log();
    console.log(`latency, ${ROUNDS} ADD+DEL rounds each, medians (10.102.0.0/16):`);
    const lat = startWorker(script, ['latency', etcd.endpoint, '/bench-latency', String(ROUNDS), path.join(tmp, 'local')]);
    const l = (await lat.next('latency')) as Extract<FromWorker, { kind: 'latency' }>;
    lat.child.send('exit');
    const rows = l.rows.map((r) => [r.what, median(r.add).toFixed(2), median(r.del).toFixed(2)]);

    const hostLocalConf = JSON.stringify({ cniVersion: '1.0.0', name: 'latency-hl', ipam: { type: 'host-local', ranges: [[{ subnet: '10.102.0.0/16' }]], dataDir: path.join(tmp, 'host-local') } });
    const ours = path.join(root, 'bin/cluster-ipam');
    const oursLocal = JSON.stringify({ cniVersion: '1.0.0', name: 'latency-ours', ipam: { type: 'cluster-ipam', ranges: [[{ subnet: '10.102.0.0/16' }]], dataDir: path.join(tmp, 'ours') } });
    const oursEtcd = JSON.stringify({
      cniVersion: '1.0.0',
      name: 'latency-exec',
      ipam: { type: 'cluster-ipam', store: 'etcd', ranges: [[{ subnet: '10.102.0.0/16' }]], etcd: { endpoints: [etcd.endpoint], keyPrefix: '/bench-latency', nodeName: 'lat-exec', hostId: 'machine-lat-exec' } },
    });
    const netns = `bench-etcd-ipam-${process.pid}`;
    execFileSync('ip', ['netns', 'add', netns]);
    const execRow = (what: string, binary: string, conf: string): string[] => {
      if (!fs.existsSync(binary)) return [what, 'n/a', `n/a (${binary} missing)`];
      const warm = execCycle(binary, conf, -1, netns);
      if (warm.add.status !== 0) return [what, 'n/a', `n/a: ADD failed: ${(warm.add.stdout || '').replace(/\s+/g, ' ').slice(0, 120)}`];
      const add: number[] = [];
      const del: number[] = [];
      for (let i = 0; i < ROUNDS; i++) {
        const c = execCycle(binary, conf, i, netns);
        if (c.add.status !== 0 || c.del.status !== 0) return [what, 'n/a', `n/a: round ${i} failed: ${c.add.stdout.slice(0, 120)}`];
        add.push(c.add.ms);
        del.push(c.del.ms);
      }
      return [what, median(add).toFixed(2), median(del).toFixed(2)];
    };
    try {
      rows.push(execRow('reference host-local, exec', '/usr/lib/cni/host-local', hostLocalConf));
      rows.push(execRow('bin/cluster-ipam local store, exec', ours, oursLocal));
      rows.push(execRow('bin/cluster-ipam etcd store, exec', ours, oursEtcd));
    } finally {
      execFileSync('ip', ['netns', 'del', netns]);
    }
    console.log(table(['store', 'ADD ms', 'DEL ms'], rows));
    const maxAdd = Math.max(...l.tripsPerAdd);
    console.log();
    console.log(
      `etcd round trips per ADD once the host holds a block: median ${median(l.tripsPerAdd)}, max ${maxAdd} (over ${l.tripsPerAdd.length} ADDs); per DEL: median ${median(l.tripsPerDel)}, max ${Math.max(...l.tripsPerDel)}`,
    );
    if (process.env.BENCH_DEBUG) console.log(`trips per ADD: ${l.tripsPerAdd.join(' ')}`);
    if (maxAdd > 2) problem(`an ADD took ${maxAdd} etcd round trips once the host held a block (at most 2 allowed)`);
  } finally {
    await etcd.stop();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  if (failed) process.exitCode = 1;
}

const [mode, ...args] = process.argv.slice(2);
if (mode === 'host') {
  hostWorker(args[0]!, args[1]!, args[2]!, Number(args[3]), args[4]!, Number(args[5])).catch((e: unknown) => {
    process.stderr.write(`${(e as Error).stack ?? String(e)}\n`);
    process.exit(1);
  });
} else if (mode === 'latency') {
  latencyWorker(args[0]!, args[1]!, Number(args[2]), args[3]!).catch((e: unknown) => {
    process.stderr.write(`${(e as Error).stack ?? String(e)}\n`);
    process.exit(1);
  });
} else {
  main().catch((e: unknown) => {
    process.stderr.write(`${(e as Error).stack ?? String(e)}\n`);
    process.exitCode = 1;
  });
}
