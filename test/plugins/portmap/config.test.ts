import { describe, expect, it } from 'vitest';
import { CniError } from '../../../shared/cni/errors';
import type { Result } from '../../../shared/cni/types';
import { validateConfig } from '../../../shared/cni/config';
import {
  claimsFor,
  containerAddrs,
  overlaps,
  rejectUnsupported,
  schema,
  type ContainerAddr,
  type PortMapping,
} from '../../../plugins/portmap/config';

const dual: ContainerAddr[] = [
  { family: 'ipv4', ip: '10.1.0.5', subnet: '10.1.0.0/24' },
  { family: 'ipv6', ip: 'fd00:1::5', subnet: 'fd00:1::/64' },
];
const v4only = dual.slice(0, 1);

const m = (hostPort: number, containerPort: number, extra: Partial<PortMapping> = {}): PortMapping => ({ hostPort, containerPort, protocol: 'tcp', ...extra });

function codeOf(fn: () => unknown): number | undefined {
  try {
    fn();
  } catch (e) {
    return e instanceof CniError ? e.code : -1;
  }
  return undefined;
}

describe('portmap config', () => {
  const base = { cniVersion: '1.0.0', name: 'net1', type: 'portmap' };

  it('defaults snat to true and protocol to tcp, and lower-cases the protocol', () => {
    const conf = validateConfig(
      { ...base, runtimeConfig: { portMappings: [{ hostPort: 80, containerPort: 8080 }, { hostPort: 53, containerPort: 53, protocol: 'UDP' }] } },
      schema,
    );
    expect(conf.snat).toBe(true);
    expect(conf.runtimeConfig?.portMappings?.map((p) => p.protocol)).toEqual(['tcp', 'udp']);
  });

  it('refuses ports outside 1-65535 and unknown protocols with code 7 naming the key', () => {
    for (const bad of [{ hostPort: 0, containerPort: 80 }, { hostPort: 80, containerPort: 65536 }, { hostPort: 80, containerPort: 80, protocol: 'icmp' }]) {
      try {
        validateConfig({ ...base, runtimeConfig: { portMappings: [bad] } }, schema);
        expect.unreachable();
      } catch (e) {
        expect((e as CniError).code).toBe(7);
        expect((e as CniError).message).toMatch(/runtimeConfig\.portMappings\[0\]\.(hostPort|containerPort|protocol)/);
      }
    }
  });

  it('refuses the reference keys it cannot honour with code 2 and accepts markMasqBit', () => {
    const conf = (extra: object) => validateConfig({ ...base, ...extra }, schema);
    expect(codeOf(() => rejectUnsupported(conf({ conditionsV4: ['-s', '1.2.3.4'] })))).toBe(2);
    expect(codeOf(() => rejectUnsupported(conf({ externalSetMarkChain: 'KUBE-MARK-MASQ' })))).toBe(2);
    expect(codeOf(() => rejectUnsupported(conf({ backend: 'iptables' })))).toBe(2);
    expect(codeOf(() => rejectUnsupported(conf({ backend: 'nftables', markMasqBit: 13 })))).toBeUndefined();
  });
});

describe('containerAddrs', () => {
  it('takes the first IPv4 and first IPv6 address of the container interface, with their subnets', () => {
    const prev: Result = {
      cniVersion: '1.0.0',
      interfaces: [{ name: 'cni0' }, { name: 'veth1' }, { name: 'eth0', sandbox: '/var/run/netns/x' }],
      ips: [
        { address: '10.9.9.1/24', interface: 0 },
        { address: '10.1.0.5/24', interface: 2 },
        { address: '10.1.0.6/24', interface: 2 },
        { address: 'fd00:1:0:0::5/64', interface: 2 },
      ],
    };
    expect(containerAddrs(prev, 'eth0')).toEqual(dual);
  });

  it('takes addresses without an interface index whatever the ifname, and skips those of another interface', () => {
    const prev: Result = { cniVersion: '1.0.0', interfaces: [{ name: 'eth0', sandbox: '/x' }], ips: [{ address: '10.1.0.5/24' }, { address: '10.2.0.5/24', interface: 0 }] };
    expect(containerAddrs(prev, 'eth0').map((a) => a.ip)).toEqual(['10.1.0.5']);
    expect(containerAddrs(prev, 'net1').map((a) => a.ip)).toEqual(['10.1.0.5']);
    expect(containerAddrs(undefined, 'eth0')).toEqual([]);
  });
});

