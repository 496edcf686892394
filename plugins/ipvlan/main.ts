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
 * lower one is asked for. The parent, its 802.1q VLAN handling and the steps
 * are macvlan's (shared/vlan.ts, shared/childlink.ts); this file holds what
 * is ipvlan's.
 *
 * One parent has one ipvlan mode: the kernel keeps the mode per parent, and
 * a new link in another mode switches every link of that parent.
 */
import { z } from 'zod';
import { netConfBase } from '../../shared/cni/config';
import type { IPConfig, Route } from '../../shared/cni/types';
import { childLinkPlugin, kindEnum } from '../../shared/childlink';
import { gatewayFor } from '../../shared/container-iface';
import { parentConfFields } from '../../shared/vlan';
import * as ipam from '../../ipam/client';
import { dnsConf } from '../../shared/dns/config';

const MODES = ['l2', 'l3', 'l3s'] as const;
const FLAGS = ['bridge', 'private', 'vepa'] as const;

const schema = netConfBase.extend({
  // master, vlan, stateDir
  ...parentConfFields,
  mode: kindEnum('ipvlan', 'mode', MODES).default('l2'),
  flag: kindEnum('ipvlan', 'flag', FLAGS).default('bridge'),
  /** names at 127.0.0.11 inside the container (shared/dns, README "Name resolution") */
  dns: dnsConf.optional(),
  /** with dns: names outside the network are not forwarded */
  internal: z.boolean().default(false),
  /** at most the parent's; the parent's when omitted */
  mtu: z.number().int().min(68).max(65535).optional(),
});
type Conf = z.infer<typeof schema>;

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

export const plugin = childLinkPlugin<Conf>({
  kind: 'ipvlan',
  about: 'ipvlan: Docker ipvlan networks (l2, l3, l3s), with 802.1q VLAN parents (cni-ts)',
  schema,
  ipam,
  // with the etcd IPAM, names are cluster-wide: kept in etcd beside the addresses
  clusterStore: ipam.clusterStore,
  link: (conf, parent) => ({ kind: 'ipvlan', mode: conf.mode, flag: conf.flag, mtu: conf.mtu ?? parent.mtu }),
  invalidBecause: (conf, parent) => `master ${parent} cannot carry an ipvlan in mode ${conf.mode}`,
  shapeResult: (conf, result) => {
    const ips = result.ips ?? [];
    result.routes = containerRoutes(conf.mode, ips, result.routes ?? []);
    // l3: no gateway is used, so none is routed via or reported
    if (conf.mode !== 'l2') for (const ip of ips) delete ip.gateway;
  },
  modeOf: (l) => l.ipvlanMode,
  checkMac: false,
  checkMtu: false,
});
