/**
 * shared/verify.ts on a fake container (ContainerLinks): what CHECK accepts,
 * and the first difference it reports, as a CniError with code 999.
 */
import { describe, expect, it } from 'vitest';
import { CniError, ErrorCode } from '../../shared/cni/errors';
import type { Result } from '../../shared/cni/types';
import { AF_INET, AF_INET6, type Addr, type Link, type Route } from '../../shared/netlink';
import { verifyContainerInterface, type ContainerLinks } from '../../shared/verify';

function fakeContainer(links: Link[], addrs: Record<string, string[]>, routes: Array<Partial<Route>>): ContainerLinks {
  return {
    linkByName: (name) => links.find((l) => l.name === name),
    addrList: (name) =>
      (addrs[name ?? ''] ?? []).map((cidr): Addr => {
        const [address, len] = cidr.split('/');
        return { index: 0, family: address.includes(':') ? AF_INET6 : AF_INET, address, prefixLen: Number(len), cidr, scope: 0, flags: 0 };
      }),
    routeList: () => routes.map((r) => ({ family: AF_INET, dst: 'default', table: 254, protocol: 3, scope: 0, type: 1, ...r })),
  };
}

const link: Link = { index: 7, name: 'eth0', flags: 0, up: true, mtu: 1500, mac: '02:00:00:aa:bb:cc', kind: 'macvlan', parentIndex: 2 };

const prev: Result = {
  cniVersion: '1.1.0',
  interfaces: [{ name: 'eth0', mac: '02:00:00:AA:BB:CC', sandbox: '/var/run/netns/c' }],
  ips: [
    { address: '10.1.0.5/24', gateway: '10.1.0.1', interface: 0 },
    { address: 'fd00::5/64', interface: 0 },
  ],
  routes: [{ dst: '0.0.0.0/0', gw: '10.1.0.1' }, { dst: '::/0' }, { dst: '10.9.0.3/16' }],
};

/** The container as ADD leaves it for `prev`. */
function healthy(): { links: Link[]; addrs: Record<string, string[]>; routes: Array<Partial<Route>> } {
  return {
    links: [{ ...link }],
    addrs: { eth0: ['10.1.0.5/24', 'fd00::5/64'] },
    routes: [
      { dst: 'default', gw: '10.1.0.1', oifIndex: 7 },
      { family: AF_INET6, dst: 'default', oifIndex: 7 },
      { dst: '10.9.0.0/16', oifIndex: 7 },
    ],
  };
}

const want = { ifname: 'eth0', netns: '/var/run/netns/c', kind: 'macvlan' };

function failure(fn: () => unknown): CniError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(CniError);
    return e as CniError;
  }
  throw new Error('expected a CniError, nothing was thrown');
}

function verify(c: ReturnType<typeof healthy>, w: Parameters<typeof verifyContainerInterface>[1] = want) {
  return () => verifyContainerInterface(fakeContainer(c.links, c.addrs, c.routes), w, prev);
}

describe('verifyContainerInterface', () => {
  it('accepts the container as ADD left it and returns its link', () => {
    expect(verify(healthy())()).toEqual(link);
  });

  it('reports a missing interface with code 999 and the namespace', () => {
    const c = healthy();
    c.links = [];
    const e = failure(verify(c));
    expect(e.code).toBe(ErrorCode.Internal);
    expect(e.msg).toBe('eth0 is missing in /var/run/netns/c');
  });

  it('reports an interface of another kind, with the right article', () => {
    const c = healthy();
    c.links[0].kind = 'veth';
    expect(failure(verify(c)).msg).toBe('eth0 is a veth, not a macvlan');
    expect(failure(verify(c, { ...want, kind: 'ipvlan' })).msg).toBe('eth0 is a veth, not an ipvlan');
    delete c.links[0].kind;
    expect(failure(verify(c)).msg).toBe('eth0 is a device, not a macvlan');
  });

  it('runs the plugin\'s own checks after the kind and before the MAC', () => {
    const c = healthy();
    c.links[0].mac = '02:00:00:00:00:01';
    const seen: Link[] = [];
    const e = failure(verify(c, { ...want, extra: (l) => seen.push(l) }));
    expect(seen.map((l) => l.index)).toEqual([7]);
    expect(e.msg).toBe('eth0 has MAC 02:00:00:00:00:01, expected 02:00:00:AA:BB:CC');
    const first = failure(
      verify(c, {
        ...want,
        extra: () => {
          throw new CniError(ErrorCode.Internal, 'wrong mode');
        },
      }),
    );
    expect(first.msg).toBe('wrong mode');
  });

  it('compares the MAC case-insensitively, and not at all when the plugin says so', () => {
    const c = healthy();
    expect(() => verify(c)()).not.toThrow();
    c.links[0].mac = '02:00:00:00:00:01';
    expect(() => verify(c, { ...want, checkMac: false })()).not.toThrow();
  });

  it('reports an address of prevResult that is gone', () => {
    const c = healthy();
    c.addrs.eth0 = ['10.1.0.5/24'];
    expect(failure(verify(c)).msg).toBe('address fd00::5/64 is missing on eth0');
  });

  it('reports a route that is gone, via another gateway, out of another device or of the other family', () => {
    const cases: Array<[(r: Array<Partial<Route>>) => void, string]> = [
      [(r) => r.splice(2, 1), 'route to 10.9.0.3/16 is missing'],
      [(r) => (r[0].gw = '10.1.0.254'), 'route to 0.0.0.0/0 via 10.1.0.1 is missing'],
      [(r) => (r[0].oifIndex = 8), 'route to 0.0.0.0/0 via 10.1.0.1 is missing'],
      // the IPv6 default alone does not stand in for ::/0's IPv4 twin, nor the other way round
      [(r) => (r[1].family = AF_INET), 'route to ::/0 is missing'],
    ];
    for (const [spoil, msg] of cases) {
      const c = healthy();
      spoil(c.routes);
      expect(failure(verify(c)).msg).toBe(msg);
    }
  });
});
