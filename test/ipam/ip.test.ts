import { describe, expect, it } from 'vitest';
import { formatIP, lastAddress, parseCIDR, parseIP, subnetContains } from '../../ipam/ip';

describe('ipam/ip', () => {
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
