import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CniError } from '../../../shared/cni/errors';
import { allocate, collectGarbage, release, type AllocationStore } from '../../../ipam/allocator';
import { loadIpamConfig } from '../../../ipam/config';
import { EtcdKV, type KeyValue } from '../../../shared/etcd/kv';
import { EtcdStore, type EtcdStoreOptions } from '../../../ipam/etcd/store';
import { formatIP, parseCIDR } from '../../../shared/ip';
import { ipamAdd, ipamDel } from '../../../ipam/plugin';
import { freePort, startEtcd, type EtcdServer } from '../../../testkit/etcd-server';

let etcd: EtcdServer;
let raw: EtcdKV;
let seq = 0;

beforeAll(async () => {
  etcd = await startEtcd();
  raw = new EtcdKV({ endpoints: [etcd.endpoint], requestTimeoutMs: 5000 });
});

afterAll(async () => {
  raw?.close();
  await etcd?.stop();
});

/** A fresh key prefix per test, so tests never see each other's keys. */
function prefix(): string {
  return `/test-${process.pid}-${++seq}`;
}

function netConf(p: string, subnet: string, etcdExtra: Record<string, unknown> = {}, name = 'net1'): unknown {
  return {
    cniVersion: '1.1.0',
    name,
    ipam: {
      type: 'cluster-ipam',
      store: 'etcd',
      ranges: [[{ subnet }]],
      etcd: { endpoints: [etcd.endpoint], keyPrefix: p, hostId: 'machine-1', ...etcdExtra },
    },
  };
}

const opened: AllocationStore[] = [];

function host(p: string, subnet: string, node: string, extra: Record<string, unknown> = {}, options: EtcdStoreOptions = {}): EtcdStore {
  const conf = loadIpamConfig(netConf(p, subnet, { nodeName: node, hostId: `id-${node}`, ...extra }));
  // livenessDir: null unless a test gives one: no record of these test hosts reaches a real keeper
  const store = EtcdStore.open(conf, { livenessDir: null, ...options });
  opened.push(store);
  return store;
}

afterAll(async () => {
  for (const s of opened) await s.close();
});

async function keys(p: string): Promise<KeyValue[]> {
  const { results } = await raw.txn({ success: [{ get: `${p}/`, prefix: true }] }, Date.now() + 5000);
  return [...results[0]!];
}

async function add(store: EtcdStore, id: string, ifname = 'eth0'): Promise<string> {
  const [a] = await allocate(store, store.rangeSets, { containerId: id, ifname });
  return formatIP(a!.ip);
}

function inCidr(ip: string, cidr: string): boolean {
  const c = parseCIDR(cidr)!;
  const x = parseCIDR(`${ip}/32`)!;
  return (x.ip.value & ~((1n << BigInt(32 - c.subnet.prefix)) - 1n)) === c.subnet.network.value;
}

