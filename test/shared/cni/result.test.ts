import { describe, expect, it } from 'vitest';
import { CniError } from '../../../shared/cni/errors';
import { formatResult, parsePrevResult } from '../../../shared/cni/result';
import type { Result } from '../../../shared/cni/types';
import { SUPPORTED_VERSIONS } from '../../../shared/cni/version';

/** Everything 1.1.0 can say, modelled on SPEC.md's bridge example. */
const full: Result = {
  cniVersion: '1.1.0',
  interfaces: [
    { name: 'cni0', mac: '00:11:22:33:44:55', mtu: 1500 },
    { name: 'veth3243', mac: '55:44:33:22:11:11' },
    {
      name: 'eth0',
      mac: '99:88:77:66:55:44',
      mtu: 1450,
      sandbox: '/var/run/netns/blue',
      socketPath: '/run/vhost-user.sock',
      pciID: '0000:00:1f.6',
    },
  ],
  ips: [
    { address: '10.1.0.5/16', gateway: '10.1.0.1', interface: 2 },
    { address: 'fd00::5/64', gateway: 'fd00::1', interface: 2 },
  ],
  routes: [
    { dst: '0.0.0.0/0' },
    { dst: '192.168.0.0/16', gw: '10.1.0.254', mtu: 1400, advmss: 1360, priority: 10, table: 100, scope: 0 },
  ],
  dns: { nameservers: ['10.1.0.1'], domain: 'example.com', search: ['a.example.com'], options: ['ndots:2'] },
};

/** The same result as a 1.0.0 (or older) reader may see it. */
const without110Fields = {
  interfaces: [
    { name: 'cni0', mac: '00:11:22:33:44:55' },
    { name: 'veth3243', mac: '55:44:33:22:11:11' },
    { name: 'eth0', mac: '99:88:77:66:55:44', sandbox: '/var/run/netns/blue' },
  ],
  routes: [{ dst: '0.0.0.0/0' }, { dst: '192.168.0.0/16', gw: '10.1.0.254' }],
  dns: full.dns,
};

function expectedWire(version: string): object {
  if (version === '1.1.0') return { ...full, cniVersion: '1.1.0' };
  const ips =
    version === '1.0.0'
      ? full.ips
      : [
          { version: '4', interface: 2, address: '10.1.0.5/16', gateway: '10.1.0.1' },
          { version: '6', interface: 2, address: 'fd00::5/64', gateway: 'fd00::1' },
        ];
  return { cniVersion: version, ...without110Fields, ips };
}

function thrown(fn: () => unknown): CniError {
  try {
    fn();
  } catch (e) {
    if (e instanceof CniError) return e;
    throw e;
  }
  throw new Error('expected a CniError');
}

