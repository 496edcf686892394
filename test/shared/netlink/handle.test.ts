/**
 * NetlinkHandle against the real kernel. Every test works inside two
 * throwaway namespaces (A, where the handle under test points, and B, the
 * "other side" for veth peers and moves) and checks what netlink-ts did by
 * reading the kernel's state back with `ip -j` / `bridge -j`.
 */
import { execFileSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as C from '../../../shared/netlink/consts';
import { NetlinkError } from '../../../shared/netlink/errors';
import { NetlinkHandle, linkExistsInNetns } from '../../../shared/netlink/handle';
import { LinkSpec, MacvlanMode } from '../../../shared/netlink/link';
import { NetNs, NotANetnsError } from '../../../shared/netns/netns';
import { addNetns, bridgej, delNetns, ipTry, ipj, uniqueName } from '../../../testkit/netns';

const nsA = uniqueName('nlh');
const nsB = uniqueName('nlh');
const scratch = uniqueName('nlh');
let pathA = '';
let pathB = '';
let h: NetlinkHandle;
let hB: NetlinkHandle;
let nsBfd: NetNs;

beforeAll(() => {
  pathA = addNetns(nsA);
  pathB = addNetns(nsB);
  h = NetlinkHandle.open(pathA);
  hB = NetlinkHandle.open(pathB);
  nsBfd = NetNs.open(pathB);
});

afterAll(() => {
  for (const close of [() => h?.close(), () => hB?.close(), () => nsBfd?.close()]) {
    try {
      close();
    } catch {
      // keep cleaning up
    }
  }
  delNetns(nsA);
  delNetns(nsB);
  delNetns(scratch);
});

/** ip -d -j link show dev NAME in namespace ns (undefined when absent) */
function ipLink(ns: string, name: string): any {
  const all = ipj(ns, '-d', 'link', 'show') as any[];
  return all.find((l) => l.ifname === name);
}

function ipLinkNames(ns: string): string[] {
  return (ipj(ns, 'link', 'show') as any[]).map((l) => l.ifname);
}

/** A veth pair inside A, made with the code under test. */
function veth(name: string, peer: string, extra: Partial<LinkSpec> = {}): void {
  h.linkAdd({ kind: 'veth', name, peerName: peer, ...extra } as LinkSpec);
}

function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  throw new Error('expected a throw');
}

describe('NetlinkHandle.open', () => {
  it('refuses a path that is not a network namespace', () => {
    expect(() => NetlinkHandle.open('/etc/hostname')).toThrow(NotANetnsError);
  });

  it('refuses to work once closed, rather than using whatever socket later reuses its fd number', () => {
    const stale = NetlinkHandle.open(pathA);
    stale.close();
    // the next socket opened very likely gets the same descriptor number
    const other = NetlinkHandle.open(pathB);
    try {
      expect(() => stale.linkList()).toThrow();
    } finally {
      other.close();
    }
  });

  it('talks to the namespace it was opened on: a fresh one holds only lo', () => {
    const names = hB.linkList().map((l) => l.name);
    expect(names).toContain('lo');
    expect(names).toEqual(ipLinkNames(nsB));
  });
});

