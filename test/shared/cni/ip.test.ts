import { describe, expect, it } from 'vitest';
import { ipFamilyOfCidr, isCidr, isIP, isIPv4, isIPv6 } from '../../../shared/cni/ip';

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
