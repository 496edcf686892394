import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { allocate, release } from '../../../ipam/allocator';
import { loadIpamConfig } from '../../../ipam/config';
import { EtcdKV, type KeyValue } from '../../../shared/etcd/kv';
import { startLivenessKeeper } from '../../../ipam/etcd/liveness';
import { runMaint, type MaintReport } from '../../../ipam/etcd/decommission';
import { maintMain } from '../../../ipam/etcd/maint';
import { EtcdStore, type EtcdStoreOptions } from '../../../ipam/etcd/store';
import { formatIP } from '../../../shared/ip';
import { putOp, recordOf } from '../../../shared/dns/cluster';
import { startEtcd, type EtcdServer } from '../../../testkit/etcd-server';

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
  // livenessDir: null unless a test gives one: no record of these test hosts reaches a real keeper
  const store = EtcdStore.open(loadIpamConfig(netConf(p, subnet, { nodeName: node, hostId: `id-${node}`, ...extra })), { livenessDir: null, ...options });
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

async function aliveKeyExists(p: string, node: string): Promise<boolean> {
  return (await keys(p)).some((k) => k.key === `${p}/alive/${node}`);
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function maint(p: string, subnet: string, dryRun: boolean, extra: Record<string, unknown> = {}, decommission?: string): Promise<MaintReport> {
  return runMaint(loadIpamConfig(netConf(p, subnet, extra)), { dryRun, decommission }, { log: () => {} });
}

function hostReport(r: MaintReport, node: string) {
  return r.hosts.find((h) => h.node === node)!;
}

function tmpDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ipam-maint-'));
  tmpDirs.push(dir);
  return dir;
}

