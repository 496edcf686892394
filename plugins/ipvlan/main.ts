/**
 * ipvlan: Docker's ipvlan driver as a CNI plugin, with the reference ipvlan
 * plugin's config names. Per container: an ipvlan link of the network's
 * parent ("master"), created directly inside the container's namespace as
 * CNI_IFNAME. Every ipvlan link shares the parent's MAC; the kernel tells
 * containers apart by IP address.
 *
 *   { "type": "ipvlan", "master": "eth0", "mode": "l3", "flag": "bridge",
 *     "ipam": { "type": "cluster-ipam", ... } }
 *
 * Modes: l2 (the parent switches frames: ARP works, routes via a gateway as
 * IPAM says), l3 and l3s (the parent routes packets: the link has no ARP, so
 * every route goes out of the device without a gateway, and a default route
 * via the device is always installed). The MTU is the parent's unless a
 * lower one is asked for. The parent and its 802.1q VLAN handling are
 * macvlan's (shared/vlan.ts).
 *
 * One parent has one ipvlan mode: the kernel keeps the mode per parent, and
 * a new link in another mode switches every link of that parent.
 */
import { z } from 'zod';
import { CniContext, Plugin, requirePrevResult } from '../../shared/cni/skel';
import { CniError, ErrorCode } from '../../shared/cni/errors';
import { netConfBase } from '../../shared/cni/config';
import type { Attachment, IPConfig, Result, Route } from '../../shared/cni/types';
import { EBUSY, EINVAL, NetlinkHandle, isNetlinkError } from '../../shared/netlink';
import { NetNs } from '../../shared/netns/netns';
import { ParentManager, checkChild, childTempName, delChild, gcParent, parentConfFields, vlanUser } from '../../shared/vlan';
import { UndoStack } from '../../shared/undo';
import * as ipam from '../../ipam/client';

const MODES = ['l2', 'l3', 'l3s'] as const;
const FLAGS = ['bridge', 'private', 'vepa'] as const;

function oneOf<T extends readonly [string, ...string[]]>(what: string, values: T) {
  return z.enum(values, {
    errorMap: (issue, c) => ({
      message: issue.code === 'invalid_enum_value' ? `unknown ipvlan ${what} ${JSON.stringify(issue.received)}: expected one of ${values.join(', ')}` : c.defaultError,
    }),
  });
}

const schema = netConfBase.extend({
  // master, vlan, stateDir
  ...parentConfFields,
  mode: oneOf('mode', MODES).default('l2'),
  flag: oneOf('flag', FLAGS).default('bridge'),
  /** at most the parent's; the parent's when omitted */
  mtu: z.number().int().min(68).max(65535).optional(),
});
type Conf = z.infer<typeof schema>;
type Ctx = CniContext<Conf>;

const isL3 = (conf: Conf) => conf.mode !== 'l2';

/**
 * The routes the container gets. l2: IPAM's, via its gateway. l3/l3s: the
 * parent routes and nothing answers ARP on the link, so IPAM's routes go
 * out of the device without a gateway, and a default route via the device
 * is added for each address family the container has.
 */
export function containerRoutes(mode: string, ips: readonly IPConfig[], routes: readonly Route[]): Route[] {
  if (mode === 'l2') return routes.map((r) => ({ ...r, gw: r.gw ?? gatewayFor(ips, r.dst) })).map(dropUndefinedGw);
  const out: Route[] = routes.map(({ gw: _gw, ...r }) => r);
  for (const family of ['0.0.0.0/0', '::/0']) {
    const has = ips.some((ip) => ip.address.includes(':') === family.includes(':'));
    if (has && !out.some((r) => r.dst === family)) out.push({ dst: family });
  }
  return out;
}

function dropUndefinedGw(r: Route): Route {
  if (r.gw === undefined) delete r.gw;
  return r;
}

function gatewayFor(ips: readonly IPConfig[], dst: string): string | undefined {
  const v6 = dst.includes(':');
  return ips.find((ip) => ip.address.includes(':') === v6 && ip.gateway)?.gateway;
}

