import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  bits,
  cidrContains,
  formatCIDR,
  formatIP,
  fromBytes,
  ipFamilyOfCidr,
  isCidr,
  isIP,
  isIPv4,
  isIPv6,
  lastAddress,
  parseAddress,
  parseCIDR,
  parseIP,
  parsePrefixed,
  subnetContains,
  subnetOf,
  toBytes,
  type Family,
  type IP,
} from '../../shared/ip';
import { formatIp, parseIp } from '../../shared/netlink/ipaddr';


describe('addresses as IPAM reads them (host-local compatible)', () => {
  it('parses dotted quads into 32-bit values and prints them back', () => {
    expect(parseIP('10.1.0.5')).toEqual({ family: 4, value: 0x0a010005n });
    expect(formatIP(parseIP('255.255.255.255')!)).toBe('255.255.255.255');
    expect(formatIP(parseIP('0.0.0.0')!)).toBe('0.0.0.0');
  });

  it.each([
    ['::', '::'],
    ['::1', '::1'],
    ['FD00:0:0:0:0:0:0:5', 'fd00::5'],
    ['1:0:0:1:0:0:0:1', '1:0:0:1::1'],
    ['2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1'],
    ['1:2:3:4:5:6:7:8', '1:2:3:4:5:6:7:8'],
    ['1:0:2:3:4:5:6:7', '1:0:2:3:4:5:6:7'],
    ['fe80::10.0.0.1', 'fe80::a00:1'],
  ])('prints IPv6 %s the way Go does (RFC 5952): %s', (input, canonical) => {
    expect(formatIP(parseIP(input)!)).toBe(canonical);
  });

  it('takes an IPv4-mapped IPv6 address as the IPv4 address, as host-local does', () => {
    expect(parseIP('::ffff:10.1.0.5')).toEqual(parseIP('10.1.0.5'));
  });

  it('rejects text that is not an address', () => {
    for (const bad of ['', '10.1.0', '10.1.0.256', '010.1.0.1', '1::2::3', 'fd00::g', '10.1.0.0/24']) {
      expect(parseIP(bad), bad).toBeUndefined();
    }
  });

  it('parses a CIDR into the written address and its masked subnet', () => {
    const c = parseCIDR('10.1.2.3/16')!;
    expect(formatIP(c.ip)).toBe('10.1.2.3');
    expect(formatIP(c.subnet.network)).toBe('10.1.0.0');
    expect(c.subnet.prefix).toBe(16);
    expect(formatIP({ family: 4, value: lastAddress(c.subnet) })).toBe('10.1.255.255');
    expect(subnetContains(c.subnet, parseIP('10.1.200.1')!)).toBe(true);
    expect(subnetContains(c.subnet, parseIP('10.2.0.1')!)).toBe(false);
    expect(subnetContains(c.subnet, parseIP('fd00::1')!)).toBe(false);
  });

  it('rejects a CIDR with a prefix longer than the family allows or no prefix', () => {
    expect(parseCIDR('10.0.0.0/33')).toBeUndefined();
    expect(parseCIDR('fd00::/129')).toBeUndefined();
    expect(parseCIDR('10.0.0.0')).toBeUndefined();
    expect(parseCIDR('10.0.0.0/x')).toBeUndefined();
    expect(parseCIDR('fd00::/64')!.subnet.prefix).toBe(64);
  });
});


describe('IP text validation', () => {
  it('accepts dotted IPv4 and rejects what Go rejects', () => {
    for (const ok of ['0.0.0.0', '10.1.0.5', '255.255.255.255']) expect(isIPv4(ok), ok).toBe(true);
    for (const bad of ['256.0.0.1', '10.1.0', '10.1.0.5.6', '010.1.0.5', '1.2.3.-4', '', 'a.b.c.d', '1.2.3.4 ']) {
      expect(isIPv4(bad), bad).toBe(false);
    }
  });

  it('accepts IPv6 with one "::" and an optional IPv4 tail', () => {
    for (const ok of ['::', '::1', 'fd00::5', '2001:db8:0:0:0:0:0:1', 'fe80::1:2:3:4:5:6', '::ffff:10.1.2.3', '64:ff9b::192.0.2.1', 'FD00::A']) {
      expect(isIPv6(ok), ok).toBe(true);
    }
    for (const bad of [':::', '1::2::3', '2001:db8:0:0:0:0:0:1:2', '1:2:3:4:5:6:7', '12345::', 'fe80::1%eth0', 'g::1', '1::2:', ':1::', '1:2:3:4:5:6:7::8', '10.1.2.3']) {
      expect(isIPv6(bad), bad).toBe(false);
    }
    expect(isIP('10.0.0.1')).toBe(true);
    expect(isIP('fd00::1')).toBe(true);
    expect(isIP('host.example')).toBe(false);
  });

  it('accepts CIDR only with a prefix that fits the family', () => {
    for (const ok of ['10.1.0.5/16', '0.0.0.0/0', '10.0.0.0/32', 'fd00::5/64', '::/0', '::1/128']) expect(isCidr(ok), ok).toBe(true);
    for (const bad of ['10.1.0.5', '10.1.0.5/33', 'fd00::/129', '10.0.0.0/', '10.0.0.0/-1', '/24', 'fd00::/6x']) {
      expect(isCidr(bad), bad).toBe(false);
    }
  });

  it('gives the 0.x "version" of an address, counting IPv4-mapped IPv6 as 4 like Go', () => {
    expect(ipFamilyOfCidr('10.1.0.5/16')).toBe('4');
    expect(ipFamilyOfCidr('fd00::5/64')).toBe('6');
    expect(ipFamilyOfCidr('::ffff:10.1.2.3/120')).toBe('4');
    expect(ipFamilyOfCidr('::ffff:a01:203/120')).toBe('4');
    expect(ipFamilyOfCidr('64:ff9b::10.1.2.3/96')).toBe('6');
  });
});