describe('etcd store', () => {
  it('allocates an address inside a block it claims, and a repeated ADD returns the same address', async () => {
    const p = prefix();
    const a = host(p, '10.10.0.0/24', 'node-a', {}, { random: () => 0 });
    const ip = await add(a, 'c1');
    expect(ip).toBe('10.10.0.2'); // .0 is the network, .1 the gateway
    expect(await add(a, 'c1')).toBe(ip);
    const all = await keys(p);
    const names = all.map((k) => k.key.slice(p.length));
    expect(names).toContain('/networks/net1/blocks/10.10.0.0_26');
    expect(names).toContain(`/networks/net1/ips/${ip}`);
    expect(names).toContain(`/networks/net1/owners/c1/eth0/${ip}`);
    expect(names).toContain('/hosts/node-a');
    expect(all.find((k) => k.key.endsWith('/blocks/10.10.0.0_26'))!.value).toBe('node-a');
    expect(a.stats.claimed).toBe(1);
  });

  it('claims another block when its blocks are full', async () => {
    const p = prefix();
    const a = host(p, '10.11.0.0/24', 'node-a', { blockSize: 28 }, { random: () => 0 });
    const got = new Set<string>();
    // block 10.11.0.0/28 holds .2-.15 (14 addresses); the 15th needs a second block
    for (let i = 0; i < 15; i++) got.add(await add(a, `c${i}`));
    expect(got.size).toBe(15);
    expect(a.stats.claimed).toBe(2);
    const claims = (await keys(p)).filter((k) => k.key.includes('/blocks/'));
    expect(claims.map((k) => k.value)).toEqual(['node-a', 'node-a']);
    const blocks = claims.map((k) => k.key.slice(k.key.lastIndexOf('/') + 1).replace('_', '/'));
    for (const ip of got) expect(blocks.some((b) => inCidr(ip, b))).toBe(true);
  });

  it('never hands one address to two of 20 hosts allocating 10 addresses each at the same time', async () => {
    const p = prefix();
    const hosts = Array.from({ length: 20 }, (_, i) => host(p, '10.12.0.0/16', `node-${i}`));
    const results = await Promise.all(
      hosts.map(async (h, i) => {
        const ips: string[] = [];
        for (let j = 0; j < 10; j++) ips.push(await add(h, `h${i}-c${j}`));
        return ips;
      }),
    );
    const all = results.flat();
    expect(all).toHaveLength(200);
    expect(new Set(all).size).toBe(200);
    // every host was served from blocks it claimed itself
    const claims = new Map((await keys(p)).filter((k) => k.key.includes('/blocks/')).map((k) => [k.key.slice(k.key.lastIndexOf('/') + 1).replace('_', '/'), k.value]));
    results.forEach((ips, i) => {
      for (const ip of ips) {
        const block = [...claims.keys()].find((b) => inCidr(ip, b))!;
        expect(claims.get(block)).toBe(`node-${i}`);
      }
    });
    expect(hosts.reduce((n, h) => n + h.stats.borrowed, 0)).toBe(0);
  });

  it('borrows a single address from another host when no block is left, logs it, and reports exhaustion after', async () => {
    const p = prefix();
    const lines: string[] = [];
    // 10.13.0.0/27 in /28 blocks: block .0 holds .2-.15 (14), block .16 holds .16-.30 (15)
    const a = host(p, '10.13.0.0/27', 'node-a', { blockSize: 28 }, { random: () => 0, log: (l) => lines.push(l) });
    const b = host(p, '10.13.0.0/27', 'node-b', { blockSize: 28 }, { random: () => 0 });
    for (let i = 0; i < 14; i++) await add(a, `a${i}`);
    const fromB = await add(b, 'b0');
    expect(inCidr(fromB, '10.13.0.16/28')).toBe(true);
    const borrowed = await add(a, 'a-borrow');
    expect(inCidr(borrowed, '10.13.0.16/28')).toBe(true);
    expect(borrowed).not.toBe(fromB);
    expect(a.stats.borrowed).toBe(1);
    expect(lines.join('\n')).toContain(`borrowed ${borrowed}`);
    const ipKey = (await keys(p)).find((k) => k.key.endsWith(`/ips/${borrowed}`))!;
    expect(JSON.parse(ipKey.value)).toMatchObject({ node: 'node-a', borrowed: true, containerId: 'a-borrow' });
    // the rest of b's block, then nothing is left anywhere
    const seen = new Set([fromB, borrowed]);
    for (let i = 1; i < 14; i++) seen.add(await add(b, `b${i}`));
    expect(seen.size).toBe(15);
    const err = await add(a, 'one-too-many').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CniError);
    expect((err as CniError).code).toBe(100);
    expect((await keys(p)).some((k) => k.key.includes('one-too-many'))).toBe(false);
  });

  it('serves every request when 12 hosts take 240 of a /24’s 253 addresses at once in /28 blocks, borrowing without duplicates', async () => {
    const p = prefix();
    const hosts = Array.from({ length: 12 }, (_, i) => host(p, '10.21.0.0/24', `node-${i}`, { blockSize: 28 }, { log: () => {} }));
    const results = await Promise.all(
      hosts.map(async (h, i) => {
        const ips: string[] = [];
        for (let j = 0; j < 20; j++) ips.push(await add(h, `h${i}-c${j}`));
        return ips;
      }),
    );
    const all = results.flat();
    expect(all).toHaveLength(240);
    expect(new Set(all).size).toBe(240);
    const stored = await keys(p);
    const claims = new Map(stored.filter((k) => k.key.includes('/blocks/')).map((k) => [k.key.slice(k.key.lastIndexOf('/') + 1), k.value]));
    expect(claims.size).toBe(16);
    let borrowed = 0;
    for (const k of stored.filter((k) => k.key.includes('/ips/'))) {
      const v = JSON.parse(k.value) as { node: string; block: string; borrowed?: boolean };
      // a borrow lies in another host's block, everything else in the host's own
      if (v.borrowed) borrowed++;
      expect(claims.get(v.block) === v.node).toBe(!v.borrowed);
    }
    expect(borrowed).toBe(hosts.reduce((n, h) => n + h.stats.borrowed, 0));
  });

  it('releases an owner’s address on DEL, leaving only the block claim and state', async () => {
    const p = prefix();
    const a = host(p, '10.14.0.0/24', 'node-a');
    const ip = await add(a, 'c1');
    const freed = await release(a, { containerId: 'c1', ifname: 'eth0' });
    expect(freed.map(formatIP)).toEqual([ip]);
    expect(await release(a, { containerId: 'c1', ifname: 'eth0' })).toEqual([]);
    const left = (await keys(p)).map((k) => k.key.slice(p.length).split('/').slice(0, 4).join('/'));
    // the host's registration and liveness, the network's registry entry, and its block
    expect(left.sort()).toEqual(['/alive/node-a', '/hosts/node-a', '/networks/net1/blocks', '/networks/net1/hostblocks', '/ranges-head', '/ranges/net1'].sort());
    const state = (await keys(p)).find((k) => k.key.includes('/hostblocks/'))!;
    expect(JSON.parse(state.value).used).toEqual({});
  });

  it('frees a leak only when GC sees the same allocation twice a grace period apart, and never one handed out again in between', async () => {
    const p = prefix();
    let now = 1_000_000;
    const a = host(p, '10.15.0.0/24', 'node-a', { gcGracePeriodMs: 60_000 }, { clock: () => now });
    const ip1 = await add(a, 'keep');
    const ip2 = await add(a, 'leak');
    const ip3 = await add(a, 'reused');
    const valid = [{ containerId: 'keep', ifname: 'eth0' }];
    expect(await collectGarbage(a, valid)).toEqual([]); // first sighting
    // 'reused' is released and allocated again between the two GC runs (ABA)
    await release(a, { containerId: 'reused', ifname: 'eth0' });
    const ip3again = await add(a, 'reused');
    now += 60_000;
    const freed = await collectGarbage(a, valid);
    expect(freed.map((f) => [formatIP(f.ip), f.containerId])).toEqual([[ip2, 'leak']]);
    const ips = (await keys(p)).filter((k) => k.key.includes('/ips/')).map((k) => k.key.slice(k.key.lastIndexOf('/') + 1));
    expect(ips.sort()).toEqual([ip1, ip3again].sort());
    void ip3;
    // 'reused' goes once its new allocation has itself been seen twice
    now += 60_000;
    expect((await collectGarbage(a, valid)).map((f) => f.containerId)).toEqual(['reused']);
  });

  it('GC leaves other hosts’ allocations alone', async () => {
    const p = prefix();
    let now = 0;
    const a = host(p, '10.16.0.0/24', 'node-a', { gcGracePeriodMs: 0 }, { clock: () => now });
    const b = host(p, '10.16.0.0/24', 'node-b', { gcGracePeriodMs: 0 }, { clock: () => now });
    await add(b, 'on-b');
    expect(await collectGarbage(a, [])).toEqual([]);
    now += 1;
    expect(await collectGarbage(a, [])).toEqual([]);
    expect((await keys(p)).some((k) => k.key.includes('/owners/on-b/'))).toBe(true);
  });

  it('refuses a second host that claims a node name another host registered, writing nothing', async () => {
    const p = prefix();
    const first = host(p, '10.17.0.0/24', 'node-a');
    await add(first, 'c1');
    const before = (await keys(p)).length;
    const conf = loadIpamConfig(netConf(p, '10.17.0.0/24', { nodeName: 'node-a', hostId: 'another-machine' }));
    const impostor = EtcdStore.open(conf, { livenessDir: null });
    opened.push(impostor);
    const err = await add(impostor, 'c2').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CniError);
    expect((err as CniError).code).toBe(7);
    expect((err as CniError).msg).toContain('node-a');
    expect((await keys(p)).length).toBe(before);
  });

  it('answers 11 (try again later) when etcd is unreachable, within the request timeout', { timeout: 15_000 }, async () => {
    const port = await freePort();
    const conf = loadIpamConfig({
      cniVersion: '1.1.0',
      name: 'net1',
      ipam: { type: 'cluster-ipam', store: 'etcd', subnet: '10.18.0.0/24', etcd: { endpoints: [`127.0.0.1:${port}`], requestTimeoutMs: 1500, nodeName: 'n', hostId: 'x' } },
    });
    const store = EtcdStore.open(conf, { livenessDir: null });
    opened.push(store);
    const err = await allocate(store, conf.rangeSets, { containerId: 'c', ifname: 'eth0' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CniError);
    expect((err as CniError).code).toBe(11);
  });

  it('rejects a subnet smaller than one block with code 7 and writes nothing', async () => {
    const p = prefix();
    expect(() => host(p, '10.19.0.0/28', 'node-a')).toThrow(expect.objectContaining({ code: 7, msg: expect.stringContaining('smaller than one /26 block') }));
    expect(() => host(p, '10.19.0.0/24', 'node-a', { blockSize: 20 })).toThrow(expect.objectContaining({ code: 7 }));
    expect(() => host(p, 'fd00:19::/124', 'node-a')).toThrow(expect.objectContaining({ code: 7, msg: expect.stringContaining('/122') }));
    expect(() => host(p, '10.19.0.0/24', 'node-a', { keyPrefix: 'no-slash' })).toThrow(expect.objectContaining({ code: 7 }));
    expect(() => host(p, '10.19.0.0/24', 'node-a', { certFile: '/nonexistent.pem' })).toThrow(expect.objectContaining({ code: 7 }));
    expect(await keys(p)).toEqual([]);
  });

  it('allocates IPv6 addresses from /122 blocks', async () => {
    const p = prefix();
    const a = host(p, 'fd00:20::/64', 'node-a', {}, { random: () => 0 });
    const b = host(p, 'fd00:20::/64', 'node-b', {}, { random: () => 0 });
    const ipA = await add(a, 'c1');
    const ipB = await add(b, 'c2');
    expect(ipA).toBe('fd00:20::2');
    expect(ipB).toBe('fd00:20::40'); // node-b lost the race for the first block, or found it claimed
  });

  it('serves ADD and DEL through the plugin with the example conflist, loading the etcd store lazily', async () => {
    const p = prefix();
    const list = JSON.parse(fs.readFileSync(path.join(__dirname, '../../../examples/bridge-etcd.conflist'), 'utf8'));
    const bridge = list.plugins[0];
    const config = { cniVersion: list.cniVersion, name: list.name, ...bridge };
    config.ipam.etcd = { ...config.ipam.etcd, endpoints: [etcd.endpoint], keyPrefix: p, nodeName: 'node-a', hostId: 'id-a' };
    const result = await ipamAdd({ containerId: 'ctr1', ifname: 'eth0', config });
    expect(result.ips![0]!.address).toMatch(/^10\.88\.\d+\.\d+\/16$/);
    expect(result.ips![0]!.gateway).toBe('10.88.0.1');
    await ipamDel({ containerId: 'ctr1', ifname: 'eth0', config });
    // the conflist as shipped, with a bad block size: code 7 through the plugin, nothing written
    config.ipam.etcd.blockSize = 8;
    await expect(ipamAdd({ containerId: 'ctr2', ifname: 'eth0', config })).rejects.toMatchObject({ code: 7 });
    expect((await keys(p)).some((k) => k.key.includes('/ips/'))).toBe(false);
  });

  it('writes its lines to the calling plugin’s logger, not to the process’s stderr', async () => {
    const p = prefix();
    await raw.txn({ success: [{ put: `${p}/ranges/other`, value: '{not json' }] }, Date.now() + 5000);
    const lines: string[] = [];
    const config = netConf(p, '10.22.0.0/24', { nodeName: 'node-a', hostId: 'id-a' });
    const deps = { openStore: (c: ReturnType<typeof loadIpamConfig>, log?: (line: string) => void) => EtcdStore.open(c, { log, livenessDir: null }) };
    await ipamAdd({ containerId: 'c1', ifname: 'eth0', config, log: (l) => lines.push(l) }, deps);
    expect(lines.join('\n')).toContain(`skipping malformed etcd record ${p}/ranges/other`);
  });
});

