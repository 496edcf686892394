/**
 * bridge: Docker's bridge driver as a CNI plugin, with the reference bridge
 * plugin's config names. Per container: a veth pair whose host end is a
 * port of the network's Linux bridge and whose other end is CNI_IFNAME in
 * the container; addresses and routes from IPAM; the gateway address on the
 * bridge; the network's firewall/NAT in nftables (firewall.ts).
 */
import { createHash } from 'node:crypto';
import { z } from 'zod';
import { CniContext, Plugin, requirePrevResult } from '../../shared/cni/skel';
import { CniError, ErrorCode } from '../../shared/cni/errors';
import { netConfBase, unicastMac } from '../../shared/cni/config';
import type { Attachment, IPConfig, Result } from '../../shared/cni/types';
import {
  NetlinkHandle,
  formatCidr,
  isNetlinkError,
  networkOf,
  parseCidr,
  withHandle,
  EEXIST,
} from '../../shared/netlink';
import { withExclusiveTurn, withFileLock } from '../../shared/sys/flock';
import { NetNs, isNetnsPath, sysctlSet } from '../../shared/netns/netns';
import { realTable } from '../../shared/nft/real';
import { UndoStack } from '../../shared/undo';
import { applyToInterface, gatewayFor, ipamAddressesFor, macFromIPv4, withHandles } from '../../shared/container-iface';
import { checkContainerAttachment } from '../../shared/verify';
import * as ipam from '../../ipam/client';
import { checkName, dnsConf, dnsEnabled, gcNames, registerName, removeName } from '../../shared/dns';
import { isIPv4, isIPv6 } from '../../shared/ip';
import {
  BRIDGE_TABLE,
  GATEWAY_MODES,
  ensureNetworkRules,
  natsFamily,
  networkRulesCurrent,
  networkRulesPresent,
  removeNetworkRules,
  networkLockFile,
  type GatewayFamily,
  type NetworkFirewall,
} from './firewall';

const schema = netConfBase.extend({
  // Narrower than what Linux accepts: the name is also part of the
  // network's nftables chain names (firewall.ts), which allow only these.
  bridge: z
    .string()
    .min(1)
    .max(15)
    .regex(/^[A-Za-z0-9_-]+$/, 'bridge name may contain only letters, digits, "_" and "-"')
    .default('cni0'),
  /** put the gateway address on the bridge */
  isGateway: z.boolean().default(false),
  /** also make it the containers' default route (implies isGateway) */
  isDefaultGateway: z.boolean().default(false),
  /** egress NAT for traffic leaving the subnet */
  ipMasq: z.boolean().default(false),
  /** Docker's internal network: no gateway, no NAT, no route out */
  internal: z.boolean().default(false),
  /**
   * Docker's gateway_mode_ipv4 (firewall.ts gatewayRules): nat, nat-unprotected,
   * routed or isolated; absent, ipMasq alone decides NAT and nothing filters
   * routed access (the reference plugin's behaviour)
   */
  gatewayMode: z.enum(GATEWAY_MODES).optional(),
  /** Docker's gateway_mode_ipv6; defaults to gatewayMode */
  gatewayModeIPv6: z.enum(GATEWAY_MODES).optional(),
  /** Docker's host_ipv4, netavark's outbound_addr4: NATed IPv4 traffic leaves from this address (snat, not masquerade) */
  outboundAddr4: z.string().refine(isIPv4, 'outboundAddr4 must be an IPv4 address').optional(),
  /** Docker's host_ipv6, netavark's outbound_addr6 */
  outboundAddr6: z.string().refine(isIPv6, 'outboundAddr6 must be an IPv6 address').optional(),
  /** Docker's icc: containers on this bridge may talk to each other */
  icc: z.boolean().default(true),
  mtu: z.number().int().min(68).max(65535).optional(),
  hairpinMode: z.boolean().default(false),
  promiscMode: z.boolean().default(false),
  /** name resolution on the network (shared/dns): off unless dns.enabled */
  dns: dnsConf.optional(),
  runtimeConfig: z
    .object({
      mac: unicastMac.optional(),
      ips: z.array(z.string()).optional(),
    })
    .passthrough()
    .optional(),
});
type Conf = z.infer<typeof schema>;
type Ctx = CniContext<Conf>;

