/**
 * macvlan and ipvlan are one plugin with two kinds of child link, as in
 * netavark's one vlan driver with per-kind data: a link of the network's
 * parent ("master", 802.1q parents created on demand: shared/vlan.ts),
 * created straight inside the container's namespace as CNI_IFNAME, with
 * addresses and routes from the IPAM. ADD, DEL, CHECK, GC and STATUS are
 * written once, here; a kind (ChildLinkKind) says only what differs: its
 * config schema, the link's attributes, how the kernel's refusals read, how
 * the IPAM's result is shaped for it, and what CHECK compares.
 *
 * ADD, in order (each step's undo pushed as soon as it succeeds):
 *   0. every check that needs no change: the parent resolves, the MTU fits;
 *   1. the parent (a managed VLAN link is created and counted here);
 *   2. the child link, under a temporary name, then renamed to CNI_IFNAME;
 *   3. the IPAM's addresses and routes on it (shared/container-iface.ts);
 *   4. with dns.enabled, the container's names on the host's resolver,
 *      answered at 127.0.0.11 inside the container (a macvlan/ipvlan
 *      container cannot reach its host, so a resolver on a host address is
 *      useless to it: shared/dns/netns-listener.ts). With the etcd IPAM the
 *      names are written to etcd first, beside the network's addresses
 *      (shared/dns/cluster.ts), and every host's resolver with a container
 *      on the network answers them: one underlay subnet spans the hosts, so
 *      its names do too. etcd down: code 11, everything undone.
 */
import { z } from 'zod';
import { CniContext, Plugin, requirePrevResult } from './cni/skel';
import { CniError, ErrorCode } from './cni/errors';
import type { Attachment, Result } from './cni/types';
import { EBUSY, EINVAL, NetlinkHandle, isNetlinkError, withHandle, type Link, type IpvlanMode, type MacvlanMode, type IpvlanFlag } from './netlink';
import { NetNs } from './netns/netns';
import { UndoStack } from './undo';
import { applyToInterface, ipamAddressesFor, withHandles, type IpamClient } from './container-iface';
import { checkContainerAttachment, checkFailed } from './verify';
import { type DnsConf, checkName, dnsEnabled, entryOf, gcNames, registerNameInNetns, removeNameInNetns } from './dns';
import { type ClusterScope, type EtcdFields, clusterKey, clusterNames, clusterRef, decodeRecord } from './dns/cluster';
import type { KV } from './etcd/kv';
import { canonicalIp } from './netlink/ipaddr';
import { ParentManager, childTempName, delChild, gcParent, vlanUser, type ChildAttachment, type ParentNetConf } from './vlan';

/** What every child-link config has (parentConfFields, netConfBase, mtu, mode). */
export interface ChildLinkConf extends ParentNetConf {
  mode: string;
  /** at most the parent's */
  mtu?: number;
  ipam?: { type: string };
  /** name resolution at 127.0.0.11 inside the container (shared/dns): off unless dns.enabled */
  dns?: DnsConf;
  /** Docker's --internal, for the resolver: names outside the network are not forwarded (NXDOMAIN) */
  internal?: boolean;
  runtimeConfig?: { aliases?: unknown } & Record<string, unknown>;
}

/**
 * Where the network's names are kept cluster-wide: the IPAM's etcd store
 * (ipam/client.ts clusterStore), passed in because shared/ does not import
 * the IPAM. open() connects; the caller closes.
 */
export interface ClusterNameStore {
  readonly scope: ClusterScope;
  /** the connection's fields for the resolver (never a secret) */
  readonly etcd: EtcdFields;
  open(): Promise<KV>;
}

/** The kind's own attributes of the new link; name, parent and namespace are the factory's. */
export type ChildLinkAttrs =
  | { kind: 'macvlan'; mode: MacvlanMode; mtu?: number; mac?: string }
  | { kind: 'ipvlan'; mode: IpvlanMode; flag?: IpvlanFlag; mtu?: number };

export interface ChildLinkKind<C extends ChildLinkConf> {
  kind: ChildLinkAttrs['kind'];
  about: string;
  schema: z.ZodType<C, z.ZodTypeDef, unknown>;
  ipam: IpamClient;
  /** with dns.enabled: where the names are cluster-wide, undefined when they stay on the host (not the etcd IPAM) */
  clusterStore(ctx: CniContext<C>): Promise<ClusterNameStore | undefined>;
  /** the link to create on `parent` (the parent link as it is now) */
  link(conf: C, parent: Link): ChildLinkAttrs;
  /** why the kernel said EINVAL to the new link, in the config's terms (the parent's other links decide) */
  invalidBecause(conf: C, parentName: string): string;
  /** the IPAM's result made the kind's, before it is applied: the routes it takes and the gateways it reports */
  shapeResult?(conf: C, result: Result): void;
  /** CHECK: where the link reports its mode */
  modeOf(link: Link): string | undefined;
  /** CHECK: false where the link's MAC is the parent's (ipvlan), not the plugin's to keep */
  checkMac: boolean;
  /** CHECK: compare the config's MTU, when it gives one */
  checkMtu: boolean;
}