describe('links of each kind', () => {
  // A third namespace where ip(8) itself is asked what this kernel can build.
  beforeAll(() => {
    addNetns(scratch);
  });

  it('creates a veth pair with its peer placed in another namespace', () => {
    veth('vh0', 'vc0', { peerNetnsFd: nsBfd.fd, mtu: 1400, mac: '02:00:00:00:0a:01', peerMac: '02:00:00:00:0b:01' } as Partial<LinkSpec>);
    const a = ipLink(nsA, 'vh0');
    const b = ipLink(nsB, 'vc0');
    expect(a.linkinfo.info_kind).toBe('veth');
    expect(a.mtu).toBe(1400);
    expect(a.address).toBe('02:00:00:00:0a:01');
    expect(b.linkinfo.info_kind).toBe('veth');
    expect(b.mtu).toBe(1400);
    expect(b.address).toBe('02:00:00:00:0b:01');
    expect(ipLinkNames(nsA)).not.toContain('vc0');
    // each end names the other by index, in the other namespace
    expect(a.link_index).toBe(b.ifindex);
    expect(a.link_netnsid).toBeTypeOf('number');

    const la = h.link('vh0');
    expect(la).toMatchObject({ index: a.ifindex, kind: 'veth', mtu: 1400, mac: '02:00:00:00:0a:01', parentIndex: b.ifindex, linkNetnsId: a.link_netnsid });
    expect(hB.link('vc0')).toMatchObject({ index: b.ifindex, kind: 'veth', parentIndex: a.ifindex });
    expect(h.linkByName('vc0')).toBeUndefined();
  });

  it('creates a veth pair inside one namespace whose ends point at each other', () => {
    veth('vp0', 'vp1');
    const a = ipLink(nsA, 'vp0');
    const b = ipLink(nsA, 'vp1');
    expect(a.link).toBe('vp1');
    expect(h.link('vp0').parentIndex).toBe(b.ifindex);
    expect(h.link('vp0').linkNetnsId).toBeUndefined();
  });

  it('creates a bridge with an MTU', () => {
    h.linkAdd({ kind: 'bridge', name: 'br-mtu', mtu: 1450 });
    const l = ipLink(nsA, 'br-mtu');
    expect(l.linkinfo.info_kind).toBe('bridge');
    expect(l.linkinfo.info_data.vlan_filtering).toBe(0);
    expect(l.mtu).toBe(1450);
    expect(h.link('br-mtu')).toMatchObject({ kind: 'bridge', mtu: 1450, index: l.ifindex });
  });

  it('creates a VLAN-filtering bridge exactly when ip(8) can, and otherwise passes on EOPNOTSUPP', () => {
    // kernels built without CONFIG_BRIDGE_VLAN_FILTERING refuse the attribute itself
    const ipCan = ipTry(scratch, 'link', 'add', 'probe-vf', 'type', 'bridge', 'vlan_filtering', '1');
    if (ipCan) {
      h.linkAdd({ kind: 'bridge', name: 'br-vf', vlanFiltering: true });
      expect(ipLink(nsA, 'br-vf').linkinfo.info_data.vlan_filtering).toBe(1);
    } else {
      const e = thrown(() => h.linkAdd({ kind: 'bridge', name: 'br-vf', vlanFiltering: true }));
      expect(e).toBeInstanceOf(NetlinkError);
      expect(e).toMatchObject({ errno: 95, code: 'EOPNOTSUPP' });
      expect(ipLink(nsA, 'br-vf')).toBeUndefined();
    }
  });

  it('creates a link directly inside another namespace', () => {
    h.linkAdd({ kind: 'bridge', name: 'br-in-b', netnsFd: nsBfd.fd });
    expect(ipLink(nsB, 'br-in-b').linkinfo.info_kind).toBe('bridge');
    expect(ipLink(nsA, 'br-in-b')).toBeUndefined();
    expect(hB.link('br-in-b').kind).toBe('bridge');
  });

  it('creates a link that is already up when asked', () => {
    h.linkAdd({ kind: 'bridge', name: 'br-up', up: true });
    expect(ipLink(nsA, 'br-up').flags).toContain('UP');
    expect(h.link('br-up').up).toBe(true);
  });

  it.each<MacvlanMode>(['bridge', 'private', 'vepa', 'passthru'])('creates a macvlan in %s mode on a veth parent', (mode) => {
    // passthru takes its parent for itself, so every mode gets its own parent
    veth(`mp-${mode}`, `mq-${mode}`);
    const parent = h.link(`mp-${mode}`);
    h.linkAdd({ kind: 'macvlan', name: `mv-${mode}`, parentIndex: parent.index, mode });
    const l = ipLink(nsA, `mv-${mode}`);
    expect(l.linkinfo.info_kind).toBe('macvlan');
    expect(l.linkinfo.info_data.mode).toBe(mode);
    expect(l.link).toBe(`mp-${mode}`);
    expect(h.link(`mv-${mode}`)).toMatchObject({ kind: 'macvlan', macvlanMode: mode, parentIndex: parent.index });
  });

  it('creates a vxlan with vni, port, IPv4 local, ttl, no checksum and learning off', () => {
    h.linkAdd({ kind: 'vxlan', name: 'vx-a', vni: 4242, port: 4790, local: '10.77.0.1', learning: false, ttl: 16, udpCsum: false });
    const d = ipLink(nsA, 'vx-a').linkinfo.info_data;
    expect(ipLink(nsA, 'vx-a').linkinfo.info_kind).toBe('vxlan');
    expect(d).toMatchObject({ id: 4242, port: 4790, local: '10.77.0.1', learning: false, ttl: 16, udp_csum: false });
    expect(h.link('vx-a').vxlan).toEqual({ vni: 4242, port: 4790, local: '10.77.0.1', learning: false, parentIndex: undefined });
  });

  it('creates a vxlan on an underlay device with an IPv6 local and learning on', () => {
    veth('vxu0', 'vxu1');
    const under = h.link('vxu0');
    h.linkAdd({ kind: 'vxlan', name: 'vx-6', vni: 7, local: 'fd77::1', parentIndex: under.index, learning: true });
    const d = ipLink(nsA, 'vx-6').linkinfo.info_data;
    expect(d).toMatchObject({ id: 7, port: 4789, local6: 'fd77::1', link: 'vxu0', learning: true });
    expect(h.link('vx-6').vxlan).toEqual({ vni: 7, port: 4789, local: 'fd77::1', learning: true, parentIndex: under.index });
  });

  it('creates a dummy link exactly when ip(8) can, and otherwise passes on the kernel refusal with its message', () => {
    const ipCan = ipTry(scratch, 'link', 'add', 'probe0', 'type', 'dummy');
    if (ipCan) {
      h.linkAdd({ kind: 'dummy', name: 'dm0' });
      expect(ipLink(nsA, 'dm0').linkinfo.info_kind).toBe('dummy');
      expect(h.link('dm0').kind).toBe('dummy');
    } else {
      const e = thrown(() => h.linkAdd({ kind: 'dummy', name: 'dm0' }));
      expect(e).toBeInstanceOf(NetlinkError);
      expect(e).toMatchObject({ code: 'EOPNOTSUPP', errno: 95 });
      expect((e as NetlinkError).kernelMessage).toMatch(/Unknown device type/);
      expect(ipLink(nsA, 'dm0')).toBeUndefined();
    }
  });
});