describe('formatResult', () => {
  for (const v of SUPPORTED_VERSIONS) {
    it(`emits exactly the fields spec ${v} defines`, () => {
      expect(formatResult(full, v)).toStrictEqual(expectedWire(v));
    });

    it(`puts cniVersion first in a ${v} result, as the reference does`, () => {
      expect(Object.keys(formatResult(full, v))).toEqual(['cniVersion', 'interfaces', 'ips', 'routes', 'dns']);
    });
  }

  for (const v of ['0.3.0', '0.3.1', '0.4.0']) {
    it(`gives every ip a version of "4" or "6" in ${v}`, () => {
      const out = formatResult(
        { cniVersion: '1.1.0', ips: [{ address: '192.0.2.1/24' }, { address: '2001:db8::1/64' }, { address: '::ffff:192.0.2.1/120' }] },
        v,
      ) as { ips: { version: string }[] };
      expect(out.ips.map((i) => i.version)).toEqual(['4', '6', '4']);
    });
  }

  for (const v of ['1.0.0', '1.1.0']) {
    it(`never writes an ip version in ${v}`, () => {
      const out = formatResult({ cniVersion: '1.1.0', ips: [{ address: '192.0.2.1/24' }] }, v) as { ips: object[] };
      expect(out.ips[0]).toStrictEqual({ address: '192.0.2.1/24' });
    });
  }

  it('leaves out empty lists and an empty dns object, like the reference', () => {
    expect(formatResult({ cniVersion: '1.1.0', interfaces: [], ips: [], routes: [], dns: {} }, '1.1.0')).toStrictEqual({
      cniVersion: '1.1.0',
    });
    expect(formatResult({ cniVersion: '1.1.0', dns: { nameservers: [], search: [] } }, '0.4.0')).toStrictEqual({
      cniVersion: '0.4.0',
    });
  });

  it('writes the requested version even when the result says another', () => {
    expect(formatResult({ cniVersion: '0.4.0' }, '1.0.0')).toStrictEqual({ cniVersion: '1.0.0' });
  });

  it('emits an IPAM-style result without interfaces or interface indexes', () => {
    const ipam: Result = { cniVersion: '1.1.0', ips: [{ address: '10.1.0.5/16', gateway: '10.1.0.1' }], routes: [{ dst: '0.0.0.0/0' }] };
    expect(formatResult(ipam, '0.4.0')).toStrictEqual({
      cniVersion: '0.4.0',
      ips: [{ version: '4', address: '10.1.0.5/16', gateway: '10.1.0.1' }],
      routes: [{ dst: '0.0.0.0/0' }],
    });
  });

  it('keeps a route table or scope of 0, which mean something', () => {
    const out = formatResult({ cniVersion: '1.1.0', routes: [{ dst: '10.0.0.0/8', table: 0, scope: 0 }] }, '1.1.0');
    expect(out).toStrictEqual({ cniVersion: '1.1.0', routes: [{ dst: '10.0.0.0/8', table: 0, scope: 0 }] });
  });

  for (const v of ['0.1.0', '0.2.0', '1.2.0', '']) {
    it(`refuses to emit version ${JSON.stringify(v)} with code 1`, () => {
      expect(thrown(() => formatResult(full, v)).code).toBe(1);
    });
  }
});

