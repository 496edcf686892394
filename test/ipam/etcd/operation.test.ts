/**
 * The etcd store's operation scope on the one fake KV (testkit/fake-kv.ts,
 * held to a real etcd by test/shared/etcd/parity.test.ts): no etcd server
 * and no root needed. The real-etcd behaviour is in ./store.test.ts.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { allocate, release, type AllocationStore } from '../../../ipam/allocator';
import { loadIpamConfig } from '../../../ipam/config';
import { EtcdStore } from '../../../ipam/etcd/store';
import { LocalStore } from '../../../ipam/local/store';
import { formatIP } from '../../../shared/ip';
import { FakeKV } from '../../../testkit/fake-kv';
import { MemoryStore } from '../../../testkit/memory-store';

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

function etcdStore(kv: FakeKV, node = 'node-a'): EtcdStore {
  const conf = loadIpamConfig({
    cniVersion: '1.1.0',
    name: 'net1',
    ipam: { type: 'cluster-ipam', store: 'etcd', ranges: [[{ subnet: '10.30.0.0/24' }]], etcd: { keyPrefix: '/op', nodeName: node, hostId: `id-${node}` } },
  });
  return EtcdStore.open(conf, { kv, livenessDir: null, random: () => 0, log: () => {} });
}

async function add(store: EtcdStore, id: string): Promise<string> {
  const [a] = await allocate(store, store.rangeSets, { containerId: id, ifname: 'eth0' });
  return formatIP(a!.ip);
}

describe('etcd store operations (fake KV)', () => {
  it('reads once per operation: an ADD once the host holds a block is one read and one allocation transaction', async () => {
    const kv = new FakeKV();
    const store = etcdStore(kv);
    expect(await add(store, 'c1')).toBe('10.30.0.2');
    const before = kv.calls;
    expect(await add(store, 'c2')).toBe('10.30.0.3');
    expect(kv.calls - before).toBe(2);
    // the repeated ADD of an owner that holds its address: the one read only
    const again = kv.calls;
    expect(await add(store, 'c2')).toBe('10.30.0.3');
    expect(kv.calls - again).toBe(1);
    await store.close();
  });

  it('serves a call made outside an operation as an operation of its own', async () => {
    const kv = new FakeKV();
    const store = etcdStore(kv);
    const ip = await add(store, 'c1');
    expect((await store.getByOwner('c1', 'eth0')).map(formatIP)).toEqual([ip]);
    expect((await store.listAll()).map((a) => a.containerId)).toEqual(['c1']);
    expect((await release(store, { containerId: 'c1', ifname: 'eth0' })).map(formatIP)).toEqual([ip]);
    await store.close();
  });

  it('answers 11 (try again later) when etcd is unreachable, and refuses use after close with 999', async () => {
    const kv = new FakeKV();
    const store = etcdStore(kv);
    kv.down = true;
    await expect(add(store, 'c1')).rejects.toMatchObject({ code: 11 });
    kv.down = false;
    await store.close();
    await expect(add(store, 'c1')).rejects.toMatchObject({ code: 999 });
  });
});

describe('an operation does not nest, in every store', () => {
  const stores: [string, () => AllocationStore][] = [
    ['etcd store', () => etcdStore(new FakeKV())],
    [
      'local store',
      () => {
        const d = fs.mkdtempSync(path.join(os.tmpdir(), 'ipam-op-'));
        dirs.push(d);
        // flock(2) itself is the local store's tests' business (test/ipam/local/store.test.ts)
        return LocalStore.open(d, 'net1', { flock: () => {} });
      },
    ],
    ['memory store', () => new MemoryStore()],
  ];
  for (const [name, open] of stores) {
    it(`${name}: an operation started inside another is refused, and the outer one still completes`, async () => {
      const store = open();
      const inner = await store.withinOperation(async () => {
        const err = await store.withinOperation(async () => 'nested').catch((e: unknown) => e);
        return err;
      });
      expect(inner).toBeInstanceOf(Error);
      // the scope ended with the outer operation: the next one runs
      expect(await store.withinOperation(async () => 'next')).toBe('next');
      await store.close();
    });
  }
});
