/**
 * IPv6 and dual-stack overlays, and an IPv6 underlay (issue 17 item 1).
 *
 * First the pure parts (subnets from the config, MACs, MTUs, which remote
 * entries a host gets), then two simulated clusters (testkit/overlay/lab.ts:
 * namespaces on one underlay bridge, real agents, real etcd, the real
 * plugin): an IPv4 underlay carrying an IPv6-only and a dual-stack overlay,
 * and an IPv6 underlay (VTEPs fd00:200::N) carrying a dual-stack overlay.
 * Addresses come from the cluster IPAM's per-host blocks (/122 for IPv6,
 * Calico's default). Encrypted over IPv6 is the VM's (overlay-v6.guest.ts):
 * this kernel has no ESP.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Lab, eventually } from '../../../testkit/overlay/lab';
import { ROOT } from '../../../testkit/exec';
import { FakeKV } from '../../../testkit/fake-kv';
import { overlaySubnets, schema } from '../../../plugins/overlay/config';
import { ControlPlane, remoteEndpoints, type Snapshot } from '../../../plugins/overlay/controlplane';
import { networkMtu, overlayMac } from '../../../plugins/overlay/main';
import { parseArgs } from '../../../plugins/overlay/agent';
import { overlayMtu } from '../../../shared/vxlan';
import { parseIP } from '../../../shared/ip';

const conf = (extra: object) => schema.parse({ cniVersion: '1.0.0', name: 'n', type: 'overlay', ...extra });

describe('IPv6 overlay logic', () => {
  it('subnets: given, else one per IPAM range set, canonical, IPv4 first; two of one family refused', () => {
    expect(overlaySubnets(conf({ subnet: 'fd60:0:0:0::/64' }))).toEqual(['fd60::/64']);
    expect(overlaySubnets(conf({ subnets: ['fd61::/64', '10.61.0.0/24'] }))).toEqual(['10.61.0.0/24', 'fd61::/64']);
    expect(overlaySubnets(conf({ ipam: { type: 'cluster-ipam', ranges: [[{ subnet: 'fd62::/64' }], [{ subnet: '10.62.0.0/24' }]] } }))).toEqual(['10.62.0.0/24', 'fd62::/64']);
    expect(() => overlaySubnets(conf({ subnets: ['fd61::/64', 'fd62::/64'] }))).toThrow(/two IPv6 subnets/);
    // from the IPAM, a second range set of a family is not the overlay's (the first one is, as before dual stack)
    expect(overlaySubnets(conf({ ipam: { type: 'cluster-ipam', ranges: [[{ subnet: '10.62.0.0/24' }], [{ subnet: '10.63.0.0/24' }]] } }))).toEqual(['10.62.0.0/24']);
    expect(() => overlaySubnets(conf({ subnet: 'fd61::1' }))).toThrow(/not a CIDR/);
  });

  it('an IPAM whose ranges are not a list of range sets is refused with code 7, not a crash (found by the fuzz test)', () => {
    for (const ranges of [{ 0: { 0: { gateway: -1 } } }, [{ subnet: '10.1.0.0/24' }], 'x']) {
      let err: unknown;
      try {
        overlaySubnets(conf({ ipam: { type: 'cluster-ipam', ranges } }));
      } catch (e) {
        err = e;
      }
      expect((err as { code?: number })?.code, JSON.stringify(ranges)).toBe(7);
    }
  });

  it("MACs: Docker's from the IPv4 address; IPv6 only, the low 32 bits in a /96 or longer, else a hash (unicast, locally administered)", () => {
    expect(overlayMac([{ ip: '10.61.0.5', prefix: 24 }, { ip: 'fd61::5', prefix: 64 }])).toBe('02:42:0a:3d:00:05');
    expect(overlayMac([{ ip: 'fd60::a:b0c:d0e', prefix: 96 }])).toBe('02:42:0b:0c:0d:0e');
    const a = overlayMac([{ ip: 'fd60::1:0:0:5', prefix: 64 }]);
    const b = overlayMac([{ ip: 'fd60::2:0:0:5', prefix: 64 }]);
    expect(a).not.toBe(b); // same low 32 bits, different addresses
    for (const m of [a, b]) expect(parseInt(m.slice(0, 2), 16) & 0x03).toBe(0x02);
  });

  it('MTU: 1430 over a 1500-byte IPv6 underlay (70 bytes of VXLAN), 1396 encrypted; IPv4 unchanged', () => {
    expect(overlayMtu(1500, 6)).toBe(1430);
    expect(overlayMtu(1500)).toBe(1450);
    expect(networkMtu({ encrypted: false }, undefined, 1500, 6)).toBe(1430);
    expect(networkMtu({ encrypted: true }, undefined, 1500, 6)).toBe(1396);
    expect(networkMtu({ encrypted: true }, undefined, 1500, 4)).toBe(1416);
    expect(() => networkMtu({ encrypted: true }, 1400, 1500, 6)).toThrow(/too large/);
  });

  it('the agent takes an IPv6 VTEP, canonical', () => {
    expect(parseArgs(['--node', 'n', '--vtep', 'FD00:200:0::1']).opts.vtep).toBe('fd00:200::1');
    expect(() => parseArgs(['--node', 'n', '--vtep', 'fd00:200::1/64'])).toThrow(/--vtep/);
  });

  it('remote entries: one per address of a dual-stack endpoint; hosts on the other underlay family get none', () => {
    const snap: Pick<Snapshot, 'hosts' | 'endpoints'> = {
      hosts: [
        { name: 'a', vtep: 'fd00:200::1' },
        { name: 'b', vtep: 'fd00:200::2' },
        { name: 'c', vtep: '192.0.2.3' },
      ],
      endpoints: [
        { network: 'n', containerId: 'x', ifname: 'eth0', ip: '10.61.0.2', ips: ['10.61.0.2', 'fd61::2'], mac: '02:42:0a:3d:00:02', host: 'b' },
        { network: 'n', containerId: 'y', ifname: 'eth0', ip: '10.61.0.3', mac: '02:42:0a:3d:00:03', host: 'c' },
      ],
    };
    expect(remoteEndpoints(snap, 'n', 'a')).toEqual([
      { ip: '10.61.0.2', mac: '02:42:0a:3d:00:02', vtep: 'fd00:200::2' },
      { ip: 'fd61::2', mac: '02:42:0a:3d:00:02', vtep: 'fd00:200::2' },
    ]);
  });

  it('examples/overlay-dualstack.conflist parses and names both subnets', () => {
    const list = JSON.parse(fs.readFileSync(path.join(ROOT, 'examples/overlay-dualstack.conflist'), 'utf8'));
    const c = schema.parse({ cniVersion: list.cniVersion, name: list.name, ...list.plugins[0] });
    expect(overlaySubnets(c)).toEqual(['10.92.0.0/16', 'fd92::/64']);
  });

  it('an endpoint record whose ip is not among its ips is skipped', async () => {
    const kv = new FakeKV();
    const logged: string[] = [];
    const cp = new ControlPlane(kv, { log: (l) => logged.push(l) });
    const rec = { network: 'd', containerId: 'x', ifname: 'eth0', ip: '10.61.0.9', ips: ['10.61.0.2', 'fd61::2'], mac: '02:42:0a:3d:00:02', host: 'b' };
    await kv.txn({ success: [{ put: `${cp.prefix}/endpoints/d/x/eth0`, value: JSON.stringify(rec) }] }, Date.now() + 1000);
    expect(await cp.getEndpoint('d', 'x', 'eth0')).toBeUndefined();
    expect(logged.join('\n')).toMatch(/ip must be one of ips/);
    await kv.txn({ success: [{ put: `${cp.prefix}/endpoints/d/x/eth0`, value: JSON.stringify({ ...rec, ip: '10.61.0.2' }) }] }, Date.now() + 1000);
    expect((await cp.getEndpoint('d', 'x', 'eth0'))?.ips).toEqual(['10.61.0.2', 'fd61::2']);
  });

  it('a dual-stack network is recorded with both subnets; joining it with one of them is refused (7)', async () => {
    const cp = new ControlPlane(new FakeKV(), { log: () => undefined });
    const { network } = await cp.joinNetwork({ name: 'd', subnet: '10.61.0.0/24', subnets: ['10.61.0.0/24', 'fd61::/64'] });
    expect(network.subnets).toEqual(['10.61.0.0/24', 'fd61::/64']);
    expect((await cp.getNetwork('d'))?.subnets).toEqual(['10.61.0.0/24', 'fd61::/64']);
    await expect(cp.joinNetwork({ name: 'd', subnet: '10.61.0.0/24', subnets: ['10.61.0.0/24'] })).rejects.toMatchObject({ code: 7 });
    await expect(cp.joinNetwork({ name: 'd', subnet: '10.61.0.0/24', subnets: ['10.61.0.0/24', 'fd61::/64'] })).resolves.toBeDefined();
  });
});

/** A command in host i's namespace of overlay `vni` (the bridge and VXLAN device's). */
function inOverlay(lab: Lab, i: number, vni: number, ...cmd: string[]): string {
  const ns = path.join(lab.stateDir(i), 'netns', `ov-${vni}`);
  const r = spawnSync('nsenter', [`--net=${ns}`, ...cmd], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** The permanent neighbour entries (IP -> MAC) of host i's VXLAN device, IPv4 and IPv6. */
function neighbours(lab: Lab, i: number, vni: number): Map<string, string> {
  const out = new Map<string, string>();
  for (const fam of ['-4', '-6']) {
    const list = JSON.parse(inOverlay(lab, i, vni, 'ip', fam, '-j', 'neigh', 'show', 'dev', `vx-${vni}`, 'nud', 'permanent') || '[]') as Array<{ dst: string; lladdr: string }>;
    for (const n of list) out.set(n.dst, n.lladdr);
  }
  return out;
}

function fdbDst(lab: Lab, i: number, vni: number, mac: string): string[] {
  const list = JSON.parse(inOverlay(lab, i, vni, 'bridge', '-j', 'fdb', 'show', 'dev', `vx-${vni}`) || '[]') as Array<{ mac: string; dst?: string }>;
  return list.filter((e) => e.mac === mac && e.dst).map((e) => e.dst!);
}

/** Two hosts with agents on `lab`; ADD/DEL helpers that keep each network's IPAM under its own prefix. */
function cluster(lab: Lab) {
  const addrs = new Map<string, string[]>();
  const macs = new Map<string, string>();
  const results = new Map<string, unknown>();
  const netConf = (host: number, network: string, subnets: string[], extra: Record<string, unknown> = {}) => {
    const ranges = subnets.map((s) => [{ subnet: s }]);
    const cf = lab.conf(host, network, subnets[0]!, extra, { subnet: undefined, ranges }) as { ipam: { etcd: { keyPrefix: string } } };
    cf.ipam.etcd.keyPrefix += `-${network}`;
    return cf;
  };
  return {
    addrs,
    macs,
    results,
    netConf,
    add(host: number, network: string, subnets: string[], container: string) {
      const r = lab.plugin(host, 'ADD', container, netConf(host, network, subnets));
      if (r.status !== 0) throw new Error(`ADD ${container} on h${host} failed: ${r.stdout} ${r.stderr}`);
      addrs.set(container, (r.json.ips as Array<{ address: string; interface: number }>).filter((x) => x.interface === 0).map((x) => x.address.split('/')[0]!));
      macs.set(container, r.json.interfaces[0].mac);
      results.set(container, r.json);
      return r;
    },
    async start() {
      await lab.setUp();
      for (let i = 0; i < lab.hostCount; i++) lab.startAgent(i);
      const up = await eventually(() => {
        try {
          return lab.snapshot().hosts.length === lab.hostCount;
        } catch {
          return false;
        }
      });
      if (!up) throw new Error(`agents did not register:\n${lab.agentLog(0)}`);
    },
  };
}

const v6 = (a: string[]) => a.find((x) => x.includes(':'))!;
const v4 = (a: string[]) => a.find((x) => !x.includes(':'))!;
const eth0 = (lab: Lab, c: string) => JSON.parse(lab.in(c, 'ip', '-j', 'addr', 'show', 'eth0'))[0] as { mtu: number; addr_info: Array<{ local: string; prefixlen: number; family: string }> };

describe('IPv6 and dual-stack overlays over an IPv4 underlay', () => {
  const lab = new Lab(2);
  const cl = cluster(lab);
  const c: string[] = [];
  let vni6 = 0;
  let vniD = 0;
  const V6 = ['fd60::/64'];
  const DS = ['10.63.0.0/24', 'fd63::/64'];

  beforeAll(() => cl.start());
  afterAll(() => lab.tearDown());

  it('an IPv6-only overlay: each container gets an address from its host\'s /122 block, MTU 1450', () => {
    c.push(lab.addContainer(), lab.addContainer());
    cl.add(0, 'ov6', V6, c[0]!);
    cl.add(1, 'ov6', V6, c[1]!);
    vni6 = lab.snapshot().networks.find((n) => n.name === 'ov6')!.vni;
    const [a0, a1] = [cl.addrs.get(c[0]!)!, cl.addrs.get(c[1]!)!];
    expect(a0).toHaveLength(1);
    expect(a0[0]).toMatch(/^fd60::/);
    // per-host blocks: the two hosts' addresses are in different /122s
    const block = (a: string) => parseIP(a)!.value >> 6n;
    expect(block(a0[0]!)).not.toBe(block(a1[0]!));
    const link = eth0(lab, c[0]!);
    expect(link.mtu).toBe(1450);
    expect(link.addr_info.filter((x) => x.family === 'inet6' && x.local === a0[0]).map((x) => x.prefixlen)).toEqual([64]);
  });

  it('static NDP neighbour and FDB entries for the remote container, and ping6 between the hosts', async () => {
    const [a1] = cl.addrs.get(c[1]!)!;
    const m1 = cl.macs.get(c[1]!)!;
    expect(await eventually(() => neighbours(lab, 0, vni6).get(a1!) === m1)).toBe(true);
    expect(fdbDst(lab, 0, vni6, m1)).toEqual([lab.vtep(1)]);
    expect(lab.ping(c[0]!, a1!)).toBe(true);
    expect(lab.ping(c[1]!, cl.addrs.get(c[0]!)![0]!)).toBe(true);
  });

  it('a dual-stack overlay: an address of each family on eth0, both in the endpoint, both reachable across hosts', async () => {
    c.push(lab.addContainer(), lab.addContainer());
    const r = cl.add(0, 'ovd', DS, c[2]!);
    cl.add(1, 'ovd', DS, c[3]!);
    const a2 = cl.addrs.get(c[2]!)!;
    const a3 = cl.addrs.get(c[3]!)!;
    expect(a2.map((a) => a.includes(':'))).toEqual([false, true]);
    expect(r.json.interfaces.map((x: { name: string }) => x.name)).toEqual(['eth0', 'eth1']);
    const snap = lab.snapshot();
    vniD = snap.networks.find((n) => n.name === 'ovd')!.vni;
    const ep = snap.endpoints.find((e) => e.containerId === c[3]) as unknown as { ip: string; ips: string[] };
    expect(ep.ips).toEqual(a3);
    const m3 = cl.macs.get(c[3]!)!;
    expect(await eventually(() => neighbours(lab, 0, vniD).get(v4(a3)) === m3 && neighbours(lab, 0, vniD).get(v6(a3)) === m3)).toBe(true);
    expect(lab.ping(c[2]!, v4(a3))).toBe(true);
    expect(lab.ping(c[2]!, v6(a3))).toBe(true);
    expect(lab.ping(c[3]!, v6(a2))).toBe(true);
  });

  it('the networks stay apart: no IPv6 path from the IPv6-only overlay into the dual-stack one', () => {
    expect(lab.ping(c[0]!, v6(cl.addrs.get(c[3]!)!))).toBe(false);
  });

  it('CHECK verifies both addresses; after one is removed it fails', () => {
    const cf = cl.netConf(1, 'ovd', DS);
    const prev = cl.results.get(c[3]!);
    const ok = lab.plugin(1, 'CHECK', c[3]!, { ...cf, prevResult: prev });
    expect(ok.status, ok.stdout + ok.stderr).toBe(0);
    lab.in(c[3]!, 'ip', 'addr', 'del', `${v6(cl.addrs.get(c[3]!)!)}/64`, 'dev', 'eth0');
    const r = lab.plugin(1, 'CHECK', c[3]!, { ...cf, prevResult: prev });
    expect(r.status).not.toBe(0);
    expect(r.json.msg).toMatch(/fd63::/);
  });

  it('DEL of the remote container removes its IPv4 and IPv6 neighbour entries on the other host', async () => {
    const a3 = cl.addrs.get(c[3]!)!;
    expect(lab.plugin(1, 'DEL', c[3]!, cl.netConf(1, 'ovd', DS)).status).toBe(0);
    expect(await eventually(() => !neighbours(lab, 0, vniD).has(v4(a3)) && !neighbours(lab, 0, vniD).has(v6(a3)))).toBe(true);
    expect(lab.plugin(1, 'DEL', c[3]!, cl.netConf(1, 'ovd', DS)).status).toBe(0);
  });
});

describe('examples/overlay-dualstack.conflist on two simulated hosts', () => {
  const lab = new Lab(2);
  const cl = cluster(lab);

  beforeAll(() => cl.start());
  afterAll(() => lab.tearDown());

  /** The example as a user copies it, pointed at the lab: its etcd, node names, state and key prefixes. */
  const example = (host: number) => lab.exampleConf(host, path.join(ROOT, 'examples/overlay-dualstack.conflist'));

  it('ADD on both hosts gives each container both families; they ping each other over both; DEL cleans up', async () => {
    const c = [lab.addContainer(), lab.addContainer()];
    const got: string[][] = [];
    for (const host of [0, 1]) {
      const r = lab.plugin(host, 'ADD', c[host]!, example(host));
      expect(r.status, r.stdout + r.stderr).toBe(0);
      expect(r.json.cniVersion).toBe('1.0.0');
      got.push((r.json.ips as Array<{ address: string; interface: number }>).filter((x) => x.interface === 0).map((x) => x.address));
    }
    expect(got[0]!.map((a) => a.endsWith('/16') || a.endsWith('/64'))).toEqual([true, true]);
    expect(got[1]![1]).toMatch(/^fd92::/);
    // host 0 learns of the later container through its agent
    expect(await eventually(() => lab.ping(c[0]!, got[1]![1]!.split('/')[0]!))).toBe(true);
    expect(lab.ping(c[0]!, got[1]![0]!.split('/')[0]!)).toBe(true);
    for (const host of [0, 1]) expect(lab.plugin(host, 'DEL', c[host]!, example(host)).status).toBe(0);
    expect(lab.snapshot().endpoints).toEqual([]);
  });
});

describe('a dual-stack overlay over an IPv6 underlay', () => {
  const lab = new Lab(2, undefined, { underlay6: true });
  const cl = cluster(lab);
  const c: string[] = [];
  let vni = 0;
  const DS = ['10.64.0.0/24', 'fd64::/64'];

  beforeAll(() => cl.start());
  afterAll(() => lab.tearDown());

  it('the agents register IPv6 VTEPs; the VXLAN device sends from this host\'s; MTU 1430', () => {
    expect(lab.snapshot().hosts.map((h) => h.vtep).sort()).toEqual([lab.vtep(0), lab.vtep(1)]);
    c.push(lab.addContainer(), lab.addContainer());
    cl.add(0, 'ovu', DS, c[0]!);
    cl.add(1, 'ovu', DS, c[1]!);
    vni = lab.snapshot().networks.find((n) => n.name === 'ovu')!.vni;
    expect(eth0(lab, c[0]!).mtu).toBe(1430);
    const vx = JSON.parse(inOverlay(lab, 0, vni, 'ip', '-d', '-j', 'link', 'show', `vx-${vni}`))[0];
    expect(vx.linkinfo.info_data).toMatchObject({ id: vni, port: 4789 });
    expect(vx.linkinfo.info_data.local ?? vx.linkinfo.info_data.local6).toBe(lab.vtep(0));
    expect(vx.mtu).toBe(1430);
  });

  it('FDB entries point at the peer\'s IPv6 VTEP; ping and ping6 cross the IPv6 underlay', async () => {
    const a1 = cl.addrs.get(c[1]!)!;
    const m1 = cl.macs.get(c[1]!)!;
    expect(await eventually(() => fdbDst(lab, 0, vni, m1).length === 1)).toBe(true);
    expect(fdbDst(lab, 0, vni, m1)).toEqual([lab.vtep(1)]);
    expect(neighbours(lab, 0, vni).get(v6(a1))).toBe(m1);
    expect(lab.ping(c[0]!, v6(a1))).toBe(true);
    expect(lab.ping(c[0]!, v4(a1))).toBe(true);
    expect(lab.ping(c[1]!, v6(cl.addrs.get(c[0]!)!))).toBe(true);
  });

  it('a full-size IPv6 packet (1430) crosses without fragmenting the underlay', () => {
    // 1430 - 40 (IPv6) - 8 (ICMPv6) = 1382 bytes of payload
    const r = spawnSync('ip', ['netns', 'exec', c[0]!, 'busybox', 'ping', '-c', '1', '-W', '2', '-s', '1382', v6(cl.addrs.get(c[1]!)!)], { encoding: 'utf8' });
    expect(r.status).toBe(0);
    const frag = spawnSync('ip', ['netns', 'exec', lab.hosts[0]!, 'cat', '/proc/net/snmp6'], { encoding: 'utf8' }).stdout;
    expect(/Ip6FragCreates\s+0\b/.test(frag)).toBe(true);
  });
});