describe('link settings', () => {
  beforeAll(() => {
    veth('vs0', 'vs1');
  });

  it('sets a link up and down', () => {
    h.linkSetUp('vs0');
    expect(ipLink(nsA, 'vs0').flags).toContain('UP');
    expect(h.link('vs0').up).toBe(true);
    h.linkSetDown('vs0');
    expect(ipLink(nsA, 'vs0').flags).not.toContain('UP');
    expect(h.link('vs0').up).toBe(false);
  });

  it('sets the MTU', () => {
    h.linkSetMtu('vs0', 1280);
    expect(ipLink(nsA, 'vs0').mtu).toBe(1280);
    expect(h.link('vs0').mtu).toBe(1280);
  });

  it('sets the MAC', () => {
    h.linkSetMac('vs0', '02:11:22:33:44:55');
    expect(ipLink(nsA, 'vs0').address).toBe('02:11:22:33:44:55');
    expect(h.link('vs0').mac).toBe('02:11:22:33:44:55');
  });

  it('turns promiscuous mode on and off', () => {
    h.linkSetPromisc('vs0', true);
    let l = ipLink(nsA, 'vs0');
    expect(l.flags).toContain('PROMISC');
    expect(l.promiscuity).toBe(1);
    expect(h.link('vs0').promiscuity).toBe(1);
    expect(h.link('vs0').flags & C.IFF_PROMISC).toBe(C.IFF_PROMISC);
    h.linkSetPromisc('vs0', false);
    l = ipLink(nsA, 'vs0');
    expect(l.flags).not.toContain('PROMISC');
    expect(l.promiscuity).toBe(0);
    expect(h.link('vs0').promiscuity).toBe(0);
  });

  it('renames a link that is down, keeping its index', () => {
    veth('vrn0', 'vrn1');
    const before = ipLink(nsA, 'vrn0');
    h.linkRename('vrn0', 'vrn-new');
    expect(ipLink(nsA, 'vrn0')).toBeUndefined();
    expect(ipLink(nsA, 'vrn-new').ifindex).toBe(before.ifindex);
    expect(h.link('vrn-new').index).toBe(before.ifindex);
    expect(h.linkByName('vrn0')).toBeUndefined();
  });

  it('moves a link into another namespace', () => {
    veth('vmv0', 'vmv1');
    h.linkSetNetns('vmv1', nsBfd.fd);
    expect(ipLink(nsA, 'vmv1')).toBeUndefined();
    expect(ipLink(nsB, 'vmv1').linkinfo.info_kind).toBe('veth');
    expect(h.linkByName('vmv1')).toBeUndefined();
    expect(hB.link('vmv1').kind).toBe('veth');
    // the end left behind now points across namespaces
    expect(h.link('vmv0').linkNetnsId).toBe(ipLink(nsA, 'vmv0').link_netnsid);
    expect(h.link('vmv0').linkNetnsId).toBeTypeOf('number');
  });
});

describe('bridge ports', () => {
  beforeAll(() => {
    h.linkAdd({ kind: 'bridge', name: 'brp' });
    veth('vbp0', 'vbp1');
  });

  const port = (name: string): any => (bridgej(nsA, '-d', 'link', 'show', 'dev', name) as any[])[0];

  it('enslaves a link to a bridge and frees it again (master / nomaster)', () => {
    h.linkSetMaster('vbp0', 'brp');
    expect(ipLink(nsA, 'vbp0').master).toBe('brp');
    const l = h.link('vbp0');
    expect(l.masterIndex).toBe(h.link('brp').index);
    expect(l.slaveKind).toBe('bridge');
    h.linkSetMaster('vbp0', undefined);
    expect(ipLink(nsA, 'vbp0').master).toBeUndefined();
    expect(h.link('vbp0').masterIndex).toBeUndefined();
  });

  it('turns hairpin mode on and off on a bridge port', () => {
    h.linkSetMaster('vbp0', 'brp');
    h.linkSetHairpin('vbp0', true);
    expect(port('vbp0').hairpin).toBe(true);
    h.linkSetHairpin('vbp0', false);
    expect(port('vbp0').hairpin).toBe(false);
  });

  it('isolates a bridge port and lifts the isolation', () => {
    h.linkSetMaster('vbp0', 'brp');
    h.linkSetIsolated('vbp0', true);
    expect(port('vbp0').isolated).toBe(true);
    h.linkSetIsolated('vbp0', false);
    expect(port('vbp0').isolated).toBe(false);
  });

  it('turns learning off and on on a bridge port', () => {
    h.linkSetMaster('vbp0', 'brp');
    h.linkSetLearning('vbp0', false);
    expect(port('vbp0').learning).toBe(false);
    h.linkSetLearning('vbp0', true);
    expect(port('vbp0').learning).toBe(true);
  });

  it('fails on a link that is not a bridge port', () => {
    veth('vnp0', 'vnp1');
    expect(() => h.linkSetHairpin('vnp0', true)).toThrow(NetlinkError);
  });
});