// ---- properties (fast-check) --------------------------------------------------------------

const u32 = fc.bigInt({ min: 0n, max: (1n << 32n) - 1n });
const u128 = fc.oneof(
  fc.bigInt({ min: 0n, max: (1n << 128n) - 1n }),
  // values with zero runs, where compression has choices to make
  fc.array(fc.oneof(fc.constant(0), fc.constant(0), fc.integer({ min: 0, max: 0xffff })), { minLength: 8, maxLength: 8 }).map((g) => g.reduce((v, x) => (v << 16n) | BigInt(x), 0n)),
);
const v4: fc.Arbitrary<IP> = u32.map((value) => ({ family: 4 as Family, value }));
const v6: fc.Arbitrary<IP> = u128.map((value) => ({ family: 6 as Family, value }));
const anyIp = fc.oneof(v4, v6);
const withPrefix = anyIp.chain((ip) => fc.tuple(fc.constant(ip), fc.integer({ min: 0, max: bits(ip.family) })));
const isMapped = (ip: IP): boolean => ip.family === 6 && ip.value >> 32n === 0xffffn;

/** Another valid spelling of the same IPv6 value: upper case, leading zeros, no compression, or a shorter run compressed. */
function respell(value: bigint, style: number): string {
  const g: number[] = [];
  for (let i = 7; i >= 0; i--) g.push(Number((value >> BigInt(i * 16)) & 0xffffn));
  if (style === 0) return g.map((x) => x.toString(16).toUpperCase()).join(':');
  if (style === 1) return g.map((x) => x.toString(16).padStart(4, '0')).join(':');
  // compress the first zero group (a run of one is allowed on input, never printed)
  const z = g.indexOf(0);
  if (z < 0) return g.map((x) => x.toString(16)).join(':');
  return `${g.slice(0, z).map((x) => x.toString(16)).join(':')}::${g.slice(z + 1).map((x) => x.toString(16)).join(':')}`;
}