/**
 * Host-side veth name derived from the attachment, so DEL and CHECK can name
 * it without the container's namespace ("veth" + 11 hex = 15 chars, IFNAMSIZ).
 */
export function hostVethName(containerId: string, ifname: string): string {
  return `veth${createHash('sha256').update(`${containerId}/${ifname}`).digest('hex').slice(0, 11)}`;
}

function familyOf(address: string): GatewayFamily {
  return address.includes(':') ? 'ipv6' : 'ipv4';
}

/** The network's firewall as configured, for the subnets of this ADD. */
function networkFirewall(conf: Conf, ips: readonly IPConfig[]): NetworkFirewall {
  const n: NetworkFirewall = { bridge: conf.bridge, subnets: subnetsOf(ips), masquerade: conf.ipMasq, internal: conf.internal };
  const v6 = conf.gatewayModeIPv6 ?? conf.gatewayMode;
  if (conf.gatewayMode || v6) n.gateway = { ...(conf.gatewayMode && { ipv4: conf.gatewayMode }), ...(v6 && { ipv6: v6 }) };
  if (conf.outboundAddr4 || conf.outboundAddr6) n.snatTo = { ...(conf.outboundAddr4 && { ipv4: conf.outboundAddr4 }), ...(conf.outboundAddr6 && { ipv6: conf.outboundAddr6 }) };
  return n;
}

/** No route out for this family: an internal network, or gateway mode isolated. */
function noRouteOut(conf: Conf, family: GatewayFamily): boolean {
  return conf.internal || (family === 'ipv4' ? conf.gatewayMode : (conf.gatewayModeIPv6 ?? conf.gatewayMode)) === 'isolated';
}

/** Configurations that would mean less than they say: code 7. */
function validate(conf: Conf): void {
  if (conf.internal && conf.ipMasq) throw new CniError(ErrorCode.InvalidNetworkConfig, 'an internal network cannot have ipMasq');
  const fw = networkFirewall(conf, []);
  for (const family of ['ipv4', 'ipv6'] as const) {
    const mode = fw.gateway?.[family];
    if (conf.ipMasq && (mode === 'routed' || mode === 'isolated')) {
      throw new CniError(ErrorCode.InvalidNetworkConfig, `ipMasq contradicts gateway mode ${mode} (${family})`, 'gateway modes routed and isolated never NAT: drop ipMasq, or use nat');
    }
  }
  for (const [key, family] of [['outboundAddr4', 'ipv4'], ['outboundAddr6', 'ipv6']] as const) {
    if (conf[key] && !natsFamily({ ...fw, masquerade: conf.ipMasq }, family)) {
      throw new CniError(ErrorCode.InvalidNetworkConfig, `${key} is set but ${family} traffic of this network is not NATed`, 'set ipMasq or gateway mode nat');
    }
  }
}

function gatewayEnabled(conf: Conf, family: GatewayFamily): boolean {
  // a DNS-enabled network (internal too) needs the gateway address: the resolver answers there
  return (!noRouteOut(conf, family) && (conf.isGateway || conf.isDefaultGateway)) || dnsEnabled(conf);
}


/**
 * The network's lock, flock(2) on /run/cni-ts/bridge-BR.lock, in two modes.
 *
 * Shared: one container's own work (its veth on the bridge, its addresses,
 * its routes), which only needs the network to stay set up while it runs.
 * Any number run side by side: a burst of containers on one network is not
 * a queue.
 *
 * Exclusive: what decides about the network as a whole: creating the bridge
 * on first use, writing the network's rules, and "is this the network's
 * last container?" (count the bridge's ports) followed by removing its
 * rules (or, undoing a first ADD, its bridge). Because every ADD holds the
 * shared lock from "the bridge is there" until its port is attached and the
 * rules are checked, that count never runs while an ADD is half done: it
 * sees the port, or the ADD has not started and will find the rules gone
 * and write them again. nft fails a whole batch on an element that is
 * already gone, so two last DELs removing the same map elements must not
 * interleave either.
 *
 * The sections are short (a few netlink calls, one nft run); the kernel
 * drops the lock when its holder dies, so a killed plugin never wedges the
 * network.
 */
