import { describe, expect, it } from 'vitest';
import { CniError, ErrorCode } from '../../shared/cni/errors';
import { DEFAULT_DATA_DIR, loadIpamConfig } from '../../ipam/config';
import { formatCIDR, formatIP } from '../../shared/ip';

const net = (ipam: Record<string, unknown>, extra: Record<string, unknown> = {}) => ({
  cniVersion: '1.0.0',
  name: 'testnet',
  type: 'bridge',
  ipam: { type: 'cluster-ipam', ...ipam },
  ...extra,
});

function codeOf(fn: () => unknown): { code: number; msg: string } {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(CniError);
    return { code: (e as CniError).code, msg: (e as CniError).message };
  }
  throw new Error('expected a CniError');
}

describe('ipam/config', () => {
  it('fills host-local defaults: gateway .1, range from .1 to the address before broadcast, local store, default dataDir', () => {
    const c = loadIpamConfig(net({ ranges: [[{ subnet: '10.1.0.0/24' }]] }));
    const r = c.rangeSets[0]![0]!;
    expect(formatCIDR(r.subnet)).toBe('10.1.0.0/24');
    expect(formatIP(r.gateway)).toBe('10.1.0.1');
    expect(formatIP(r.rangeStart)).toBe('10.1.0.1');
    expect(formatIP(r.rangeEnd)).toBe('10.1.0.254');
    expect(c.store).toBe('local');
    expect(c.dataDir).toBe(DEFAULT_DATA_DIR);
    expect(c.name).toBe('testnet');
  });

  it('ends an IPv6 range at the last address of the subnet (there is no broadcast)', () => {
    const r = loadIpamConfig(net({ ranges: [[{ subnet: 'fd00:1::/120' }]] })).rangeSets[0]![0]!;
    expect(formatIP(r.rangeEnd)).toBe('fd00:1::ff');
  });

  it('accepts the legacy single range and puts it first, then ranges, with ipRanges from the runtime before both', () => {
    const c = loadIpamConfig(
      net(
        { subnet: '10.1.0.0/24', gateway: '10.1.0.254', ranges: [[{ subnet: 'fd00::/64' }]] },
        { runtimeConfig: { ipRanges: [[{ subnet: '10.2.0.0/24' }]] } },
      ),
    );
    expect(c.rangeSets.map((s) => formatCIDR(s[0]!.subnet))).toEqual(['10.2.0.0/24', '10.1.0.0/24', 'fd00::/64']);
    expect(formatIP(c.rangeSets[1]![0]!.gateway)).toBe('10.1.0.254');
  });

  it('gathers static requests from CNI_ARGS IP=, args.cni.ips and runtimeConfig.ips (CIDR form allowed)', () => {
    const c = loadIpamConfig(
      net({ ranges: [[{ subnet: '10.1.0.0/24' }]] }, { args: { cni: { ips: ['10.1.0.8'] } }, runtimeConfig: { ips: ['10.1.0.9/24'] } }),
      { IP: '10.1.0.7,fd00::7', IgnoreUnknown: '1' },
    );
    expect(c.requestedIPs.map(formatIP)).toEqual(['10.1.0.7', 'fd00::7', '10.1.0.8', '10.1.0.9']);
  });

  it('counts the same address requested through two channels once', () => {
    const c = loadIpamConfig(net({ ranges: [[{ subnet: '10.1.0.0/24' }]] }, { runtimeConfig: { ips: ['10.1.0.7/24'] } }), { IP: '10.1.0.7' });
    expect(c.requestedIPs.map(formatIP)).toEqual(['10.1.0.7']);
  });

  it('normalizes routes and keeps dataDir, resolvConf and store', () => {
    const c = loadIpamConfig(
      net({
        ranges: [[{ subnet: '10.1.0.0/24' }]],
        routes: [{ dst: '0.0.0.0/0' }, { dst: '192.168.7.9/24', gw: '10.1.0.1' }],
        dataDir: '/tmp/x',
        resolvConf: '/etc/resolv.conf',
        store: 'etcd',
      }),
    );
    expect(c.routes).toEqual([{ dst: '0.0.0.0/0' }, { dst: '192.168.7.0/24', gw: '10.1.0.1' }]);
    expect(c.dataDir).toBe('/tmp/x');
    expect(c.resolvConf).toBe('/etc/resolv.conf');
    expect(c.store).toBe('etcd');
  });

  it.each([
    ['a subnet that is not a CIDR', { ranges: [[{ subnet: '10.1.0.0' }]] }, /invalid subnet "10\.1\.0\.0"/],
    ['a subnet with a bad address', { ranges: [[{ subnet: '10.1.0.300/24' }]] }, /invalid subnet/],
    ['a gateway outside the subnet', { ranges: [[{ subnet: '10.1.0.0/24', gateway: '10.2.0.1' }]] }, /gateway 10\.2\.0\.1 is outside subnet 10\.1\.0\.0\/24/],
    ['a rangeStart outside the subnet', { ranges: [[{ subnet: '10.1.0.0/24', rangeStart: '10.1.1.5' }]] }, /rangeStart 10\.1\.1\.5 is outside/],
    ['a rangeEnd outside the subnet', { ranges: [[{ subnet: '10.1.0.0/24', rangeEnd: '10.0.255.5' }]] }, /rangeEnd 10\.0\.255\.5 is outside/],
    ['a rangeStart after rangeEnd', { ranges: [[{ subnet: '10.1.0.0/24', rangeStart: '10.1.0.50', rangeEnd: '10.1.0.40' }]] }, /after rangeEnd/],
    ['a range with only the gateway in it', { ranges: [[{ subnet: '10.1.0.0/24', rangeStart: '10.1.0.1', rangeEnd: '10.1.0.1' }]] }, /no allocatable address/],
    ['a /31', { ranges: [[{ subnet: '10.1.0.0/31' }]] }, /too small/],
    ['an IPv6 /127', { ranges: [[{ subnet: 'fd00::/127' }]] }, /too small/],
    ['overlapping ranges in one set', { ranges: [[{ subnet: '10.1.0.0/24' }, { subnet: '10.1.0.0/25' }]] }, /range set 0 range 0 overlaps range set 0 range 1/],
    ['overlapping range sets', { ranges: [[{ subnet: '10.1.0.0/16' }], [{ subnet: '10.1.4.0/24' }]] }, /range set 0 range 0 overlaps range set 1 range 0/],
    ['the legacy subnet overlapping ranges', { subnet: '10.1.0.0/24', ranges: [[{ subnet: '10.1.0.0/24' }]] }, /overlaps/],
    ['a set mixing families', { ranges: [[{ subnet: '10.1.0.0/24' }, { subnet: 'fd00::/64' }]] }, /mixes IPv4 and IPv6/],
    ['an empty range set', { ranges: [[]] }, /range set 0 is empty/],
    ['no ranges at all', {}, /no IP ranges specified/],
    ['rangeStart without subnet', { rangeStart: '10.1.0.5', ranges: [[{ subnet: '10.1.0.0/24' }]] }, /without ipam\.subnet/],
    ['a route with a bad dst', { ranges: [[{ subnet: '10.1.0.0/24' }]], routes: [{ dst: 'default' }] }, /routes\[0\]: invalid dst/],
    ['a route gw of the other family', { ranges: [[{ subnet: '10.1.0.0/24' }]], routes: [{ dst: '0.0.0.0/0', gw: 'fd00::1' }] }, /not of the same family/],
    ['an unknown store', { ranges: [[{ subnet: '10.1.0.0/24' }]], store: 'consul' }, /ipam\.store/],
    ['ranges of the wrong shape', { ranges: [{ subnet: '10.1.0.0/24' }] }, /ipam\.ranges\[0\]/],
  ])('refuses %s with code 7 and a message that says what is wrong', (_what, ipam, msg) => {
    const err = codeOf(() => loadIpamConfig(net(ipam)));
    expect(err.code).toBe(ErrorCode.InvalidNetworkConfig);
    expect(err.msg).toMatch(msg);
  });

  it('allows disjoint ranges of the same subnet, in one set or in different sets', () => {
    const c = loadIpamConfig(
      net({
        ranges: [
          [
            { subnet: '10.1.0.0/24', rangeStart: '10.1.0.10', rangeEnd: '10.1.0.19' },
            { subnet: '10.1.0.0/24', rangeStart: '10.1.0.20', rangeEnd: '10.1.0.29' },
          ],
          [{ subnet: '10.1.0.0/24', rangeStart: '10.1.0.30', rangeEnd: '10.1.0.39' }],
        ],
      }),
    );
    expect(c.rangeSets).toHaveLength(2);
  });

  it('refuses a requested address that is not an address, with code 7', () => {
    const err = codeOf(() => loadIpamConfig(net({ ranges: [[{ subnet: '10.1.0.0/24' }]] }), { IP: '10.1.0.x' }));
    expect(err.code).toBe(ErrorCode.InvalidNetworkConfig);
    expect(err.msg).toMatch(/invalid requested IP address "10\.1\.0\.x"/);
  });

  it('refuses a missing ipam section and a network name that could leave dataDir', () => {
    expect(codeOf(() => loadIpamConfig({ cniVersion: '1.0.0', name: 'n', type: 'bridge' })).msg).toMatch(/missing "ipam"/);
    const err = codeOf(() => loadIpamConfig({ ...net({ ranges: [[{ subnet: '10.1.0.0/24' }]] }), name: '../etc' }));
    expect(err.code).toBe(ErrorCode.InvalidNetworkConfig);
    expect(err.msg).toMatch(/invalid network name/);
  });
});
