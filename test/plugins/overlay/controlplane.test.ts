/**
 * The control plane's logic, run twice: against FakeKV and against a real
 * etcd, so the fake is held to etcd's behaviour.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CniError } from '../../../shared/cni/errors';
import { ControlPlane, FIRST_AUTO_VNI, remoteEndpoints } from '../../../plugins/overlay/controlplane';
import { FakeKV } from '../../../testkit/fake-kv';
import { EtcdKV, type KV } from '../../../shared/etcd/kv';
import { startEtcd, type EtcdServer } from '../../../testkit/etcd-server';

async function codeOf(p: Promise<unknown>): Promise<number | undefined> {
  try {
    await p;
    return undefined;
  } catch (e) {
    if (e instanceof CniError) return e.code;
    throw e;
  }
}

let etcd: EtcdServer | undefined;
afterAll(async () => {
  await etcd?.stop();
});

const backends: Array<[string, () => Promise<KV>]> = [
  ['a fake KV', async () => new FakeKV()],
  [
    'a real etcd',
    async () => {
      etcd ??= await startEtcd();
      return new EtcdKV({ endpoints: [etcd.endpoint], requestTimeoutMs: 3000 });
    },
  ],
];

describe.each(backends)('the control plane on %s', (_name, make) => {
  let kv: KV;
  let cp: ControlPlane;
  beforeAll(async () => {
    kv = await make();
    cp = new ControlPlane(kv, { prefix: `/t${Math.random().toString(16).slice(2, 8)}` });
  });
  afterAll(() => kv.close());

  it('allocates VNIs from 4096 up, one per network, and returns the same record on the next call', async () => {
    const a = await cp.ensureNetwork({ name: 'a', subnet: '10.1.0.0/24' });
    const b = await cp.ensureNetwork({ name: 'b', subnet: '10.1.0.0/24' });
    expect(a.vni).toBe(FIRST_AUTO_VNI);
    expect(b.vni).toBe(FIRST_AUTO_VNI + 1);
    expect(await cp.ensureNetwork({ name: 'a', subnet: '10.1.0.0/24' })).toEqual(a);
  });

  it('gives a network the VNI it names, and refuses that VNI to another network with code 7', async () => {
    const c = await cp.ensureNetwork({ name: 'c', subnet: '10.3.0.0/24', vni: 7000 });
    expect(c.vni).toBe(7000);
    expect(await codeOf(cp.ensureNetwork({ name: 'd', subnet: '10.4.0.0/24', vni: 7000 }))).toBe(7);
    expect(await codeOf(cp.ensureNetwork({ name: 'd', subnet: '10.4.0.0/24', vni: FIRST_AUTO_VNI }))).toBe(7);
    expect(await cp.getNetwork('d')).toBeUndefined();
  });

  it('refuses a request that contradicts the recorded network (other subnet or VNI) and a VNI out of range', async () => {
    expect(await codeOf(cp.ensureNetwork({ name: 'c', subnet: '10.9.0.0/24' }))).toBe(7);
    expect(await codeOf(cp.ensureNetwork({ name: 'c', subnet: '10.3.0.0/24', vni: 7001 }))).toBe(7);
    expect(await codeOf(cp.ensureNetwork({ name: 'e', subnet: '10.5.0.0/24', vni: 1 << 24 }))).toBe(7);
  });

  it('concurrent first uses of new networks never share a VNI', async () => {
    const recs = await Promise.all(['p', 'q', 'r', 's'].map((n) => cp.ensureNetwork({ name: n, subnet: '10.8.0.0/24' })));
    expect(new Set(recs.map((r) => r.vni)).size).toBe(4);
  });

  it('a host record lives on its lease: revoking the lease removes the host and its endpoints stop being remote targets', async () => {
    const lease = await kv.leaseGrant(10, Date.now() + 3000);
    await cp.registerHost({ name: 'h2', vtep: '192.0.2.2' }, lease);
    await cp.putEndpoint({ network: 'a', containerId: 'c1', ifname: 'eth0', ip: '10.1.0.5', mac: '02:42:0a:01:00:05', host: 'h2' });
    await cp.putEndpoint({ network: 'a', containerId: 'c0', ifname: 'eth0', ip: '10.1.0.4', mac: '02:42:0a:01:00:04', host: 'h1' });
    await cp.putEndpoint({ network: 'b', containerId: 'c2', ifname: 'eth0', ip: '10.1.0.5', mac: '02:42:0a:01:00:06', host: 'h2' });
    let snap = await cp.snapshot();
    expect(remoteEndpoints(snap, 'a', 'h1')).toEqual([{ ip: '10.1.0.5', mac: '02:42:0a:01:00:05', vtep: '192.0.2.2' }]);
    expect(remoteEndpoints(snap, 'a', 'h2')).toEqual([]); // h1 is not registered
    expect(await kv.leaseKeepAlive(lease, Date.now() + 3000)).toBeGreaterThan(0);
    await kv.leaseRevoke(lease, Date.now() + 3000);
    expect(await kv.leaseKeepAlive(lease, Date.now() + 3000)).toBe(0);
    snap = await cp.snapshot();
    expect(snap.hosts).toEqual([]);
    expect(remoteEndpoints(snap, 'a', 'h1')).toEqual([]);
    expect(snap.endpoints).toHaveLength(3);
  });

  it('endpoints are read back, listed per network and deleted', async () => {
    expect(await cp.getEndpoint('a', 'c1', 'eth0')).toMatchObject({ ip: '10.1.0.5', host: 'h2' });
    expect((await cp.listEndpoints('a')).map((e) => e.containerId).sort()).toEqual(['c0', 'c1']);
    await cp.deleteEndpoint('a', 'c1', 'eth0');
    expect(await cp.getEndpoint('a', 'c1', 'eth0')).toBeUndefined();
  });

  it('a network with endpoints cannot be deleted; without them it goes and frees its VNI', async () => {
    expect(await codeOf(cp.deleteNetwork('a'))).toBe(7);
    await cp.deleteEndpoint('a', 'c0', 'eth0');
    expect(await cp.deleteNetwork('a')).toBe(true);
    const again = await cp.ensureNetwork({ name: 'z', subnet: '10.26.0.0/24', vni: FIRST_AUTO_VNI });
    expect(again.vni).toBe(FIRST_AUTO_VNI);
  });

  it('a watch on the prefix reports a change', async () => {
    let changes = 0;
    const w = await cp.watch(() => changes++);
    await new Promise((r) => setTimeout(r, 100));
    changes = 0;
    await cp.putEndpoint({ network: 'b', containerId: 'w', ifname: 'eth0', ip: '10.1.0.9', mac: '02:42:0a:01:00:09', host: 'h3' });
    for (let i = 0; i < 100 && changes === 0; i++) await new Promise((r) => setTimeout(r, 20));
    await w.cancel();
    expect(changes).toBeGreaterThan(0);
  });
});

describe('the control plane when etcd is unreachable', () => {
  it('fails every call with code 11', async () => {
    const kv = new FakeKV();
    kv.down = true;
    const cp = new ControlPlane(kv);
    expect(await codeOf(cp.ensureNetwork({ name: 'a', subnet: '10.1.0.0/24' }))).toBe(11);
    expect(await codeOf(cp.snapshot())).toBe(11);
  });

  it('a real client pointed at a closed port fails with code 11 within its timeout', async () => {
    const kv = new EtcdKV({ endpoints: ['127.0.0.1:1'], requestTimeoutMs: 500 });
    const cp = new ControlPlane(kv, { timeoutMs: 500 });
    expect(await codeOf(cp.getNetwork('a'))).toBe(11);
    kv.close();
  });
});
