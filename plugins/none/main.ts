/**
 * none: Docker's `--network none`. The container gets only its loopback
 * interface, brought up; nothing else is created and nothing on the host
 * is touched.
 */
import { z } from 'zod';
import { CniContext, Plugin } from '../../shared/cni/skel';
import { CniError, ErrorCode } from '../../shared/cni/errors';
import { Result } from '../../shared/cni/types';
import { netConfBase } from '../../shared/cni/config';
import { AF_INET, AF_INET6, NetlinkHandle, withHandle } from '../../shared/netlink';
import { isNetnsPath } from '../../shared/netns/netns';

const LOOPBACK = 'lo';

const schema = netConfBase;
type Conf = z.infer<typeof schema>;

function loopbackResult(h: NetlinkHandle, ctx: CniContext<Conf>): Result {
  const addrs = h.addrList(LOOPBACK).filter((a) => a.family === AF_INET || a.family === AF_INET6);
  return {
    cniVersion: ctx.cniVersion,
    interfaces: [{ name: LOOPBACK, mac: '00:00:00:00:00:00', sandbox: ctx.netns }],
    ips: addrs.map((a) => ({ address: a.cidr, interface: 0 })),
  };
}

async function add(ctx: CniContext<Conf>): Promise<Result> {
  return withHandle(ctx.netns, (h) => {
    h.linkSetUp(LOOPBACK);
    return loopbackResult(h, ctx);
  });
}

async function del(ctx: CniContext<Conf>): Promise<void> {
  // DEL must succeed when the namespace is already gone: the runtime may
  // call it after the sandbox was torn down, and there is nothing left to undo.
  if (!ctx.netns || !isNetnsPath(ctx.netns)) return;
  withHandle(ctx.netns, (h) => {
    if (h.linkByName(LOOPBACK)) h.linkSetDown(LOOPBACK);
  });
}

async function check(ctx: CniContext<Conf>): Promise<void> {
  withHandle(ctx.netns, (h) => {
    const lo = h.linkByName(LOOPBACK);
    if (!lo || !lo.up) throw new CniError(ErrorCode.Internal, 'loopback interface is down in the container');
    const have = new Set(h.addrList(LOOPBACK).map((a) => a.cidr));
    for (const ip of ctx.prevResult?.ips ?? []) {
      if (!have.has(ip.address)) throw new CniError(ErrorCode.Internal, `loopback address ${ip.address} is missing`);
    }
  });
}

export const plugin: Plugin<Conf> = {
  about: 'none: loopback only (cni-ts)',
  schema,
  add,
  del,
  check,
  // no gc, no status: nothing outlives the namespace, so there is nothing to collect
};
