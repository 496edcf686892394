import { describe, expect, it } from 'vitest';
import * as C from '../../../shared/netlink/consts';
import { ndmsg, parseNeigh } from '../../../shared/netlink/neigh';
import { nla, u16be, u32 } from './wire';

describe('ndmsg', () => {
  it('lays out family, ifindex, state and flags as struct ndmsg (12 bytes)', () => {
    const b = ndmsg(C.AF_BRIDGE, 0x01020304, C.NUD_PERMANENT, C.NTF_SELF);
    expect(b.length).toBe(12);
    expect(b[0]).toBe(C.AF_BRIDGE);
    expect(b.readInt32LE(4)).toBe(0x01020304);
    expect(b.readUInt16LE(8)).toBe(C.NUD_PERMANENT);
    expect(b[10]).toBe(C.NTF_SELF);
    expect(b[11]).toBe(0);
    expect([b[1], b[2], b[3]]).toEqual([0, 0, 0]);
  });
});

function kernelNeigh(family: number, ifindex: number, state: number, flags: number, ...attrs: Buffer[]): Buffer {
  const h = Buffer.alloc(12);
  h[0] = family;
  h.writeInt32LE(ifindex, 4);
  h.writeUInt16LE(state, 8);
  h[10] = flags;
  h[11] = 1; // ndm_type RTN_UNICAST
  return Buffer.concat([h, ...attrs]);
}

describe('parseNeigh', () => {
  it('reads an ARP entry: IPv4 destination and MAC', () => {
    const n = parseNeigh(kernelNeigh(C.AF_INET, 3, C.NUD_PERMANENT, 0, nla(C.NDA_DST, [10, 1, 0, 9]), nla(C.NDA_LLADDR, [2, 0, 0, 0, 0, 9])));
    expect(n).toEqual({ family: C.AF_INET, ifindex: 3, state: C.NUD_PERMANENT, flags: 0, ip: '10.1.0.9', mac: '02:00:00:00:00:09', vni: undefined, masterIndex: undefined });
  });

  it('reads an NDP entry with an IPv6 destination', () => {
    const ip = Buffer.alloc(16);
    ip.writeUInt16BE(0xfd00, 0);
    ip[15] = 9;
    const n = parseNeigh(kernelNeigh(C.AF_INET6, 3, C.NUD_REACHABLE, 0, nla(C.NDA_DST, ip), nla(C.NDA_LLADDR, [2, 0, 0, 0, 0, 9])));
    expect(n.ip).toBe('fd00::9');
    expect(n.state).toBe(C.NUD_REACHABLE);
  });

  it('reads a VXLAN FDB entry: MAC, remote VTEP, VNI, self flag', () => {
    const n = parseNeigh(
      kernelNeigh(C.AF_BRIDGE, 8, C.NUD_PERMANENT, C.NTF_SELF, nla(C.NDA_LLADDR, [0, 0, 0, 0, 0, 0]), nla(C.NDA_DST, [192, 0, 2, 2]), nla(C.NDA_PORT, u16be(4789)), nla(C.NDA_VNI, u32(42))),
    );
    expect(n).toMatchObject({ family: C.AF_BRIDGE, ifindex: 8, flags: C.NTF_SELF, mac: '00:00:00:00:00:00', ip: '192.0.2.2', vni: 42 });
  });

  it('reads a bridge port FDB entry with its master and no IP', () => {
    const n = parseNeigh(kernelNeigh(C.AF_BRIDGE, 5, C.NUD_NOARP, C.NTF_MASTER, nla(C.NDA_LLADDR, [2, 0x42, 0, 0, 0, 1]), nla(C.NDA_MASTER, u32(4))));
    expect(n).toMatchObject({ mac: '02:42:00:00:00:01', masterIndex: 4, ip: undefined, vni: undefined });
  });

  it('leaves the MAC undefined for an incomplete entry without a link-layer address', () => {
    const n = parseNeigh(kernelNeigh(C.AF_INET, 3, C.NUD_INCOMPLETE, 0, nla(C.NDA_DST, [10, 1, 0, 7])));
    expect(n.mac).toBeUndefined();
    expect(n.ip).toBe('10.1.0.7');
  });
});
