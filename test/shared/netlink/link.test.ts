import { describe, expect, it } from 'vitest';
import * as C from '../../../shared/netlink/consts';
import { encodeAttrs } from '../../../shared/netlink/codec';
import { LinkSpec, MacvlanMode, ifinfomsg, linkAddAttrs, parseLink } from '../../../shared/netlink/link';
import { attrsOf, i32, nla, nlaNested, one, str, types, u16, u16be, u32 } from './wire';

/** The encoded RTM_NEWLINK attributes of a spec, read back with the independent reader. */
function encoded(spec: LinkSpec): Array<[number, Buffer]> {
  return attrsOf(encodeAttrs(linkAddAttrs(spec)));
}

function linkinfo(spec: LinkSpec): { kind: string; data?: Array<[number, Buffer]> } {
  const info = attrsOf(one(encoded(spec), C.IFLA_LINKINFO));
  const kind = one(info, C.IFLA_INFO_KIND);
  const data = info.find(([t]) => t === C.IFLA_INFO_DATA);
  return { kind: kind.toString(), data: data ? attrsOf(data[1]) : undefined };
}

describe('ifinfomsg', () => {
  it('lays out family, index, flags and change as struct ifinfomsg does (16 bytes)', () => {
    const b = ifinfomsg(7, C.IFF_UP, 0xffffffff, C.AF_BRIDGE);
    expect(b.length).toBe(16);
    expect(b[0]).toBe(C.AF_BRIDGE);
    expect(b[1]).toBe(0);
    expect(b.readUInt16LE(2)).toBe(0);
    expect(b.readInt32LE(4)).toBe(7);
    expect(b.readUInt32LE(8)).toBe(C.IFF_UP);
    expect(b.readUInt32LE(12)).toBe(0xffffffff);
  });

  it('defaults to an all-zero AF_UNSPEC header', () => {
    expect(ifinfomsg()).toEqual(Buffer.alloc(16));
  });
});

