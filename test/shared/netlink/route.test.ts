import { describe, expect, it } from 'vitest';
import * as C from '../../../shared/netlink/consts';
import { encodeAttrs } from '../../../shared/netlink/codec';
import { AddressParseError } from '../../../shared/netlink/ipaddr';
import { RouteSpec, parseRoute, routeMessage, rtmsg } from '../../../shared/netlink/route';
import { attrsOf, nla, nlaNested, one, types, u32 } from './wire';

interface Header {
  family: number;
  dstLen: number;
  srcLen: number;
  tos: number;
  table: number;
  protocol: number;
  scope: number;
  type: number;
  flags: number;
}

function header(b: Buffer): Header {
  expect(b.length).toBe(12);
  return {
    family: b[0],
    dstLen: b[1],
    srcLen: b[2],
    tos: b[3],
    table: b[4],
    protocol: b[5],
    scope: b[6],
    type: b[7],
    flags: b.readUInt32LE(8),
  };
}

function message(spec: RouteSpec, forDelete = false): { hdr: Header; attrs: Array<[number, Buffer]> } {
  const { header: h, attrs } = routeMessage(spec, forDelete);
  return { hdr: header(h), attrs: attrsOf(encodeAttrs(attrs)) };
}

describe('rtmsg', () => {
  it('lays out struct rtmsg field by field (12 bytes)', () => {
    expect(header(rtmsg(C.AF_INET6, 64, 100, C.RTPROT_STATIC, C.RT_SCOPE_LINK, C.RTN_UNICAST, C.RTNH_F_ONLINK))).toEqual({
      family: C.AF_INET6,
      dstLen: 64,
      srcLen: 0,
      tos: 0,
      table: 100,
      protocol: C.RTPROT_STATIC,
      scope: C.RT_SCOPE_LINK,
      type: C.RTN_UNICAST,
      flags: C.RTNH_F_ONLINK,
    });
  });

  it('writes RT_TABLE_UNSPEC in the one-byte table field for tables that do not fit', () => {
    expect(header(rtmsg(C.AF_INET, 0, 1000, 0, 0, 0)).table).toBe(C.RT_TABLE_UNSPEC);
    expect(header(rtmsg(C.AF_INET, 0, 255, 0, 0, 0)).table).toBe(255);
  });
});