describe('addresses', () => {
  beforeAll(() => {
    veth('va0', 'va1');
    h.linkSetUp('va0');
    h.linkSetUp('va1');
  });

  const addrInfo = (dev: string): any[] => (ipj(nsA, 'addr', 'show', 'dev', dev) as any[])[0].addr_info;

  it('adds an IPv4 address with its broadcast computed', () => {
    h.addrAdd('va0', '10.88.0.2/24');
    const a = addrInfo('va0').find((x) => x.local === '10.88.0.2');
    expect(a).toMatchObject({ family: 'inet', prefixlen: 24, broadcast: '10.88.0.255', scope: 'global' });
    const mine = h.addrList('va0', C.AF_INET);
    expect(mine.map((x) => x.cidr)).toEqual(['10.88.0.2/24']);
    expect(mine[0].index).toBe(h.link('va0').index);
    expect(mine[0].label).toBe('va0');
  });

  it('adds an IPv6 address with nodad, so it is usable at once and never tentative', () => {
    h.addrAdd('va0', 'fd88::2/64', { noDad: true });
    const a = addrInfo('va0').find((x) => x.local === 'fd88::2');
    expect(a).toMatchObject({ family: 'inet6', prefixlen: 64, nodad: true });
    expect(a.tentative).toBeUndefined();
    const mine = h.addrList('va0', C.AF_INET6).find((x) => x.address === 'fd88::2');
    expect(mine).toMatchObject({ cidr: 'fd88::2/64', family: C.AF_INET6 });
    expect(mine!.flags & C.IFA_F_NODAD).toBe(C.IFA_F_NODAD);
  });

  it('adds an address without its prefix route when asked', () => {
    h.addrAdd('va0', '10.87.0.2/24', { noPrefixRoute: true });
    expect(addrInfo('va0').find((x) => x.local === '10.87.0.2')).toMatchObject({ noprefixroute: true });
    expect((ipj(nsA, 'route', 'show') as any[]).map((r) => r.dst)).not.toContain('10.87.0.0/24');
  });

  it('refuses a duplicate address with EEXIST', () => {
    h.addrAdd('va0', '10.86.0.2/24');
    const e = thrown(() => h.addrAdd('va0', '10.86.0.2/24'));
    expect(e).toBeInstanceOf(NetlinkError);
    expect(e).toMatchObject({ errno: 17, code: 'EEXIST' });
  });

  it('deletes an address of either family', () => {
    h.addrAdd('va0', '10.85.0.2/24');
    h.addrAdd('va0', 'fd85::2/64', { noDad: true });
    h.addrDel('va0', '10.85.0.2/24');
    h.addrDel('va0', 'fd85::2/64');
    const locals = addrInfo('va0').map((x) => x.local);
    expect(locals).not.toContain('10.85.0.2');
    expect(locals).not.toContain('fd85::2');
    expect(h.addrList('va0').map((x) => x.address)).not.toContain('10.85.0.2');
  });

  it('says the address is not there (EADDRNOTAVAIL) when deleting one that is absent', () => {
    const e = thrown(() => h.addrDel('va0', '10.84.0.2/24'));
    expect(e).toMatchObject({ code: 'EADDRNOTAVAIL' });
  });

  it('lists every address of every link, as ip addr show does', () => {
    h.addrAdd('va1', '10.88.0.3/24');
    const fromIp = (ipj(nsA, 'addr', 'show') as any[]).flatMap((l) => (l.addr_info as any[]).map((a) => `${l.ifindex} ${a.local}/${a.prefixlen}`)).sort();
    const fromUs = h
      .addrList()
      .map((a) => `${a.index} ${a.cidr}`)
      .sort();
    expect(fromUs).toEqual(fromIp);
    expect(fromUs.length).toBeGreaterThan(3);
  });
});

