/**
 * The overlay's DNS records in its control plane (controlplane.ts), on
 * testkit/fake-kv.ts: an endpoint's names are written in the endpoint's own
 * transaction and go with it on DEL, on GC and when the network was
 * reclaimed meanwhile (the ADD's whole transaction fails); the record reads
 * back validated against the network's subnets.
 */
import { describe, expect, it } from 'vitest';
import { runPlugin } from '../../../shared/cni/skel';
import { ControlPlane } from '../../../plugins/overlay/controlplane';
import { deps, plugin } from '../../../plugins/overlay/main';
import { etcdFields, schema } from '../../../plugins/overlay/config';
import { clusterKey, putOp, recordOf, type ClusterScope } from '../../../shared/dns/cluster';
import { FakeKV } from '../../../testkit/fake-kv';

const HOST_ID = 'a'.repeat(32);
const SUBNETS = ['10.80.0.0/24'];

function setUp() {
  const kv = new FakeKV();
  let now = 1_000_000;
  const cp = new ControlPlane(kv, { prefix: '/t/ov', log: () => {}, now: () => now });
  const scope: ClusterScope = { prefix: cp.prefix, network: 'ov1', subnets: SUBNETS, node: 'n1' };
  const endpoint = (id: string, ip: string) => ({ network: 'ov1', containerId: id, ifname: 'eth0', ip, mac: '02:42:0a:50:00:02', host: 'n1', hostId: HOST_ID });
  const names = (id: string, ip: string) => [putOp(cp.prefix, recordOf(scope, { containerId: id, ifname: 'eth0', names: [`n-${id}`], v4: [ip], v6: [] }))];
  const has = async (key: string) => (await kv.txn({ success: [{ get: key }] }, Date.now() + 1000)).results[0]!.length === 1;
  return { kv, cp, endpoint, names, has, tick: (ms: number) => (now += ms) };
}

describe('the overlay\'s DNS records live and die with their endpoints', () => {
  it('ADD writes the record in the endpoint\'s transaction, and it reads back validated', async () => {
    const { cp, endpoint, names } = setUp();
    const { createRevision } = await cp.joinNetwork({ name: 'ov1', subnet: SUBNETS[0]! });
    await cp.putEndpoint(endpoint('c1', '10.80.0.2'), createRevision, names('c1', '10.80.0.2'));
    expect(await cp.getDnsRecord('ov1', SUBNETS, 'c1', 'eth0')).toMatchObject({ names: ['n-c1'], v4: ['10.80.0.2'], host: 'n1' });
    // read against other subnets (a record naming an address outside them) it is ignored
    expect(await cp.getDnsRecord('ov1', ['10.81.0.0/24'], 'c1', 'eth0')).toBeUndefined();
  });

  it('a network reclaimed while the ADD ran: neither the endpoint nor its names are written', async () => {
    const { cp, endpoint, names, has } = setUp();
    const { createRevision } = await cp.joinNetwork({ name: 'ov1', subnet: SUBNETS[0]! });
    await cp.reclaimNetwork('ov1');
    await expect(cp.putEndpoint(endpoint('c1', '10.80.0.2'), createRevision, names('c1', '10.80.0.2'))).rejects.toMatchObject({ code: 11 });
    expect(await has(clusterKey(cp.prefix, 'ov1', 'c1', 'eth0'))).toBe(false);
  });

  it('DEL removes the names with the endpoint, idempotently', async () => {
    const { cp, endpoint, names, has } = setUp();
    const { createRevision } = await cp.joinNetwork({ name: 'ov1', subnet: SUBNETS[0]! });
    await cp.putEndpoint(endpoint('c1', '10.80.0.2'), createRevision, names('c1', '10.80.0.2'));
    await cp.deleteEndpoint('ov1', 'c1', 'eth0');
    await cp.deleteEndpoint('ov1', 'c1', 'eth0');
    expect(await has(clusterKey(cp.prefix, 'ov1', 'c1', 'eth0'))).toBe(false);
    expect(await cp.reclaimNetwork('ov1')).toBe('reclaimed');
  });

  it('GC removes the names of an endpoint it removes, and keeps the listed one\'s', async () => {
    const { cp, endpoint, names, has, tick } = setUp();
    const { createRevision } = await cp.joinNetwork({ name: 'ov1', subnet: SUBNETS[0]! });
    await cp.putEndpoint(endpoint('keep', '10.80.0.2'), createRevision, names('keep', '10.80.0.2'));
    await cp.putEndpoint(endpoint('gone', '10.80.0.3'), createRevision, names('gone', '10.80.0.3'));
    const keep = new Set(['keep/eth0']);
    expect(await cp.gcEndpoints('ov1', 'n1', HOST_ID, keep, 1000)).toEqual([]);
    tick(2000);
    expect((await cp.gcEndpoints('ov1', 'n1', HOST_ID, keep, 1000)).map((e) => e.containerId)).toEqual(['gone']);
    expect(await has(clusterKey(cp.prefix, 'ov1', 'gone', 'eth0'))).toBe(false);
    expect(await has(clusterKey(cp.prefix, 'ov1', 'keep', 'eth0'))).toBe(true);
  });
});

describe('the overlay config\'s dns block', () => {
  const base = { cniVersion: '1.0.0', name: 'ov1', type: 'overlay', subnet: '10.80.0.0/24' };

  it('accepts dns.enabled (refused with code 7 before names were cluster-wide)', () => {
    expect(schema.parse({ ...base, dns: { enabled: true } }).dns?.enabled).toBe(true);
  });

  it('tells the resolver the etcd connection as fields: file paths, never the password itself', () => {
    const conf = schema.parse({ ...base, ipam: { type: 'cluster-ipam', store: 'etcd', etcd: { endpoints: ['https://10.0.0.1:2379'], caFile: '/etc/ca.pem', username: 'u', passwordFile: '/etc/pw', requestTimeoutMs: 900 } } });
    expect(etcdFields(conf)).toEqual({ endpoints: ['https://10.0.0.1:2379'], caFile: '/etc/ca.pem', username: 'u', passwordFile: '/etc/pw', requestTimeoutMs: 900 });
  });

  it('refuses dns.enabled without the gateway bridge (the resolver answers there) with code 7 on stdout, before touching etcd', async () => {
    const kv = new FakeKV();
    const saved = deps.kv;
    deps.kv = () => kv;
    const out: string[] = [];
    try {
      const code = await runPlugin(plugin, {
        env: { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'c1', CNI_NETNS: '/var/run/netns/nowhere', CNI_IFNAME: 'eth0', CNI_PATH: '/nonexistent' },
        readStdin: () => Buffer.from(JSON.stringify({ ...base, dns: { enabled: true }, gateway: { enabled: false } })),
        writeStdout: (s) => out.push(s),
        interfaceExists: () => false,
        netnsStatus: () => 'netns',
      });
      expect(code).toBe(1);
      expect(JSON.parse(out.join(''))).toMatchObject({ code: 7, msg: expect.stringContaining('gateway') });
      expect(kv.calls).toBe(0);
    } finally {
      deps.kv = saved;
    }
  });
});
