/**
 * macvlan: Docker's macvlan driver as a CNI plugin, with the reference
 * macvlan plugin's config names. Per container: a macvlan link of the
 * network's parent ("master"), created directly inside the container's
 * namespace as CNI_IFNAME, with its own MAC, addresses and routes from IPAM.
 *
 *   { "type": "macvlan", "master": "eth0.10", "mode": "bridge", "mtu": 1500,
 *     "ipam": { "type": "cluster-ipam", ... } }
 *
 * The parent defaults to the host's default-route interface. A parent
 * written `eth0.10` (or "master": "eth0", "vlan": 10) is created on demand as
 * an 802.1q sub-interface and reference-counted (shared/vlan.ts).
 *
 * The known macvlan limit: a container cannot reach the parent's own
 * addresses (the host), because frames from a macvlan to its lower device
 * are never delivered up the lower device's stack; other containers on the
 * same parent are reachable in bridge mode.
 */
import { z } from 'zod';
import { CniContext, Plugin, requirePrevResult } from '../../shared/cni/skel';
import { CniError, ErrorCode } from '../../shared/cni/errors';
import { netConfBase, unicastMac } from '../../shared/cni/config';
import type { Attachment, IPConfig, Result } from '../../shared/cni/types';
import { EBUSY, EINVAL, NetlinkHandle, isNetlinkError } from '../../shared/netlink';
import { NetNs } from '../../shared/netns/netns';
import { ParentManager, checkChild, childTempName, delChild, gcParent, parentConfFields, vlanUser } from '../../shared/vlan';
import { UndoStack } from '../../shared/undo';
import * as ipam from '../../ipam/client';

const MODES = ['bridge', 'private', 'vepa', 'passthru'] as const;

const schema = netConfBase.extend({
  // master, vlan, stateDir
  ...parentConfFields,
  mode: z
    .enum(MODES, {
      errorMap: (issue, c) => ({
        message: issue.code === 'invalid_enum_value' ? `unknown macvlan mode ${JSON.stringify(issue.received)}: expected one of ${MODES.join(', ')}` : c.defaultError,
      }),
    })
    .default('bridge'),
  mtu: z.number().int().min(68).max(65535).optional(),
  runtimeConfig: z
    .object({
      mac: unicastMac.optional(),
    })
    .passthrough()
    .optional(),
});
type Conf = z.infer<typeof schema>;
type Ctx = CniContext<Conf>;

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

      // 2. the macvlan, created straight inside the container's namespace
      // under a temporary name, then renamed: some kernels (6.1) check the
      // new name against the creating namespace too, where the host's own
      // eth0 would clash with CNI_IFNAME (the reference plugin does the same).
      const tmp = childTempName();
      try {
        host.linkAdd({
          kind: 'macvlan',
          name: tmp,
          parentIndex: lower.index,
          mode: conf.mode,
          mtu: conf.mtu,
          mac: conf.runtimeConfig?.mac,
          netnsFd: ns.fd,
        });
      } catch (e) {
        throw explainLinkAddError(e, conf.mode, parent.name);
      }
      undo.push('macvlan', () => cont.linkDelIfExists(tmp));
      cont.linkRename(tmp, ctx.ifname);
      undo.push('macvlan', () => cont.linkDelIfExists(ctx.ifname));

      // 3. addresses and routes
      const result: Result = ipam.hasIpam(ctx) ? await ipam.ipamAdd(ctx) : { cniVersion: ctx.cniVersion, ips: [], routes: [] };
      if (ipam.hasIpam(ctx)) undo.push('ipam', () => ipam.ipamDel(ctx));
      const ips = result.ips ?? [];
      for (const ip of ips) cont.addrAdd(ctx.ifname, ip.address, { noDad: ip.address.includes(':') });
      cont.linkSetUp(ctx.ifname);
      const link = cont.link(ctx.ifname);
      for (const r of result.routes ?? []) {
        cont.routeAdd({ dst: r.dst, gw: r.gw ?? gatewayFor(ips, r.dst), oifIndex: link.index });
      }

      result.interfaces = [{ name: ctx.ifname, mac: link.mac, sandbox: ctx.netns }];
      for (const ip of ips) ip.interface = 0;
      result.cniVersion = ctx.cniVersion;
      return result;
    });
  } finally {
    for (const h of opened.reverse()) h.close();
  }
}

/** The kernel's terse EINVAL/EBUSY on RTM_NEWLINK, said in the config's terms (code 7). */
function explainLinkAddError(e: unknown, mode: string, parent: string): unknown {
  if (isNetlinkError(e, EINVAL)) {
    const why =
      mode === 'passthru'
        ? `macvlan mode passthru needs master ${parent} to itself, and it already has a macvlan (one passthru container per parent)`
        : `master ${parent} refused another macvlan: it is held by a passthru macvlan`;
    return new CniError(ErrorCode.InvalidNetworkConfig, why, e.message);
  }
  if (isNetlinkError(e, EBUSY)) {
    return new CniError(ErrorCode.InvalidNetworkConfig, `master ${parent} is in use by another kind of link (ipvlan?)`, e.message);
  }
  return e;
}

function gatewayFor(ips: readonly IPConfig[], dst: string): string | undefined {
  const v6 = dst.includes(':');
  return ips.find((ip) => ip.address.includes(':') === v6 && ip.gateway)?.gateway;
}

async function del(ctx: Ctx): Promise<void> {
  if (ipam.hasIpam(ctx)) await ipam.ipamDel(ctx);
  delChild(ctx);
}

async function check(ctx: Ctx): Promise<void> {
  const conf = ctx.config;
  checkChild(ctx, requirePrevResult(ctx), { kind: 'macvlan', mode: conf.mode, modeOf: (l) => l.macvlanMode, mtu: conf.mtu });
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
  about: 'macvlan: Docker macvlan networks, with 802.1q VLAN parents (cni-ts)',
  schema,
  createsInterface: true,
  add,
  del,
  check,
  gc,
  status,
};
