import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { allocate, release, withLock } from '../../../ipam/allocator';
import { loadIpamConfig } from '../../../ipam/config';
import { EtcdKV, type KeyValue } from '../../../ipam/etcd/kv';
import { maintMain, parseDuration, runMaint, type MaintReport } from '../../../ipam/etcd/maint';
import { EtcdStore, type EtcdStoreOptions } from '../../../ipam/etcd/store';
import { formatIP } from '../../../ipam/ip';
import { startEtcd, type EtcdServer } from './etcd-server';

let etcd: EtcdServer;
let raw: EtcdKV;
let seq = 0;
const opened: EtcdStore[] = [];
const tmpDirs: string[] = [];

beforeAll(async () => {
  etcd = await startEtcd();
  raw = new EtcdKV({ endpoints: [etcd.endpoint], requestTimeoutMs: 5000 });
});

afterAll(async () => {
  for (const s of opened) await s.close();
  raw?.close();
  await etcd?.stop();
  for (const d of tmpDirs) fs.rmSync(d, { recursive: true, force: true });
});

function prefix(): string {
  return `/maint-${process.pid}-${++seq}`;
}

function netConf(p: string, subnet: string, etcdExtra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    cniVersion: '1.1.0',
    name: 'net1',
    ipam: { type: 'cluster-ipam', store: 'etcd', ranges: [[{ subnet }]], etcd: { endpoints: [etcd.endpoint], keyPrefix: p, ...etcdExtra } },
  };
}

function host(p: string, subnet: string, node: string, extra: Record<string, unknown> = {}, options: EtcdStoreOptions = {}): EtcdStore {
  const store = EtcdStore.open(loadIpamConfig(netConf(p, subnet, { nodeName: node, hostId: `id-${node}`, ...extra })), options);
  opened.push(store);
  return store;
}

async function add(store: EtcdStore, id: string): Promise<string> {
  const [a] = await allocate(store, store.rangeSets, { containerId: id, ifname: 'eth0' });
  return formatIP(a!.ip);
}

async function keys(p: string): Promise<KeyValue[]> {
  const { results } = await raw.txn({ success: [{ get: `${p}/`, prefix: true }] }, Date.now() + 5000);
  return [...results[0]!];
}

/** Every key with its value and revision: equal dumps mean nothing was written. */
async function dump(p: string): Promise<string[]> {
  return (await keys(p)).map((k) => `${k.key} ${k.modRevision} ${k.value}`);
}

/** Stands in for the liveness lease expiring (one test waits for a real expiry). */
async function expire(p: string, node: string): Promise<void> {
  await raw.txn({ success: [{ delete: `${p}/alive/${node}` }] }, Date.now() + 5000);
}

function maint(p: string, subnet: string, dryRun: boolean, graceMs: number, now: number, extra: Record<string, unknown> = {}): Promise<MaintReport> {
  return runMaint(loadIpamConfig(netConf(p, subnet, extra)), { dryRun, graceMs }, { clock: () => now });
}

function hostReport(r: MaintReport, node: string) {
  return r.hosts.find((h) => h.node === node)!;
}

