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
 * Every verb is at most one atomic `nft -f -` that changes something:
 *   ADD    list once (conflicts), then one transaction; under a host-wide
 *          lock so two ADDs cannot both see a port as free. Then, as the
 *          reference does, the conntrack entries of UDP flows to the
 *          published ports are deleted (shared/netlink/conntrack.ts), so a
 *          client already sending there meets the new DNAT
 *   DEL    one transaction, no listing when prevResult and the mappings
 *          are given; otherwise (or if they do not match what is
 *          installed) list once and remove what jumps to our chains
 *   CHECK  list once and compare
 *   GC     list once, remove the chains and elements of this network's
 *          attachments that are not in cni.dev/valid-attachments
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
import { ownerTag, tagMatches, type OwnedTable, type Owner } from '../../shared/nft/table';
import { realTable } from '../../shared/nft/real';
import { IPPROTO, conntrackDeleteByDstPorts } from '../../shared/netlink/conntrack';
import { kernelMappings, portProxy, type PortProxy, type ProxyRequest } from '../../shared/portproxy';
import { allPorts, claimsFor, containerAddrs, describeClaim, rejectUnsupported, schema, type Claim, type PortmapConf } from './config';
import {
  PORTMAP_TABLE,
  addTransaction,
  delTransaction,
  findConflicts,
  forgetPlan,
  recordPlan,
  recordedPlans,
  isClaimCollision,
  isTableGone,
  keysOf,
  missingState,
  ownerChains,
  removeOwners,
  staleOwners,
  type AddPlan,
  type Conflict,
  type Key,
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
 * Remove one owner's chains and elements: one transaction when `keys` are
 * all it holds, else (or when the keys are not all ours) by listing once.
 */
function removeState(table: OwnedTable, owner: Required<Owner>, keys: readonly Key[]): void {
  try {
    table.run(delTransaction(owner, keys));
    return;
  } catch (err) {
    // DEL is idempotent: no table means nothing of ours is left.
    if (isTableGone(err)) return;
    // Keys that are not (all) ours, or elements we did not know of still
    // jumping to our chains: fall back to reading the table once.
    if (!(err instanceof NftError) || !['exists', 'busy', 'not-found'].includes(err.kind)) throw err;
  }
  removeOwners(table, () => [ownerChains(owner)]);
}

/** What the ::1 relay is asked to serve for this attachment. */
function proxyOf(ctx: Ctx): ProxyRequest {
  return { owner: ownerOf(ctx), netns: ctx.netns, mappings: ctx.config.runtimeConfig?.portMappings ?? [], addrs: containerAddrs(ctx.prevResult, ctx.ifname) };
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
      const listing = table.list();
      const conflicts = findConflicts(listing, plan.owner, plan.claims);
      if (conflicts.length) throw portConflict(conflicts);
      try {
        table.run(addTransaction(plan, listing, table));
      } catch (err) {
        // Only a writer that ignores the lock can get here: the kernel
        // refused an element another owner added since our listing.
        if (isClaimCollision(err)) throw collisionConflict(plan.claims);
        throw err;
      }
      try {
        recordPlan(table, plan);
      } catch (err) {
        removeState(table, plan.owner, keysOf(plan.claims, ctx.config.snat));
        throw err;
      }
      // route_localnet only once the transaction put the martian guard in
      // place (rules.ts), so it is never on without it, not even when this
      // ADD fails; a failure here takes the ADD's state out again.
      const v4 = plan.claims.find((c) => c.family === 'ipv4');
      if (ctx.config.snat && v4) {
        try {
          deps.enableLocalnet(v4.containerIP);
        } catch (err) {
          removeState(table, plan.owner, keysOf(plan.claims, ctx.config.snat));
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
    // nothing, and the runtime's cleanup DEL must still succeed.
    const owner = ownerOf(ctx);
    const table = deps.table();
    // The keys an ADD with this prevResult and these mappings registered;
    // anything unreadable just means we do not know them.
    let keys: Key[] = [];
    try {
      const plan = planOf(ctx, ctx.prevResult);
      keys = keysOf(plan.claims, ctx.config.snat);
    } catch {
      keys = [];
    }
    removeState(table, owner, keys);
    forgetPlan(table, owner);
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
      removeOwners(table, (listing) => staleOwners(listing, ctx.config.name, keep));
      for (const p of recordedPlans(table)) {
        const tag = ownerTag(p.owner);
        if (p.owner.network === ctx.config.name && ![...keep].some((k) => tagMatches(tag, k))) forgetPlan(table, p.owner);
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
