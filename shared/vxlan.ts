/**
 * The VXLAN layer of an overlay network on one host, as Docker's overlay
 * driver builds it: a network namespace of its own per overlay network,
 * holding a Linux bridge and a VXLAN device on that bridge. Containers'
 * veths are ports of the bridge; remote containers are reached through the
 * VXLAN device by static entries only:
 *
 *   neighbour  remote container IP -> its MAC       (ip neigh replace ... dev vx-N; IPv4 and IPv6 alike)
 *   FDB        remote container MAC -> remote VTEP  (bridge fdb replace ... dev vx-N dst VTEP self)
 *
 * Learning is off and the device answers ARP, and IPv6 neighbour
 * solicitations, from its neighbour table (the kernel's "proxy" flag,
 * Docker sets it too), so no frame is ever flooded to every host; that is
 * why an IPv6 overlay needs no proxy NDP: the VXLAN device is the proxy.
 * The underlay (the VTEPs, the FDB's destinations) is IPv4 or IPv6, one
 * family per device. Why a namespace per network: two overlays may use
 * the same subnet, and nothing of either may appear in the host's routing.
 *
 * Why the VXLAN device is created from the host's namespace and moved into
 * the network's at creation (IFLA_NET_NS_FD): a VXLAN device's UDP socket
 * lives in the namespace it was created from, which must be the one with
 * the underlay address.
 *
 * This file is what the encryption issue builds on (ESP between VTEPs).
 */
import * as path from 'node:path';
import * as C from './netlink/consts';
import { isNetlinkError, isNotFound, EEXIST } from './netlink/errors';
import { NetlinkHandle } from './netlink/handle';
import { canonicalIp } from './netlink/ipaddr';
import type { VxlanSpec } from './netlink/link';
import { NetNs, createNetns, deleteNetns, isNetnsPath, sysctlGet, sysctlSet } from './netns/netns';

/** IANA's VXLAN port (Linux's own default, 8472, predates it). */
export const VXLAN_PORT = 4789;

/**
 * What VXLAN adds around each inner frame on an IPv4 underlay:
 *   outer IPv4 header 20 + UDP header 8 + VXLAN header 8 + inner Ethernet header 14 = 50.
 * The inner Ethernet header counts because the underlay MTU limits the outer
 * IP packet, which carries the whole inner frame, while the overlay MTU is
 * the inner IP packet's limit.
 */
export const VXLAN_OVERHEAD_V4 = 20 + 8 + 8 + 14;

/** The same on an IPv6 underlay, whose header is 40 bytes: 70 (RFC 7348 section 4.3; Docker's 1430). */
export const VXLAN_OVERHEAD_V6 = 40 + 8 + 8 + 14;

/**
 * The overlay MTU on an underlay of `underlayMtu` whose VTEPs are of
 * `underlayFamily`: 1500 - 50 = 1450 over IPv4, 1500 - 70 = 1430 over IPv6.
 * The overlay's own family does not matter: the inner packet is payload.
 */
export function overlayMtu(underlayMtu: number, underlayFamily: 4 | 6 = 4): number {
  return underlayMtu - (underlayFamily === 6 ? VXLAN_OVERHEAD_V6 : VXLAN_OVERHEAD_V4);
}

/** VNIs are 24 bits; 0 is reserved. */
export const VNI_MIN = 1;
export const VNI_MAX = 0xffffff;

/** Docker-style names of one overlay network's objects on a host. */
export interface OverlayNames {
  /** the network namespace's bind-mount path */
  readonly netns: string;
  /** the bridge, inside that namespace */
  readonly bridge: string;
  /** the VXLAN device, inside that namespace */
  readonly vxlan: string;
}

export function overlayNames(vni: number, netnsDir: string): OverlayNames {
  return { netns: path.join(netnsDir, `ov-${vni}`), bridge: `ov-${vni}`, vxlan: `vx-${vni}` };
}

export interface VxlanNetworkSpec {
  readonly vni: number;
  /** the overlay MTU (bridge, VXLAN device, container veths) */
  readonly mtu: number;
  /** this host's VTEP: the underlay address VXLAN packets leave from, IPv4 or IPv6 (VXLAN over IPv6) */
  readonly localVtep: string;
  /** the underlay device's index in the host namespace (optional: routing picks it otherwise) */
  readonly underlayIndex?: number;
  readonly port?: number;
}