/** A config enum whose refusal names the kind and what it lists: `unknown ipvlan flag "x": expected one of ...` (code 7). */
export function kindEnum<T extends readonly [string, ...string[]]>(kind: ChildLinkAttrs['kind'], what: string, values: T) {
  return z.enum(values, {
    errorMap: (issue, c) => ({
      message: issue.code === 'invalid_enum_value' ? `unknown ${kind} ${what} ${JSON.stringify(issue.received)}: expected one of ${values.join(', ')}` : c.defaultError,
    }),
  });
}

/** A CNI plugin for one kind of child link. */
export function childLinkPlugin<C extends ChildLinkConf>(k: ChildLinkKind<C>): Plugin<C> {
  type Ctx = CniContext<C>;

  const add = (ctx: Ctx): Promise<Result> =>
    withHandles(async (keep) => {
      const conf = ctx.config;
      const host = keep(NetlinkHandle.open());
      const ns = keep(NetNs.open(ctx.netns));
      const cont = keep(NetlinkHandle.open(ctx.netns));
      const parents = new ParentManager(host, conf.stateDir);
      // 0. every check before anything is created: bad input changes nothing
      const parent = parents.resolve(conf);
      const cluster = dnsEnabled(conf) ? await k.clusterStore(ctx) : undefined;
      if (conf.mtu !== undefined && conf.mtu > parent.mtu) {
        throw new CniError(ErrorCode.InvalidNetworkConfig, `mtu ${conf.mtu} is above the MTU ${parent.mtu} of master ${parent.name}`);
      }
      return UndoStack.run(async (undo) => {
        // 1. the parent
        const lower = parents.acquire(parent, vlanUser(ctx));
        if (parent.vlan) undo.push('vlan', () => parents.release(parent.name, vlanUser(ctx)));

        // 2. the child link, created inside the container's namespace under a
        // temporary name, then renamed: some kernels (6.1) check the new name
        // against the creating namespace too, where the host's own eth0 would
        // clash with CNI_IFNAME (the reference plugins do the same).
        const tmp = childTempName();
        try {
          host.linkAdd({ ...k.link(conf, lower), name: tmp, parentIndex: lower.index, netnsFd: ns.fd });
        } catch (e) {
          throw explainRefusal(k, e, conf, parent.name);
        }
        undo.push(k.kind, () => cont.linkDelIfExists(tmp));
        cont.linkRename(tmp, ctx.ifname);
        undo.push(k.kind, () => cont.linkDelIfExists(ctx.ifname));

        // 3. addresses and routes
        const result = await ipamAddressesFor(k.ipam, ctx, undo);
        k.shapeResult?.(conf, result);
        const ips = result.ips ?? [];
        const link = applyToInterface(cont, ctx.ifname, { ips, routes: result.routes ?? [] });

        result.interfaces = [{ name: ctx.ifname, mac: link.mac, sandbox: ctx.netns }];
        for (const ip of ips) ip.interface = 0;
        result.cniVersion = ctx.cniVersion;

        // 4. the container's names; result.dns (127.0.0.11) for resolv.conf
        if (dnsEnabled(conf)) {
          // etcd first: other hosts learn the names from there, and a failure (11) leaves nothing local to undo
          if (cluster) {
            const kv = keep(await cluster.open());
            const own = { containerId: ctx.containerId, ifname: ctx.ifname };
            await clusterNames(kv, cluster.scope, { op: 'add', entry: entryOf(ctx, ips.map((ip) => ip.address.split('/')[0]!)) });
            undo.push('dns record in etcd', () => clusterNames(kv, cluster.scope, { op: 'del', ...own }));
          }
          registerNameInNetns(ctx, result, { internal: conf.internal ?? false, ...(cluster ? { cluster: clusterRef(cluster.scope, cluster.etcd) } : {}) });
          undo.push('dns', () => removeNameInNetns(ctx));
        }
        return result;
      }, ctx.log);
    });

  /** fn on the network's etcd store, when its names are cluster-wide (dns.enabled and the etcd IPAM) */
  async function inCluster(ctx: Ctx, fn: (kv: KV, scope: ClusterScope) => Promise<void>): Promise<void> {
    if (!dnsEnabled(ctx.config)) return;
    const cluster = await k.clusterStore(ctx);
    if (!cluster) return;
    const kv = await cluster.open();
    try {
      await fn(kv, cluster.scope);
    } finally {
      kv.close();
    }
  }

  return {
    about: k.about,
    schema: k.schema,
    createsInterface: true,
    add,
    async del(ctx) {
      // the etcd record first: if etcd cannot answer, DEL fails (11) with the
      // attachment whole, and the runtime's retry finds it (absent is fine)
      await inCluster(ctx, (kv, scope) => clusterNames(kv, scope, { op: 'del', containerId: ctx.containerId, ifname: ctx.ifname }));
      removeNameInNetns(ctx);
      if (k.ipam.hasIpam(ctx)) await k.ipam.ipamDel(ctx);
      delChild(ctx);
    },
    async check(ctx) {
      requirePrevResult(ctx); // code 7 before anything is read
      const parentLink = checkParent(ctx);
      const { ifname, config: conf } = ctx;
      await checkContainerAttachment(ctx, k.ipam, {
        kind: k.kind,
        checkMac: k.checkMac,
        extra: (link) => {
          const mode = k.modeOf(link);
          if (mode !== conf.mode) throw checkFailed(`${ifname} is in ${k.kind} mode ${mode}, expected ${conf.mode}`);
          if (link.parentIndex !== parentLink.index) throw checkFailed(`${ifname} is not a${k.kind === 'ipvlan' ? 'n' : ''} ${k.kind} of ${parentLink.name}`);
          if (k.checkMtu && conf.mtu !== undefined && link.mtu !== conf.mtu) throw checkFailed(`${ifname} has MTU ${link.mtu}, expected ${conf.mtu}`);
        },
      });
      await inCluster(ctx, (kv, scope) => checkClusterRecord(kv, scope, ctx));
      await checkName(ctx);
    },
    async gc(ctx, valid: Attachment[]) {
      // this node's records of unlisted attachments, then this host's
      await inCluster(ctx, (kv, scope) => clusterNames(kv, scope, { op: 'gc', valid }));
      gcNames(ctx, valid);
      if (k.ipam.hasIpam(ctx)) await k.ipam.ipamGc(ctx, valid);
      gcParent(ctx.config, valid);
    },
    async status(ctx) {
      if (k.ipam.hasIpam(ctx)) await k.ipam.ipamStatus(ctx);
    },
  };
}