describe('routeMessage for RTM_NEWROUTE', () => {
  it('builds "default via 10.1.0.1" as an IPv4 universe-scope unicast route in main with no RTA_DST', () => {
    const { hdr, attrs } = message({ dst: 'default', gw: '10.1.0.1' });
    expect(hdr).toMatchObject({ family: C.AF_INET, dstLen: 0, table: C.RT_TABLE_MAIN, protocol: C.RTPROT_BOOT, scope: C.RT_SCOPE_UNIVERSE, type: C.RTN_UNICAST, flags: 0 });
    expect(types(attrs)).not.toContain(C.RTA_DST);
    expect([...one(attrs, C.RTA_GATEWAY)]).toEqual([10, 1, 0, 1]);
    expect(one(attrs, C.RTA_TABLE).readUInt32LE(0)).toBe(C.RT_TABLE_MAIN);
  });

  it('takes the family of a default route from its IPv6 gateway', () => {
    const { hdr, attrs } = message({ dst: 'default', gw: 'fe80::1', oifIndex: 2 });
    expect(hdr.family).toBe(C.AF_INET6);
    expect(one(attrs, C.RTA_GATEWAY)).toEqual(Buffer.from([0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]));
    expect(one(attrs, C.RTA_OIF).readUInt32LE(0)).toBe(2);
  });

  it('builds a gatewayless default route for the requested family, IPv4 when none is given', () => {
    expect(message({ dst: 'default', oifIndex: 3 }).hdr.family).toBe(C.AF_INET);
    expect(message({ dst: 'default', oifIndex: 3, family: C.AF_INET6 }).hdr.family).toBe(C.AF_INET6);
  });

  it('treats 0.0.0.0/0 and ::/0 as the default route of their family', () => {
    for (const [dst, family] of [
      ['0.0.0.0/0', C.AF_INET],
      ['::/0', C.AF_INET6],
    ] as const) {
      const { hdr, attrs } = message({ dst, oifIndex: 1 });
      expect(hdr.family).toBe(family);
      expect(hdr.dstLen).toBe(0);
      expect(types(attrs)).not.toContain(C.RTA_DST);
    }
  });

  it('clears host bits of the destination as ip route does', () => {
    const { hdr, attrs } = message({ dst: '10.244.3.7/16', oifIndex: 4 });
    expect(hdr.dstLen).toBe(16);
    expect([...one(attrs, C.RTA_DST)]).toEqual([10, 244, 0, 0]);
    const v6 = message({ dst: 'fd00:1:2:3::9/64', oifIndex: 4 });
    expect(one(v6.attrs, C.RTA_DST)).toEqual(Buffer.from([0xfd, 0, 0, 1, 0, 2, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0]));
  });

  it('gives a route without gateway link scope and keeps a scope it is told', () => {
    expect(message({ dst: '10.0.0.0/8', oifIndex: 1 }).hdr.scope).toBe(C.RT_SCOPE_LINK);
    expect(message({ dst: '10.0.0.0/8', oifIndex: 1, scope: C.RT_SCOPE_UNIVERSE }).hdr.scope).toBe(C.RT_SCOPE_UNIVERSE);
    expect(message({ dst: '10.0.0.0/8', gw: '10.1.1.1', scope: C.RT_SCOPE_LINK }).hdr.scope).toBe(C.RT_SCOPE_LINK);
  });

  it('puts a table above 255 only in RTA_TABLE', () => {
    const { hdr, attrs } = message({ dst: '10.0.0.0/8', oifIndex: 1, table: 1000 });
    expect(hdr.table).toBe(C.RT_TABLE_UNSPEC);
    expect(one(attrs, C.RTA_TABLE).readUInt32LE(0)).toBe(1000);
  });

  it('carries metric, preferred source, MTU and advmss', () => {
    const { attrs } = message({ dst: '10.0.0.0/8', gw: '10.1.1.1', priority: 300, src: '10.1.1.5', mtu: 1400, advmss: 1360 });
    expect(one(attrs, C.RTA_PRIORITY).readUInt32LE(0)).toBe(300);
    expect([...one(attrs, C.RTA_PREFSRC)]).toEqual([10, 1, 1, 5]);
    const metrics = attrsOf(one(attrs, C.RTA_METRICS));
    expect(metrics).toEqual([
      [C.RTAX_MTU, u32(1400)],
      [C.RTAX_ADVMSS, u32(1360)],
    ]);
  });

  it('sends no RTA_METRICS when neither MTU nor advmss is set', () => {
    expect(types(message({ dst: '10.0.0.0/8', oifIndex: 1 }).attrs)).not.toContain(C.RTA_METRICS);
  });

  it('marks an onlink gateway with RTNH_F_ONLINK and keeps a requested route type', () => {
    expect(message({ dst: 'default', gw: '192.0.2.1', oifIndex: 2, onlink: true }).hdr.flags).toBe(C.RTNH_F_ONLINK);
    expect(message({ dst: '10.0.0.0/8', type: C.RTN_BLACKHOLE }).hdr.type).toBe(C.RTN_BLACKHOLE);
  });

  it('refuses a gateway of the other family with AddressParseError', () => {
    expect(() => routeMessage({ dst: '10.0.0.0/8', gw: 'fd00::1' }, false)).toThrow(AddressParseError);
    expect(() => routeMessage({ dst: 'fd00::/64', gw: '10.0.0.1' }, false)).toThrow(AddressParseError);
  });

  it('refuses a malformed destination or gateway with AddressParseError', () => {
    expect(() => routeMessage({ dst: '10.0.0.0', oifIndex: 1 }, false)).toThrow(AddressParseError);
    expect(() => routeMessage({ dst: 'default', gw: '10.0.0.300' }, false)).toThrow(AddressParseError);
  });
});

describe('routeMessage for RTM_DELROUTE', () => {
  it('matches any protocol, scope and type unless told, as ip route del does', () => {
    const { hdr } = message({ dst: '10.0.0.0/8', gw: '10.1.1.1' }, true);
    expect(hdr).toMatchObject({ protocol: 0, scope: C.RT_SCOPE_NOWHERE, type: 0, table: C.RT_TABLE_MAIN });
  });

  it('keeps an explicit scope and type on delete', () => {
    const { hdr } = message({ dst: '10.0.0.0/8', scope: C.RT_SCOPE_LINK, type: C.RTN_UNICAST }, true);
    expect(hdr.scope).toBe(C.RT_SCOPE_LINK);
    expect(hdr.type).toBe(C.RTN_UNICAST);
  });
});

function kernelRoute(h: Partial<Header>, ...attrs: Buffer[]): Buffer {
  const b = Buffer.alloc(12);
  b[0] = h.family ?? C.AF_INET;
  b[1] = h.dstLen ?? 0;
  b[4] = h.table ?? C.RT_TABLE_MAIN;
  b[5] = h.protocol ?? C.RTPROT_BOOT;
  b[6] = h.scope ?? C.RT_SCOPE_UNIVERSE;
  b[7] = h.type ?? C.RTN_UNICAST;
  return Buffer.concat([b, ...attrs]);
}

