/**
 * portmap: publish container ports on the host, as a chained plugin after
 * bridge (ours or the reference's). It takes the `portMappings` capability,
 * finds the container's addresses in prevResult, and installs DNAT for
 * connections from outside and from the host itself (localhost included),
 * plus the masquerading that localhost and hairpin connections need, in the
 * project's own nftables table (rules.ts). Ports published on 127.0.0.0/8
 * answer connections started on the host only, and the route_localnet they
 * need is guarded by a martian drop (rules.ts header). It creates no
 * interface and passes prevResult through unchanged.
 *
 * A container's state is set and map elements only (rules.ts), so every
 * verb changes the kernel with at most one atomic nfnetlink batch of
 * elements, with no nft process and no listing on the usual path:
 *   ADD    read the records (conflicts, naming the holder), then one batch;
 *          under a host-wide lock so two ADDs cannot both see a port as
 *          free. The skeleton is written with `nft -f` only when its
 *          marker is not current (first ADD, a flush, a new version). Then,
 *          as the reference does, the conntrack entries of UDP flows to the
 *          published ports are deleted (shared/netlink/conntrack.ts), so a
 *          client already sending there meets the new DNAT
 *   DEL    one batch releasing what the record lists; without a record (or
 *          if the batch fails) list once over netlink and remove the
 *          elements carrying the owner's tag
 *   CHECK  list once (netlink) and compare
 *   GC     list once, remove the elements of this network's attachments
 *          that are not in cni.dev/valid-attachments
 *
 * ADD records its plan on disk and DEL and GC forget it (rules.ts, shared/nft/
 * records.ts): `cni-ts firewall-reload` rebuilds the table from those.
 *
 * ::1 (hostIP "::1", and wildcard mappings, as Docker serves them) cannot be
 * DNATed; a userspace relay, `cni-ts port-proxy`, serves it (shared/
 * portproxy): one call per verb, ADD's after the kernel's part.
 *
 * Error codes of our own (the spec leaves 100 and up to plugins; cluster-ipam
 * uses 100-102 in the same chain, so portmap starts at 110):
 *   110  a requested host port is published by another container
 *   111  CHECK: the container's mappings are not (all) installed
 */
import { CniError, ErrorCode } from '../../shared/cni/errors';
import { requirePrevResult, type CniContext, type Plugin } from '../../shared/cni/skel';
import type { Attachment, Result } from '../../shared/cni/types';
import { AF_INET } from '../../shared/netlink/consts';
import { cidrContains, parsePrefixed } from '../../shared/ip';
import { PORTMAP_LOCK_FILE } from '../../shared/paths';
import { sysctlSet } from '../../shared/netns/netns';
import { NftError } from '../../shared/nft/errors';
import { ownerTag, type OwnedTable, type Owner } from '../../shared/nft/table';
import { realTable } from '../../shared/nft/real';
import { IPPROTO, conntrackDeleteByDstPorts } from '../../shared/netlink/conntrack';
import { kernelMappings, loopback6Mappings, portProxy, type PortProxy, type ProxyRequest } from '../../shared/portproxy';
import { allPorts, claimsFor, containerAddrs, describeClaim, rejectUnsupported, schema, type Claim, type PortmapConf } from './config';
import {
  PORTMAP_TABLE,
  addBatch,
  ensureSkeleton,
  findConflicts,
  forgetPlan,
  heldOfListing,
  heldOfPlans,
  isClaimCollision,
  isStale,
  missingState,
  planElements,
  recordPlan,
  recordedPlan,
  recordedPlans,
  releaseBatch,
  removeTagged,
  type AddPlan,
  type Conflict,
  type Held,
} from './rules';

export const PortmapErrorCode = {
  /** A requested host port is published by another container: nothing was applied. */
  PortConflict: 110,
  /** CHECK: the container's mappings are not (all) installed. */
  MappingsMissing: 111,
} as const;