describe('etcd store: networks under one key prefix', () => {
  function open(p: string, name: string, range: Record<string, string>, node: string): EtcdStore {
    const conf = loadIpamConfig({
      cniVersion: '1.1.0',
      name,
      ipam: { type: 'cluster-ipam', store: 'etcd', ranges: [[range]], etcd: { endpoints: [etcd.endpoint], keyPrefix: p, nodeName: node, hostId: `id-${node}` } },
    });
    const store = EtcdStore.open(conf, { livenessDir: null });
    opened.push(store);
    return store;
  }

  async function dump(p: string): Promise<string[]> {
    return (await keys(p)).map((k) => `${k.key} ${k.modRevision} ${k.value}`);
  }

  it('refuses a network whose range overlaps another network’s with code 7, writing nothing', async () => {
    const p = prefix();
    await add(open(p, 'net1', { subnet: '10.50.0.0/24' }, 'node-a'), 'c1');
    const before = await dump(p);
    const err = await add(open(p, 'net2', { subnet: '10.50.0.128/25' }, 'node-z'), 'c2').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CniError);
    expect((err as CniError).code).toBe(7);
    expect((err as CniError).msg).toMatch(/overlaps range 10\.50\.0\.\d+-10\.50\.0\.254 of network net1/);
    expect(await dump(p)).toEqual(before);
    // a disjoint subnet is fine
    expect(await add(open(p, 'net3', { subnet: '10.51.0.0/24' }, 'node-z'), 'c3')).toMatch(/^10\.51\.0\./);
  });

  it('lets two networks split one underlay subnet by disjoint ranges, and refuses a third range across both', async () => {
    const p = prefix();
    const low = open(p, 'low', { subnet: '10.52.0.0/24', rangeStart: '10.52.0.10', rangeEnd: '10.52.0.99' }, 'node-a');
    const high = open(p, 'high', { subnet: '10.52.0.0/24', rangeStart: '10.52.0.100', rangeEnd: '10.52.0.200' }, 'node-a');
    const l = await add(low, 'c1');
    const h = await add(high, 'c1');
    expect(Number(l.split('.')[3])).toBeGreaterThanOrEqual(10);
    expect(Number(l.split('.')[3])).toBeLessThanOrEqual(99);
    expect(Number(h.split('.')[3])).toBeGreaterThanOrEqual(100);
    const across = open(p, 'across', { subnet: '10.52.0.0/24', rangeStart: '10.52.0.90', rangeEnd: '10.52.0.110' }, 'node-a');
    await expect(add(across, 'c1')).rejects.toMatchObject({ code: 7 });
  });

  it('admits exactly one of two overlapping networks registering at the same moment', async () => {
    for (let round = 0; round < 5; round++) {
      const p = prefix();
      const one = open(p, 'one', { subnet: '10.53.0.0/24' }, 'node-a');
      const two = open(p, 'two', { subnet: '10.53.0.0/23' }, 'node-b');
      const [r1, r2] = await Promise.allSettled([add(one, 'c1'), add(two, 'c2')]);
      const won = [r1, r2].filter((r) => r.status === 'fulfilled');
      const lost = [r1, r2].filter((r): r is PromiseRejectedResult => r.status === 'rejected');
      expect(won).toHaveLength(1);
      expect(lost.map((r) => (r.reason as CniError).code)).toEqual([7]);
      const registered = (await keys(p)).filter((k) => k.key.startsWith(`${p}/ranges/`));
      expect(registered).toHaveLength(1);
      // the loser wrote no allocation and no block
      const loser = r1.status === 'rejected' ? 'one' : 'two';
      expect((await keys(p)).some((k) => k.key.startsWith(`${p}/networks/${loser}/`))).toBe(false);
    }
  });
});

