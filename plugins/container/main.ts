/**
 * container: Docker's `--network container:<id>`. The new container joins
 * the network namespace of one already running, so the only valid
 * CNI_NETNS is that container's: ADD verifies it (namespace identity, not
 * path text) and reports that namespace's interfaces and addresses, the
 * way `host` reports the host's. Nothing is created, so DEL has nothing to
 * remove; CHECK verifies the identity again.
 *
 * The container to join is named in the config (`container.pid` or
 * `container.netns`) or by the runtime in CNI_ARGS (`CONTAINER_PID=1234`,
 * `CONTAINER_NETNS=/var/run/netns/x`). Each one named must be CNI_NETNS's
 * namespace: a caller cannot name container X and hand in another
 * namespace to be reported as X's.
 */
import * as fs from 'node:fs';
import { z } from 'zod';
import { CniContext, Plugin } from '../../shared/cni/skel';
import { CniError, ErrorCode } from '../../shared/cni/errors';
import { Result } from '../../shared/cni/types';
import { netConfBase } from '../../shared/cni/config';
import { namespaceResult, requireStillPresent } from '../../shared/ns-report';
import { NetNs } from '../../shared/netns/netns';

/** The kernel's PID_MAX_LIMIT (4M): no PID is larger. */
const PID_MAX = 4_194_304;

const schema = netConfBase.extend({
  container: z
    .object({
      pid: z.number().int().min(1).max(PID_MAX).optional(),
      netns: z.string().startsWith('/', { message: 'container.netns must be an absolute path' }).optional(),
    })
    .strict()
    .optional(),
});
type Conf = z.infer<typeof schema>;

/** One way the container to join was named, and where that name came from (for messages). */
interface Target {
  what: string;
  path: string;
}

/** Every container named, from the config and CNI_ARGS; at least one. */
function targets(ctx: CniContext<Conf>): Target[] {
  const out: Target[] = [];
  const c = ctx.config.container;
  if (c?.pid !== undefined) out.push({ what: `container.pid ${c.pid}`, path: `/proc/${c.pid}/ns/net` });
  if (c?.netns !== undefined) out.push({ what: `container.netns ${c.netns}`, path: c.netns });
  const pid = ctx.args.CONTAINER_PID;
  if (pid !== undefined) {
    // digits only: the text becomes part of a /proc path
    if (!/^[1-9][0-9]{0,6}$/.test(pid) || Number(pid) > PID_MAX) {
      throw new CniError(ErrorCode.InvalidEnvironment, `CNI_ARGS: CONTAINER_PID must be a process ID`, `CONTAINER_PID=${pid}`);
    }
    out.push({ what: `CONTAINER_PID ${pid}`, path: `/proc/${pid}/ns/net` });
  }
  const netns = ctx.args.CONTAINER_NETNS;
  if (netns !== undefined) {
    if (!netns.startsWith('/')) {
      throw new CniError(ErrorCode.InvalidEnvironment, `CNI_ARGS: CONTAINER_NETNS must be an absolute path`, `CONTAINER_NETNS=${netns}`);
    }
    out.push({ what: `CONTAINER_NETNS ${netns}`, path: netns });
  }
  if (out.length === 0) {
    throw new CniError(
      ErrorCode.InvalidNetworkConfig,
      'container network mode needs the container to join',
      'set container.pid or container.netns in the config, or CONTAINER_PID or CONTAINER_NETNS in CNI_ARGS',
    );
  }
  return out;
}

/**
 * Open the named container's namespace. Only a regular nsfs file is opened:
 * a FIFO or a device named in CNI_ARGS would block or act on open(2).
 */
function openTarget(t: Target): NetNs {
  try {
    if (!fs.statSync(t.path).isFile()) throw new Error(`${t.path} is not a namespace file`);
    return NetNs.open(t.path);
  } catch (e) {
    throw new CniError(ErrorCode.UnknownContainer, `the container named by ${t.what} is not running or has no network namespace`, (e as Error).message);
  }
}

/**
 * CNI_NETNS, opened, once it is proven to be the namespace of every
 * container named; the caller closes it. Identity is st_dev+st_ino of the
 * open files (NetNs.sameAs), so no path can be re-pointed in between.
 */
function openJoinedNetns(ctx: CniContext<Conf>): NetNs {
  const named = targets(ctx);
  let netns: NetNs;
  try {
    netns = NetNs.open(ctx.netns);
  } catch (e) {
    throw new CniError(ErrorCode.InvalidNetns, `cannot open CNI_NETNS ${ctx.netns}`, (e as Error).message);
  }
  try {
    for (const t of named) {
      const target = openTarget(t);
      try {
        if (!netns.sameAs(target)) {
          throw new CniError(
            ErrorCode.InvalidNetns,
            `container network mode needs the network namespace of the container named by ${t.what}, but CNI_NETNS ${ctx.netns} is a different one`,
          );
        }
      } finally {
        target.close();
      }
    }
    return netns;
  } catch (e) {
    netns.close();
    throw e;
  }
}

/**
 * The namespace's interfaces (loopback excluded) and their global
 * addresses, read through the already verified open file: /proc/self/fd
 * names that very file, in this thread and in the daemon's workers alike.
 */
function joinedResult(netns: NetNs, ctx: CniContext<Conf>): Result {
  return namespaceResult(`/proc/self/fd/${netns.fd}`, ctx.cniVersion, ctx.netns);
}

function withJoinedNetns<T>(ctx: CniContext<Conf>, fn: (netns: NetNs) => T): T {
  const netns = openJoinedNetns(ctx);
  try {
    return fn(netns);
  } finally {
    netns.close();
  }
}

async function add(ctx: CniContext<Conf>): Promise<Result> {
  return withJoinedNetns(ctx, (netns) => joinedResult(netns, ctx));
}

async function del(): Promise<void> {
  // Nothing was created: the namespace and its interfaces belong to the
  // container that was joined, which may already be gone by now.
}

async function check(ctx: CniContext<Conf>): Promise<void> {
  const now = withJoinedNetns(ctx, (netns) => joinedResult(netns, ctx));
  requireStillPresent(now, ctx.prevResult, 'the joined container');
}

export const plugin: Plugin<Conf> = {
  about: "container: join another container's network namespace (cni-ts)",
  schema,
  add,
  del,
  check,
  // no gc, no status: nothing is kept, so there is nothing to collect, and always ready
};