/**
 * The kernel's terse EINVAL/EBUSY on RTM_NEWLINK, said in the config's terms
 * (code 7): EBUSY, the parent carries the other kind of child (a parent has
 * macvlans or ipvlans, never both); EINVAL, the kind says why.
 */
function explainRefusal<C extends ChildLinkConf>(k: ChildLinkKind<C>, e: unknown, conf: C, parent: string): unknown {
  if (isNetlinkError(e, EBUSY)) {
    const other = k.kind === 'macvlan' ? 'ipvlan' : 'macvlan';
    return new CniError(ErrorCode.InvalidNetworkConfig, `master ${parent} is in use by another kind of link (${other}?)`, e.message);
  }
  if (isNetlinkError(e, EINVAL)) return new CniError(ErrorCode.InvalidNetworkConfig, k.invalidBecause(conf, parent), e.message);
  return e;
}

/**
 * CHECK of the names in etcd, as other hosts read them: the attachment's
 * record is there, valid, and names exactly prevResult's addresses (all on
 * the one child link; code 999 otherwise).
 */
async function checkClusterRecord(kv: KV, scope: ClusterScope, att: CniContext<ChildLinkConf>): Promise<void> {
  const key = clusterKey(scope.prefix, scope.network, att.containerId, att.ifname);
  const { results } = await kv.txn({ success: [{ get: key }] }, Date.now() + (scope.timeoutMs ?? 5000));
  const got = results[0]?.[0];
  const rec = got ? decodeRecord(got, scope.prefix, scope.network, scope.subnets) : undefined;
  if (!rec || !('record' in rec)) throw checkFailed(`the DNS record of ${att.containerId}/${att.ifname} is missing from etcd${rec ? ` (${rec.ignored})` : ''}`);
  const want = (requirePrevResult(att).ips ?? []).map((ip) => canonicalIp(ip.address.split('/')[0]!)).sort().join(', ');
  const have = [...rec.record.v4, ...rec.record.v6].map(canonicalIp).sort().join(', ');
  if (have !== want) throw checkFailed(`the DNS record of ${att.containerId}/${att.ifname} in etcd names [${have}], expected [${want}]`);
}

/**
 * CHECK, host side: the parent resolves as it did at ADD, a managed VLAN
 * still counts this attachment, and the parent link exists. Returns it, for
 * comparing with the child's parent index. Failures are code 999.
 */
function checkParent(att: ChildAttachment): Link {
  return withHandle(undefined, (host) => {
    const parents = new ParentManager(host, att.config.stateDir);
    const parent = parents.resolve(att.config);
    if (parent.vlan && !parents.holds(parent.name, vlanUser(att))) throw checkFailed(`${att.ifname} is not counted as a user of VLAN link ${parent.name}`);
    const l = host.linkByName(parent.name);
    if (!l) throw checkFailed(`master ${parent.name} is missing`);
    return l;
  });
}