describe('routes', () => {
  let oif = 0;
  beforeAll(() => {
    veth('vr0', 'vr1');
    h.linkSetUp('vr0');
    h.linkSetUp('vr1');
    h.addrAdd('vr0', '10.99.0.2/24');
    h.addrAdd('vr0', 'fd99::2/64', { noDad: true });
    oif = h.link('vr0').index;
  });

  const v4 = (...args: string[]): any[] => ipj(nsA, '-4', 'route', 'show', ...args);
  const v6 = (...args: string[]): any[] => ipj(nsA, '-6', 'route', 'show', ...args);

  it('adds a default route via a gateway with a metric and an MTU', () => {
    h.routeAdd({ dst: 'default', gw: '10.99.0.1', priority: 50, mtu: 1400 });
    const r = v4().find((x) => x.dst === 'default');
    expect(r).toMatchObject({ gateway: '10.99.0.1', dev: 'vr0', metric: 50, metrics: [{ mtu: 1400 }] });
    const mine = h.routeList(C.AF_INET).find((x) => x.dst === 'default');
    expect(mine).toMatchObject({ gw: '10.99.0.1', oifIndex: oif, priority: 50, mtu: 1400, table: C.RT_TABLE_MAIN, scope: C.RT_SCOPE_UNIVERSE });
  });

  it('adds a scope-link route on a device into another table', () => {
    h.routeAdd({ dst: '10.98.0.0/16', oifIndex: oif, table: 100 });
    expect(v4('table', '100')).toEqual([expect.objectContaining({ dst: '10.98.0.0/16', dev: 'vr0', scope: 'link' })]);
    expect(v4().map((x) => x.dst)).not.toContain('10.98.0.0/16');
    const mine = h.routeList(C.AF_INET, 100);
    expect(mine).toEqual([expect.objectContaining({ dst: '10.98.0.0/16', oifIndex: oif, scope: C.RT_SCOPE_LINK, table: 100 })]);
  });

  it('adds a route into a table numbered above 255', () => {
    h.routeAdd({ dst: '10.96.0.0/16', oifIndex: oif, table: 1000 });
    expect(v4('table', '1000').map((x) => x.dst)).toEqual(['10.96.0.0/16']);
    expect(h.routeList(C.AF_INET, 1000).map((x) => x.dst)).toEqual(['10.96.0.0/16']);
  });

  it('adds an IPv6 route via a gateway with a metric', () => {
    h.routeAdd({ dst: 'fd98::/64', gw: 'fd99::1', priority: 7 });
    expect(v6().find((x) => x.dst === 'fd98::/64')).toMatchObject({ gateway: 'fd99::1', dev: 'vr0', metric: 7 });
    expect(h.routeList(C.AF_INET6).find((x) => x.dst === 'fd98::/64')).toMatchObject({ gw: 'fd99::1', priority: 7, oifIndex: oif });
  });

  it('adds an IPv6 default route on a device', () => {
    h.routeAdd({ dst: 'default', family: C.AF_INET6, oifIndex: oif });
    expect(v6().find((x) => x.dst === 'default')).toMatchObject({ dev: 'vr0' });
    expect(h.routeList(C.AF_INET6).find((x) => x.dst === 'default')).toMatchObject({ oifIndex: oif, family: C.AF_INET6 });
  });

  it('adds an onlink default route to a gateway outside every prefix', () => {
    h.routeAdd({ dst: 'default', gw: '192.0.2.1', oifIndex: oif, onlink: true, table: 200 });
    expect(v4('table', '200')).toEqual([expect.objectContaining({ dst: 'default', gateway: '192.0.2.1', dev: 'vr0', flags: ['onlink'] })]);
  });

  it('adds a route with a preferred source address', () => {
    h.routeAdd({ dst: '10.92.0.0/16', gw: '10.99.0.1', src: '10.99.0.2' });
    expect(v4().find((x) => x.dst === '10.92.0.0/16')).toMatchObject({ gateway: '10.99.0.1', prefsrc: '10.99.0.2' });
    expect(h.routeList(C.AF_INET).find((x) => x.dst === '10.92.0.0/16')).toMatchObject({ src: '10.99.0.2' });
  });

  it('refuses a duplicate route with EEXIST', () => {
    h.routeAdd({ dst: '10.95.0.0/16', gw: '10.99.0.1' });
    expect(thrown(() => h.routeAdd({ dst: '10.95.0.0/16', gw: '10.99.0.1' }))).toMatchObject({ errno: 17, code: 'EEXIST' });
  });

  it('replaces a route in place', () => {
    h.routeAdd({ dst: '10.97.0.0/16', gw: '10.99.0.1' });
    h.routeReplace({ dst: '10.97.0.0/16', gw: '10.99.0.3' });
    const hits = v4().filter((x) => x.dst === '10.97.0.0/16');
    expect(hits).toEqual([expect.objectContaining({ gateway: '10.99.0.3' })]);
    expect(h.routeList(C.AF_INET).filter((x) => x.dst === '10.97.0.0/16').map((x) => x.gw)).toEqual(['10.99.0.3']);
  });

  it('replace creates the route when it is missing', () => {
    h.routeReplace({ dst: '10.94.0.0/16', oifIndex: oif });
    expect(v4().map((x) => x.dst)).toContain('10.94.0.0/16');
  });

  it('deletes a route and reports a second delete as not found', () => {
    h.routeAdd({ dst: '10.93.0.0/16', gw: '10.99.0.1', priority: 9 });
    h.routeAdd({ dst: 'fd93::/64', gw: 'fd99::1' });
    h.routeDel({ dst: '10.93.0.0/16', gw: '10.99.0.1', priority: 9 });
    h.routeDel({ dst: 'fd93::/64' });
    expect(v4().map((x) => x.dst)).not.toContain('10.93.0.0/16');
    expect(v6().map((x) => x.dst)).not.toContain('fd93::/64');
    const e = thrown(() => h.routeDel({ dst: '10.93.0.0/16' }));
    expect(e).toBeInstanceOf(NetlinkError);
    expect(e).toMatchObject({ code: 'ESRCH' });
  });

  it('lists the routes of every table when asked for RT_TABLE_UNSPEC', () => {
    const all = h.routeList(C.AF_INET, C.RT_TABLE_UNSPEC);
    const tables = new Set(all.map((r) => r.table));
    for (const t of [C.RT_TABLE_MAIN, C.RT_TABLE_LOCAL, 100, 200, 1000]) expect(tables.has(t), `table ${t}`).toBe(true);
    const fromIp = v4('table', 'all').length;
    expect(all.length).toBe(fromIp);
  });

  it('lists the main table of both families as ip route show does', () => {
    const norm = (dst: string, v6fam: boolean): string => (dst === 'default' || dst.includes('/') ? dst : `${dst}/${v6fam ? 128 : 32}`);
    const fromIp = [
      ...v4().map((r) => `4 ${norm(r.dst, false)} ${r.gateway ?? '-'} ${r.metric ?? 0}`),
      ...v6().map((r) => `6 ${norm(r.dst, true)} ${r.gateway ?? '-'} ${r.metric ?? 0}`),
    ].sort();
    const fromUs = h
      .routeList()
      .map((r) => `${r.family === C.AF_INET ? 4 : 6} ${r.dst} ${r.gw ?? '-'} ${r.priority ?? 0}`)
      .sort();
    expect(fromUs).toEqual(fromIp);
  });
});