describe('parseRoute', () => {
  it('reads an IPv4 default route with gateway, device, metric and MTU', () => {
    const r = parseRoute(
      kernelRoute(
        {},
        nla(C.RTA_TABLE, u32(C.RT_TABLE_MAIN)),
        nla(C.RTA_PRIORITY, u32(50)),
        nla(C.RTA_GATEWAY, [10, 1, 0, 1]),
        nla(C.RTA_OIF, u32(3)),
        nlaNested(C.RTA_METRICS, nla(C.RTAX_MTU, u32(1400))),
      ),
    );
    expect(r).toEqual({
      family: C.AF_INET,
      dst: 'default',
      gw: '10.1.0.1',
      oifIndex: 3,
      src: undefined,
      table: C.RT_TABLE_MAIN,
      protocol: C.RTPROT_BOOT,
      scope: C.RT_SCOPE_UNIVERSE,
      type: C.RTN_UNICAST,
      priority: 50,
      mtu: 1400,
      advmss: undefined,
    });
  });

  it('reads a kernel-made IPv4 prefix route with its preferred source', () => {
    const r = parseRoute(
      kernelRoute({ dstLen: 24, protocol: C.RTPROT_KERNEL, scope: C.RT_SCOPE_LINK }, nla(C.RTA_TABLE, u32(254)), nla(C.RTA_DST, [10, 1, 0, 0]), nla(C.RTA_PREFSRC, [10, 1, 0, 2]), nla(C.RTA_OIF, u32(3))),
    );
    expect(r).toMatchObject({ dst: '10.1.0.0/24', src: '10.1.0.2', protocol: C.RTPROT_KERNEL, scope: C.RT_SCOPE_LINK, gw: undefined, priority: undefined });
  });

  it('formats IPv6 destinations and gateways canonically', () => {
    const dst = Buffer.alloc(16);
    dst.writeUInt16BE(0xfd01, 0);
    const gw = Buffer.alloc(16);
    gw.writeUInt16BE(0xfe80, 0);
    gw[15] = 1;
    const r = parseRoute(kernelRoute({ family: C.AF_INET6, dstLen: 64 }, nla(C.RTA_TABLE, u32(254)), nla(C.RTA_DST, dst), nla(C.RTA_GATEWAY, gw), nla(C.RTA_PRIORITY, u32(1024))));
    expect(r).toMatchObject({ family: C.AF_INET6, dst: 'fd01::/64', gw: 'fe80::1', priority: 1024 });
  });

  it('takes the table from RTA_TABLE when present, else from the header byte', () => {
    expect(parseRoute(kernelRoute({ table: C.RT_TABLE_UNSPEC }, nla(C.RTA_TABLE, u32(1000)))).table).toBe(1000);
    expect(parseRoute(kernelRoute({ table: 100 })).table).toBe(100);
  });

  it('reads advmss and MTU out of the nested metrics', () => {
    const r = parseRoute(kernelRoute({ dstLen: 8 }, nla(C.RTA_DST, [10, 0, 0, 0]), nlaNested(C.RTA_METRICS, nla(C.RTAX_ADVMSS, u32(1360)), nla(C.RTAX_MTU, u32(9000)))));
    expect(r.mtu).toBe(9000);
    expect(r.advmss).toBe(1360);
  });
});

describe('routeMessage and parseRoute together', () => {
  it.each<RouteSpec>([
    { dst: 'default', gw: '10.1.0.1', oifIndex: 2, priority: 50, mtu: 1400 },
    { dst: '10.2.0.0/16', oifIndex: 2, table: 100 },
    { dst: 'fd01::/64', gw: 'fd00::1', priority: 7, table: 1000 },
    { dst: '192.0.2.0/24', gw: '10.0.0.1', src: '10.0.0.5', advmss: 1200 },
  ])('reads back the route it encoded for $dst', (spec) => {
    const { header: h, attrs } = routeMessage(spec, false);
    const r = parseRoute(Buffer.concat([h, encodeAttrs(attrs)]));
    expect(r.dst).toBe(spec.dst);
    expect(r.gw).toBe(spec.gw);
    expect(r.oifIndex).toBe(spec.oifIndex);
    expect(r.src).toBe(spec.src);
    expect(r.table).toBe(spec.table ?? C.RT_TABLE_MAIN);
    expect(r.priority).toBe(spec.priority);
    expect(r.mtu).toBe(spec.mtu);
    expect(r.advmss).toBe(spec.advmss);
  });
});