function withNetworkShared<T>(bridge: string, fn: () => Promise<T>): Promise<T> {
  return withFileLock(networkLockFile(bridge), fn, { shared: true });
}

/** The exclusive mode; never called holding the shared lock (see withNetworkShared). */
function withNetworkExclusive<T>(bridge: string, fn: () => T): Promise<Awaited<T>> {
  return withExclusiveTurn(networkLockFile(bridge), fn);
}

/**
 * Runs fn under the network's shared lock once ready() holds there; when it
 * does not, prepare() runs under the exclusive lock and ready() is asked
 * again under a fresh shared lock (flock has no atomic upgrade: between the
 * two, a teardown may have undone what prepare did).
 */
async function whenReady<T>(bridge: string, ready: () => boolean, prepare: () => void, fn: () => Promise<T>): Promise<T> {
  for (;;) {
    const out = await withNetworkShared(bridge, async () => (ready() ? { value: await fn() } : undefined));
    if (out) return out.value;
    await withNetworkExclusive(bridge, prepare);
  }
}

/** ip link add BRIDGE type bridge (unless present); returns whether we created it. */
function ensureBridge(host: NetlinkHandle, conf: Conf): boolean {
  const existing = host.linkByName(conf.bridge);
  let created = false;
  if (existing) {
    if (existing.kind !== 'bridge') {
      throw new CniError(ErrorCode.InvalidNetworkConfig, `${conf.bridge} already exists and is not a bridge (${existing.kind ?? 'device'})`);
    }
    if (!existing.up) host.linkSetUp(conf.bridge);
  } else {
    try {
      // A MAC of its own (locally administered, from the name): a bridge without one takes its
      // lowest port's, which changes when that port goes, and every container's ARP entry for
      // the gateway (its resolver, its route out) is stale until it expires.
      const mac = `02:${createHash('sha256').update(conf.bridge).digest('hex').slice(0, 10).replace(/(..)(?!$)/g, '$1:')}`;
      host.linkAdd({ kind: 'bridge', name: conf.bridge, mtu: conf.mtu, up: true, mac });
      created = true;
    } catch (e) {
      // created by something outside our lock (an operator, another tool)
      if (!isNetlinkError(e, EEXIST)) throw e;
    }
  }
  return created;
}

/** The bridge is there, a bridge and up: a container's ADD can go ahead under the shared lock. */
function bridgeReady(host: NetlinkHandle, conf: Conf): boolean {
  const br = host.linkByName(conf.bridge);
  if (br && br.kind !== 'bridge') {
    throw new CniError(ErrorCode.InvalidNetworkConfig, `${conf.bridge} already exists and is not a bridge (${br.kind ?? 'device'})`);
  }
  return br !== undefined && br.up;
}

/**
 * The network is gone from this host once its bridge has no ports: drop
 * its nft chains (and the bridge, when removeBridge: undoing the ADD that
 * made it). The count outside the lock only spares the calls that leave a
 * port behind the exclusive lock: each leaver counts after removing its own
 * port, so the last one to count sees none and decides under the lock.
 */
async function releaseIfUnused(host: NetlinkHandle, bridge: string, removeBridge = false): Promise<void> {
  if (bridgePorts(host, bridge) > 0) return;
  await withNetworkExclusive(bridge, () => {
    if (bridgePorts(host, bridge) > 0) return;
    removeNetworkRules(realTable(BRIDGE_TABLE), bridge);
    if (removeBridge) host.linkDelIfExists(bridge);
  });
}

function bridgePorts(host: NetlinkHandle, bridge: string): number {
  const br = host.linkByName(bridge);
  if (!br) return 0;
  return host.linkList().filter((l) => l.masterIndex === br.index).length;
}

function subnetsOf(ips: readonly IPConfig[]): string[] {
  return [...new Set(ips.map((ip) => formatCidr(networkOf(parseCidr(ip.address)))))];
}