describe('neighbours', () => {
  beforeAll(() => {
    veth('vn0', 'vn1');
    h.linkSetUp('vn0');
  });

  const neighs = (dev: string): any[] => ipj(nsA, 'neigh', 'show', 'dev', dev);

  it('sets permanent IPv4 and IPv6 neighbours', () => {
    h.neighSet({ dev: 'vn0', ip: '10.91.0.9', mac: '02:00:00:00:91:09' });
    h.neighSet({ dev: 'vn0', ip: 'fd91::9', mac: '02:00:00:00:91:0a' });
    expect(neighs('vn0')).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ dst: '10.91.0.9', lladdr: '02:00:00:00:91:09', state: ['PERMANENT'] }),
        expect.objectContaining({ dst: 'fd91::9', lladdr: '02:00:00:00:91:0a', state: ['PERMANENT'] }),
      ]),
    );
    const mine = h.neighList('vn0');
    expect(mine).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ ip: '10.91.0.9', mac: '02:00:00:00:91:09', state: C.NUD_PERMANENT, family: C.AF_INET }),
        expect.objectContaining({ ip: 'fd91::9', mac: '02:00:00:00:91:0a', state: C.NUD_PERMANENT, family: C.AF_INET6 }),
      ]),
    );
  });

  it('replaces the MAC of an existing neighbour', () => {
    h.neighSet({ dev: 'vn0', ip: '10.91.0.10', mac: '02:00:00:00:91:10' });
    h.neighSet({ dev: 'vn0', ip: '10.91.0.10', mac: '02:00:00:00:91:11' });
    expect(neighs('vn0').filter((n) => n.dst === '10.91.0.10').map((n) => n.lladdr)).toEqual(['02:00:00:00:91:11']);
  });

  it('deletes a neighbour', () => {
    h.neighSet({ dev: 'vn0', ip: '10.91.0.11', mac: '02:00:00:00:91:12' });
    h.neighDel('vn0', '10.91.0.11');
    expect(neighs('vn0').map((n) => n.dst)).not.toContain('10.91.0.11');
    expect(h.neighList('vn0').map((n) => n.ip)).not.toContain('10.91.0.11');
  });

  it('lists every neighbour as ip neigh show nud all does, without bridge FDB entries', () => {
    // plain `ip neigh show` hides NUD_NOARP entries (multicast groups); the dump has them all
    const fromIp = () => (ipj(nsA, 'neigh', 'show', 'nud', 'all') as any[]).map((n) => `${n.dev} ${n.dst} ${n.lladdr ?? '-'}`).sort();
    const names = new Map(h.linkList().map((l) => [l.index, l.name]));
    const fromUs = () =>
      h
        .neighList()
        .map((n) => `${names.get(n.ifindex)} ${n.ip} ${n.mac ?? '-'}`)
        .sort();
    // The kernel adds entries by itself (IPv6 neighbour discovery on links
    // that just came up): compare a dump taken between two equal listings by ip.
    let before = fromIp();
    let ours = fromUs();
    let after = fromIp();
    for (let i = 0; i < 10 && JSON.stringify(before) !== JSON.stringify(after); i++) {
      before = after;
      ours = fromUs();
      after = fromIp();
    }
    expect(ours).toEqual(after);
    expect(ours.length).toBeGreaterThanOrEqual(3);
  });
});