describe('etcd store: cluster correctness', () => {
  const dirs: string[] = [];
  afterAll(() => {
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
  });
  function tmpDir(): string {
    const d = fs.mkdtempSync(path.join(os.tmpdir(), 'etcd-store-'));
    dirs.push(d);
    return d;
  }

  it('GC reclaims all of 300 leaked allocations of one host, though their sightings exceed what etcd takes in one transaction', { timeout: 120_000 }, async () => {
    const p = prefix();
    let now = 0;
    const a = host(p, '10.60.0.0/22', 'node-a', { blockSize: 22, gcGracePeriodMs: 1000 }, { clock: () => now });
    for (let i = 0; i < 300; i++) await add(a, `leak-${i}`);
    await add(a, 'kept');
    const valid = [{ containerId: 'kept', ifname: 'eth0' }];
    expect(await collectGarbage(a, valid)).toEqual([]); // first sightings: 300 of them
    now += 1000;
    const freed = await collectGarbage(a, valid);
    expect(freed).toHaveLength(300);
    expect(new Set(freed.map((f) => f.containerId))).toEqual(new Set(Array.from({ length: 300 }, (_, i) => `leak-${i}`)));
    const left = await keys(p);
    expect(left.filter((k) => k.key.includes('/ips/')).map((k) => JSON.parse(k.value).containerId)).toEqual(['kept']);
    expect(left.filter((k) => k.key.includes('/leaks/') || k.key.includes('/owners/leak-'))).toEqual([]);
    const state = left.find((k) => k.key.includes('/hostblocks/'))!;
    expect(Object.keys(JSON.parse(state.value).used)).toHaveLength(1);
    // and the addresses are handed out again
    expect(await add(a, 'new')).toMatch(/^10\.60\./);
  });

  it('tells two hosts with the same node name apart by their host-id files, refusing the second with a clear CNI error (7) and writing nothing', async () => {
    const p = prefix();
    const dir = tmpDir();
    const conf = (): ReturnType<typeof loadIpamConfig> => loadIpamConfig(netConf(p, '10.61.0.0/24', { nodeName: 'node-a', hostId: undefined }));
    const first = EtcdStore.open(conf(), { hostIdFile: path.join(dir, 'host1', 'host-id'), livenessDir: null });
    const again = EtcdStore.open(conf(), { hostIdFile: path.join(dir, 'host1', 'host-id'), livenessDir: null });
    const clone = EtcdStore.open(conf(), { hostIdFile: path.join(dir, 'host2', 'host-id'), livenessDir: null });
    opened.push(first, again, clone);
    await add(first, 'c1');
    // the same host (same host-id file) in another process: accepted
    await add(again, 'c2');
    const id1 = fs.readFileSync(path.join(dir, 'host1', 'host-id'), 'utf8').trim();
    expect(JSON.parse((await keys(p)).find((k) => k.key === `${p}/hosts/node-a`)!.value).hostId).toBe(id1);
    const before = (await keys(p)).map((k) => `${k.key} ${k.modRevision}`);
    const err = await add(clone, 'c3').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CniError);
    expect((err as CniError).code).toBe(7);
    expect((err as CniError).msg).toContain('node name "node-a" is registered in etcd by another host');
    expect((err as CniError).msg).toContain(id1);
    expect((err as CniError).details).toContain('ipam-maint decommission node-a');
    // through the plugin's ADD, as a runtime sees it: the CNI error object, code 7
    const config = netConf(p, '10.61.0.0/24', { nodeName: 'node-a', hostId: undefined });
    const viaPlugin = await ipamAdd(
      { containerId: 'c4', ifname: 'eth0', config },
      { openStore: (c) => EtcdStore.open(c, { hostIdFile: path.join(dir, 'host2', 'host-id'), livenessDir: null }) },
    ).catch((e: unknown) => e);
    expect((viaPlugin as CniError).toJSON('1.1.0')).toMatchObject({ cniVersion: '1.1.0', code: 7, msg: expect.stringContaining('registered in etcd by another host') });
    expect((await keys(p)).map((k) => `${k.key} ${k.modRevision}`)).toEqual(before);
  });

  it.runIf(fs.existsSync('/etc/machine-id'))('moves a registration made by this machine’s machine-id (an older version) over to its host ID', async () => {
    const p = prefix();
    const dir = tmpDir();
    const machineId = fs.readFileSync('/etc/machine-id', 'utf8').trim();
    await raw.txn({ success: [{ put: `${p}/hosts/node-m`, value: JSON.stringify({ hostId: machineId }) }] }, Date.now() + 5000);
    const lines: string[] = [];
    const s = EtcdStore.open(loadIpamConfig(netConf(p, '10.63.0.0/24', { nodeName: 'node-m', hostId: undefined })), {
      hostIdFile: path.join(dir, 'host-id'),
      livenessDir: null,
      log: (l) => lines.push(l),
    });
    opened.push(s);
    await add(s, 'c1');
    const id = fs.readFileSync(path.join(dir, 'host-id'), 'utf8').trim();
    expect(JSON.parse((await keys(p)).find((k) => k.key === `${p}/hosts/node-m`)!.value).hostId).toBe(id);
    expect(lines.join('\n')).toContain('moved to its host ID');
  });

  it('skips malformed host, claim, block, allocation, alive, leak and registry records (logged), and ADD, STATUS and GC still work', async () => {
    const p = prefix();
    const N = `${p}/networks/net1`;
    await raw.txn(
      {
        success: [
          { put: `${p}/hosts/node-x`, value: '{not json' },
          { put: `${p}/alive/node-a`, value: '"alive"' },
          { put: `${p}/ranges/other`, value: JSON.stringify({ ranges: 5 }) },
          // a block of ours whose state is malformed
          { put: `${N}/blocks/10.62.0.64_26`, value: 'node-a' },
          { put: `${N}/hostblocks/node-a/10.62.0.64_26`, value: JSON.stringify({ cidr: 7, used: 'all' }) },
          // a claim that is not a node name
          { put: `${N}/blocks/10.62.0.128_26`, value: '../../bad node' },
          // another host's block with a state that is not its block
          { put: `${N}/blocks/10.62.0.192_26`, value: 'node-b' },
          { put: `${N}/hostblocks/node-b/10.62.0.192_26`, value: JSON.stringify({ cidr: '10.62.0.0/26', host: 'node-b', seq: 0, used: {} }) },
          { put: `${N}/ips/10.62.0.200`, value: 'garbage' },
          { put: `${N}/ips/10.62.0.201`, value: JSON.stringify({ containerId: 'x', node: 'node-a' }) },
          { put: `${N}/leaks/node-a/10.62.0.202`, value: '[]' },
        ],
      },
      Date.now() + 5000,
    );
    const lines: string[] = [];
    let now = 0;
    const a = host(p, '10.62.0.0/24', 'node-a', { gcGracePeriodMs: 0 }, { random: () => 0, log: (l) => lines.push(l), clock: () => now });
    const got = new Set<string>();
    for (let i = 0; i < 62; i++) got.add(await add(a, `c${i}`));
    // every address from the one sound block, .2-.63; none from a malformed one
    expect(got.size).toBe(62);
    for (const ip of got) expect(inCidr(ip, '10.62.0.0/26')).toBe(true);
    // then: no free address (100), not an internal error
    await expect(add(a, 'one-more')).rejects.toMatchObject({ code: 100 });
    expect((await a.withinOperation(() => a.listAll())).length).toBe(62);
    await collectGarbage(a, []);
    now += 1;
    expect(await collectGarbage(a, [])).toHaveLength(62);
    const log = lines.join('\n');
    for (const key of [`${p}/alive/node-a`, `${p}/ranges/other`, `${N}/hostblocks/node-a/10.62.0.64_26`, `${N}/blocks/10.62.0.128_26`, `${N}/ips/10.62.0.200`, `${N}/ips/10.62.0.201`, `${N}/leaks/node-a/10.62.0.202`]) {
      expect(log).toContain(`skipping malformed etcd record ${key}`);
    }
    // the malformed alive record was replaced by a real one, on a lease
    const alive = (await keys(p)).find((k) => k.key === `${p}/alive/node-a`)!;
    expect(alive.lease).not.toBe('0');
  });

  it('refuses blocks larger than /16 (IPv4) or /112 (IPv6) with code 7: the allocator scans a block’s bitmap', () => {
    const p = prefix();
    expect(() => host(p, '10.0.0.0/8', 'node-a', { blockSize: 15 })).toThrow(expect.objectContaining({ code: 7, msg: expect.stringContaining('blockSize') }));
    expect(() => host(p, 'fd00::/64', 'node-a', { blockSizeV6: 111 })).toThrow(expect.objectContaining({ code: 7, msg: expect.stringContaining('blockSizeV6') }));
    expect(() => host(p, '10.0.0.0/8', 'node-a', { blockSize: 16 })).not.toThrow();
    expect(() => host(p, 'fd00::/64', 'node-a', { blockSizeV6: 112 })).not.toThrow();
  });
});