describe('the one IP module: properties', () => {
  it('parses what it prints back to the same address, v4 and v6', () => {
    fc.assert(
      fc.property(anyIp, (ip) => {
        const text = formatIP(ip);
        expect(parseAddress(text)).toEqual(ip);
        expect(isIP(text)).toBe(true);
        expect(isIPv4(text)).toBe(ip.family === 4);
        expect(isIPv6(text)).toBe(ip.family === 6);
      }),
      { numRuns: 2000 },
    );
  });

  it('prints IPv6 as the WHATWG URL serializer does (RFC 5952 compression), except mapped addresses keep their dotted tail', () => {
    fc.assert(
      fc.property(v6, (ip) => {
        const text = formatIP(ip);
        if (isMapped(ip)) expect(text).toMatch(/^::ffff:\d+\.\d+\.\d+\.\d+$/);
        else expect(text).toBe(new URL(`http://[${text}]/`).hostname.slice(1, -1));
        expect(text).toBe(text.toLowerCase());
      }),
      { numRuns: 2000 },
    );
  });

  it('reads every other spelling of an IPv6 address as the same value and prints it canonically', () => {
    fc.assert(
      fc.property(u128, fc.integer({ min: 0, max: 2 }), (value, style) => {
        const ip = parseAddress(respell(value, style));
        expect(ip).toEqual({ family: 6, value });
        expect(formatIP(ip!)).toBe(formatIP({ family: 6, value }));
      }),
      { numRuns: 2000 },
    );
  });

  it('rejects a dotted quad with a leading zero and an octet over 255, as Go does', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: 255 }), { minLength: 4, maxLength: 4 }), fc.integer({ min: 0, max: 3 }), fc.integer({ min: 256, max: 999 }), (octets, i, big) => {
        const padded = octets.map((o, j) => (j === i ? `0${o}` : String(o))).join('.');
        const over = octets.map((o, j) => (j === i ? String(big) : String(o))).join('.');
        expect(parseAddress(padded)).toBeUndefined();
        expect(parseAddress(over)).toBeUndefined();
        expect(parseAddress(octets.join('.'))).toEqual({ family: 4, value: BigInt(octets.reduce((v, o) => v * 256 + o, 0)) });
      }),
    );
  });

  it('takes ::ffff:a.b.c.d as a.b.c.d only where host-local does (parseIP), never in parseAddress', () => {
    fc.assert(
      fc.property(v4, (ip) => {
        const mapped = `::ffff:${formatIP(ip)}`;
        expect(parseIP(mapped)).toEqual(ip);
        expect(parseAddress(mapped)).toEqual({ family: 6, value: 0xffff00000000n | ip.value });
        expect(ipFamilyOfCidr(`${mapped}/120`)).toBe('4');
      }),
    );
  });

  it('carries an address to network-order bytes and back, and the netlink codec agrees with the module', () => {
    fc.assert(
      fc.property(anyIp, (ip) => {
        const b = toBytes(ip);
        expect(b.length).toBe(bits(ip.family) / 8);
        expect(fromBytes(ip.family, b)).toEqual(ip);
        const text = formatIP(ip);
        expect(parseIp(text).bytes).toEqual(b);
        expect(formatIp(parseIp(text).family, b)).toBe(text);
      }),
      { numRuns: 2000 },
    );
  });

  it('puts an address inside its own subnet, between the network and the last address, and nothing past either end', () => {
    fc.assert(
      fc.property(withPrefix, ([ip, prefix]) => {
        const s = subnetOf(ip, prefix);
        const last = lastAddress(s);
        const max = (1n << BigInt(bits(ip.family))) - 1n;
        expect(subnetContains(s, ip)).toBe(true);
        expect(s.network.value <= ip.value && ip.value <= last).toBe(true);
        expect(last - s.network.value + 1n).toBe(1n << BigInt(bits(ip.family) - prefix));
        expect(subnetContains(s, { family: ip.family, value: s.network.value })).toBe(true);
        expect(subnetContains(s, { family: ip.family, value: last })).toBe(true);
        if (s.network.value > 0n) expect(subnetContains(s, { family: ip.family, value: s.network.value - 1n })).toBe(false);
        if (last < max) expect(subnetContains(s, { family: ip.family, value: last + 1n })).toBe(false);
        expect(subnetContains(s, { family: ip.family === 4 ? 6 : 4, value: ip.value })).toBe(false);
      }),
      { numRuns: 2000 },
    );
  });

  it('parses "addr/prefix" into the address as written and its masked subnet, which prints and parses back the same', () => {
    fc.assert(
      fc.property(withPrefix, ([ip, prefix]) => {
        fc.pre(!isMapped(ip)); // parseCIDR reads those as IPv4, checked above
        const text = `${formatIP(ip)}/${prefix}`;
        expect(isCidr(text)).toBe(true);
        expect(parsePrefixed(text)).toEqual({ ip, prefix });
        const c = parseCIDR(text)!;
        expect(c.ip).toEqual(ip);
        expect(c.subnet).toEqual(subnetOf(ip, prefix));
        expect(parseCIDR(formatCIDR(c.subnet))!.subnet).toEqual(c.subnet);
        expect(cidrContains(text, formatIP(ip))).toBe(true);
        expect(isCidr(`${formatIP(ip)}/${bits(ip.family) + 1 + prefix}`)).toBe(false);
      }),
      { numRuns: 2000 },
    );
  });

  it('nests subnets: a longer prefix of an address lies inside every shorter one', () => {
    fc.assert(
      fc.property(withPrefix, fc.nat(128), ([ip, p1], d) => {
        const p2 = Math.min(bits(ip.family), p1 + d);
        const outer = subnetOf(ip, p1);
        const inner = subnetOf(ip, p2);
        expect(subnetContains(outer, inner.network)).toBe(true);
        expect(subnetContains(outer, { family: ip.family, value: lastAddress(inner) })).toBe(true);
        expect(lastAddress(inner) <= lastAddress(outer)).toBe(true);
      }),
      { numRuns: 2000 },
    );
  });
});
