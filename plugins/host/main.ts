/**
 * host: Docker's `--network host`. The container shares the host's network
 * stack, so the only valid "container namespace" is the host's own: ADD
 * verifies that and reports the host's interfaces and addresses. Nothing is
 * created, so DEL has nothing to remove.
 */
import { z } from 'zod';
import { CniContext, Plugin } from '../../shared/cni/skel';
import { CniError, ErrorCode } from '../../shared/cni/errors';
import { Result } from '../../shared/cni/types';
import { netConfBase } from '../../shared/cni/config';
import { AF_INET, AF_INET6, IFF_LOOPBACK, RT_SCOPE_HOST, RT_SCOPE_LINK, withHandle } from '../../shared/netlink';
import { isHostNetns } from '../../shared/netns/netns';

const schema = netConfBase;
type Conf = z.infer<typeof schema>;

function requireHostNetns(netns: string): void {
  let host: boolean;
  try {
    host = isHostNetns(netns);
  } catch (e) {
    throw new CniError(ErrorCode.InvalidNetns, `cannot open CNI_NETNS ${netns}`, (e as Error).message);
  }
  if (!host) {
    throw new CniError(
      ErrorCode.InvalidNetns,
      `host network mode needs the host's network namespace, but CNI_NETNS ${netns} is a different one`,
      'run the container with the host network namespace (e.g. CNI_NETNS=/proc/1/ns/net)',
    );
  }
}

/** The host's interfaces (loopback excluded) and their global addresses. */
function hostResult(cniVersion: string): Result {
  return withHandle(undefined, (h) => {
    const links = h.linkList().filter((l) => !(l.flags & IFF_LOOPBACK));
    const position = new Map(links.map((l, i) => [l.index, i]));
    const ips = h
      .addrList()
      .filter((a) => (a.family === AF_INET || a.family === AF_INET6) && a.scope !== RT_SCOPE_HOST && a.scope !== RT_SCOPE_LINK)
      .filter((a) => position.has(a.index))
      .map((a) => ({ address: a.cidr, interface: position.get(a.index)! }));
    return {
      cniVersion,
      interfaces: links.map((l) => ({ name: l.name, mac: l.mac, mtu: l.mtu })),
      ips,
    };
  });
}

async function add(ctx: CniContext<Conf>): Promise<Result> {
  requireHostNetns(ctx.netns);
  return hostResult(ctx.cniVersion);
}

async function del(): Promise<void> {
  // Nothing was created for the container: the host stack is not ours to undo.
}

async function check(ctx: CniContext<Conf>): Promise<void> {
  requireHostNetns(ctx.netns);
  const now = hostResult(ctx.cniVersion);
  const names = new Set(now.interfaces!.map((i) => i.name));
  const addrs = new Set(now.ips!.map((i) => i.address));
  for (const iface of ctx.prevResult?.interfaces ?? []) {
    if (!names.has(iface.name)) throw new CniError(ErrorCode.Internal, `host interface ${iface.name} is gone`);
  }
  for (const ip of ctx.prevResult?.ips ?? []) {
    if (!addrs.has(ip.address)) throw new CniError(ErrorCode.Internal, `host address ${ip.address} is gone`);
  }
}

export const plugin: Plugin<Conf> = {
  about: 'host: share the host network stack (cni-ts)',
  usesHostNetns: true,
  schema,
  add,
  del,
  check,
  // no gc, no status: nothing is kept, and the host's stack is always ready
};
