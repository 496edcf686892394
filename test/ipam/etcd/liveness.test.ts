import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { allocate } from '../../../ipam/allocator';
import { loadIpamConfig } from '../../../ipam/config';
import { EtcdKV, type KeyValue } from '../../../shared/etcd/kv';
import { recordStore, startLivenessKeeper, type StoreRecord } from '../../../ipam/etcd/liveness';
import { EtcdStore } from '../../../ipam/etcd/store';
import { startEtcd, type EtcdServer } from '../../../testkit/etcd-server';

let etcd: EtcdServer;
let raw: EtcdKV;
let seq = 0;
const dirs: string[] = [];
const opened: EtcdStore[] = [];

beforeAll(async () => {
  etcd = await startEtcd();
  raw = new EtcdKV({ endpoints: [etcd.endpoint], requestTimeoutMs: 5000 });
});

afterAll(async () => {
  for (const s of opened) await s.close();
  raw?.close();
  await etcd?.stop();
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

function prefix(): string {
  return `/liveness-${process.pid}-${++seq}`;
}

function tmpDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'ipam-liveness-'));
  dirs.push(d);
  return d;
}

async function get(key: string): Promise<KeyValue | undefined> {
  const { results } = await raw.txn({ success: [{ get: key }] }, Date.now() + 5000);
  return results[0]![0];
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function store(p: string, node: string, dir: string, ttlMs = 2000): EtcdStore {
  const s = EtcdStore.open(
    loadIpamConfig({
      cniVersion: '1.0.0',
      name: 'net1',
      ipam: {
        type: 'cluster-ipam',
        store: 'etcd',
        ranges: [[{ subnet: '10.90.0.0/24' }]],
        etcd: { endpoints: [etcd.endpoint], keyPrefix: p, nodeName: node, hostId: `id-${node}`, livenessTtlMs: ttlMs },
      },
    }),
    { livenessDir: dir },
  );
  opened.push(s);
  return s;
}

describe('liveness records', () => {
  it('a store records its connection once, 0600 in a 0700 directory, with file paths and never a secret', async () => {
    const p = prefix();
    const dir = path.join(tmpDir(), 'ipam-etcd');
    const s = store(p, 'node-a', dir);
    await allocate(s, s.rangeSets, { containerId: 'c1', ifname: 'eth0' });
    await allocate(s, s.rangeSets, { containerId: 'c2', ifname: 'eth0' });
    const files = fs.readdirSync(dir);
    expect(files).toHaveLength(1);
    expect(files[0]).toMatch(/^[0-9a-f]{32}\.json$/);
    expect(fs.statSync(dir).mode & 0o777).toBe(0o700);
    const file = path.join(dir, files[0]!);
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    expect(JSON.parse(fs.readFileSync(file, 'utf8'))).toEqual({
      endpoints: [etcd.endpoint],
      keyPrefix: p,
      nodeName: 'node-a',
      hostId: 'id-node-a',
      livenessTtlMs: 2000,
      requestTimeoutMs: 5000,
    });
  });

  it('keeps credentials as a passwordFile path, refuses an inline password, and rewrites a record only when it changes', () => {
    const dir = tmpDir();
    const rec: StoreRecord = {
      endpoints: ['https://10.0.0.1:2379'],
      caFile: '/etc/cni/etcd/ca.pem',
      username: 'cni',
      passwordFile: '/etc/cni/etcd/password',
      keyPrefix: '/cni-ts/ipam',
      nodeName: 'n1',
      hostId: 'a'.repeat(32),
      livenessTtlMs: 3_600_000,
      requestTimeoutMs: 5000,
    };
    recordStore(dir, rec);
    const [name] = fs.readdirSync(dir);
    const file = path.join(dir, name!);
    const inode = fs.statSync(file).ino;
    recordStore(dir, rec);
    expect(fs.statSync(file).ino).toBe(inode); // unchanged: not rewritten
    recordStore(dir, { ...rec, livenessTtlMs: 60_000 });
    expect(fs.readdirSync(dir)).toEqual([name]); // same alive key: same file, replaced by rename
    expect(fs.statSync(file).ino).not.toBe(inode);
    expect(() => recordStore(dir, { ...rec, password: 'secret' } as StoreRecord)).toThrow();
    expect(fs.readFileSync(file, 'utf8')).not.toContain('secret');
  });
});

describe('liveness keeper', () => {
  it('keeps a silent host’s alive key on one lease, renewed by etcd keep-alive, past several TTLs; stopping leaves the lease to run out', { timeout: 30_000 }, async () => {
    const p = prefix();
    const dir = tmpDir();
    const s = store(p, 'node-a', dir);
    await allocate(s, s.rangeSets, { containerId: 'c1', ifname: 'eth0' });
    await s.close();
    const stop = new AbortController();
    const keeper = startLivenessKeeper({ dir, signal: stop.signal, log: () => {} });
    await sleep(1000);
    const first = await get(`${p}/alive/node-a`);
    expect(first).toBeDefined();
    await sleep(4500); // more than twice the 2 s TTL, with no CNI call
    const later = await get(`${p}/alive/node-a`);
    expect(later).toBeDefined();
    // kept alive, not put again on new leases: the same lease and the same key revision
    expect(later!.lease).toBe(first!.lease);
    expect(later!.modRevision).toBe(first!.modRevision);
    stop.abort();
    await keeper;
    // nothing revoked it: it runs out by etcd's clock
    expect(await get(`${p}/alive/node-a`)).toBeDefined();
    for (let i = 0; i < 60 && (await get(`${p}/alive/node-a`)); i++) await sleep(100);
    expect(await get(`${p}/alive/node-a`)).toBeUndefined();
  });

  it('does not keep a node whose registration is another host’s, nor bring back a decommissioned one: says so once and drops their records', { timeout: 30_000 }, async () => {
    const p = prefix();
    const dir = tmpDir();
    const a = store(p, 'node-a', dir);
    const b = store(p, 'node-b', dir);
    await allocate(a, a.rangeSets, { containerId: 'c1', ifname: 'eth0' });
    await allocate(b, b.rangeSets, { containerId: 'c2', ifname: 'eth0' });
    await a.close();
    await b.close();
    // node-a's name now belongs to another host; node-b was decommissioned
    await raw.txn(
      {
        success: [
          { put: `${p}/hosts/node-a`, value: JSON.stringify({ hostId: 'someone-else' }) },
          { delete: `${p}/hosts/node-b` },
          { delete: `${p}/alive/`, prefix: true },
        ],
      },
      Date.now() + 5000,
    );
    const lines: string[] = [];
    const stop = new AbortController();
    const keeper = startLivenessKeeper({ dir, signal: stop.signal, log: (l) => lines.push(l) });
    await sleep(2500);
    stop.abort();
    await keeper;
    expect(await get(`${p}/alive/node-a`)).toBeUndefined();
    expect(await get(`${p}/alive/node-b`)).toBeUndefined();
    expect(await get(`${p}/hosts/node-b`)).toBeUndefined();
    expect(lines.filter((l) => l.includes('node-a') && l.includes('registered by another host'))).toHaveLength(1);
    expect(lines.filter((l) => l.includes('node-b') && l.includes('not registered'))).toHaveLength(1);
    // their records are gone: nothing left to poll; a CNI call records its node again
    expect(fs.readdirSync(dir)).toEqual([]);
    const again = store(p, 'node-b', dir);
    await allocate(again, again.rangeSets, { containerId: 'c3', ifname: 'eth0' });
    expect(fs.readdirSync(dir)).toHaveLength(1);
  });

  it('skips a malformed record and keeps the others', { timeout: 30_000 }, async () => {
    const p = prefix();
    const dir = tmpDir();
    const s = store(p, 'node-a', dir);
    await allocate(s, s.rangeSets, { containerId: 'c1', ifname: 'eth0' });
    await s.close();
    fs.writeFileSync(path.join(dir, 'bad.json'), '{"endpoints": 1}', { mode: 0o600 });
    await raw.txn({ success: [{ delete: `${p}/alive/node-a` }] }, Date.now() + 5000);
    const lines: string[] = [];
    const stop = new AbortController();
    const keeper = startLivenessKeeper({ dir, signal: stop.signal, log: (l) => lines.push(l) });
    for (let i = 0; i < 50 && !(await get(`${p}/alive/node-a`)); i++) await sleep(100);
    stop.abort();
    await keeper;
    expect(await get(`${p}/alive/node-a`)).toBeDefined();
    expect(lines.join('\n')).toContain('bad.json');
  });
});