async function add(ctx: Ctx): Promise<Result> {
  const conf = ctx.config;
  validate(conf);
  return withHandles(async (keep) => {
    const host = keep(NetlinkHandle.open());
    const ns = keep(NetNs.open(ctx.netns));
    const cont = keep(NetlinkHandle.open(ctx.netns));
    return await UndoStack.run(async (undo) => {
      const hostVeth = hostVethName(ctx.containerId, ctx.ifname);
      const fw = realTable(BRIDGE_TABLE);
      // Undone last, after this container's own steps: a network this ADD
      // leaves without ports loses its rules, and its bridge if this ADD made it.
      let createdBridge = false;
      undo.push('network', () => releaseIfUnused(host, conf.bridge, createdBridge));

      // 1. the network's bridge, created on first use under the exclusive
      //    lock; everything up to the rules check under the shared lock
      //    (withNetworkShared says why), side by side with other ADDs
      const { result, ips, firewall } = await whenReady(
        conf.bridge,
        () => bridgeReady(host, conf),
        () => {
          if (ensureBridge(host, conf)) createdBridge = true;
        },
        async () => {
          // As the reference: asserted on every ADD, so a bridge that existed
          // before (or was created without it) gets it too.
          if (conf.promiscMode) host.linkSetPromisc(conf.bridge, true);
          // 2. the veth pair, its container end created directly in the container
          host.linkAdd({ kind: 'veth', name: hostVeth, peerName: ctx.ifname, peerNetnsFd: ns.fd, mtu: conf.mtu });
          undo.push('veth', () => host.linkDelIfExists(hostVeth));
          host.linkSetMaster(hostVeth, conf.bridge);
          if (conf.hairpinMode) host.linkSetHairpin(hostVeth, true);
          // icc=false: isolated ports reach the bridge (gateway) but not each other
          if (!conf.icc) host.linkSetIsolated(hostVeth, true);
          host.linkSetUp(hostVeth);

          // 3. addresses (under the IPAM store's own lock)
          const result = await ipamAddressesFor(ipam, ctx, undo);
          const ips = result.ips ?? [];
          const v4 = ips.find((ip) => !ip.address.includes(':'));

          // 4. the container's end: MAC, addresses, up, routes
          const mac = conf.runtimeConfig?.mac ?? (v4 ? macFromIPv4(v4.address.split('/')[0]) : undefined);
          const routes = [...(result.routes ?? [])];
          // no route out (internal, or that family isolated): drop any default the IPAM offered
          for (let i = routes.length - 1; i >= 0; i--) if (isDefault(routes[i].dst) && noRouteOut(conf, familyOf(routes[i].dst))) routes.splice(i, 1);
          if (conf.isDefaultGateway) {
            for (const ip of ips) {
              const family = ip.address.includes(':') ? '::/0' : '0.0.0.0/0';
              if (ip.gateway && !noRouteOut(conf, familyOf(ip.address)) && !routes.some((r) => r.dst === family)) routes.push({ dst: family, gw: ip.gateway });
            }
          }
          // such a family's routes (its defaults are gone) stay on the link: no gateway
          applyToInterface(cont, ctx.ifname, { mac, ips, routes, via: (r) => r.gw ?? (noRouteOut(conf, familyOf(r.dst)) ? undefined : gatewayFor(ips, r.dst)) });
          result.routes = routes;

          // 5. the gateway on the bridge (another ADD may have just put it there: EEXIST)
          for (const ip of ips) {
            if (gatewayEnabled(conf, familyOf(ip.address))) {
              if (!ip.gateway) continue;
              const prefix = ip.address.split('/')[1];
              try {
                host.addrAdd(conf.bridge, `${ip.gateway}/${prefix}`, { noDad: ip.gateway.includes(':') });
              } catch (e) {
                if (!isNetlinkError(e, EEXIST)) throw e;
              }
              sysctlSet(ip.gateway.includes(':') ? 'net.ipv6.conf.all.forwarding' : 'net.ipv4.ip_forward', '1');
            } else {
              delete ip.gateway;
            }
          }
          // 6a. the network's rules as configured are in the kernel (the
          //     common case: one netlink read, no nft process)
          const firewall = networkFirewall(conf, ips);
          return { result, ips, firewall: networkRulesCurrent(fw, firewall) ? undefined : firewall };
        },
      );

      // 6b. otherwise one atomic nft transaction under the exclusive lock.
      //     This container's port is attached: no teardown can take them
      //     away again between the two locks.
      if (firewall) await withNetworkExclusive(conf.bridge, () => ensureNetworkRules(fw, firewall));

      // 7. the container's names on the network's resolver; result.dns for resolv.conf
      //    (the undo first: the record may be written before starting the resolver fails)
      undo.push('dns', () => removeName(ctx));
      registerName(ctx, result, { internal: conf.internal });

      const br = host.link(conf.bridge);
      const hv = host.link(hostVeth);
      result.interfaces = [
        { name: br.name, mac: br.mac },
        { name: hv.name, mac: hv.mac },
        { name: ctx.ifname, mac: cont.link(ctx.ifname).mac, sandbox: ctx.netns },
      ];
      for (const ip of ips) ip.interface = 2;
      result.cniVersion = ctx.cniVersion;
      return result;
    }, ctx.log);
  });
}