describe('ipam-maint', () => {
  it('releases the blocks of a host whose liveness lease expired while it held nothing, and removes its registration; a dry run first changes nothing', { timeout: 30_000 }, async () => {
    const p = prefix();
    const a = host(p, '10.40.0.0/24', 'node-a');
    const b = host(p, '10.40.0.0/24', 'node-b', { livenessTtlMs: 2000 });
    const ipA = await add(a, 'on-a');
    await add(b, 'on-b');
    await release(b, { containerId: 'on-b', ifname: 'eth0' });
    await b.close();
    // node-b makes no more calls: its lease runs out by etcd's clock
    for (let i = 0; i < 150 && (await keys(p)).some((k) => k.key === `${p}/alive/node-b`); i++) await new Promise((r) => setTimeout(r, 100));
    expect((await keys(p)).some((k) => k.key === `${p}/alive/node-b`)).toBe(false);
    expect((await keys(p)).some((k) => k.key === `${p}/alive/node-a`)).toBe(true);

    const before = await dump(p);
    const dry = await maint(p, '10.40.0.0/24', true, 60_000, Date.now());
    expect(await dump(p)).toEqual(before);
    expect(hostReport(dry, 'node-a').action).toBe('alive');
    expect(hostReport(dry, 'node-b')).toMatchObject({ action: 'reclaimed', releasedBlocks: [expect.any(String)], registrationRemoved: true });

    const done = await maint(p, '10.40.0.0/24', false, 60_000, Date.now());
    expect(done.incomplete).toBe(false);
    const left = (await keys(p)).map((k) => k.key.slice(p.length));
    expect(left.filter((k) => k.includes('node-b'))).toEqual([]);
    expect(left.filter((k) => k.includes('/blocks/'))).toHaveLength(1);
    expect((await keys(p)).find((k) => k.key.includes('/blocks/'))!.value).toBe('node-a');
    expect(left).toContain(`/networks/net1/ips/${ipA}`);
    // node-b comes back: it registers again and claims a block again
    const b2 = host(p, '10.40.0.0/24', 'node-b');
    await add(b2, 'on-b-again');
    expect((await keys(p)).some((k) => k.key === `${p}/hosts/node-b`)).toBe(true);
  });

  it('frees a gone host’s allocations only on a run at least the grace period after the one that first saw it gone', async () => {
    const p = prefix();
    const a = host(p, '10.41.0.0/24', 'node-a');
    const b = host(p, '10.41.0.0/24', 'node-b');
    const ipA = await add(a, 'on-a');
    const ipsB = [await add(b, 'b1'), await add(b, 'b2'), await add(b, 'b3')];
    await expire(p, 'node-b');
    const t0 = 1_000_000;

    const first = await maint(p, '10.41.0.0/24', false, 60_000, t0);
    expect(hostReport(first, 'node-b')).toMatchObject({ action: 'sighted', freed: [], reclaimableAt: t0 + 60_000 });
    expect((await keys(p)).some((k) => k.key === `${p}/gone/node-b/net1`)).toBe(true);

    const early = await maint(p, '10.41.0.0/24', false, 60_000, t0 + 59_999);
    expect(hostReport(early, 'node-b')).toMatchObject({ action: 'waiting', freed: [] });

    const before = await dump(p);
    const dry = await maint(p, '10.41.0.0/24', true, 60_000, t0 + 60_000);
    expect(hostReport(dry, 'node-b').freed.sort()).toEqual([...ipsB].sort());
    expect(await dump(p)).toEqual(before);

    const done = await maint(p, '10.41.0.0/24', false, 60_000, t0 + 60_000);
    expect(hostReport(done, 'node-b')).toMatchObject({ action: 'reclaimed', registrationRemoved: true });
    expect(hostReport(done, 'node-b').freed.sort()).toEqual([...ipsB].sort());
    expect((await keys(p)).filter((k) => k.key.includes('node-b') || k.value.includes('node-b'))).toEqual([]);
    const ips = (await keys(p)).filter((k) => k.key.includes('/ips/')).map((k) => k.key.slice(k.key.lastIndexOf('/') + 1));
    expect(ips).toEqual([ipA]);
    // the freed block is claimable again, and the addresses with it
    const c = host(p, '10.41.0.0/24', 'node-c', {}, { random: () => 0 });
    const got = new Set<string>();
    for (let i = 0; i < 5; i++) got.add(await add(c, `c${i}`));
    expect(got.size).toBe(5);
    expect(got.has(ipA)).toBe(false);
  });

  it('never frees a host that came back between two runs, even if it looks gone again at the second', async () => {
    const p = prefix();
    const b = host(p, '10.42.0.0/24', 'node-b');
    const ipB = await add(b, 'b1');
    await expire(p, 'node-b');
    const t0 = 5_000_000;
    expect(hostReport(await maint(p, '10.42.0.0/24', false, 60_000, t0), 'node-b').action).toBe('sighted');
    // a STATUS call renews the lease and voids the sighting
    await withLock(b, () => b.listAll());
    expect((await keys(p)).some((k) => k.key.startsWith(`${p}/gone/`))).toBe(false);
    await expire(p, 'node-b');
    const second = await maint(p, '10.42.0.0/24', false, 60_000, t0 + 120_000);
    expect(hostReport(second, 'node-b')).toMatchObject({ action: 'sighted', freed: [] });
    expect((await keys(p)).some((k) => k.key.endsWith(`/ips/${ipB}`))).toBe(true);
  });

  it('keeps a gone host’s block while a live host’s borrowed address is in it, and releases it once that borrow is gone', async () => {
    const p = prefix();
    // 10.43.0.0/27 in /28 blocks: a fills the first and borrows from b's
    const a = host(p, '10.43.0.0/27', 'node-a', { blockSize: 28 }, { random: () => 0, log: () => {} });
    const b = host(p, '10.43.0.0/27', 'node-b', { blockSize: 28 }, { random: () => 0 });
    for (let i = 0; i < 14; i++) await add(a, `a${i}`);
    const ipB = await add(b, 'b0');
    const borrowed = await add(a, 'a-borrow');
    expect(a.stats.borrowed).toBe(1);
    await expire(p, 'node-b');
    const t0 = 9_000_000;
    const small = { blockSize: 28 };
    await maint(p, '10.43.0.0/27', false, 1000, t0, small);
    const r = await maint(p, '10.43.0.0/27', false, 1000, t0 + 1000, small);
    expect(hostReport(r, 'node-b')).toMatchObject({ action: 'reclaimed', freed: [ipB], releasedBlocks: [], keptBlocks: ['10.43.0.16/28'], registrationRemoved: false });
    const ipKeys = (await keys(p)).filter((k) => k.key.includes('/ips/')).map((k) => k.key.slice(k.key.lastIndexOf('/') + 1));
    expect(ipKeys).toContain(borrowed);
    expect(ipKeys).not.toContain(ipB);
    const state = (await keys(p)).find((k) => k.key.endsWith('/hostblocks/node-b/10.43.0.16_28'))!;
    expect(Object.keys(JSON.parse(state.value).used)).toEqual([String(Number(borrowed.split('.')[3]) - 16)]);
    // the borrower releases; the next run releases the block and the registration
    await release(a, { containerId: 'a-borrow', ifname: 'eth0' });
    const again = await maint(p, '10.43.0.0/27', false, 1000, t0 + 2000, small);
    expect(hostReport(again, 'node-b')).toMatchObject({ releasedBlocks: ['10.43.0.16/28'], registrationRemoved: true });
    expect((await keys(p)).filter((k) => k.key.includes('node-b'))).toEqual([]);
  });

  it('runs as a command: reads a conflist, prints one line per host, and answers usage errors with 2', async () => {
    const p = prefix();
    const a = host(p, '10.44.0.0/24', 'node-a');
    await add(a, 'c1');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ipam-maint-'));
    tmpDirs.push(dir);
    const list = path.join(dir, 'net.conflist');
    const conf = netConf(p, '10.44.0.0/24');
    fs.writeFileSync(list, JSON.stringify({ cniVersion: '1.1.0', name: 'net1', plugins: [{ type: 'bridge', ipam: conf.ipam }] }));
    const out: string[] = [];
    const err: string[] = [];
    const io = { out: (l: string) => out.push(l), err: (l: string) => err.push(l) };
    expect(await maintMain(['--dry-run', '--config', list, '--grace', '15m'], io)).toBe(0);
    expect(out.join('\n')).toContain('node-a: alive, 1 block(s), 1 allocation(s)');
    expect(out[0]).toContain('dry run');
    expect(await maintMain(['--dry-run'], io)).toBe(2);
    expect(await maintMain(['--config', list, '--grace', 'soon'], io)).toBe(2);
    expect(await maintMain(['--config', list, '--bogus'], io)).toBe(2);
    const noEtcd = path.join(dir, 'local.conflist');
    fs.writeFileSync(noEtcd, JSON.stringify({ cniVersion: '1.1.0', name: 'n', plugins: [{ type: 'bridge', ipam: { type: 'cluster-ipam', subnet: '10.1.0.0/24' } }] }));
    expect(await maintMain(['--config', noEtcd], io)).toBe(1);
    expect(err.at(-1)).toContain('no plugin of the list uses the etcd IPAM store');
  });

  it('reads durations as Go writes them', () => {
    expect(parseDuration('90s')).toBe(90_000);
    expect(parseDuration('1h30m')).toBe(5_400_000);
    expect(parseDuration('500ms')).toBe(500);
    expect(parseDuration('0')).toBe(0);
    expect(parseDuration('15')).toBe(15_000);
    expect(parseDuration('15x')).toBeUndefined();
    expect(parseDuration('')).toBeUndefined();
  });
});