describe('ipam-maint', () => {
  it('a host that makes no CNI call for longer than its liveness TTL keeps every address through two runs: its keeper holds the lease; without the keeper it is only suspect; decommission frees it', { timeout: 60_000 }, async () => {
    const p = prefix();
    const dir = tmpDir();
    const a = host(p, '10.40.0.0/24', 'node-a');
    const b = host(p, '10.40.0.0/24', 'node-b', { livenessTtlMs: 2000 }, { livenessDir: dir });
    const ipA = await add(a, 'on-a');
    const ipsB = [await add(b, 'b1'), await add(b, 'b2'), await add(b, 'b3')];
    await b.close();
    const stop = new AbortController();
    const keeper = startLivenessKeeper({ dir, signal: stop.signal, log: () => {} });
    try {
      // node-b makes no CNI call for more than twice its TTL; its keeper runs
      await sleep(5000);
      expect(await aliveKeyExists(p, 'node-b')).toBe(true);
      const before = await dump(p);
      for (let run = 0; run < 2; run++) {
        const r = await maint(p, '10.40.0.0/24', false);
        expect(hostReport(r, 'node-b')).toMatchObject({ action: 'alive', freed: [], releasedBlocks: [] });
        await sleep(2500);
      }
      expect((await dump(p)).filter((l) => !l.includes('/alive/'))).toEqual(before.filter((l) => !l.includes('/alive/')));
    } finally {
      stop.abort();
      await keeper;
    }

    // The keeper stops (daemon down): the lease runs out by etcd's clock, and
    // two runs report node-b suspect and free nothing of it.
    for (let i = 0; i < 100 && (await aliveKeyExists(p, 'node-b')); i++) await sleep(100);
    expect(await aliveKeyExists(p, 'node-b')).toBe(false);
    const before = await dump(p);
    for (let run = 0; run < 2; run++) {
      const r = await maint(p, '10.40.0.0/24', false);
      expect(hostReport(r, 'node-b')).toMatchObject({ action: 'suspect', freed: [], releasedBlocks: [], registrationRemoved: false });
      expect(hostReport(r, 'node-a').action).toBe('alive');
    }
    expect(await dump(p)).toEqual(before);
    // node-c asks for addresses: none of node-b's is handed out
    const c = host(p, '10.40.0.0/24', 'node-c', {}, { random: () => 0 });
    for (let i = 0; i < 5; i++) expect(ipsB).not.toContain(await add(c, `c${i}`));

    // The operator says node-b is gone: a dry run first, then for real.
    const beforeDry = await dump(p);
    const dry = await maint(p, '10.40.0.0/24', true, {}, 'node-b');
    expect(hostReport(dry, 'node-b').freed.sort()).toEqual([...ipsB].sort());
    expect(await dump(p)).toEqual(beforeDry);
    const done = await maint(p, '10.40.0.0/24', false, {}, 'node-b');
    expect(done.incomplete).toBe(false);
    expect(hostReport(done, 'node-b')).toMatchObject({ action: 'decommissioned', releasedBlocks: [expect.any(String)], registrationRemoved: true });
    expect(hostReport(done, 'node-b').freed.sort()).toEqual([...ipsB].sort());
    expect((await keys(p)).filter((k) => k.key.includes('node-b') || k.value.includes('node-b'))).toEqual([]);
    expect((await keys(p)).some((k) => k.key.endsWith(`/ips/${ipA}`))).toBe(true);
  });

  it("decommission removes the DNS names the node's containers published in the network, and no other host's", async () => {
    const p = prefix();
    const b = host(p, '10.47.0.0/24', 'node-b');
    const ipB = await add(b, 'b1');
    await expire(p, 'node-b');
    // as a macvlan/overlay ADD with dns writes them (shared/dns/cluster.ts)
    const scopeOf = (node: string) => ({ network: 'net1', node });
    const rec = (node: string, id: string, ip: string) => recordOf(scopeOf(node), { containerId: id, ifname: 'eth0', names: [id], v4: [ip], v6: [] });
    await raw.txn({ success: [putOp(p, rec('node-b', 'b1', ipB)), putOp(p, rec('node-a', 'a1', '10.47.0.200'))] }, Date.now() + 5000);
    const dry = await maint(p, '10.47.0.0/24', true, {}, 'node-b');
    expect(hostReport(dry, 'node-b').namesRemoved).toEqual(['b1/eth0']);
    expect((await keys(p)).filter((k) => k.key.includes('/dns/')).length).toBe(2);
    const done = await maint(p, '10.47.0.0/24', false, {}, 'node-b');
    expect(hostReport(done, 'node-b').namesRemoved).toEqual(['b1/eth0']);
    expect((await keys(p)).filter((k) => k.key.includes('/dns/')).map((k) => k.key)).toEqual([`${p}/dns/net1/a1/eth0`]);
  });

  it('a dry run of decommission writes nothing', async () => {
    const p = prefix();
    const b = host(p, '10.45.0.0/24', 'node-b');
    await add(b, 'b1');
    await expire(p, 'node-b');
    const before = await dump(p);
    const dry = await maint(p, '10.45.0.0/24', true, {}, 'node-b');
    expect(hostReport(dry, 'node-b')).toMatchObject({ action: 'decommissioned', freed: [expect.any(String)], registrationRemoved: true });
    expect(await dump(p)).toEqual(before);
  });

  it('reports a host without liveness that holds only empty blocks as suspect and keeps its blocks and registration', async () => {
    const p = prefix();
    const b = host(p, '10.46.0.0/24', 'node-b');
    await add(b, 'b1');
    await release(b, { containerId: 'b1', ifname: 'eth0' });
    await expire(p, 'node-b');
    const before = await dump(p);
    const r = await maint(p, '10.46.0.0/24', false);
    expect(hostReport(r, 'node-b')).toMatchObject({ action: 'suspect', releasedBlocks: [], registrationRemoved: false });
    expect(await dump(p)).toEqual(before);
  });

  it('refuses to decommission a host whose liveness key is there, writing nothing', async () => {
    const p = prefix();
    const b = host(p, '10.42.0.0/24', 'node-b');
    await add(b, 'b1');
    const before = await dump(p);
    const r = await maint(p, '10.42.0.0/24', false, {}, 'node-b');
    expect(r.incomplete).toBe(true);
    expect(hostReport(r, 'node-b')).toMatchObject({ action: 'refused', freed: [] });
    expect(await dump(p)).toEqual(before);
  });

  it('decommission frees hundreds of allocations in transactions etcd accepts', { timeout: 60_000 }, async () => {
    const p = prefix();
    const b = host(p, '10.47.0.0/23', 'node-b', { blockSize: 23 });
    const ips: string[] = [];
    for (let i = 0; i < 200; i++) ips.push(await add(b, `b${i}`));
    await expire(p, 'node-b');
    const r = await maint(p, '10.47.0.0/23', false, { blockSize: 23 }, 'node-b');
    expect(r.incomplete).toBe(false);
    expect(hostReport(r, 'node-b').freed).toHaveLength(200);
    expect((await keys(p)).filter((k) => k.key.includes('/ips/') || k.key.includes('/owners/'))).toEqual([]);
  });

  it('keeps a decommissioned host’s block while a live host’s borrowed address is in it, and releases it at the next decommission once that borrow is gone', async () => {
    const p = prefix();
    // 10.43.0.0/27 in /28 blocks: a fills the first and borrows from b's
    const a = host(p, '10.43.0.0/27', 'node-a', { blockSize: 28 }, { random: () => 0, log: () => {} });
    const b = host(p, '10.43.0.0/27', 'node-b', { blockSize: 28 }, { random: () => 0 });
    for (let i = 0; i < 14; i++) await add(a, `a${i}`);
    const ipB = await add(b, 'b0');
    const borrowed = await add(a, 'a-borrow');
    expect(a.stats.borrowed).toBe(1);
    await expire(p, 'node-b');
    const small = { blockSize: 28 };
    const r = await maint(p, '10.43.0.0/27', false, small, 'node-b');
    expect(hostReport(r, 'node-b')).toMatchObject({ action: 'decommissioned', freed: [ipB], releasedBlocks: [], keptBlocks: ['10.43.0.16/28'], registrationRemoved: false });
    const ipKeys = (await keys(p)).filter((k) => k.key.includes('/ips/')).map((k) => k.key.slice(k.key.lastIndexOf('/') + 1));
    expect(ipKeys).toContain(borrowed);
    expect(ipKeys).not.toContain(ipB);
    const state = (await keys(p)).find((k) => k.key.endsWith('/hostblocks/node-b/10.43.0.16_28'))!;
    expect(Object.keys(JSON.parse(state.value).used)).toEqual([String(Number(borrowed.split('.')[3]) - 16)]);
    // the borrower releases; decommissioning again releases the block and the registration
    await release(a, { containerId: 'a-borrow', ifname: 'eth0' });
    const again = await maint(p, '10.43.0.0/27', false, small, 'node-b');
    expect(hostReport(again, 'node-b')).toMatchObject({ releasedBlocks: ['10.43.0.16/28'], registrationRemoved: true });
    expect((await keys(p)).filter((k) => k.key.includes('node-b'))).toEqual([]);
  });

  it('skips malformed host, block, allocation and alive records (logged) and still reports and decommissions', async () => {
    const p = prefix();
    const a = host(p, '10.48.0.0/24', 'node-a');
    const b = host(p, '10.48.0.0/24', 'node-b', {}, { random: () => 0 });
    await add(a, 'on-a');
    const ipB = await add(b, 'b1');
    await expire(p, 'node-b');
    const N = `${p}/networks/net1`;
    await raw.txn(
      {
        success: [
          { put: `${p}/hosts/node-x`, value: '{not json' },
          { put: `${p}/alive/node-y`, value: '"alive"' },
          { put: `${N}/hostblocks/node-x/10.48.0.192_26`, value: JSON.stringify({ cidr: 7 }) },
          { put: `${N}/ips/10.48.0.250`, value: JSON.stringify({ containerId: 'x', node: 'node-x' }) },
        ],
      },
      Date.now() + 5000,
    );
    const logged: string[] = [];
    const r = await runMaint(loadIpamConfig(netConf(p, '10.48.0.0/24')), { dryRun: false, decommission: 'node-b' }, { log: (l) => logged.push(l) });
    expect(hostReport(r, 'node-a').action).toBe('alive');
    expect(hostReport(r, 'node-b')).toMatchObject({ action: 'decommissioned', freed: [ipB] });
    expect(logged.join('\n')).toContain(`${N}/ips/10.48.0.250`);
  });

  it('runs as a command: reads a conflist, prints one line per host, explains liveness, decommission and the host ID in --help, and answers usage errors with 2', async () => {
    const p = prefix();
    const a = host(p, '10.44.0.0/24', 'node-a');
    await add(a, 'c1');
    const dir = tmpDir();
    const list = path.join(dir, 'net.conflist');
    const conf = netConf(p, '10.44.0.0/24');
    fs.writeFileSync(list, JSON.stringify({ cniVersion: '1.1.0', name: 'net1', plugins: [{ type: 'bridge', ipam: conf.ipam }] }));
    const out: string[] = [];
    const err: string[] = [];
    const io = { out: (l: string) => out.push(l), err: (l: string) => err.push(l) };
    expect(await maintMain(['--dry-run', '--config', list], io)).toBe(0);
    expect(out.join('\n')).toContain('node-a: alive, 1 block(s), 1 allocation(s)');
    expect(out[0]).toContain('dry run');
    out.length = 0;
    expect(await maintMain(['--help'], io)).toBe(0);
    const help = out.join('\n');
    for (const word of ['decommission NODE', 'liveness', 'SUSPECT', '/var/lib/cni-ts/host-id', 'daemon', 'overlay agent']) expect(help).toContain(word);
    expect(await maintMain(['--dry-run'], io)).toBe(2);
    expect(await maintMain(['decommission', '--config', list], io)).toBe(2);
    expect(await maintMain(['--config', list, '--bogus'], io)).toBe(2);
    expect(await maintMain(['decommission', 'node-a', '--config', list], io)).toBe(1);
    expect(out.join('\n')).toContain('NOT decommissioned');
    const noEtcd = path.join(dir, 'local.conflist');
    fs.writeFileSync(noEtcd, JSON.stringify({ cniVersion: '1.1.0', name: 'n', plugins: [{ type: 'bridge', ipam: { type: 'cluster-ipam', subnet: '10.1.0.0/24' } }] }));
    expect(await maintMain(['--config', noEtcd], io)).toBe(1);
    expect(err.at(-1)).toContain('no plugin of the list uses the etcd IPAM store');
  });
});