describe('claimsFor', () => {
  it('publishes a mapping without hostIP on every family the container has', () => {
    expect(claimsFor([m(8080, 80)], dual)).toEqual([
      { family: 'ipv4', protocol: 'tcp', hostPort: 8080, containerIP: '10.1.0.5', containerPort: 80 },
      { family: 'ipv6', protocol: 'tcp', hostPort: 8080, containerIP: 'fd00:1::5', containerPort: 80 },
    ]);
  });

  it('publishes a hostIP mapping on its own family only, and treats 0.0.0.0 and :: as every address of theirs', () => {
    expect(claimsFor([m(8080, 80, { hostIP: '127.0.0.1' })], dual)).toEqual([
      { family: 'ipv4', protocol: 'tcp', hostPort: 8080, hostIP: '127.0.0.1', containerIP: '10.1.0.5', containerPort: 80 },
    ]);
    expect(claimsFor([m(8080, 80, { hostIP: '0.0.0.0' })], dual).map((c) => [c.family, c.hostIP])).toEqual([['ipv4', undefined]]);
    expect(claimsFor([m(8080, 80, { hostIP: '::' })], dual).map((c) => [c.family, c.hostIP])).toEqual([['ipv6', undefined]]);
    expect(claimsFor([m(8080, 80, { hostIP: 'FD00:0::1' })], dual)[0].hostIP).toBe('fd00::1');
  });

  it('skips a hostIP of a family the container has no address in, as the reference does', () => {
    expect(claimsFor([m(8080, 80, { hostIP: 'fd00::1' })], v4only)).toEqual([]);
    expect(claimsFor([m(8080, 80)], [])).toEqual([]);
  });

  it('counts an identical mapping given twice once', () => {
    expect(claimsFor([m(8080, 80), m(8080, 80)], v4only)).toHaveLength(1);
  });

  it('refuses two mappings of one request competing for a host port with code 7', () => {
    expect(codeOf(() => claimsFor([m(8080, 80), m(8080, 81)], v4only))).toBe(7);
    expect(codeOf(() => claimsFor([m(8080, 80), m(8080, 80, { hostIP: '127.0.0.1' })], v4only))).toBe(7);
    // different protocols or different host addresses do not compete
    expect(claimsFor([m(8080, 80), m(8080, 80, { protocol: 'udp' }), m(8080, 80, { protocol: 'sctp' })], v4only)).toHaveLength(3);
    expect(claimsFor([m(8080, 80, { hostIP: '10.0.0.1' }), m(8080, 81, { hostIP: '10.0.0.2' })], v4only)).toHaveLength(2);
  });

  it('refuses a hostIP that is not an address, and ::1, with code 7', () => {
    expect(codeOf(() => claimsFor([m(8080, 80, { hostIP: 'localhost' })], dual))).toBe(7);
    expect(codeOf(() => claimsFor([m(8080, 80, { hostIP: '::1' })], dual))).toBe(7);
  });
});

describe('overlaps', () => {
  const c = (hostIP?: string, family: 'ipv4' | 'ipv6' = 'ipv4', protocol: 'tcp' | 'udp' = 'tcp') => ({ family, protocol, hostPort: 80, hostIP });
  it('holds for the same or a wildcard address of one family and protocol, and nothing else', () => {
    expect(overlaps(c(), c())).toBe(true);
    expect(overlaps(c(), c('10.0.0.1'))).toBe(true);
    expect(overlaps(c('10.0.0.1'), c('10.0.0.1'))).toBe(true);
    expect(overlaps(c('10.0.0.1'), c('10.0.0.2'))).toBe(false);
    expect(overlaps(c(), c(undefined, 'ipv6'))).toBe(false);
    expect(overlaps(c(), c(undefined, 'ipv4', 'udp'))).toBe(false);
  });
});
