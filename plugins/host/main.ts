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
import { namespaceResult, requireStillPresent } from '../../shared/ns-report';
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

async function add(ctx: CniContext<Conf>): Promise<Result> {
  requireHostNetns(ctx.netns);
  return namespaceResult(undefined, ctx.cniVersion);
}

async function del(): Promise<void> {
  // Nothing was created for the container: the host stack is not ours to undo.
}

async function check(ctx: CniContext<Conf>): Promise<void> {
  requireHostNetns(ctx.netns);
  requireStillPresent(namespaceResult(undefined, ctx.cniVersion), ctx.prevResult, 'the host');
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
