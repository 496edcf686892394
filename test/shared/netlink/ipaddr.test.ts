import { describe, expect, it } from 'vitest';
import {
  AddressParseError,
  canonicalIp,
  formatCidr,
  formatIp,
  formatMac,
  isIp,
  networkOf,
  parseCidr,
  parseIp,
  parseMac,
} from '../../../shared/netlink/ipaddr';
import { AF_INET, AF_INET6 } from '../../../shared/netlink/consts';

const v6 = (words: number[]): Buffer => {
  const b = Buffer.alloc(16);
  words.forEach((w, i) => b.writeUInt16BE(w, i * 2));
  return b;
};

describe('parseIp', () => {
  it('parses dotted-quad IPv4 into four network-order bytes', () => {
    expect(parseIp('192.0.2.1')).toEqual({ family: AF_INET, bytes: Buffer.from([192, 0, 2, 1]) });
    expect(parseIp('0.0.0.0').bytes).toEqual(Buffer.alloc(4));
    expect(parseIp('255.255.255.255').bytes).toEqual(Buffer.alloc(4, 255));
  });

  it('parses full, compressed and mixed-case IPv6', () => {
    const want = v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1]);
    for (const s of ['2001:db8::1', '2001:0db8:0000:0000:0000:0000:0000:0001', '2001:DB8::0:1', '2001:db8:0:0:0:0:0:1']) {
      expect(parseIp(s)).toEqual({ family: AF_INET6, bytes: want });
    }
  });

  it('parses :: and addresses compressed at either end', () => {
    expect(parseIp('::').bytes).toEqual(Buffer.alloc(16));
    expect(parseIp('::1').bytes).toEqual(v6([0, 0, 0, 0, 0, 0, 0, 1]));
    expect(parseIp('fe80::').bytes).toEqual(v6([0xfe80, 0, 0, 0, 0, 0, 0, 0]));
    expect(parseIp('1:2:3:4:5:6:7::').bytes).toEqual(v6([1, 2, 3, 4, 5, 6, 7, 0]));
    expect(parseIp('::2:3:4:5:6:7:8').bytes).toEqual(v6([0, 2, 3, 4, 5, 6, 7, 8]));
  });

  it('parses IPv6 with an embedded dotted-quad tail', () => {
    expect(parseIp('::ffff:192.0.2.1').bytes).toEqual(v6([0, 0, 0, 0, 0, 0xffff, 0xc000, 0x0201]));
    expect(parseIp('64:ff9b::10.0.0.1').bytes).toEqual(v6([0x64, 0xff9b, 0, 0, 0, 0, 0x0a00, 0x0001]));
    expect(parseIp('1:2:3:4:5:6:1.2.3.4').bytes).toEqual(v6([1, 2, 3, 4, 5, 6, 0x0102, 0x0304]));
  });

  it('rejects malformed addresses with AddressParseError', () => {
    const bad = [
      '',
      '1.2.3',
      '1.2.3.4.5',
      '256.1.1.1',
      '01.2.3.4',
      '1.2.3.-4',
      ' 1.2.3.4',
      '1.2.3.4 ',
      'a.b.c.d',
      ':',
      ':::',
      '1:::2',
      '1::2::3',
      ':1::2',
      '1::2:',
      '1:2:3:4:5:6:7',
      '1:2:3:4:5:6:7:8:9',
      '1:2:3:4:5:6:7:8::',
      '12345::',
      'g::1',
      'fe80::1%eth0',
      '::ffff:1.2.3',
      '::ffff:256.0.0.1',
      '1:2:3:4:5:6:7:1.2.3.4',
      '1.2.3.4::',
      'localhost',
    ];
    for (const s of bad) {
      expect(() => parseIp(s), s).toThrow(AddressParseError);
      expect(isIp(s), s).toBe(false);
    }
  });

  it('isIp says yes to both families', () => {
    expect(isIp('10.0.0.1')).toBe(true);
    expect(isIp('fd00::1')).toBe(true);
  });
});