describe('VXLAN forwarding database', () => {
  beforeAll(() => {
    h.linkAdd({ kind: 'vxlan', name: 'vxf', vni: 100, local: '10.66.0.1', learning: false });
  });

  const fdb = (): any[] => bridgej(nsA, 'fdb', 'show', 'dev', 'vxf');

  it('appends several remote VTEPs to the all-zero flooding entry', () => {
    h.fdbAdd({ dev: 'vxf', mac: '00:00:00:00:00:00', dst: '10.66.0.2', append: true });
    h.fdbAdd({ dev: 'vxf', mac: '00:00:00:00:00:00', dst: '10.66.0.3', append: true });
    const zero = fdb().filter((e) => e.mac === '00:00:00:00:00:00');
    expect(zero.map((e) => e.dst).sort()).toEqual(['10.66.0.2', '10.66.0.3']);
    for (const e of zero) expect(e).toMatchObject({ flags: ['self'], state: 'permanent' });
    const mine = h.fdbList('vxf').filter((e) => e.mac === '00:00:00:00:00:00');
    expect(mine.map((e) => e.ip).sort()).toEqual(['10.66.0.2', '10.66.0.3']);
    for (const e of mine) expect(e).toMatchObject({ family: C.AF_BRIDGE, state: C.NUD_PERMANENT, ifindex: h.link('vxf').index });
  });

  it('adds a unicast entry with a destination and replaces its destination', () => {
    h.fdbAdd({ dev: 'vxf', mac: '02:00:00:00:66:04', dst: '10.66.0.4' });
    expect(fdb().filter((e) => e.mac === '02:00:00:00:66:04').map((e) => e.dst)).toEqual(['10.66.0.4']);
    h.fdbAdd({ dev: 'vxf', mac: '02:00:00:00:66:04', dst: '10.66.0.5' });
    expect(fdb().filter((e) => e.mac === '02:00:00:00:66:04').map((e) => e.dst)).toEqual(['10.66.0.5']);
    expect(h.fdbList('vxf').filter((e) => e.mac === '02:00:00:00:66:04').map((e) => e.ip)).toEqual(['10.66.0.5']);
  });

  it('adds an entry with its own VNI', () => {
    h.fdbAdd({ dev: 'vxf', mac: '02:00:00:00:66:06', dst: '10.66.0.6', vni: 200 });
    expect(fdb().find((e) => e.mac === '02:00:00:00:66:06')).toMatchObject({ dst: '10.66.0.6', vni: 200 });
    expect(h.fdbList('vxf').find((e) => e.mac === '02:00:00:00:66:06')).toMatchObject({ ip: '10.66.0.6', vni: 200 });
  });

  it('deletes one remote of the flooding entry and leaves the others', () => {
    h.fdbAdd({ dev: 'vxf', mac: '00:00:00:00:00:00', dst: '10.66.0.7', append: true });
    h.fdbDel({ dev: 'vxf', mac: '00:00:00:00:00:00', dst: '10.66.0.7' });
    const zero = fdb()
      .filter((e) => e.mac === '00:00:00:00:00:00')
      .map((e) => e.dst);
    expect(zero).not.toContain('10.66.0.7');
    expect(zero.length).toBeGreaterThan(0);
  });

  it('lists every FDB entry as bridge fdb show does', () => {
    const fromBridge = (bridgej(nsA, 'fdb', 'show') as any[]).map((e) => `${e.ifname} ${e.mac} ${e.dst ?? '-'}`).sort();
    const names = new Map(h.linkList().map((l) => [l.index, l.name]));
    const fromUs = h
      .fdbList()
      .map((e) => `${names.get(e.ifindex)} ${e.mac} ${e.ip ?? '-'}`)
      .sort();
    expect(fromUs).toEqual(fromBridge);
  });
});