describe('parsePrevResult', () => {
  for (const v of SUPPORTED_VERSIONS) {
    it(`round-trips a ${v} result through JSON without change`, () => {
      const wire = JSON.parse(JSON.stringify(formatResult(full, v)));
      const parsed = parsePrevResult(wire, v);
      expect(parsed.cniVersion).toBe(v);
      expect(formatResult(parsed, v)).toStrictEqual(wire);
    });

    for (const to of SUPPORTED_VERSIONS) {
      it(`converts a ${v} prevResult to ${to} output`, () => {
        const parsed = parsePrevResult(JSON.parse(JSON.stringify(formatResult(full, v))), to);
        // Whatever the older version lost stays lost; everything else survives.
        const expected = v === '1.1.0' ? expectedWire(to) : { ...expectedWire(to), ...stripTo(to) };
        expect(formatResult(parsed, to)).toStrictEqual(expected);
      });
    }
  }

  it('reads a 1.1.0 result into exactly the internal shape', () => {
    expect(parsePrevResult(formatResult(full, '1.1.0'), '1.1.0')).toStrictEqual(full);
  });

  it('takes the config version when the prevResult has none, like the reference', () => {
    const r = parsePrevResult({ ips: [{ version: '4', address: '10.1.0.5/16' }] }, '0.4.0');
    expect(r).toStrictEqual({ cniVersion: '0.4.0', ips: [{ address: '10.1.0.5/16' }] });
  });

  it('reads the spec example prevResult (no cniVersion, 1.1.0 config)', () => {
    const r = parsePrevResult(
      {
        ips: [{ address: '10.1.0.5/16', gateway: '10.1.0.1', interface: 2 }],
        routes: [{ dst: '0.0.0.0/0' }],
        interfaces: [
          { name: 'cni0', mac: '00:11:22:33:44:55' },
          { name: 'veth3243', mac: '55:44:33:22:11:11' },
          { name: 'eth0', mac: '99:88:77:66:55:44', sandbox: '/var/run/netns/blue' },
        ],
        dns: { nameservers: ['10.1.0.1'] },
      },
      '1.1.0',
    );
    expect(r.cniVersion).toBe('1.1.0');
    expect(r.ips).toEqual([{ address: '10.1.0.5/16', gateway: '10.1.0.1', interface: 2 }]);
    expect(r.interfaces?.[2].sandbox).toBe('/var/run/netns/blue');
  });

  it('treats JSON null as absent and an empty gateway as none, like Go', () => {
    const r = parsePrevResult(
      { cniVersion: '1.0.0', interfaces: null, ips: [{ address: '10.0.0.2/24', gateway: '', interface: null }], routes: null, dns: null },
      '1.0.0',
    );
    expect(r).toStrictEqual({ cniVersion: '1.0.0', ips: [{ address: '10.0.0.2/24' }] });
  });

  it('drops keys it does not know', () => {
    const r = parsePrevResult({ cniVersion: '1.1.0', interfaces: [{ name: 'eth0', color: 'blue' }], extra: 1 }, '1.1.0');
    expect(r).toStrictEqual({ cniVersion: '1.1.0', interfaces: [{ name: 'eth0' }] });
  });

  const garbage: [string, unknown, number, string][] = [
    ['a string', 'nope', 6, 'prevResult: expected an object'],
    ['an array', [], 6, 'prevResult: expected an object'],
    ['a numeric cniVersion', { cniVersion: 1 }, 6, 'prevResult.cniVersion'],
    ['ips that are not a list', { ips: {} }, 6, 'prevResult.ips: expected an array'],
    ['an address without a prefix', { ips: [{ address: '10.0.0.1' }] }, 6, 'prevResult.ips[0].address'],
    ['a missing address', { ips: [{ gateway: '10.0.0.1' }] }, 6, 'prevResult.ips[0].address'],
    ['a gateway that is not an IP', { ips: [{ address: '10.0.0.2/24', gateway: 'router' }] }, 6, 'prevResult.ips[0].gateway'],
    ['a fractional interface index', { interfaces: [{ name: 'a' }], ips: [{ address: '10.0.0.2/24', interface: 0.5 }] }, 6, 'prevResult.ips[0].interface'],
    ['an interface index past the list', { interfaces: [{ name: 'a' }], ips: [{ address: '10.0.0.2/24', interface: 1 }] }, 7, 'prevResult.ips[0].interface'],
    ['an interface without a name', { interfaces: [{ mac: '00:11:22:33:44:55' }] }, 6, 'prevResult.interfaces[0].name'],
    ['a negative mtu', { interfaces: [{ name: 'eth0', mtu: -1 }] }, 6, 'prevResult.interfaces[0].mtu'],
    ['a route without dst', { routes: [{ gw: '10.0.0.1' }] }, 6, 'prevResult.routes[0].dst'],
    ['a route table given as text', { routes: [{ dst: '10.0.0.0/8', table: '100' }] }, 6, 'prevResult.routes[0].table'],
    ['nameservers that are not strings', { dns: { nameservers: [1] } }, 6, 'prevResult.dns.nameservers[0]'],
    ['an unsupported result version', { cniVersion: '0.2.0', ip4: { ip: '10.0.0.2/24' } }, 1, 'unsupported cniVersion "0.2.0"'],
  ];
  for (const [what, raw, code, text] of garbage) {
    it(`refuses ${what} with code ${code}, naming where`, () => {
      const e = thrown(() => parsePrevResult(raw, '1.1.0'));
      expect(e.code).toBe(code);
      expect(e.msg).toContain(text);
    });
  }

  for (const v of ['0.3.0', '0.3.1', '0.4.0']) {
    it(`refuses an ip version other than "4" or "6" in a ${v} result`, () => {
      const e = thrown(() => parsePrevResult({ cniVersion: v, ips: [{ version: '5', address: '10.0.0.2/24' }] }, v));
      expect(e.code).toBe(6);
      expect(e.msg).toContain('prevResult.ips[0].version');
    });
  }
});

/** Fields a result loses when it passes through an older version on the way to `to`. */
function stripTo(to: string): object {
  return to === '1.1.0' ? { interfaces: without110Fields.interfaces, routes: without110Fields.routes } : {};
}
