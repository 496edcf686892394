/**
 * What the plugins that join an existing network stack (`host`, `container`)
 * report and check: that namespace's interfaces (loopback excluded) and its
 * global addresses, read as they are, nothing created.
 */
import { CniError, ErrorCode } from './cni/errors';
import type { Result } from './cni/types';
import { AF_INET, AF_INET6, IFF_LOOPBACK, RT_SCOPE_HOST, RT_SCOPE_LINK, withHandle } from './netlink';

/** The interfaces and global addresses of the namespace at `netnsPath` (undefined: this thread's own). */
export function namespaceResult(netnsPath: string | undefined, cniVersion: string, sandbox?: string): Result {
  return withHandle(netnsPath, (h) => {
    const links = h.linkList().filter((l) => !(l.flags & IFF_LOOPBACK));
    const position = new Map(links.map((l, i) => [l.index, i]));
    const ips = h
      .addrList()
      .filter((a) => (a.family === AF_INET || a.family === AF_INET6) && a.scope !== RT_SCOPE_HOST && a.scope !== RT_SCOPE_LINK)
      .filter((a) => position.has(a.index))
      .map((a) => ({ address: a.cidr, interface: position.get(a.index)! }));
    return {
      cniVersion,
      interfaces: links.map((l) => ({ name: l.name, mac: l.mac, mtu: l.mtu, ...(sandbox ? { sandbox } : {}) })),
      ips,
    };
  });
}

/** CHECK: every interface and address the earlier result named is still there; `whose` says whose stack it is. */
export function requireStillPresent(now: Result, prev: Result | undefined, whose: string): void {
  const names = new Set(now.interfaces!.map((i) => i.name));
  const addrs = new Set(now.ips!.map((i) => i.address));
  for (const iface of prev?.interfaces ?? []) {
    if (!names.has(iface.name)) throw new CniError(ErrorCode.Internal, `interface ${iface.name} of ${whose} is gone`);
  }
  for (const ip of prev?.ips ?? []) {
    if (!addrs.has(ip.address)) throw new CniError(ErrorCode.Internal, `address ${ip.address} of ${whose} is gone`);
  }
}