describe('linkAddAttrs', () => {
  it('puts the common attributes first: NUL-terminated name, mtu, mac, txqlen and netns fd', () => {
    const a = encoded({ kind: 'bridge', name: 'cni0', mtu: 1450, mac: '02:42:0a:00:00:01', txqlen: 500, netnsFd: 31 });
    expect(one(a, C.IFLA_IFNAME)).toEqual(str('cni0'));
    expect(one(a, C.IFLA_MTU).readUInt32LE(0)).toBe(1450);
    expect([...one(a, C.IFLA_ADDRESS)]).toEqual([0x02, 0x42, 0x0a, 0, 0, 1]);
    expect(one(a, C.IFLA_TXQLEN).readUInt32LE(0)).toBe(500);
    expect(one(a, C.IFLA_NET_NS_FD).readUInt32LE(0)).toBe(31);
    expect(types(a)[0]).toBe(C.IFLA_IFNAME);
  });

  it('leaves out the optional attributes that were not asked for', () => {
    const a = encoded({ kind: 'bridge', name: 'br0' });
    expect(types(a)).toEqual([C.IFLA_IFNAME, C.IFLA_LINKINFO]);
    expect(linkinfo({ kind: 'bridge', name: 'br0' })).toEqual({ kind: 'bridge\0', data: undefined });
  });

  it('writes the kind as a NUL-terminated string inside IFLA_LINKINFO', () => {
    const info = attrsOf(one(encoded({ kind: 'dummy', name: 'd0' }), C.IFLA_LINKINFO));
    expect(info).toEqual([[C.IFLA_INFO_KIND, str('dummy')]]);
  });

  it('encodes a veth peer as a nested ifinfomsg followed by the peer attributes, carrying its netns fd', () => {
    const { kind, data } = linkinfo({ kind: 'veth', name: 'veth0', peerName: 'eth0', peerMac: '02:00:00:00:00:02', peerNetnsFd: 42, mtu: 1400 });
    expect(kind).toBe('veth\0');
    const peer = one(data!, C.VETH_INFO_PEER);
    expect(peer.subarray(0, 16)).toEqual(Buffer.alloc(16));
    const peerAttrs = attrsOf(peer, 16);
    expect(one(peerAttrs, C.IFLA_IFNAME)).toEqual(str('eth0'));
    expect([...one(peerAttrs, C.IFLA_ADDRESS)]).toEqual([2, 0, 0, 0, 0, 2]);
    expect(one(peerAttrs, C.IFLA_NET_NS_FD).readUInt32LE(0)).toBe(42);
    // the pair shares the MTU unless the peer is given its own
    expect(one(peerAttrs, C.IFLA_MTU).readUInt32LE(0)).toBe(1400);
  });

  it('gives the veth peer its own MTU when one is set and none when neither end has one', () => {
    const own = attrsOf(one(linkinfo({ kind: 'veth', name: 'a', peerName: 'b', mtu: 1500, peerMtu: 9000 }).data!, C.VETH_INFO_PEER), 16);
    expect(one(own, C.IFLA_MTU).readUInt32LE(0)).toBe(9000);
    const none = attrsOf(one(linkinfo({ kind: 'veth', name: 'a', peerName: 'b' }).data!, C.VETH_INFO_PEER), 16);
    expect(types(none)).toEqual([C.IFLA_IFNAME]);
  });

  it('encodes bridge vlan_filtering as a u8 only when set', () => {
    expect(linkinfo({ kind: 'bridge', name: 'b', vlanFiltering: true }).data).toEqual([[C.IFLA_BR_VLAN_FILTERING, Buffer.from([1])]]);
    expect(linkinfo({ kind: 'bridge', name: 'b', vlanFiltering: false }).data).toEqual([[C.IFLA_BR_VLAN_FILTERING, Buffer.from([0])]]);
  });

  it.each<[MacvlanMode, number]>([
    ['private', 1],
    ['vepa', 2],
    ['bridge', 4],
    ['passthru', 8],
  ])('encodes macvlan mode %s as u32 %i with the parent in IFLA_LINK', (mode, value) => {
    const spec: LinkSpec = { kind: 'macvlan', name: 'mv0', parentIndex: 3, mode };
    expect(one(encoded(spec), C.IFLA_LINK).readUInt32LE(0)).toBe(3);
    expect(linkinfo(spec).data).toEqual([[C.IFLA_MACVLAN_MODE, u32(value)]]);
  });

  it.each([
    ['l2', undefined, 0, 0],
    ['l3', 'private', 1, 1],
    ['l3s', 'vepa', 2, 2],
    ['l2', 'bridge', 0, 0],
  ] as const)('encodes ipvlan mode %s flag %s as u16 mode %i and u16 flags %i with the parent in IFLA_LINK', (mode, flag, modeValue, flagValue) => {
    const spec: LinkSpec = { kind: 'ipvlan', name: 'ipv0', parentIndex: 9, mode, ...(flag ? { flag } : {}) };
    expect(one(encoded(spec), C.IFLA_LINK).readUInt32LE(0)).toBe(9);
    const { kind, data } = linkinfo(spec);
    expect(kind).toBe('ipvlan\0');
    expect(data).toEqual([
      [C.IFLA_IPVLAN_MODE, u16(modeValue)],
      [C.IFLA_IPVLAN_FLAGS, u16(flagValue)],
    ]);
  });

  it('encodes an 802.1q vlan as the u16 id with the parent in IFLA_LINK', () => {
    const spec: LinkSpec = { kind: 'vlan', name: 'eth0.100', parentIndex: 2, vlanId: 100 };
    expect(one(encoded(spec), C.IFLA_LINK).readUInt32LE(0)).toBe(2);
    const { kind, data } = linkinfo(spec);
    expect(kind).toBe('vlan\0');
    expect(data).toEqual([[C.IFLA_VLAN_ID, u16(100)]]);
  });

  it('encodes vxlan id, big-endian port, learning, ttl, checksum, underlay and IPv4 local', () => {
    const { kind, data } = linkinfo({ kind: 'vxlan', name: 'vx0', vni: 0xabcdef, port: 8472, local: '192.0.2.10', learning: false, ttl: 64, udpCsum: true, parentIndex: 5 });
    expect(kind).toBe('vxlan\0');
    expect(one(data!, C.IFLA_VXLAN_ID).readUInt32LE(0)).toBe(0xabcdef);
    expect([...one(data!, C.IFLA_VXLAN_PORT)]).toEqual([0x21, 0x18]);
    expect([...one(data!, C.IFLA_VXLAN_LEARNING)]).toEqual([0]);
    expect([...one(data!, C.IFLA_VXLAN_TTL)]).toEqual([64]);
    expect([...one(data!, C.IFLA_VXLAN_UDP_CSUM)]).toEqual([1]);
    expect(one(data!, C.IFLA_VXLAN_LINK).readUInt32LE(0)).toBe(5);
    expect([...one(data!, C.IFLA_VXLAN_LOCAL)]).toEqual([192, 0, 2, 10]);
    expect(types(data!)).not.toContain(C.IFLA_VXLAN_LOCAL6);
  });

  it('uses IFLA_VXLAN_LOCAL6 for an IPv6 local and 4789 when no port is given', () => {
    const { data } = linkinfo({ kind: 'vxlan', name: 'vx0', vni: 1, local: 'fd00::1', learning: true });
    expect(one(data!, C.IFLA_VXLAN_LOCAL6)).toEqual(Buffer.from([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]));
    expect(types(data!)).not.toContain(C.IFLA_VXLAN_LOCAL);
    expect(one(data!, C.IFLA_VXLAN_PORT)).toEqual(u16be(4789));
    expect([...one(data!, C.IFLA_VXLAN_LEARNING)]).toEqual([1]);
  });

  it('rejects a bad MAC before anything reaches the kernel', () => {
    expect(() => linkAddAttrs({ kind: 'bridge', name: 'b', mac: '02:00:00:00:00' })).toThrow(/invalid MAC/);
  });
});