/** What portmap touches outside itself, so logic tests run on fakes. */
export interface PortmapDeps {
  /**
   * The portmap table (rules.ts): written with nft, read over netlink on a
   * real host, its own lock serialising ADD and GC host-wide.
   */
  table(): OwnedTable;
  /** Let packets from 127.0.0.0/8 be routed to `ipv4` (route_localnet on the interface that reaches it). */
  enableLocalnet(ipv4: string): void;
  /**
   * Forget the UDP flows to `hostPorts` that are not already answered by one
   * of `containerIPs` (conntrack), so their next datagram meets the new DNAT.
   */
  forgetUdpFlows?(hostPorts: readonly number[], containerIPs: readonly string[]): void;
  /** Publishing on ::1 through the userspace relay (shared/portproxy); absent: ::1 is not served. */
  proxy?: PortProxy;
}

type Ctx = CniContext<PortmapConf>;

function ownerOf(ctx: Ctx): Required<Owner> {
  return { network: ctx.config.name, containerID: ctx.containerId, ifname: ctx.ifname };
}

function planOf(ctx: Ctx, prev: Result | undefined): AddPlan {
  const addrs = containerAddrs(prev, ctx.ifname);
  return {
    owner: ownerOf(ctx),
    // ::1 mappings are the relay's alone (proxyOf): the kernel cannot DNAT from ::1
    claims: claimsFor(kernelMappings(ctx.config.runtimeConfig?.portMappings ?? []), addrs),
    addrs,
    masq: { snat: ctx.config.snat, masqAll: ctx.config.masqAll },
  };
}

/** "cni-ts:<network>:<containerID>:<ifname>" -> words for an error message. */
function describeOwner(tag: string | undefined): string {
  const parts = tag?.split(':') ?? [];
  if (parts.length !== 4) return 'another container';
  return `container ${parts[2]} (network ${parts[1]}, ${parts[3]})`;
}

function portConflict(conflicts: readonly Conflict[]): CniError {
  const first = conflicts[0];
  const lines = conflicts.map((c) => `${describeClaim(c.claim)} overlaps ${c.held} of ${describeOwner(c.ownerTag)}`);
  return new CniError(
    PortmapErrorCode.PortConflict,
    `host port ${describeClaim(first.claim)} is already published by ${describeOwner(first.ownerTag)}`,
    `${[...new Set(lines)].join('; ')}; nothing was applied`,
  );
}

function collisionConflict(claims: readonly Claim[]): CniError {
  return new CniError(
    PortmapErrorCode.PortConflict,
    'a requested host port was published by another container at the same time',
    `requested: ${claims.map(describeClaim).join(', ')}; nothing was applied`,
  );
}

/**
 * Remove one owner's elements: one batch releasing what `plan` installed
 * when it is known, else (or when that batch fails: table gone, a key that
 * is not ours) by listing once and removing what carries the owner's tag.
 */
function removeState(table: OwnedTable, owner: Required<Owner>, plan: AddPlan | undefined): void {
  if (plan) {
    try {
      table.runElements(releaseBatch(table, planElements(plan)));
      return;
    } catch (err) {
      if (!(err instanceof NftError) || !['exists', 'busy', 'not-found'].includes(err.kind)) throw err;
    }
  }
  const tag = ownerTag(owner);
  removeTagged(table, (t) => t === tag);
}

/** What the ::1 relay is asked to serve for this attachment: explicit ::1 mappings, and wildcard ones with ipv6Localhost. */
function proxyOf(ctx: Ctx): ProxyRequest {
  const all = ctx.config.runtimeConfig?.portMappings ?? [];
  const mappings = ctx.config.ipv6Localhost ? all : loopback6Mappings(all);
  return { owner: ownerOf(ctx), netns: ctx.netns, mappings, addrs: containerAddrs(ctx.prevResult, ctx.ifname) };
}

