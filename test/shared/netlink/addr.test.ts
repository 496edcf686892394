import { describe, expect, it } from 'vitest';
import * as C from '../../../shared/netlink/consts';
import { encodeAttrs } from '../../../shared/netlink/codec';
import { addrAttrs, addrFlags, ifaddrmsg, parseAddr } from '../../../shared/netlink/addr';
import { parseCidr } from '../../../shared/netlink/ipaddr';
import { attrsOf, nla, one, str, types, u32 } from './wire';

function attrs(cidr: string, opts = {}): Array<[number, Buffer]> {
  return attrsOf(encodeAttrs(addrAttrs(parseCidr(cidr), opts)));
}

describe('ifaddrmsg', () => {
  it('lays out family, prefix length, flags, scope and index as struct ifaddrmsg (8 bytes)', () => {
    const b = ifaddrmsg(C.AF_INET6, 64, 7, C.RT_SCOPE_LINK, C.IFA_F_NODAD);
    expect([...b]).toEqual([C.AF_INET6, 64, C.IFA_F_NODAD, C.RT_SCOPE_LINK, 7, 0, 0, 0]);
  });

  it('keeps only the low byte of the flags, the rest travels in IFA_FLAGS', () => {
    expect(ifaddrmsg(C.AF_INET, 24, 1, 0, C.IFA_F_NOPREFIXROUTE | C.IFA_F_NODAD)[2]).toBe(C.IFA_F_NODAD);
  });

  it('defaults to universe scope', () => {
    expect(ifaddrmsg(C.AF_INET, 24, 1)[3]).toBe(C.RT_SCOPE_UNIVERSE);
  });
});

describe('addrAttrs', () => {
  it('sends the address as both IFA_LOCAL and IFA_ADDRESS, host bits kept', () => {
    const a = attrs('10.1.2.3/24');
    expect([...one(a, C.IFA_LOCAL)]).toEqual([10, 1, 2, 3]);
    expect([...one(a, C.IFA_ADDRESS)]).toEqual([10, 1, 2, 3]);
  });

  it('computes the IPv4 broadcast as "brd +" does, also for prefixes not on a byte boundary', () => {
    expect([...one(attrs('10.1.2.3/24'), C.IFA_BROADCAST)]).toEqual([10, 1, 2, 255]);
    expect([...one(attrs('10.1.2.3/20'), C.IFA_BROADCAST)]).toEqual([10, 1, 15, 255]);
    expect([...one(attrs('192.168.7.130/25'), C.IFA_BROADCAST)]).toEqual([192, 168, 7, 255]);
    expect([...one(attrs('10.1.2.3/8'), C.IFA_BROADCAST)]).toEqual([10, 255, 255, 255]);
    expect([...one(attrs('10.1.2.3/30'), C.IFA_BROADCAST)]).toEqual([10, 1, 2, 3]);
  });

  it('sends no broadcast for /31 and /32 point-to-point style addresses or for IPv6', () => {
    expect(types(attrs('10.1.2.3/31'))).not.toContain(C.IFA_BROADCAST);
    expect(types(attrs('10.1.2.3/32'))).not.toContain(C.IFA_BROADCAST);
    expect(types(attrs('fd00::1/64'))).not.toContain(C.IFA_BROADCAST);
  });

  it('does not modify the parsed CIDR while computing the broadcast', () => {
    const c = parseCidr('10.1.2.3/24');
    addrAttrs(c);
    expect([...c.bytes]).toEqual([10, 1, 2, 3]);
  });

  it('sends IFA_FLAGS with nodad and noprefixroute only when asked', () => {
    expect(types(attrs('fd00::1/64'))).not.toContain(C.IFA_FLAGS);
    expect(one(attrs('fd00::1/64', { noDad: true }), C.IFA_FLAGS)).toEqual(u32(C.IFA_F_NODAD));
    expect(one(attrs('10.0.0.1/24', { noPrefixRoute: true }), C.IFA_FLAGS)).toEqual(u32(C.IFA_F_NOPREFIXROUTE));
    expect(addrFlags({ noDad: true, noPrefixRoute: true })).toBe(C.IFA_F_NODAD | C.IFA_F_NOPREFIXROUTE);
    expect(addrFlags({})).toBe(0);
  });
});

function kernelAddr(family: number, prefixLen: number, flags: number, scope: number, index: number, ...a: Buffer[]): Buffer {
  const h = Buffer.alloc(8);
  h[0] = family;
  h[1] = prefixLen;
  h[2] = flags;
  h[3] = scope;
  h.writeUInt32LE(index, 4);
  return Buffer.concat([h, ...a]);
}

describe('parseAddr', () => {
  it('reads an IPv4 address with its label and the 32-bit flags from IFA_FLAGS', () => {
    const a = parseAddr(
      kernelAddr(C.AF_INET, 24, C.IFA_F_PERMANENT, C.RT_SCOPE_UNIVERSE, 3, nla(C.IFA_ADDRESS, [10, 1, 0, 2]), nla(C.IFA_LOCAL, [10, 1, 0, 2]), nla(C.IFA_LABEL, str('eth0')), nla(C.IFA_FLAGS, u32(C.IFA_F_PERMANENT | C.IFA_F_NOPREFIXROUTE))),
    );
    expect(a).toEqual({ index: 3, family: C.AF_INET, address: '10.1.0.2', prefixLen: 24, cidr: '10.1.0.2/24', scope: 0, flags: C.IFA_F_PERMANENT | C.IFA_F_NOPREFIXROUTE, label: 'eth0' });
  });

  it('prefers IFA_LOCAL over IFA_ADDRESS, which is the peer on point-to-point links', () => {
    const a = parseAddr(kernelAddr(C.AF_INET, 32, 0, 0, 4, nla(C.IFA_ADDRESS, [10, 0, 0, 2]), nla(C.IFA_LOCAL, [10, 0, 0, 1])));
    expect(a.address).toBe('10.0.0.1');
  });

  it('reads an IPv6 address that only has IFA_ADDRESS and falls back to the header flags', () => {
    const ip = Buffer.alloc(16);
    ip.writeUInt16BE(0xfe80, 0);
    ip.writeUInt16BE(0x1, 14);
    const a = parseAddr(kernelAddr(C.AF_INET6, 64, C.IFA_F_NODAD, C.RT_SCOPE_LINK, 9, nla(C.IFA_ADDRESS, ip)));
    expect(a).toMatchObject({ family: C.AF_INET6, address: 'fe80::1', cidr: 'fe80::1/64', scope: C.RT_SCOPE_LINK, flags: C.IFA_F_NODAD, index: 9, label: undefined });
  });

  it('reads back what addrAttrs encoded', () => {
    const c = parseCidr('fd00:1::5/64');
    const a = parseAddr(Buffer.concat([ifaddrmsg(c.family, c.prefixLen, 11, C.RT_SCOPE_UNIVERSE, C.IFA_F_NODAD), encodeAttrs(addrAttrs(c, { noDad: true }))]));
    expect(a).toMatchObject({ index: 11, cidr: 'fd00:1::5/64', flags: C.IFA_F_NODAD });
  });
});
