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
 * an 802.1q sub-interface and reference-counted (shared/vlan.ts). The steps
 * are ipvlan's too (shared/childlink.ts); this file holds what is macvlan's.
 *
 * The known macvlan limit: a container cannot reach the parent's own
 * addresses (the host), because frames from a macvlan to its lower device
 * are never delivered up the lower device's stack; other containers on the
 * same parent are reachable in bridge mode.
 */
import { z } from 'zod';
import { netConfBase, unicastMac } from '../../shared/cni/config';
import { childLinkPlugin, kindEnum } from '../../shared/childlink';
import { parentConfFields } from '../../shared/vlan';
import * as ipam from '../../ipam/client';
import { dnsConf } from '../../shared/dns/config';

const MODES = ['bridge', 'private', 'vepa', 'passthru'] as const;

const schema = netConfBase.extend({
  // master, vlan, stateDir
  ...parentConfFields,
  mode: kindEnum('macvlan', 'mode', MODES).default('bridge'),
  /** names at 127.0.0.11 inside the container (shared/dns, README "Name resolution") */
  dns: dnsConf.optional(),
  /** with dns: names outside the network are not forwarded */
  internal: z.boolean().default(false),
  mtu: z.number().int().min(68).max(65535).optional(),
  runtimeConfig: z
    .object({
      mac: unicastMac.optional(),
    })
    .passthrough()
    .optional(),
});
type Conf = z.infer<typeof schema>;

export const plugin = childLinkPlugin<Conf>({
  kind: 'macvlan',
  about: 'macvlan: Docker macvlan networks, with 802.1q VLAN parents (cni-ts)',
  schema,
  ipam,
  // with the etcd IPAM, names are cluster-wide: kept in etcd beside the addresses
  clusterStore: ipam.clusterStore,
  link: (conf) => ({ kind: 'macvlan', mode: conf.mode, mtu: conf.mtu, mac: conf.runtimeConfig?.mac }),
  // EINVAL: passthru takes a parent to itself
  invalidBecause: (conf, parent) =>
    conf.mode === 'passthru'
      ? `macvlan mode passthru needs master ${parent} to itself, and it already has a macvlan (one passthru container per parent)`
      : `master ${parent} refused another macvlan: it is held by a passthru macvlan`,
  modeOf: (l) => l.macvlanMode,
  checkMac: true,
  checkMtu: true,
});