function isDefault(dst: string): boolean {
  return dst === '0.0.0.0/0' || dst === '::/0';
}

async function del(ctx: Ctx): Promise<void> {
  const conf = ctx.config;
  removeName(ctx);
  if (ipam.hasIpam(ctx)) await ipam.ipamDel(ctx);
  // DEL is idempotent: the namespace, the veth and the bridge may all be
  // gone already (the runtime tore the sandbox down first, or an earlier DEL
  // finished); each "not found" is success.
  if (ctx.netns && isNetnsPath(ctx.netns)) {
    withHandle(ctx.netns, (cont) => cont.linkDelIfExists(ctx.ifname));
  }
  await withHandles(async (keep) => {
    const host = keep(NetlinkHandle.open());
    host.linkDelIfExists(hostVethName(ctx.containerId, ctx.ifname));
    await releaseIfUnused(host, conf.bridge);
  });
}

async function check(ctx: Ctx): Promise<void> {
  const conf = ctx.config;
  requirePrevResult(ctx); // code 7 before anything is read
  const fail = (msg: string) => new CniError(ErrorCode.Internal, msg);
  withHandle(undefined, (host) => {
    const br = host.linkByName(conf.bridge);
    if (!br || br.kind !== 'bridge') throw fail(`bridge ${conf.bridge} is missing`);
    const hv = host.linkByName(hostVethName(ctx.containerId, ctx.ifname));
    if (!hv) throw fail(`host veth of ${ctx.ifname} is missing`);
    if (hv.masterIndex !== br.index) throw fail(`${hv.name} is not attached to ${conf.bridge}`);
  });
  if (!networkRulesPresent(realTable(BRIDGE_TABLE), conf.bridge)) throw fail(`nftables rules of network ${conf.bridge} are missing`);
  await checkContainerAttachment(ctx, ipam, { kind: 'veth' });
  await checkName(ctx);
}

async function gc(ctx: Ctx, valid: Attachment[]): Promise<void> {
  if (ipam.hasIpam(ctx)) await ipam.ipamGc(ctx, valid);
  gcNames(ctx, valid);
  // Host veths of attachments that are not valid any more (their container
  // is gone but its namespace was leaked): recognisable by name.
  const keep = new Set(valid.map((a) => hostVethName(a.containerID, a.ifname)));
  await withHandles(async (own) => {
    const host = own(NetlinkHandle.open());
    const br = host.linkByName(ctx.config.bridge);
    if (!br) return;
    for (const l of host.linkList()) {
      if (l.masterIndex === br.index && l.kind === 'veth' && /^veth[0-9a-f]{11}$/.test(l.name) && !keep.has(l.name)) host.linkDelIfExists(l.name);
    }
    // the stray veths may have been the network's last containers
    await releaseIfUnused(host, ctx.config.bridge);
  });
}

async function status(ctx: Ctx): Promise<void> {
  if (ipam.hasIpam(ctx)) await ipam.ipamStatus(ctx);
}

export const plugin: Plugin<Conf> = {
  about: 'bridge: Docker bridge networks over a Linux bridge and veth pairs (cni-ts)',
  schema,
  createsInterface: true,
  add,
  del,
  check,
  gc,
  status,
};