/** A kernel-style RTM_NEWLINK payload: ifinfomsg then attributes. */
function kernelLink(index: number, flags: number, ...attrs: Buffer[]): Buffer {
  const hdr = Buffer.alloc(16);
  hdr.writeUInt16LE(1, 2); // ARPHRD_ETHER
  hdr.writeInt32LE(index, 4);
  hdr.writeUInt32LE(flags, 8);
  return Buffer.concat([hdr, ...attrs]);
}

describe('parseLink', () => {
  it('reads index, name, flags, mtu, mac, master, operstate and promiscuity', () => {
    const l = parseLink(
      kernelLink(
        12,
        C.IFF_UP | C.IFF_PROMISC | C.IFF_LOWER_UP,
        nla(C.IFLA_IFNAME, str('veth1234')),
        nla(C.IFLA_MTU, u32(1450)),
        nla(C.IFLA_ADDRESS, [0x0a, 0x58, 0x0a, 0xf4, 0x00, 0x05]),
        nla(C.IFLA_BROADCAST, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
        nla(C.IFLA_MASTER, u32(4)),
        nla(C.IFLA_OPERSTATE, [6]),
        nla(C.IFLA_PROMISCUITY, u32(1)),
        nla(C.IFLA_LINK, u32(2)),
        nla(C.IFLA_LINK_NETNSID, i32(0)),
        nlaNested(C.IFLA_LINKINFO, nla(C.IFLA_INFO_KIND, str('veth')), nla(C.IFLA_INFO_SLAVE_KIND, str('bridge'))),
      ),
    );
    expect(l).toMatchObject({
      index: 12,
      name: 'veth1234',
      up: true,
      mtu: 1450,
      mac: '0a:58:0a:f4:00:05',
      masterIndex: 4,
      operState: 6,
      promiscuity: 1,
      parentIndex: 2,
      linkNetnsId: 0,
      kind: 'veth',
      slaveKind: 'bridge',
    });
    expect(l.flags & C.IFF_PROMISC).toBe(C.IFF_PROMISC);
  });

  it('reports a down link without kind, master or peer namespace when the kernel sends none', () => {
    const l = parseLink(kernelLink(1, C.IFF_LOOPBACK, nla(C.IFLA_IFNAME, str('lo')), nla(C.IFLA_MTU, u32(65536)), nla(C.IFLA_ADDRESS, Buffer.alloc(6))));
    expect(l.up).toBe(false);
    expect(l.kind).toBeUndefined();
    expect(l.masterIndex).toBeUndefined();
    expect(l.linkNetnsId).toBeUndefined();
    expect(l.mac).toBe('00:00:00:00:00:00');
  });

  it('leaves mac undefined for link-layer addresses that are not Ethernet', () => {
    const l = parseLink(kernelLink(5, 0, nla(C.IFLA_IFNAME, str('tunl0')), nla(C.IFLA_ADDRESS, [0, 0, 0, 0])));
    expect(l.mac).toBeUndefined();
  });

  it('keeps a negative link-netnsid as the signed number the kernel sent', () => {
    const l = parseLink(kernelLink(5, 0, nla(C.IFLA_IFNAME, str('x')), nla(C.IFLA_LINK_NETNSID, i32(-1))));
    expect(l.linkNetnsId).toBe(-1);
  });

  it.each<[MacvlanMode, number]>([
    ['private', 1],
    ['vepa', 2],
    ['bridge', 4],
    ['passthru', 8],
  ])('reads macvlan mode %s from u32 %i', (mode, value) => {
    const l = parseLink(
      kernelLink(3, 0, nla(C.IFLA_IFNAME, str('mv0')), nlaNested(C.IFLA_LINKINFO, nla(C.IFLA_INFO_KIND, str('macvlan')), nlaNested(C.IFLA_INFO_DATA, nla(C.IFLA_MACVLAN_MODE, u32(value))))),
    );
    expect(l.macvlanMode).toBe(mode);
  });

  it('reads ipvlan mode and vlan id from their u16 attributes', () => {
    const ipvlan = parseLink(
      kernelLink(3, 0, nla(C.IFLA_IFNAME, str('ipv0')), nlaNested(C.IFLA_LINKINFO, nla(C.IFLA_INFO_KIND, str('ipvlan')), nlaNested(C.IFLA_INFO_DATA, nla(C.IFLA_IPVLAN_MODE, u16(2)), nla(C.IFLA_IPVLAN_FLAGS, u16(1))))),
    );
    expect(ipvlan.ipvlanMode).toBe('l3s');
    const vlan = parseLink(
      kernelLink(4, 0, nla(C.IFLA_IFNAME, str('eth0.7')), nlaNested(C.IFLA_LINKINFO, nla(C.IFLA_INFO_KIND, str('vlan')), nlaNested(C.IFLA_INFO_DATA, nla(C.IFLA_VLAN_PROTOCOL, u16be(0x8100)), nla(C.IFLA_VLAN_ID, u16(4094))))),
    );
    expect(vlan.vlanId).toBe(4094);
  });

  it('reads vxlan vni, big-endian port, learning, underlay and local address of either family', () => {
    const v4 = parseLink(
      kernelLink(
        9,
        0,
        nla(C.IFLA_IFNAME, str('vx0')),
        nlaNested(
          C.IFLA_LINKINFO,
          nla(C.IFLA_INFO_KIND, str('vxlan')),
          nlaNested(C.IFLA_INFO_DATA, nla(C.IFLA_VXLAN_ID, u32(4096)), nla(C.IFLA_VXLAN_LOCAL, [10, 0, 0, 7]), nla(C.IFLA_VXLAN_LINK, u32(2)), nla(C.IFLA_VXLAN_LEARNING, [0]), nla(C.IFLA_VXLAN_PORT, u16be(4789))),
        ),
      ),
    );
    expect(v4.vxlan).toEqual({ vni: 4096, port: 4789, local: '10.0.0.7', learning: false, parentIndex: 2 });
    const local6 = Buffer.alloc(16);
    local6.writeUInt16BE(0xfd00, 0);
    local6[15] = 7;
    const v6 = parseLink(
      kernelLink(
        9,
        0,
        nla(C.IFLA_IFNAME, str('vx6')),
        nlaNested(C.IFLA_LINKINFO, nla(C.IFLA_INFO_KIND, str('vxlan')), nlaNested(C.IFLA_INFO_DATA, nla(C.IFLA_VXLAN_ID, u32(1)), nla(C.IFLA_VXLAN_LOCAL6, local6), nla(C.IFLA_VXLAN_LEARNING, [1]))),
      ),
    );
    expect(v6.vxlan).toEqual({ vni: 1, port: undefined, local: 'fd00::7', learning: true, parentIndex: undefined });
  });

  it('finds the attributes after a nested NLA_F_NESTED linkinfo as the kernel may flag it', () => {
    const info = Buffer.concat([nla(C.IFLA_INFO_KIND, str('bridge'))]);
    const flagged = Buffer.alloc(4 + info.length);
    flagged.writeUInt16LE(4 + info.length, 0);
    flagged.writeUInt16LE(C.IFLA_LINKINFO | C.NLA_F_NESTED, 2);
    info.copy(flagged, 4);
    const l = parseLink(kernelLink(2, 0, nla(C.IFLA_IFNAME, str('br0')), flagged, nla(C.IFLA_MTU, u32(1500))));
    expect(l.kind).toBe('bridge');
    expect(l.mtu).toBe(1500);
  });
});

describe('linkAddAttrs and parseLink together', () => {
  it.each<LinkSpec>([
    { kind: 'macvlan', name: 'mv-round', parentIndex: 4, mode: 'vepa', mtu: 1400, mac: '02:aa:bb:cc:dd:ee' },
    { kind: 'ipvlan', name: 'ipv-round', parentIndex: 4, mode: 'l3' },
    { kind: 'vlan', name: 'vl-round', parentIndex: 4, vlanId: 42 },
    { kind: 'vxlan', name: 'vx-round', vni: 77, port: 4790, local: '10.9.8.7', learning: false, parentIndex: 3 },
  ])('reads back what it encoded for a $kind link', (spec) => {
    const l = parseLink(Buffer.concat([ifinfomsg(), encodeAttrs(linkAddAttrs(spec))]));
    expect(l.name).toBe(spec.name);
    expect(l.kind).toBe(spec.kind);
    if (spec.mtu !== undefined) expect(l.mtu).toBe(spec.mtu);
    if (spec.mac !== undefined) expect(l.mac).toBe(spec.mac);
    switch (spec.kind) {
      case 'macvlan':
        expect(l.macvlanMode).toBe(spec.mode);
        expect(l.parentIndex).toBe(spec.parentIndex);
        break;
      case 'ipvlan':
        expect(l.ipvlanMode).toBe(spec.mode);
        expect(l.parentIndex).toBe(spec.parentIndex);
        break;
      case 'vlan':
        expect(l.vlanId).toBe(spec.vlanId);
        expect(l.parentIndex).toBe(spec.parentIndex);
        break;
      case 'vxlan':
        expect(l.vxlan).toEqual({ vni: spec.vni, port: spec.port, local: spec.local, learning: spec.learning, parentIndex: spec.parentIndex });
        break;
      default:
        throw new Error(`unexpected kind ${spec.kind}`);
    }
  });
});