describe('dumps and lookups', () => {
  it('lists every link as ip link show does', () => {
    const fromIp = (ipj(nsA, 'link', 'show') as any[]).map((l) => `${l.ifindex} ${l.ifname} ${l.mtu} ${l.address} ${l.flags.includes('UP')}`).sort();
    const fromUs = h
      .linkList()
      .map((l) => `${l.index} ${l.name} ${l.mtu} ${l.mac} ${l.up}`)
      .sort();
    expect(fromUs).toEqual(fromIp);
    expect(fromUs.length).toBeGreaterThan(10);
  });

  it('collects a dump that spans many datagrams', () => {
    const big = uniqueName('nlh');
    const path = addNetns(big);
    try {
      const hb = NetlinkHandle.open(path);
      try {
        for (let i = 0; i < 300; i++) hb.linkAdd({ kind: 'bridge', name: `bb${i}` });
        const names = hb.linkList().map((l) => l.name);
        expect(names.length).toBe(301);
        expect(new Set(names).size).toBe(301);
        expect(names.sort()).toEqual(ipLinkNames(big).sort());
      } finally {
        hb.close();
      }
    } finally {
      delNetns(big);
    }
  });

  it('finds a link by index exactly as by name', () => {
    const byName = h.link('lo');
    expect(h.linkByIndex(byName.index)).toEqual(byName);
    expect(byName.flags & C.IFF_LOOPBACK).toBe(C.IFF_LOOPBACK);
  });

  it('answers undefined for a name or index that does not exist', () => {
    expect(h.linkByName('no-such-link')).toBeUndefined();
    expect(h.linkByIndex(987654)).toBeUndefined();
  });
});

describe('kernel errors', () => {
  it('refuses a duplicate link with NetlinkError EEXIST carrying the errno and the ip command', () => {
    h.linkAdd({ kind: 'bridge', name: 'br-dup' });
    const e = thrown(() => h.linkAdd({ kind: 'bridge', name: 'br-dup' }));
    expect(e).toBeInstanceOf(NetlinkError);
    expect(e).toMatchObject({ errno: 17, code: 'EEXIST', op: 'ip link add br-dup type bridge' });
    expect((e as Error).message).toContain('EEXIST');
  });

  it('reports a missing link with ENODEV, for delete and for set', () => {
    const del = thrown(() => h.linkDel('no-such-link'));
    expect(del).toBeInstanceOf(NetlinkError);
    expect(del).toMatchObject({ errno: 19, code: 'ENODEV' });
    expect(thrown(() => h.linkSetUp('no-such-link'))).toMatchObject({ errno: 19, code: 'ENODEV' });
    expect(thrown(() => h.addrAdd('no-such-link', '10.0.0.1/24'))).toMatchObject({ code: 'ENODEV' });
  });

  it('carries the kernel extended-ack message for an invalid request', () => {
    veth('vea0', 'vea1');
    const e = thrown(() => h.linkSetMtu('vea0', 10));
    expect(e).toBeInstanceOf(NetlinkError);
    expect(e).toMatchObject({ errno: 22, code: 'EINVAL' });
    expect((e as NetlinkError).kernelMessage).toMatch(/mtu less than device minimum/);
    expect((e as Error).message).toContain('mtu less than device minimum');
    expect(ipLink(nsA, 'vea0').mtu).toBe(1500);
  });

  it('carries the kernel message for a link kind this kernel does not know', () => {
    const e = thrown(() => h.linkAdd({ kind: 'no-such-kind', name: 'nk0' } as unknown as LinkSpec));
    expect(e).toMatchObject({ code: 'EOPNOTSUPP' });
    expect((e as NetlinkError).kernelMessage).toMatch(/Unknown device type/);
  });

  it('leaves the handle usable after an error', () => {
    thrown(() => h.linkDel('no-such-link'));
    expect(h.link('lo').name).toBe('lo');
  });
});

describe('deleting', () => {
  it('deletes a veth pair, both ends', () => {
    veth('vd0', 'vd1');
    h.linkDel('vd0');
    expect(ipLink(nsA, 'vd0')).toBeUndefined();
    expect(ipLink(nsA, 'vd1')).toBeUndefined();
  });

  it('linkDelIfExists deletes once and then says there was nothing to delete', () => {
    h.linkAdd({ kind: 'bridge', name: 'br-del' });
    expect(h.linkDelIfExists('br-del')).toBe(true);
    expect(ipLink(nsA, 'br-del')).toBeUndefined();
    expect(h.linkDelIfExists('br-del')).toBe(false);
  });
});

describe('linkExistsInNetns', () => {
  it('sees the links of the given namespace and only those', () => {
    hB.linkAdd({ kind: 'bridge', name: 'br-only-b' });
    expect(linkExistsInNetns(pathB, 'br-only-b')).toBe(true);
    expect(linkExistsInNetns(pathA, 'br-only-b')).toBe(false);
    expect(linkExistsInNetns(pathB, 'lo')).toBe(true);
    expect(linkExistsInNetns(pathB, 'no-such-link')).toBe(false);
  });
});

describe('isolation from the host', () => {
  it('created nothing in the host namespace', () => {
    const host = JSON.parse(execFileSync('ip', ['-j', 'link', 'show'], { encoding: 'utf8' })) as Array<{ ifname: string }>;
    const hostNames = new Set(host.map((l) => l.ifname));
    const ours = h.linkList().filter((l) => l.name !== 'lo').map((l) => l.name);
    expect(ours.length).toBeGreaterThan(10);
    expect(ours.filter((n) => hostNames.has(n))).toEqual([]);
  });
});
