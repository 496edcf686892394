import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CniError } from '../../../shared/cni/errors';
import { allocate, release } from '../../../ipam/allocator';
import { loadIpamConfig } from '../../../ipam/config';
import { EtcdKV, type KeyValue } from '../../../shared/etcd/kv';
import { EtcdStore } from '../../../ipam/etcd/store';
import { formatIP } from '../../../shared/ip';
import { startEtcd, type EtcdServer } from '../../../testkit/etcd-server';

const TIMEOUT_MS = 1500;
const P = `/restart-${process.pid}`;

let etcd: EtcdServer;

beforeAll(async () => {
  etcd = await startEtcd();
});

afterAll(async () => {
  await etcd?.stop();
});

function open(node: string): EtcdStore {
  return EtcdStore.open(
    loadIpamConfig({
      cniVersion: '1.1.0',
      name: 'net1',
      ipam: {
        type: 'cluster-ipam',
        store: 'etcd',
        ranges: [[{ subnet: '10.70.0.0/24' }]],
        etcd: { endpoints: [etcd.endpoint], keyPrefix: P, requestTimeoutMs: TIMEOUT_MS, blockSize: 28, nodeName: node, hostId: `id-${node}` },
      },
    }),
    { livenessDir: null },
  );
}

/** One plugin call: a store of its own, closed after, as a separate process would have. */
async function add(node: string, id: string): Promise<string> {
  const store = open(node);
  try {
    const [a] = await allocate(store, store.rangeSets, { containerId: id, ifname: 'eth0' });
    return formatIP(a!.ip);
  } finally {
    await store.close();
  }
}

async function del(node: string, id: string): Promise<void> {
  const store = open(node);
  try {
    await release(store, { containerId: id, ifname: 'eth0' });
  } finally {
    await store.close();
  }
}

async function keys(): Promise<KeyValue[]> {
  const kv = new EtcdKV({ endpoints: [etcd.endpoint], requestTimeoutMs: 5000 });
  try {
    const { results } = await kv.txn({ success: [{ get: `${P}/`, prefix: true }] }, Date.now() + 5000);
    return [...results[0]!];
  } finally {
    kv.close();
  }
}

/** The call's error and how long it took to come. */
async function failure(call: Promise<unknown>): Promise<{ err: unknown; ms: number }> {
  const start = Date.now();
  const err = await call.then(
    () => undefined,
    (e: unknown) => e,
  );
  return { err, ms: Date.now() - start };
}

describe('etcd store across an etcd restart', () => {
  it('keeps what was allocated before, answers 11 within the bound during the outage, writes nothing half, and works after', { timeout: 120_000 }, async () => {
    const before = new Map<string, string>();
    for (let i = 0; i < 10; i++) {
      before.set(`a${i}`, await add('node-a', `a${i}`));
      before.set(`b${i}`, await add('node-b', `b${i}`));
    }
    const longLived = open('node-a');
    await allocate(longLived, longLived.rangeSets, { containerId: 'long', ifname: 'eth0' }).then(([a]) => before.set('long', formatIP(a!.ip)));

    await etcd.kill();
    const during = [
      await failure(add('node-a', 'outage-1')),
      await failure(add('node-b', 'outage-2')),
      await failure(del('node-a', 'a0')),
      await failure(allocate(longLived, longLived.rangeSets, { containerId: 'outage-3', ifname: 'eth0' })),
    ];
    for (const { err, ms } of during) {
      expect(err).toBeInstanceOf(CniError);
      expect((err as CniError).code).toBe(11);
      // The bound is the contract (requestTimeoutMs caps every operation),
      // not a speed measurement: the slack is for scheduling only.
      expect(ms).toBeLessThan(TIMEOUT_MS + 1000);
    }

    await etcd.start();
    // everything allocated before the crash is there, and nothing of the failed calls
    const after = await keys();
    const ips = new Map(after.filter((k) => k.key.includes('/ips/')).map((k) => [k.key.slice(k.key.lastIndexOf('/') + 1), JSON.parse(k.value) as { containerId: string }]));
    expect(ips.size).toBe(before.size);
    for (const [id, ip] of before) expect(ips.get(ip)?.containerId).toBe(id);
    expect(after.some((k) => k.key.includes('outage'))).toBe(false);
    // a repeated ADD answers the address from before
    expect(await add('node-a', 'a3')).toBe(before.get('a3'));

    // new calls work, and never hand out an address twice
    const fresh: string[] = [];
    for (let i = 0; i < 10; i++) fresh.push(await add(i % 2 ? 'node-a' : 'node-b', `new${i}`));
    const all = [...before.values(), ...fresh];
    expect(new Set(all).size).toBe(all.length);
    await del('node-a', 'a0');
    expect((await keys()).some((k) => k.key.endsWith(`/ips/${before.get('a0')}`))).toBe(false);

    // a store that lived through the outage reconnects on its own
    let again: unknown;
    for (let i = 0; i < 20; i++) {
      again = await allocate(longLived, longLived.rangeSets, { containerId: 'long-2', ifname: 'eth0' }).catch((e: unknown) => e);
      if (!(again instanceof CniError)) break;
      await new Promise((r) => setTimeout(r, 250));
    }
    expect(again).not.toBeInstanceOf(CniError);
    await longLived.close();
  });
});
