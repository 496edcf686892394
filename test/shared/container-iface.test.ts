/**
 * shared/container-iface.ts without a kernel: the order applyToInterface
 * drives the container's link in, which gateway each route takes, and that
 * every handle an ADD opened is closed whatever happens.
 */
import { describe, expect, it } from 'vitest';
import { applyToInterface, gatewayFor, macFromIPv4, withHandles, type ContainerIfaceOps } from '../../shared/container-iface';
import type { Link, RouteSpec } from '../../shared/netlink';

/** Records each kernel verb in order; the link's index is 7. */
function recorder(): ContainerIfaceOps & { calls: string[]; routes: RouteSpec[] } {
  const calls: string[] = [];
  const routes: RouteSpec[] = [];
  return {
    calls,
    routes,
    linkSetMac: (name, mac) => void calls.push(`mac ${name} ${mac}`),
    addrAdd: (name, cidr, opts) => void calls.push(`addr ${name} ${cidr}${opts?.noDad ? ' nodad' : ''}`),
    linkSetUp: (name) => void calls.push(`up ${name}`),
    link: (name) => ({ name, index: 7, mac: '02:00:00:00:00:07' }) as Link,
    routeAdd: (spec) => {
      calls.push(`route ${spec.dst}`);
      routes.push(spec);
    },
  };
}

const ips = [
  { address: '10.1.0.5/24', gateway: '10.1.0.1' },
  { address: 'fd00::5/64', gateway: 'fd00::1' },
];

describe('applyToInterface', () => {
  it('sets the MAC, then the addresses (IPv6 without DAD), then up, then routes out of the link', () => {
    const k = recorder();
    const link = applyToInterface(k, 'eth0', { mac: '02:42:0a:01:00:05', ips, routes: [{ dst: '0.0.0.0/0' }] });
    expect(k.calls).toEqual(['mac eth0 02:42:0a:01:00:05', 'addr eth0 10.1.0.5/24', 'addr eth0 fd00::5/64 nodad', 'up eth0', 'route 0.0.0.0/0']);
    expect(link.index).toBe(7);
    expect(k.routes[0].oifIndex).toBe(7);
  });

  it('leaves the MAC alone when none is given', () => {
    const k = recorder();
    applyToInterface(k, 'eth0', { ips: [], routes: [] });
    expect(k.calls).toEqual(['up eth0']);
  });

  it("routes via the route's own gateway, else the IPAM's gateway of its family", () => {
    const k = recorder();
    applyToInterface(k, 'eth0', { ips, routes: [{ dst: '0.0.0.0/0' }, { dst: '::/0' }, { dst: '192.0.2.0/24', gw: '10.1.0.9' }] });
    expect(k.routes.map((r) => r.gw)).toEqual(['10.1.0.1', 'fd00::1', '10.1.0.9']);
  });

  it('lets the plugin decide the gateway (an on-link route has none)', () => {
    const k = recorder();
    applyToInterface(k, 'eth0', { ips, routes: [{ dst: '0.0.0.0/0' }], via: (r) => r.gw });
    expect(k.routes[0].gw).toBeUndefined();
  });
});

describe('gatewayFor and macFromIPv4', () => {
  it('picks the first gateway of the destination family, none when that family has none', () => {
    expect(gatewayFor(ips, '10.9.0.0/16')).toBe('10.1.0.1');
    expect(gatewayFor(ips, '::/0')).toBe('fd00::1');
    expect(gatewayFor([{ address: '10.1.0.5/24' }], '0.0.0.0/0')).toBeUndefined();
  });

  it("is Docker's 02:42 and the four IPv4 bytes; an IPv6 address is refused", () => {
    expect(macFromIPv4('172.17.0.2')).toBe('02:42:ac:11:00:02');
    expect(() => macFromIPv4('fd00::5')).toThrow(/not an IPv4 address/);
  });
});

describe('withHandles', () => {
  it('closes every handle it kept, newest first, also when the work fails', async () => {
    const closed: string[] = [];
    const handle = (name: string) => ({ close: () => void closed.push(name) });
    await expect(
      withHandles(async (keep) => {
        keep(handle('host'));
        keep(handle('container'));
        throw new Error('netns gone');
      }),
    ).rejects.toThrow('netns gone');
    expect(closed).toEqual(['container', 'host']);
  });
});
