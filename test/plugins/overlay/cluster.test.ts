/**
 * Cluster correctness of the overlay's control plane, against a real etcd:
 *   - a node name belongs to one machine (host ID): a second machine's
 *     agent stops with a clear error, its plugin calls fail with code 7;
 *   - endpoint GC has IPAM GC's seen-twice grace, and never touches another
 *     machine's endpoints;
 *   - a network's record and VNI are reclaimed when its last endpoint goes,
 *     and a race with an ADD is settled by compare-and-swap either way;
 *   - malformed records are skipped (and logged), never stopping the
 *     convergence of the good ones: the kernel's FDB/neighbour entries and
 *     the IPsec SAs of the good peers are still installed.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runPlugin, type SkelIO } from '../../../shared/cni/skel';
import { withHandle } from '../../../shared/netlink';
import { FakeNft } from '../../../testkit/fake-nft';
import { realNft } from '../../../shared/nft/real';
import { FakeXfrm } from '../../../testkit/fake-xfrm';
import { IPSEC_REQID, newRing, serializeRing } from '../../../shared/ipsec';
import { FakeKV } from '../../../testkit/fake-kv';
import { ensureVxlanNetwork, overlayNames, removeVxlanNetwork } from '../../../shared/vxlan';
import { agentMain, convergeHost, startAgent, type Agent, type AgentOptions } from '../../../plugins/overlay/agent';
import { ControlPlane, IdentityConflictError, type EndpointRecord } from '../../../plugins/overlay/controlplane';
import { HostEncryption, MemoryAcks } from '../../../plugins/overlay/encryption';
import { EtcdKV, putIf, type KV } from '../../../shared/etcd/kv';
import { plugin } from '../../../plugins/overlay/main';
import { addNetns, delNetns, uniqueName } from '../../../testkit/exec';
import { startEtcd, type EtcdServer } from '../../../testkit/etcd-server';

const ID_A = 'a'.repeat(32);
const ID_B = 'b'.repeat(32);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-ts-ovcluster-'));
let etcd: EtcdServer;
let kv: EtcdKV;
let n = 0;
const prefix = () => `/ovc-${process.pid}-${n++}`;
const deadline = () => Date.now() + 3000;

beforeAll(async () => {
  etcd = await startEtcd();
  kv = new EtcdKV({ endpoints: [etcd.endpoint], requestTimeoutMs: 3000 });
});
afterAll(async () => {
  kv?.close();
  await etcd?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

const fakeIpsec = () => ({ xfrm: new FakeXfrm(), nft: new FakeNft() });
function agentOpts(p: string, node: string, hostId: string, vtep: string): AgentOptions {
  return { node, hostId, vtep, endpoints: [], prefix: p, stateDir: fs.mkdtempSync(path.join(dir, 'state-')), ttlSeconds: 10, resyncMs: 60_000, requestTimeoutMs: 3000 };
}
const ep = (network: string, containerId: string, host: string, hostId: string | undefined, last: number): EndpointRecord => ({
  network,
  containerId,
  ifname: 'eth0',
  ip: `10.9.0.${last}`,
  mac: `02:42:0a:09:00:${last.toString(16).padStart(2, '0')}`,
  host,
  ...(hostId !== undefined && { hostId }),
});

describe('two machines with one node name', () => {
  const agents: Agent[] = [];
  afterAll(async () => {
    for (const a of agents) await a.stop();
  });

  it("the second machine's agent is refused with a clear error, and the first one's VTEP record stays", async () => {
    const p = prefix();
    const cp = new ControlPlane(kv, { prefix: p, log: () => undefined });
    agents.push(await startAgent(agentOpts(p, 'node1', ID_A, '192.0.2.1'), { kv, log: () => undefined, ipsec: fakeIpsec() }));
    const lines: string[] = [];
    const second = startAgent(agentOpts(p, 'node1', ID_B, '192.0.2.99'), { kv, log: (l) => lines.push(l), ipsec: fakeIpsec() });
    await expect(second).rejects.toBeInstanceOf(IdentityConflictError);
    await expect(second).rejects.toMatchObject({ code: 7, message: expect.stringContaining(`node name "node1" belongs to another host (host ID ${ID_A}); this host's ID is ${ID_B}`) });
    expect(lines.join('\n')).toContain('overlay-agent forget --node node1');
    expect(await cp.getHost('node1')).toEqual({ name: 'node1', vtep: '192.0.2.1', hostId: ID_A });
    // the first machine restarting (same ID) is welcome
    const again = await startAgent(agentOpts(p, 'node1', ID_A, '192.0.2.1'), { kv, log: () => undefined, ipsec: fakeIpsec() });
    agents.push(again);
  });

  it('the agent command exits non-zero with the message', async () => {
    const p = prefix();
    const cp = new ControlPlane(kv, { prefix: p, log: () => undefined });
    await cp.claimIdentity('node2', ID_A);
    const idFile = path.join(dir, 'host-id-b');
    fs.writeFileSync(idFile, `${ID_B}\n`);
    const err: string[] = [];
    // 127.0.0.1 is an address of this namespace's lo: the VTEP check passes, the identity check does not
    const code = await agentMain(['--node', 'node2', '--vtep', '127.0.0.1', '--etcd', etcd.endpoint, '--prefix', p, '--host-id-file', idFile, '--timeout-ms', '3000'], (l) => err.push(l));
    expect(code).toBe(1);
    expect(err.join('')).toContain(`node name "node2" belongs to another host (host ID ${ID_A})`);
    expect(await cp.getHost('node2')).toBeUndefined();
  });

  it("the plugin's ADD on the second machine fails with code 7 naming both IDs, before anything is made", async () => {
    const p = prefix();
    const agent = await startAgent(agentOpts(p, 'node3', ID_A, '192.0.2.1'), { kv, log: () => undefined, ipsec: fakeIpsec() });
    agents.push(agent);
    const idFile = path.join(dir, 'host-id-b3');
    fs.writeFileSync(idFile, `${ID_B}\n`);
    const ns = uniqueName('ovc');
    addNetns(ns);
    try {
      let stdout = '';
      const conf = {
        cniVersion: '1.1.0',
        name: 'ovc',
        type: 'overlay',
        subnet: '10.9.0.0/24',
        nodeName: 'node3',
        hostIdFile: idFile,
        stateDir: path.join(dir, 'state-plugin'),
        etcd: { endpoints: [etcd.endpoint], keyPrefix: p, requestTimeoutMs: 3000 },
        ipam: { type: 'cluster-ipam', subnet: '10.9.0.0/24' },
      };
      const io: SkelIO = {
        env: { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'c1', CNI_NETNS: `/var/run/netns/${ns}`, CNI_IFNAME: 'eth0', CNI_PATH: '/nonexistent' },
        readStdin: () => Buffer.from(JSON.stringify(conf)),
        writeStdout: (s) => (stdout += s),
        interfaceExists: () => false,
        netnsStatus: () => 'netns',
      };
      expect(await runPlugin(plugin, io)).not.toBe(0);
      const out = JSON.parse(stdout);
      expect(out.code).toBe(7);
      expect(out.msg).toContain(`belongs to another host (host ID ${ID_A}); this host's ID is ${ID_B}`);
      const cp = new ControlPlane(kv, { prefix: p, log: () => undefined });
      expect(await cp.getNetwork('ovc')).toBeUndefined();
      expect(withHandle(`/var/run/netns/${ns}`, (h) => h.linkList().map((l) => l.name))).toEqual(['lo']);
    } finally {
      delNetns(ns);
    }
  });

  it('leave releases the name for another machine; forget frees a dead machine\'s', async () => {
    const p = prefix();
    const cp = new ControlPlane(kv, { prefix: p, log: () => undefined });
    const a = await startAgent(agentOpts(p, 'node4', ID_A, '192.0.2.1'), { kv, log: () => undefined, ipsec: fakeIpsec() });
    await a.leave();
    await expect(cp.claimIdentity('node4', ID_B)).resolves.toContain(ID_B);
    await expect(cp.claimIdentity('node4', ID_A)).rejects.toBeInstanceOf(IdentityConflictError);
    await cp.forget('node4');
    await expect(cp.claimIdentity('node4', ID_A)).resolves.toContain(ID_A);
  });
});

describe('endpoint GC', () => {
  it('removes an endpoint only once seen unkept in two passes a grace period apart, and never another machine\'s', async () => {
    let now = 1_000_000;
    const p = prefix();
    const cp = new ControlPlane(kv, { prefix: p, now: () => now, log: () => undefined });
    await cp.putEndpoint(ep('g', 'leak', 'n1', ID_A, 2));
    await cp.putEndpoint(ep('g', 'kept', 'n1', ID_A, 3));
    await cp.putEndpoint(ep('g', 'clone', 'n1', ID_B, 4)); // same node name, another machine
    await cp.putEndpoint(ep('g', 'other', 'n2', ID_B, 5));
    const keep = new Set(['kept/eth0']);
    const names = async () => (await cp.listEndpoints('g')).map((e) => e.containerId).sort();

    expect(await cp.gcEndpoints('g', 'n1', ID_A, keep, 60_000)).toEqual([]);
    expect(await names()).toEqual(['clone', 'kept', 'leak', 'other']);
    now += 30_000;
    expect(await cp.gcEndpoints('g', 'n1', ID_A, keep, 60_000)).toEqual([]);
    now += 30_000;
    expect((await cp.gcEndpoints('g', 'n1', ID_A, keep, 60_000)).map((e) => e.containerId)).toEqual(['leak']);
    expect(await names()).toEqual(['clone', 'kept', 'other']);
    // no sighting is left behind
    const { results } = await kv.txn({ success: [{ get: `${p}/gc/`, prefix: true }] }, deadline());
    expect(results[0]).toEqual([]);
  });

  it('a container added again between two passes (a new record) starts over', async () => {
    const p = prefix();
    const cp = new ControlPlane(kv, { prefix: p, log: () => undefined });
    await cp.putEndpoint(ep('g', 'c', 'n1', ID_A, 2));
    expect(await cp.gcEndpoints('g', 'n1', ID_A, new Set(), 0)).toEqual([]);
    await cp.putEndpoint(ep('g', 'c', 'n1', ID_A, 7));
    expect(await cp.gcEndpoints('g', 'n1', ID_A, new Set(), 0)).toEqual([]);
    expect(await cp.getEndpoint('g', 'c', 'eth0')).toMatchObject({ ip: '10.9.0.7' });
    expect((await cp.gcEndpoints('g', 'n1', ID_A, new Set(), 0)).map((e) => e.ip)).toEqual(['10.9.0.7']);
  });

  it('300 leaked endpoints of one host all go (sightings written in batches under etcd\'s 128 operations)', async () => {
    const p = prefix();
    const cp = new ControlPlane(kv, { prefix: p, log: () => undefined });
    for (let i = 0; i < 300; i += 50) {
      await kv.txn({ success: Array.from({ length: 50 }, (_, j) => ({ put: cp.endpointKey('g', `c${i + j}`, 'eth0'), value: JSON.stringify(ep('g', `c${i + j}`, 'n1', ID_A, ((i + j) % 250) + 2)) })) }, deadline());
    }
    expect(await cp.gcEndpoints('g', 'n1', ID_A, new Set(), 0)).toEqual([]);
    expect(await cp.gcEndpoints('g', 'n1', ID_A, new Set(), 0)).toHaveLength(300);
    expect(await cp.listEndpoints('g')).toEqual([]);
  });
});

describe('reclaiming a network record', () => {
  it('keeps a network while any host has an endpoint on it, and frees record and VNI with the last one', async () => {
    const cp = new ControlPlane(kv, { prefix: prefix(), log: () => undefined });
    const { network } = await cp.joinNetwork({ name: 'r', subnet: '10.9.0.0/24' });
    await cp.putEndpoint(ep('r', 'c1', 'n1', ID_A, 2));
    await cp.putEndpoint(ep('r', 'c2', 'n2', ID_B, 3));
    expect(await cp.reclaimNetwork('r')).toBe('in-use');
    await cp.deleteEndpoint('r', 'c1', 'eth0');
    expect(await cp.reclaimNetwork('r')).toBe('in-use');
    expect(await cp.getNetwork('r')).toEqual(network);
    await cp.deleteEndpoint('r', 'c2', 'eth0');
    expect(await cp.reclaimNetwork('r')).toBe('reclaimed');
    expect(await cp.getNetwork('r')).toBeUndefined();
    // the VNI is free again
    expect((await cp.ensureNetwork({ name: 'other', subnet: '10.8.0.0/24' })).vni).toBe(network.vni);
  });

  it('an ADD that joined a network reclaimed before its endpoint was written fails with 11, and writes nothing', async () => {
    const cp = new ControlPlane(kv, { prefix: prefix(), log: () => undefined });
    const joined = await cp.joinNetwork({ name: 'r', subnet: '10.9.0.0/24' });
    expect(await cp.reclaimNetwork('r')).toBe('reclaimed');
    await expect(cp.putEndpoint(ep('r', 'c1', 'n1', ID_A, 2), joined.createRevision)).rejects.toMatchObject({ code: 11 });
    expect(await cp.listEndpoints('r')).toEqual([]);
    // and a network created again (same name) is another record: the old revision still does not match
    await cp.joinNetwork({ name: 'r', subnet: '10.9.0.0/24' });
    await expect(cp.putEndpoint(ep('r', 'c1', 'n1', ID_A, 2), joined.createRevision)).rejects.toMatchObject({ code: 11 });
  });

  it('an endpoint written between the reclaim\'s read and its transaction wins: the network stays', async () => {
    const p = prefix();
    const cp = new ControlPlane(kv, { prefix: p, log: () => undefined });
    const joined = await cp.joinNetwork({ name: 'r', subnet: '10.9.0.0/24' });
    // a KV that lets the racing ADD write its endpoint just before the reclaim's guarded delete
    let raced = false;
    const racing: KV = {
      ...kv,
      txn: async (req, dl) => {
        if (!raced && req.compare?.some((c) => c.prefix)) {
          raced = true;
          await cp.putEndpoint(ep('r', 'late', 'n2', ID_B, 9), joined.createRevision);
        }
        return kv.txn(req, dl);
      },
      leaseGrant: (t, d) => kv.leaseGrant(t, d),
      leaseKeepAlive: (l, d) => kv.leaseKeepAlive(l, d),
      leaseRevoke: (l, d) => kv.leaseRevoke(l, d),
      watchPrefix: (pf, f) => kv.watchPrefix(pf, f),
      close: () => undefined,
    };
    const reclaimer = new ControlPlane(racing, { prefix: p, log: () => undefined });
    expect(await reclaimer.reclaimNetwork('r')).toBe('in-use');
    expect(raced).toBe(true);
    expect(await cp.getNetwork('r')).toEqual(joined.network);
    expect((await cp.listEndpoints('r')).map((e) => e.containerId)).toEqual(['late']);
  });
});

describe('malformed records in etcd', () => {
  const vni = 4999;
  const hostNs = uniqueName('ovm');
  const stateDir = path.join(dir, 'state-malformed');
  const names = overlayNames(vni, path.join(stateDir, 'netns'));

  beforeAll(() => {
    addNetns(hostNs);
    execFileSync('ip', ['netns', 'exec', hostNs, 'ip', 'link', 'add', 'u0', 'type', 'veth', 'peer', 'name', 'u1']);
    execFileSync('ip', ['netns', 'exec', hostNs, 'ip', 'addr', 'add', '192.0.2.1/24', 'dev', 'u0']);
    execFileSync('ip', ['netns', 'exec', hostNs, 'ip', 'link', 'set', 'u0', 'up']);
    withHandle(`/var/run/netns/${hostNs}`, (h) => ensureVxlanNetwork(h, names, { vni, mtu: 1450, localVtep: '192.0.2.1' }));
  });
  afterAll(() => {
    removeVxlanNetwork(names);
    delNetns(hostNs);
  });

  async function plantCluster(p: string): Promise<ControlPlane> {
    const lines: string[] = [];
    const cp = new ControlPlane(kv, { prefix: p, log: (l) => lines.push(l) });
    (cp as unknown as { lines: string[] }).lines = lines;
    await cp.ensureNetwork({ name: 'good', subnet: '10.9.0.0/24', vni, encrypted: true });
    for (const [name, vtep] of [['h1', '192.0.2.1'], ['h2', '192.0.2.2']] as const) {
      await kv.txn({ success: [{ put: cp.hostKey(name), value: JSON.stringify({ name, vtep }) }] }, deadline());
    }
    await cp.putEndpoint(ep('good', 'mine', 'h1', ID_A, 2));
    await cp.putEndpoint(ep('good', 'theirs', 'h2', ID_B, 3));
    const put = (key: string, value: string) => kv.txn({ success: [{ put: `${p}/${key}`, value }] }, deadline());
    await put('hosts/h3', 'not json');
    await put('hosts/h4', JSON.stringify({ name: 'h4', vtep: 'garbage' }));
    await cp.putEndpoint(ep('good', 'onh4', 'h4', ID_B, 8)); // a good endpoint on the host whose record is bad
    await put('hosts/h5', JSON.stringify({ name: 'h1', vtep: '192.0.2.66' })); // claims another host's name
    await put('endpoints/good/bad1/eth0', JSON.stringify({ ...ep('good', 'bad1', 'h2', ID_B, 4), ip: '999.1.1.1' }));
    await put('endpoints/good/bad2/eth0', JSON.stringify({ ...ep('good', 'bad2', 'h2', ID_B, 5), mac: 'zz:zz' }));
    await put('endpoints/good/bad3/eth0', JSON.stringify(ep('good', 'elsewhere', 'h2', ID_B, 6))); // under another key
    await put('endpoints/good/bad4/eth0', '{"network":');
    await put('networks/bad', JSON.stringify({ name: 'bad', subnet: 'nope', vni: 0 }));
    return cp;
  }

  it('are skipped and logged; the snapshot keeps every good record', async () => {
    const cp = await plantCluster(prefix());
    const snap = await cp.snapshot();
    expect(snap.hosts.map((h) => h.name).sort()).toEqual(['h1', 'h2']);
    expect(snap.endpoints.map((e) => e.containerId).sort()).toEqual(['mine', 'onh4', 'theirs']);
    expect(snap.networks.map((x) => x.name)).toEqual(['good']);
    const lines = (cp as unknown as { lines: string[] }).lines;
    expect(lines.filter((l) => l.startsWith('skipping')).length).toBe(8);
    // never the value itself
    expect(lines.join('\n')).not.toContain('999.1.1.1');
  });

  it("the kernel still gets the good peers' FDB and neighbour entries", async () => {
    const cp = await plantCluster(prefix());
    const snap = await cp.snapshot();
    const log: string[] = [];
    const r = convergeHost(snap, 'h1', stateDir, (l) => log.push(l));
    expect(log).toEqual([]);
    expect(r.added).toBe(2);
    const fdb = withHandle(names.netns, (ov) => ov.fdbList(names.vxlan).filter((f) => f.ip).map((f) => `${f.mac}>${f.ip}`));
    expect(fdb).toEqual(['02:42:0a:09:00:03>192.0.2.2']);
    const neigh = withHandle(names.netns, (ov) => ov.neighList(names.vxlan).filter((x) => x.ip && !x.ip.includes(':')).map((x) => `${x.ip}>${x.mac}`));
    expect(neigh).toEqual(['10.9.0.3>02:42:0a:09:00:03']);
  });

  it("IPsec still keys the good peers (their SAs installed), whatever else is in etcd", async () => {
    const cp = await plantCluster(prefix());
    const snap = await cp.snapshot();
    const clock = () => 1_000;
    const ringKv = new FakeKV(clock);
    const xfrm = new FakeXfrm();
    const enc = new HostEncryption({ node: 'h1', vtep: '192.0.2.1', prefix: '/p' }, { ringKv, acks: new MemoryAcks(), xfrm, nft: realNft({ netnsPath: `/var/run/netns/${hostNs}` }), clock, log: () => undefined });
    await putIf(ringKv, '/p/ipsec/ring', serializeRing(newRing(clock())), 0n, Date.now() + 1000);
    const pass = await enc.sync(snap);
    expect(pass.networks).toEqual([{ name: 'good', vni, peers: ['192.0.2.2'] }]);
    expect([...enc.keyedPeers()]).toEqual(['192.0.2.2']);
    const ours = xfrm.xfrmStateList().filter((s) => s.reqid === IPSEC_REQID);
    expect(ours.map((s) => `${s.src}>${s.dst}`).sort()).toEqual(['192.0.2.1>192.0.2.2', '192.0.2.2>192.0.2.1', '192.0.2.2>192.0.2.1']);
  });
});