export function makePlugin(deps: PortmapDeps): Plugin<PortmapConf> {
  /**
   * ::1 (shared/portproxy): after the kernel's part, and before answering,
   * the relay serves the attachment's ::1 ports; DEL is the undo when it
   * cannot, so a failed ADD leaves nothing behind.
   */
  async function add(ctx: Ctx): Promise<Result> {
    const result = await addRules(ctx);
    try {
      deps.proxy?.add(proxyOf(ctx), ctx.log);
    } catch (err) {
      await del(ctx);
      throw err;
    }
    return result;
  }

  async function addRules(ctx: Ctx): Promise<Result> {
    rejectUnsupported(ctx.config);
    const prev = ctx.prevResult;
    if (!prev) throw new CniError(ErrorCode.InvalidNetworkConfig, 'portmap must be called as a chained plugin: prevResult is missing');
    const result: Result = { ...prev, cniVersion: ctx.cniVersion };
    const plan = planOf(ctx, prev);
    if (plan.claims.length === 0) return result;
    const table = deps.table();
    table.withLock(() => {
      // Who holds what: the records when the table keeps them (no listing),
      // else the table itself, read once over netlink.
      const plans = table.records ? recordedPlans(table) : undefined;
      const held: Held[] = plans ? heldOfPlans(plans) : heldOfListing(table.list());
      const conflicts = findConflicts(held, plan.owner, plan.claims);
      if (conflicts.length) throw portConflict(conflicts);
      // A skeleton just (re)written may follow a flush or an older version:
      // the batch then puts every recorded owner's elements back too. If
      // the records disagree with what the table holds (a stale record),
      // our own elements alone are tried.
      const rebuilt = ensureSkeleton(table);
      try {
        try {
          table.runElements(addBatch(table, plan, held, rebuilt ? (plans ?? []) : undefined));
        } catch (err) {
          if (!rebuilt || !(err instanceof NftError) || err.kind !== 'exists') throw err;
          table.runElements(addBatch(table, plan, held));
        }
      } catch (err) {
        // The kernel refused a key another owner holds that the records did
        // not show (a writer that ignores them): name it from the table.
        if (isClaimCollision(err)) {
          const found = findConflicts(heldOfListing(table.list()), plan.owner, plan.claims);
          throw found.length ? portConflict(found) : collisionConflict(plan.claims);
        }
        throw err;
      }
      try {
        recordPlan(table, plan);
      } catch (err) {
        removeState(table, plan.owner, plan);
        throw err;
      }
      // route_localnet only once the skeleton put the martian guard in
      // place (rules.ts), so it is never on without it, not even when this
      // ADD fails; a failure here takes the ADD's state out again.
      const v4 = plan.claims.find((c) => c.family === 'ipv4');
      if (ctx.config.snat && v4) {
        try {
          deps.enableLocalnet(v4.containerIP);
        } catch (err) {
          removeState(table, plan.owner, plan);
          forgetPlan(table, plan.owner);
          throw err;
        }
      }
    });
    // NAT is decided on a flow's first packet: a UDP client that was already
    // sending to the port keeps reaching whatever answered before. As the
    // reference portmap does, after the rules are in: failures only inform.
    const udpPorts = [...new Set(allPorts(plan.claims).filter((c) => c.protocol === 'udp').map((c) => c.hostPort))];
    if (udpPorts.length) {
      try {
        deps.forgetUdpFlows?.(udpPorts, plan.claims.map((c) => c.containerIP));
      } catch (e) {
        ctx.log(`portmap: could not delete stale UDP conntrack entries for ports ${udpPorts.join(', ')}: ${(e as Error).message}`);
      }
    }
    return result;
  }

  async function del(ctx: Ctx): Promise<void> {
    // No rejectUnsupported here: an ADD that refused the config applied
    // nothing, and the runtime's cleanup DEL must still succeed. The record
    // says what ADD installed; prevResult is not trusted to name keys (it
    // could name another container's), the owner tag is.
    const owner = ownerOf(ctx);
    const table = deps.table();
    table.withLock(() => {
      removeState(table, owner, recordedPlan(table, owner));
      forgetPlan(table, owner);
    });
    deps.proxy?.del(owner);
  }

  async function check(ctx: Ctx): Promise<void> {
    rejectUnsupported(ctx.config);
    const prev = requirePrevResult(ctx);
    deps.proxy?.check(proxyOf(ctx));
    const plan = planOf(ctx, prev);
    if (plan.claims.length === 0) return;
    const problems = missingState(deps.table().list(), plan);
    if (problems.length) {
      throw new CniError(PortmapErrorCode.MappingsMissing, `port mappings of container ${ctx.containerId} are not installed`, problems.join('; '));
    }
  }

  async function gc(ctx: Ctx, valid: Attachment[]): Promise<void> {
    const keep = new Set<string>();
    for (const a of valid) {
      try {
        keep.add(ownerTag({ network: ctx.config.name, containerID: a.containerID, ifname: a.ifname }));
      } catch {
        // an ID that cannot be part of a tag never owned anything of ours
      }
    }
    const table = deps.table();
    table.withLock(() => {
      removeTagged(table, (tag) => isStale(tag, ctx.config.name, keep));
      for (const p of recordedPlans(table)) {
        if (isStale(ownerTag(p.owner), ctx.config.name, keep)) forgetPlan(table, p.owner);
      }
    });
    deps.proxy?.gc(ctx.config.name, valid);
  }

  return {
    about: 'portmap: publish container ports on the host with nftables (cni-ts)',
    schema,
    add,
    del,
    check,
    gc,
  };
}