/**
 * Makes sure the network's namespace holds its bridge and VXLAN device, up,
 * VXLAN attached to the bridge with learning off. `host` is a handle on the
 * host (underlay) namespace. Returns whether the namespace was created by
 * this call (so an ADD that fails can take it away again).
 */
export function ensureVxlanNetwork(host: NetlinkHandle, names: OverlayNames, spec: VxlanNetworkSpec): boolean {
  const created = createNetns(names.netns);
  try {
    populate(host, names, spec);
    return created;
  } catch (e) {
    if (created) removeVxlanNetwork(names);
    throw e;
  }
}

function populate(host: NetlinkHandle, names: OverlayNames, spec: VxlanNetworkSpec): void {
  const ns = NetNs.open(names.netns);
  const ov = NetlinkHandle.open(names.netns);
  try {
    if (!ov.linkByName(names.bridge)) {
      ov.linkAdd({ kind: 'bridge', name: names.bridge, mtu: spec.mtu, up: true });
    }
    // Loopback up, as in any namespace something runs in.
    ov.linkSetUp('lo');
    if (!ov.linkByName(names.vxlan)) {
      const vx: VxlanSpec = {
        kind: 'vxlan',
        name: names.vxlan,
        vni: spec.vni,
        port: spec.port ?? VXLAN_PORT,
        local: spec.localVtep,
        parentIndex: spec.underlayIndex,
        learning: false,
        mtu: spec.mtu,
        netnsFd: ns.fd,
        // ARP/NDP for remote containers is answered from the static
        // neighbour entries, as Docker does: no request is ever flooded
        proxy: true,
      };
      try {
        host.linkAdd(vx);
      } catch (e) {
        // a concurrent ADD (outside our lock) made it: fine
        if (!isNetlinkError(e, EEXIST) || !ov.linkByName(names.vxlan)) throw e;
      }
    }
    const vx = ov.link(names.vxlan);
    const br = ov.link(names.bridge);
    if (vx.masterIndex !== br.index) ov.linkSetMaster(names.vxlan, names.bridge);
    // The bridge must not learn remote MACs on the VXLAN port either: the
    // static FDB on the device decides where they are.
    ov.linkSetLearning(names.vxlan, false);
    if (!vx.up) ov.linkSetUp(names.vxlan);
    if (!br.up) ov.linkSetUp(names.bridge);
  } finally {
    ov.close();
    ns.close();
  }
  bridgeNetfilterOff(names.netns);
}

/**
 * The sysctls through which br_netfilter hands every frame crossing a bridge
 * to the IPv4, IPv6 and ARP netfilter hooks. They are per namespace and
 * default to 1 in each new one wherever the module is loaded (Docker and
 * kube-proxy load it), and the kernel ORs them with the bridge's own
 * nf_call_* options, so the bridge alone cannot opt out.
 */
export const BRIDGE_NF_SYSCTLS = ['net/bridge/bridge-nf-call-iptables', 'net/bridge/bridge-nf-call-ip6tables', 'net/bridge/bridge-nf-call-arptables'] as const;

/**
 * Turns the bridge netfilter hooks off inside an overlay's namespace.
 * Nothing filters there (the namespace is the isolation), so the hooks were
 * pure per-frame cost, paid on both hosts: about a tenth of the overlay's
 * TCP throughput in bench/overlay.ts (0.73 -> 0.81 of host-to-host). Done on
 * every ensure, not only at creation, because the module may be loaded
 * after the namespace was made and then starts it at 1. Without
 * br_netfilter the files do not exist and there is nothing to do.
 */
export function bridgeNetfilterOff(netns: string): void {
  for (const key of BRIDGE_NF_SYSCTLS) {
    let value: string;
    try {
      value = sysctlGet(key, netns);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw e;
    }
    if (value !== '0') sysctlSet(key, '0', netns);
  }
}

/**
 * Removes the network's namespace (and with it its bridge, VXLAN device and
 * any veths left). The VXLAN device goes first, explicitly: it was created
 * from the host namespace, so its UDP socket and VNI are registered there,
 * and a namespace's devices are only destroyed later, by the kernel's
 * asynchronous netns cleanup. An ADD of the same network right after this
 * DEL would otherwise find the VNI still taken (EEXIST); RTM_DELLINK frees
 * it before returning.
 */
export function removeVxlanNetwork(names: OverlayNames): void {
  if (isNetnsPath(names.netns)) {
    const ov = NetlinkHandle.open(names.netns);
    try {
      ov.linkDelIfExists(names.vxlan);
    } finally {
      ov.close();
    }
  }
  deleteNetns(names.netns);
}

