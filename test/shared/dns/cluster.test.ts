/**
 * The cluster records' codec and the plugins' one call (shared/dns/cluster.ts),
 * on testkit/fake-kv.ts: what is written where, what is read back, and what
 * is ignored (a forged or malformed record never reaches the resolver).
 */
import { describe, expect, it } from 'vitest';
import { FakeKV } from '../../../testkit/fake-kv';
import { clusterKey, clusterNames, clusterRef, decodeRecord, decodeRecords, listClusterRecords, type ClusterScope } from '../../../shared/dns/cluster';

const scope: ClusterScope = { prefix: '/t/overlay', network: 'ov1', subnets: ['10.50.0.0/24', 'fd50::/64'], node: 'node-a' };
const entry = (id: string, v4: string[], names = ['web'], v6: string[] = []) => ({ containerId: id, ifname: 'eth0', names, v4, v6 });

async function keys(kv: FakeKV, prefix = '/t/'): Promise<Map<string, string>> {
  const { results } = await kv.txn({ success: [{ get: prefix, prefix: true }] }, Date.now() + 1000);
  return new Map((results[0] ?? []).map((k) => [k.key, k.value]));
}

describe('cluster records in etcd', () => {
  it('ADD writes one key per endpoint under the network, holding its names, addresses and host', async () => {
    const kv = new FakeKV();
    await clusterNames(kv, scope, { op: 'add', entry: entry('c1', ['10.50.0.2'], ['web', 'www'], ['fd50::2']) });
    const all = await keys(kv);
    expect([...all.keys()]).toEqual(['/t/overlay/dns/ov1/c1/eth0']);
    expect(JSON.parse(all.get('/t/overlay/dns/ov1/c1/eth0')!)).toEqual({ network: 'ov1', containerId: 'c1', ifname: 'eth0', names: ['web', 'www'], v4: ['10.50.0.2'], v6: ['fd50::2'], host: 'node-a' });
    expect(await listClusterRecords(kv, scope)).toHaveLength(1);
  });

  it('ADD refuses to publish an address outside the network\'s subnets', async () => {
    const kv = new FakeKV();
    await expect(clusterNames(kv, scope, { op: 'add', entry: entry('c1', ['10.99.0.2']) })).rejects.toMatchObject({ code: 7, message: expect.stringContaining('outside') });
    expect((await keys(kv)).size).toBe(0);
  });

  it('DEL removes the record and is idempotent', async () => {
    const kv = new FakeKV();
    await clusterNames(kv, scope, { op: 'add', entry: entry('c1', ['10.50.0.2']) });
    await clusterNames(kv, scope, { op: 'del', containerId: 'c1', ifname: 'eth0' });
    await clusterNames(kv, scope, { op: 'del', containerId: 'c1', ifname: 'eth0' });
    expect((await keys(kv)).size).toBe(0);
  });

  it('GC removes this node\'s records the runtime does not list, and never another node\'s', async () => {
    const kv = new FakeKV();
    await clusterNames(kv, scope, { op: 'add', entry: entry('keep', ['10.50.0.2']) });
    await clusterNames(kv, scope, { op: 'add', entry: entry('gone', ['10.50.0.3']) });
    await clusterNames(kv, { ...scope, node: 'node-b' }, { op: 'add', entry: entry('theirs', ['10.50.0.4']) });
    await clusterNames(kv, scope, { op: 'gc', valid: [{ containerID: 'keep', ifname: 'eth0' }] });
    expect([...(await keys(kv)).keys()].sort()).toEqual(['/t/overlay/dns/ov1/keep/eth0', '/t/overlay/dns/ov1/theirs/eth0']);
  });

  it('etcd down: every call fails with CniError 11', async () => {
    const kv = new FakeKV();
    kv.down = true;
    await expect(clusterNames(kv, scope, { op: 'add', entry: entry('c1', ['10.50.0.2']) })).rejects.toMatchObject({ code: 11 });
  });

  it('the resolver\'s reference carries the connection\'s fields (file paths), never an inline password', () => {
    const ref = clusterRef(scope, { endpoints: ['https://10.0.0.1:2379'], caFile: '/etc/ca.pem', username: 'u', passwordFile: '/etc/pw', requestTimeoutMs: 2000 });
    expect(ref).toEqual({ prefix: '/t/overlay', subnets: scope.subnets, node: 'node-a', etcd: { endpoints: ['https://10.0.0.1:2379'], caFile: '/etc/ca.pem', username: 'u', passwordFile: '/etc/pw', requestTimeoutMs: 2000 } });
    expect(() => clusterRef(scope, { endpoints: ['x:1'], password: 'secret' } as never)).not.toThrow();
    expect(JSON.stringify(clusterRef(scope, { endpoints: ['x:1'], password: 'secret' } as never))).not.toContain('secret');
  });
});

describe('records read back are validated', () => {
  const key = clusterKey(scope.prefix, 'ov1', 'c1', 'eth0');
  const good = { network: 'ov1', containerId: 'c1', ifname: 'eth0', names: ['web'], v4: ['10.50.0.2'], v6: [], host: 'node-b' };
  const decode = (value: string, k = key) => decodeRecord({ key: k, value }, scope.prefix, 'ov1', scope.subnets);

  it('a well-formed record under its own key is read', () => {
    expect(decode(JSON.stringify(good))).toEqual({ record: good });
  });

  it.each([
    ['malformed JSON', '{"network": "ov1", ', key],
    ['an address outside the network\'s subnets (another network\'s)', JSON.stringify({ ...good, v4: ['10.60.0.2'] }), key],
    ['an IPv6 address outside the subnets', JSON.stringify({ ...good, v6: ['fd60::2'] }), key],
    ['another network named in the content', JSON.stringify({ ...good, network: 'ov2' }), key],
    ['a content naming another key', JSON.stringify(good), clusterKey(scope.prefix, 'ov1', 'c2', 'eth0')],
    ['a name that is not a DNS name', JSON.stringify({ ...good, names: ['a b'] }), key],
    ['an IPv6 address among the IPv4 ones', JSON.stringify({ ...good, v4: ['fd50::2'] }), key],
    ['an unknown field', JSON.stringify({ ...good, extra: 1 }), key],
    ['not an object', '"web"', key],
  ])('%s is ignored, and the reason never repeats the value', (_what, value, k) => {
    const d = decode(value, k);
    expect(d).toHaveProperty('ignored');
    expect((d as { ignored: string }).ignored).not.toContain(value);
  });

  it('decodeRecords keeps the good ones and reports each ignored one', () => {
    const warned: string[] = [];
    const recs = decodeRecords(
      [
        { key, value: JSON.stringify(good) },
        { key: clusterKey(scope.prefix, 'ov1', 'forged', 'eth0'), value: JSON.stringify({ ...good, containerId: 'forged', v4: ['192.0.2.1'] }) },
        { key: clusterKey(scope.prefix, 'ov1', 'junk', 'eth0'), value: 'not json' },
      ],
      scope.prefix,
      'ov1',
      scope.subnets,
      (m) => warned.push(m),
    );
    expect(recs).toEqual([good]);
    expect(warned).toHaveLength(2);
  });
});