/* ------------------------------------------------------------------ */
/* The real host: nft, a lock file, sysctl.                           */
/* ------------------------------------------------------------------ */

/** Root-only, like the native binding's cache directory beside it. */
export const LOCK_FILE = PORTMAP_LOCK_FILE;

/**
 * Never turned off again: other software on the host (the reference
 * portmap, kube-proxy) may rely on it, and nothing records who turned it on.
 * That is safe only while our input chain's martian guard exists, which
 * every DEL leaves in place (the skeleton stays); a `nft flush ruleset`
 * removes the guard and leaves route_localnet on until the next ADD.
 *
 * The reference's getRoutableHostIF + enableLocalnetRouting: the interface
 * of the longest main-table route to the container (the bridge), or "all"
 * when none is found. route_localnet is read as "all OR interface", so
 * either lets 127.0.0.0/8 cross to the container and the replies back.
 */
function enableLocalnet(ipv4: string): void {
  // netlink only loads on this path: most plugin runs never need it
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const netlink = require('../../shared/netlink') as typeof import('../../shared/netlink');
  const ifname = netlink.withHandle(undefined, (h) => {
    let best: { len: number; oif: number } | undefined;
    for (const r of h.routeList(AF_INET)) {
      if (r.oifIndex === undefined) continue;
      const dst = r.dst === 'default' ? { prefix: 0 } : parsePrefixed(r.dst);
      if (!dst || (r.dst !== 'default' && !cidrContains(r.dst, ipv4))) continue;
      const len = dst.prefix;
      if (!best || len > best.len) best = { len, oif: r.oifIndex };
    }
    return best ? h.linkByIndex(best.oif)?.name : undefined;
  });
  // The slash form: interface names may contain dots.
  sysctlSet(`net/ipv4/conf/${ifname ?? 'all'}/route_localnet`, '1');
}

export const realDeps: PortmapDeps = {
  table: () => realTable(PORTMAP_TABLE, { lockFile: LOCK_FILE }),
  enableLocalnet,
  forgetUdpFlows: (ports, containerIPs) => {
    conntrackDeleteByDstPorts(IPPROTO.udp, ports, containerIPs);
  },
  proxy: portProxy({ conflictCode: PortmapErrorCode.PortConflict, missingCode: PortmapErrorCode.MappingsMissing }),
};

export const plugin = makePlugin(realDeps);
