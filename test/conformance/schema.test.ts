import { describe, expect, it } from 'vitest';
import {
  compareVersions,
  parseCidr,
  parseSingleJson,
  RESULT_VERSIONS,
  validateAddResult,
  validateErrorResult,
  validateVersionResult,
} from '../../conformance/schema';

const v1 = {
  cniVersion: '1.0.0',
  interfaces: [{ name: 'cni0', mac: '0a:58:0a:f4:00:01' }, { name: 'eth0', mac: '0A:58:0A:F4:00:05', sandbox: '/var/run/netns/x' }],
  ips: [{ address: '10.244.0.5/24', gateway: '10.244.0.1', interface: 1 }, { address: 'fd00::5/64', interface: 1 }],
  routes: [{ dst: '0.0.0.0/0' }, { dst: '::/0', gw: 'fd00::1' }],
  dns: { nameservers: ['10.96.0.10'], search: ['svc'] },
};

const v04 = { ...v1, cniVersion: '0.4.0', ips: v1.ips.map((ip, i) => ({ ...ip, version: i === 0 ? '4' : '6' })) };

describe('validateAddResult', () => {
  it('accepts a complete result in each version format', () => {
    for (const v of RESULT_VERSIONS) {
      const r = v.startsWith('0.') ? { ...v04, cniVersion: v } : { ...v1, cniVersion: v };
      expect(validateAddResult(r, v), v).toEqual([]);
    }
  });

  it('requires the requested cniVersion', () => {
    expect(validateAddResult(v1, '0.4.0')).toContain('cniVersion: must be the requested "0.4.0", got "1.0.0"');
  });

  for (const v of ['0.3.0', '0.3.1', '0.4.0']) {
    it(`requires ips[].version matching the address family in ${v}`, () => {
      const noVersion = { ...v1, cniVersion: v };
      expect(validateAddResult(noVersion, v)[0]).toMatch(/^ips\[0\]\.version: is required in/);
      const wrong = { ...v04, cniVersion: v, ips: [{ ...v04.ips[0], version: '6' }] };
      expect(validateAddResult(wrong, v)).toEqual(['ips[0].version: says "6" but the address is IPv4']);
    });
  }

  for (const v of ['1.0.0', '1.1.0']) {
    it(`rejects the 0.x ips[].version field in ${v}`, () => {
      expect(validateAddResult({ ...v04, cniVersion: v }, v)[0]).toMatch(/^ips\[0\]\.version: belongs to the 0\.x result format/);
    });
  }

  it('names each malformed field', () => {
    const bad = {
      cniVersion: '1.0.0',
      interfaces: [{ name: '' }, { name: 'eth0', mac: 'zz' }],
      ips: [{ address: '10.0.0.5', interface: 7 }, { address: '10.0.0.6/24', gateway: 'fd00::1' }],
      routes: [{ dst: '0.0.0.0/0', gw: 'fd00::1' }, { dst: 'default' }],
      dns: { nameservers: 'x' },
    };
    expect(validateAddResult(bad, '1.0.0')).toEqual([
      'interfaces[0].name: must be a non-empty string',
      'interfaces[1].mac: must be a hardware address, got "zz"',
      'ips[0].address: must be an address in CIDR notation, got "10.0.0.5"',
      'ips[0].interface: index 7 is outside interfaces (2 entries)',
      'ips[1].gateway: is not in the address family of address',
      'routes[0].gw: is not in the address family of dst',
      'routes[1].dst: must be a destination in CIDR notation, got "default"',
      'dns.nameservers: must be a list of strings',
    ]);
  });

  it('checks the 1.1.0 numeric route and interface fields only from 1.1.0 on', () => {
    const r = { ...v1, cniVersion: '1.1.0', interfaces: [{ name: 'eth0', mtu: -1 }], ips: [], routes: [{ dst: '0.0.0.0/0', table: 'main' }] };
    expect(validateAddResult(r, '1.1.0')).toEqual([
      'interfaces[0].mtu: must be a non-negative integer',
      'routes[0].table: must be a non-negative integer',
    ]);
    expect(validateAddResult({ ...r, cniVersion: '1.0.0' }, '1.0.0')).toEqual([]);
  });

  it('refuses an interface index in a delegated IPAM result', () => {
    expect(validateAddResult({ cniVersion: '1.0.0', ips: [{ address: '10.0.0.5/24', interface: 0 }] }, '1.0.0', { ipam: true })).toEqual([
      'ips[0].interface: a delegated IPAM result has no interface index',
    ]);
  });
});

describe('other answers', () => {
  it('validates VERSION answers', () => {
    expect(validateVersionResult({ cniVersion: '1.1.0', supportedVersions: ['0.4.0', '1.1.0'] })).toEqual([]);
    expect(validateVersionResult({ cniVersion: 1, supportedVersions: ['x'] })).toEqual([
      'cniVersion: must be a version string, got 1',
      'supportedVersions[0]: not a version: "x"',
    ]);
  });

  it('validates error answers: a positive integer code and a message', () => {
    expect(validateErrorResult({ cniVersion: '1.0.0', code: 7, msg: 'bad', details: 'x' })).toEqual([]);
    expect(validateErrorResult({ code: '7', msg: '' })).toEqual(['code: must be a positive integer, got "7"', 'msg: must be a non-empty string']);
  });

  it('parses stdout holding one JSON document, nothing, or complains with the first line', () => {
    expect(parseSingleJson('  {"a":1}\n')).toEqual({ a: 1 });
    expect(parseSingleJson('\n')).toBeUndefined();
    expect(() => parseSingleJson('deleting eth0\n{"a":1}')).toThrow(/starts with "deleting eth0"/);
    expect(() => parseSingleJson('{"a":1}{"b":2}')).toThrow(/not one JSON document/);
  });

  it('parses CIDRs of both families and rejects impossible prefixes', () => {
    expect(parseCidr('10.0.0.0/8')).toEqual({ ip: '10.0.0.0', prefix: 8, family: 4 });
    expect(parseCidr('fd00::/64')).toEqual({ ip: 'fd00::', prefix: 64, family: 6 });
    expect(parseCidr('10.0.0.0/33')).toBeUndefined();
    expect(parseCidr('10.0.0.0')).toBeUndefined();
  });

  it('orders versions numerically', () => {
    expect(compareVersions('0.10.0', '0.4.0')).toBeGreaterThan(0);
    expect(compareVersions('1.0.0', '1.0.0')).toBe(0);
  });
});