describe('formatIp (RFC 5952 canonical text)', () => {
  const fmt = (words: number[]): string => formatIp(AF_INET6, v6(words));

  it('formats IPv4 as a dotted quad', () => {
    expect(formatIp(AF_INET, Buffer.from([10, 0, 0, 254]))).toBe('10.0.0.254');
  });

  it('drops leading zeros in each group (4.1) and writes lowercase hex (4.3)', () => {
    expect(fmt([0x2001, 0x0db8, 0xabcd, 0x0012, 0, 0, 0xa, 0x0001])).toBe('2001:db8:abcd:12::a:1');
  });

  it('compresses the longest run of zero groups (4.2.1)', () => {
    expect(fmt([0x2001, 0, 0, 1, 0, 0, 0, 1])).toBe('2001:0:0:1::1');
  });

  it('never uses :: for a single zero group (4.2.2)', () => {
    expect(fmt([0x2001, 0xdb8, 0, 1, 1, 1, 1, 1])).toBe('2001:db8:0:1:1:1:1:1');
  });

  it('compresses the first of two equally long runs (4.2.3)', () => {
    expect(fmt([0x2001, 0xdb8, 0, 0, 1, 0, 0, 1])).toBe('2001:db8::1:0:0:1');
  });

  it('handles runs at the start, at the end and the all-zero address', () => {
    expect(fmt([0, 0, 0, 0, 0, 0, 0, 0])).toBe('::');
    expect(fmt([0, 0, 0, 0, 0, 0, 0, 1])).toBe('::1');
    expect(fmt([0xfe80, 0, 0, 0, 0, 0, 0, 0])).toBe('fe80::');
    expect(fmt([0xfe80, 0, 0, 0, 0x1c, 0x42ff, 0xfe00, 0x0101])).toBe('fe80::1c:42ff:fe00:101');
    expect(fmt([1, 2, 3, 4, 5, 6, 7, 8])).toBe('1:2:3:4:5:6:7:8');
  });

  it('writes IPv4-mapped addresses in mixed notation, as RFC 5952 section 5 recommends and ip(8) prints them', () => {
    expect(fmt([0, 0, 0, 0, 0, 0xffff, 0xc000, 0x0201])).toBe('::ffff:192.0.2.1');
  });

  it('turns every spelling of an address into the same canonical text', () => {
    expect(canonicalIp('2001:0DB8:0:0:0:0:0:0001')).toBe('2001:db8::1');
    expect(canonicalIp('::0:1')).toBe('::1');
    expect(canonicalIp('10.1.2.3')).toBe('10.1.2.3');
  });

  it('round-trips parse and format for canonical addresses of both families', () => {
    for (const s of ['10.244.0.1', '0.0.0.0', '2001:db8::1', '::', 'fd00:1:2:3:4:5:6:7', 'fe80::1', '2001:db8:0:1::']) {
      const ip = parseIp(s);
      expect(formatIp(ip.family, ip.bytes)).toBe(s);
    }
  });
});

describe('parseCidr, networkOf and formatCidr', () => {
  it('keeps the host bits of an interface address', () => {
    const c = parseCidr('10.1.2.3/24');
    expect(c).toEqual({ family: AF_INET, bytes: Buffer.from([10, 1, 2, 3]), prefixLen: 24 });
    expect(formatCidr(c)).toBe('10.1.2.3/24');
  });

  it('clears the host bits for the network, also inside a byte', () => {
    expect(formatCidr(networkOf(parseCidr('10.1.2.3/24')))).toBe('10.1.2.0/24');
    expect(formatCidr(networkOf(parseCidr('10.1.2.255/25')))).toBe('10.1.2.128/25');
    expect(formatCidr(networkOf(parseCidr('172.31.255.255/12')))).toBe('172.16.0.0/12');
    expect(formatCidr(networkOf(parseCidr('1.2.3.4/0')))).toBe('0.0.0.0/0');
    expect(formatCidr(networkOf(parseCidr('1.2.3.4/32')))).toBe('1.2.3.4/32');
    expect(formatCidr(networkOf(parseCidr('2001:db8:1:2:3:4:5:6/64')))).toBe('2001:db8:1:2::/64');
    expect(formatCidr(networkOf(parseCidr('2001:db8:ffff::1/35')))).toBe('2001:db8:e000::/35');
  });

  it('does not change the CIDR it was given', () => {
    const c = parseCidr('10.1.2.3/8');
    networkOf(c);
    expect(formatCidr(c)).toBe('10.1.2.3/8');
  });

  it('accepts the full prefix range of each family', () => {
    expect(parseCidr('10.0.0.1/32').prefixLen).toBe(32);
    expect(parseCidr('::/0').prefixLen).toBe(0);
    expect(parseCidr('fd00::1/128').prefixLen).toBe(128);
  });

  it('rejects a missing or out-of-range prefix and a bad address with AddressParseError', () => {
    for (const s of ['10.0.0.1', '10.0.0.1/', '10.0.0.1/33', 'fd00::1/129', '10.0.0.1/-1', '10.0.0.1/2a', '10.0.0.1/24/1', '10.0.0/24', '/24', 'fd00::g/64']) {
      expect(() => parseCidr(s), s).toThrow(AddressParseError);
    }
  });
});

describe('MAC addresses', () => {
  it('parses colon and dash separated MACs in either case', () => {
    const want = Buffer.from([0x02, 0x42, 0xac, 0x11, 0x00, 0x02]);
    expect(parseMac('02:42:ac:11:00:02')).toEqual(want);
    expect(parseMac('02-42-AC-11-00-02')).toEqual(want);
  });

  it('formats lowercase with two digits per byte', () => {
    expect(formatMac(Buffer.from([0x2, 0x42, 0xac, 0x11, 0, 0xff]))).toBe('02:42:ac:11:00:ff');
  });

  it('rejects MACs of the wrong length or with bad digits with AddressParseError', () => {
    for (const s of ['', '02:42:ac:11:00', '02:42:ac:11:00:02:03', '2:42:ac:11:00:02', '02:42:ac:11:00:0g', '0242.ac11.0002']) {
      expect(() => parseMac(s), s).toThrow(AddressParseError);
    }
  });
});