async function add(ctx: Ctx): Promise<Result> {
  const conf = ctx.config;
  // Opened inside the try: in the long-lived daemon, a handle left open when
  // a later one fails to open (CNI_NETNS gone meanwhile) is a leaked fd per call.
  const opened: Array<{ close(): void }> = [];
  const keep = <T extends { close(): void }>(h: T): T => (opened.push(h), h);
  try {
    const host = keep(NetlinkHandle.open());
    const ns = keep(NetNs.open(ctx.netns));
    const cont = keep(NetlinkHandle.open(ctx.netns));
    const parents = new ParentManager(host, conf.stateDir);
    // Every check before anything is created: bad input changes nothing.
    const parent = parents.resolve(conf);
    if (conf.mtu !== undefined && conf.mtu > parent.mtu) {
      throw new CniError(ErrorCode.InvalidNetworkConfig, `mtu ${conf.mtu} is above the MTU ${parent.mtu} of master ${parent.name}`);
    }
    return await UndoStack.run(async (undo) => {
      // 1. the parent (a VLAN sub-interface is created and counted here)
      const lower = parents.acquire(parent, vlanUser(ctx));
      if (parent.vlan) undo.push('vlan', () => parents.release(parent.name, vlanUser(ctx)));

      // 2. the ipvlan, created straight inside the container's namespace
      // under a temporary name, then renamed: some kernels (6.1) check the
      // new name against the creating namespace too, where the host's own
      // eth0 would clash with CNI_IFNAME (the reference plugin does the same).
      const tmp = childTempName();
      try {
        host.linkAdd({ kind: 'ipvlan', name: tmp, parentIndex: lower.index, mode: conf.mode, flag: conf.flag, mtu: conf.mtu ?? lower.mtu, netnsFd: ns.fd });
      } catch (e) {
        if (isNetlinkError(e, EBUSY)) throw new CniError(ErrorCode.InvalidNetworkConfig, `master ${parent.name} is in use by another kind of link (macvlan?)`, e.message);
        if (isNetlinkError(e, EINVAL)) throw new CniError(ErrorCode.InvalidNetworkConfig, `master ${parent.name} cannot carry an ipvlan in mode ${conf.mode}`, e.message);
        throw e;
      }
      undo.push('ipvlan', () => cont.linkDelIfExists(tmp));
      cont.linkRename(tmp, ctx.ifname);
      undo.push('ipvlan', () => cont.linkDelIfExists(ctx.ifname));

      // 3. addresses and routes
      const result: Result = ipam.hasIpam(ctx) ? await ipam.ipamAdd(ctx) : { cniVersion: ctx.cniVersion, ips: [], routes: [] };
      if (ipam.hasIpam(ctx)) undo.push('ipam', () => ipam.ipamDel(ctx));
      const ips = result.ips ?? [];
      for (const ip of ips) cont.addrAdd(ctx.ifname, ip.address, { noDad: ip.address.includes(':') });
      cont.linkSetUp(ctx.ifname);
      const link = cont.link(ctx.ifname);
      const routes = containerRoutes(conf.mode, ips, result.routes ?? []);
      for (const r of routes) cont.routeAdd({ dst: r.dst, gw: r.gw, oifIndex: link.index });
      result.routes = routes;
      // l3: no gateway is used, so none is reported
      if (isL3(conf)) for (const ip of ips) delete ip.gateway;

      result.interfaces = [{ name: ctx.ifname, mac: link.mac, sandbox: ctx.netns }];
      for (const ip of ips) ip.interface = 0;
      result.cniVersion = ctx.cniVersion;
      return result;
    });
  } finally {
    for (const h of opened.reverse()) h.close();
  }
}

async function del(ctx: Ctx): Promise<void> {
  if (ipam.hasIpam(ctx)) await ipam.ipamDel(ctx);
  delChild(ctx);
}

async function check(ctx: Ctx): Promise<void> {
  const conf = ctx.config;
  // ipvlan links carry the parent's MAC: not ours to compare
  checkChild(ctx, requirePrevResult(ctx), { kind: 'ipvlan', mode: conf.mode, modeOf: (l) => l.ipvlanMode, checkMac: false });
  if (ipam.hasIpam(ctx)) await ipam.ipamCheck(ctx);
}

async function gc(ctx: Ctx, valid: Attachment[]): Promise<void> {
  if (ipam.hasIpam(ctx)) await ipam.ipamGc(ctx, valid);
  gcParent(ctx.config, valid);
}

async function status(ctx: Ctx): Promise<void> {
  if (ipam.hasIpam(ctx)) await ipam.ipamStatus(ctx);
}

export const plugin: Plugin<Conf> = {
  about: 'ipvlan: Docker ipvlan networks (l2, l3, l3s), with 802.1q VLAN parents (cni-ts)',
  schema,
  createsInterface: true,
  add,
  del,
  check,
  gc,
  status,
};