/** The veth ports on the network's bridge other than the VXLAN device: its local containers. */
export function localPorts(ov: NetlinkHandle, names: OverlayNames): number {
  const br = ov.linkByName(names.bridge);
  if (!br) return 0;
  return ov.linkList().filter((l) => l.masterIndex === br.index && l.name !== names.vxlan).length;
}

/** A container on another host, as this host's VXLAN device must know it. */
export interface RemoteEndpoint {
  readonly ip: string;
  readonly mac: string;
  /** the VTEP (underlay address) of the host the container is on */
  readonly vtep: string;
}

export interface ConvergeResult {
  readonly added: number;
  readonly removed: number;
  /** entries the kernel refused (or that could not be read), each with why; the others were still made */
  readonly failed: readonly string[];
}

/**
 * Makes the VXLAN device's static neighbour and FDB entries exactly
 * `desired`: adds or corrects what is missing, deletes permanent entries
 * nobody wants any more. Idempotent: a second call with the same list
 * changes nothing. `ov` is a handle on the network's namespace.
 *
 * Only entries we could have made are touched: permanent ones on our device
 * (the kernel's own, like the device's MAC in its FDB, are not permanent
 * with a VTEP destination).
 */
export function converge(ov: NetlinkHandle, names: OverlayNames, desired: readonly RemoteEndpoint[]): ConvergeResult {
  const failed: string[] = [];
  // One entry the kernel refuses (or one malformed endpoint) costs that entry only, never the rest of the network's.
  const each = (what: string, fn: () => void): boolean => {
    try {
      fn();
      return true;
    } catch (e) {
      failed.push(`${what}: ${(e as Error).message}`);
      return false;
    }
  };
  const want = new Map<string, RemoteEndpoint>();
  for (const d of desired) {
    each(`endpoint ${d.ip}`, () => want.set(canonicalIp(d.ip), { ip: canonicalIp(d.ip), mac: d.mac.toLowerCase(), vtep: canonicalIp(d.vtep) }));
  }
  const wantMac = new Map<string, string>();
  for (const d of want.values()) wantMac.set(d.mac, d.vtep);

  let added = 0;
  let removed = 0;
  const neighs = ov.neighList(names.vxlan).filter((n) => n.ip !== undefined && (n.state & C.NUD_PERMANENT) !== 0);
  const fdb = ov.fdbList(names.vxlan).filter((f) => f.mac !== undefined && f.ip !== undefined && (f.state & C.NUD_PERMANENT) !== 0);

  // FDB first, so by the time ARP resolves the frame has somewhere to go.
  const haveFdb = new Map<string, string[]>();
  for (const f of fdb) haveFdb.set(f.mac!, [...(haveFdb.get(f.mac!) ?? []), f.ip!]);
  for (const [mac, vtep] of wantMac) {
    const have = haveFdb.get(mac) ?? [];
    if (have.length === 1 && have[0] === vtep) continue;
    // "replace" rewrites a single wrong destination in place (a moved container)
    if (each(`fdb ${mac} dst ${vtep}`, () => ov.fdbAdd({ dev: names.vxlan, mac, dst: vtep }))) added++;
    // any further destinations for this MAC (appended by someone) go
    for (const other of have.slice(1)) if (other !== vtep) ignoreMissing(() => ov.fdbDel({ dev: names.vxlan, mac, dst: other }));
  }
  for (const f of fdb) {
    if (wantMac.has(f.mac!)) continue;
    ignoreMissing(() => ov.fdbDel({ dev: names.vxlan, mac: f.mac!, dst: f.ip }));
    removed++;
  }

  const haveNeigh = new Map(neighs.map((n) => [n.ip!, n.mac]));
  for (const d of want.values()) {
    if (haveNeigh.get(d.ip) === d.mac) continue;
    if (each(`neighbour ${d.ip} lladdr ${d.mac}`, () => ov.neighSet({ dev: names.vxlan, ip: d.ip, mac: d.mac }))) added++;
  }
  for (const n of neighs) {
    if (want.has(n.ip!)) continue;
    ignoreMissing(() => ov.neighDel(names.vxlan, n.ip!));
    removed++;
  }
  return { added, removed, failed };
}

function ignoreMissing(fn: () => void): void {
  try {
    fn();
  } catch (e) {
    if (!isNotFound(e)) throw e;
  }
}
