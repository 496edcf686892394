/**
 * overlay: Docker's overlay driver as a CNI plugin, with etcd as the
 * cluster store (controlplane.ts) and a per-host agent (agent.ts) keeping
 * every host's static VXLAN entries current.
 *
 * ADD, per container:
 *   1. the network's record in etcd (its VNI allocated on first use) and
 *      this host's record (written by the agent: its VTEP address);
 *   2. the network's namespace on this host with its bridge and VXLAN
 *      device (shared/vxlan.ts), created by the first local container;
 *   3. a veth: one end a port of that bridge, the other CNI_IFNAME in the
 *      container, at the overlay MTU;
 *   4. an address from the IPAM (cluster-ipam, etcd store: per-host blocks);
 *   5. the endpoint in etcd, and the entries of the remote endpoints known
 *      now, so the container can reach them at once (the agents of the
 *      other hosts learn of this one through their watch);
 *   6. egress: a second interface on the host's gateway bridge with the
 *      default route, NATed (gateway.ts).
 * Each step pushes its undo; a failure anywhere (etcd down included: 11)
 * unwinds them all, so nothing is left half made.
 *
 * Encrypted networks (`"encrypted": true`): the MTU leaves room for ESP
 * (encryptedMtu), and step 5 installs no forwarding entry: the agent adds
 * them once the peer's SAs exist (agent.ts, encryption.ts), so no frame of
 * an encrypted network ever leaves in the clear.
 *
 * IPv6: the overlay's subnet may be IPv6, or one of each family (dual
 * stack: the container gets an address of each on CNI_IFNAME, the endpoint
 * both, and remote hosts a neighbour entry for each); the underlay may be
 * IPv6 too (the agent's --vtep), with 20 bytes more of outer header in the
 * MTU. The gateway bridge stays IPv4 (egress NAT).
 *
 * Names (`"dns": {"enabled": true}`, needs the gateway bridge): step 5
 * writes the container's names and overlay addresses to etcd with its
 * endpoint (one transaction, shared/dns/cluster.ts), and step 7 records them
 * on this host's resolver, which answers on the gateway bridge's address
 * (the container's nameserver, reached through its egress interface) and
 * tells the overlay networks sharing that address apart by the asking
 * address, the container's own gateway-bridge address. The resolver watches
 * the network's records in etcd, so every host's containers resolve.
 *
 * DEL removes the endpoint, both interfaces, the gateway address, and the
 * network's namespace when its last local container leaves.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CniContext, Plugin, requirePrevResult } from '../../shared/cni/skel';
import { CniError, ErrorCode } from '../../shared/cni/errors';
import type { Attachment, Result } from '../../shared/cni/types';
import type { Logger } from '../../shared/log';
import { NetlinkHandle, withHandle } from '../../shared/netlink';
import { canonicalIp } from '../../shared/netlink/ipaddr';
import { NetNs, isNetnsPath, sysctlSet } from '../../shared/netns/netns';
import type { OwnedTable } from '../../shared/nft/table';
import { UndoStack } from '../../shared/undo';
import { applyToInterface, macFromIPv4, withHandles } from '../../shared/container-iface';
import { verifyLink } from '../../shared/verify';
import { converge, ensureVxlanNetwork, localPorts, overlayMtu, overlayNames, removeVxlanNetwork, type OverlayNames } from '../../shared/vxlan';
import { encryptedMtu } from '../../shared/ipsec/mtu';
import { cidrContains, parseCIDR, parseIP, toBytes } from '../../shared/ip';
import * as ipam from '../../ipam/client';
import { type Conf, etcdConnection, etcdFields, hostIdOf, nodeName, overlaySubnets, schema } from './config';
import { checkName, dnsEnabled, entryOf, gcNames, registerNames, removeName } from '../../shared/dns';
import { type ClusterScope, clusterRef, putOp, recordOf } from '../../shared/dns/cluster';
import { ControlPlane, endpointIps, remoteEndpoints, type NetworkRecord } from './controlplane';
import { EtcdKV, type EtcdKVOptions, type KV } from '../../shared/etcd/kv';
import { withNetworkLock } from './lock';
import { GatewayPool, applyGatewayRules, ensureGatewayBridge, gatewayRulesPresent, realGatewayTable } from './gateway';

type Ctx = CniContext<Conf>;

/**
 * The seams: a test swaps these for FakeKV / a gateway table on FakeNft.
 * The real gateway table reads its marker over netlink, so an ADD whose
 * gateway rules are current starts no nft process, and keeps its record
 * for firewall-reload (gateway.ts).
 */
export const deps: { kv: (c: EtcdKVOptions) => KV; gatewayTable: () => OwnedTable } = {
  kv: (c) => new EtcdKV(c),
  gatewayTable: () => realGatewayTable(),
};

/** Port of the container on the network's bridge, inside the network's namespace. */
export function overlayVethName(containerId: string, ifname: string): string {
  return `ve${hash(containerId, ifname)}`;
}

/** Port of the container on the gateway bridge, in the host namespace. */
export function gatewayVethName(containerId: string, ifname: string): string {
  return `gw${hash(containerId, ifname)}`;
}

function hash(containerId: string, ifname: string): string {
  // 2 + 13 = 15 characters, IFNAMSIZ
  return createHash('sha256').update(`${containerId}/${ifname}`).digest('hex').slice(0, 13);
}

function netnsDir(conf: Conf): string {
  return path.join(conf.stateDir, 'netns');
}

function openControlPlane(conf: Conf): { cp: ControlPlane; kv: KV; gcGracePeriodMs: number } {
  const c = etcdConnection(conf);
  const kv = deps.kv(c);
  return { kv, cp: new ControlPlane(kv, { prefix: c.keyPrefix, timeoutMs: c.requestTimeoutMs }), gcGracePeriodMs: c.gcGracePeriodMs };
}

/** This host's record, as its agent wrote it; 11 without one, 7 when the node name is another machine's. */
async function ownHost(cp: ControlPlane, me: string, id: string) {
  const rec = await cp.getOwnHost(me, id);
  if (!rec) throw new CniError(ErrorCode.TryAgainLater, `no overlay agent is registered for node "${me}"`, 'start `cni-ts overlay-agent` on this host');
  return rec;
}

/** Frees the network's record and VNI if its last endpoint in the cluster is gone; never fails the caller. */
async function reclaimIfUnused(cp: ControlPlane, name: string, log: Logger): Promise<void> {
  try {
    await cp.reclaimNetwork(name);
  } catch (e) {
    // etcd unreachable now: the next DEL or GC of the network tries again
    log(`overlay: could not reclaim network ${name}: ${(e as Error).message}`);
  }
}

/** The underlay device holding `vtep` in the host namespace: its index, MTU, and the VTEP's family. */
function underlayOf(host: NetlinkHandle, vtep: string): { index: number; mtu: number; family: 4 | 6 } {
  const want = canonicalIp(vtep);
  const addr = host.addrList().find((a) => canonicalIp(a.address) === want);
  if (!addr) {
    throw new CniError(ErrorCode.InvalidNetworkConfig, `this host's registered VTEP ${vtep} is not an address of any of its interfaces`, 'the overlay agent was started with a wrong underlay address');
  }
  const link = host.linkByIndex(addr.index)!;
  return { index: link.index, mtu: link.mtu, family: parseIP(vtep)?.family ?? 4 };
}

/**
 * The container's MAC from its overlay address: Docker's 02:42 + the IPv4
 * address when there is one. IPv6 only: 02:42 + the low 32 bits when the
 * subnet is /96 or longer (unique in the network, as Docker's), else 0a +
 * 40 bits of the address's SHA-256 (locally administered, unicast), since
 * two addresses of a larger subnet may share their low 32 bits.
 */
export function overlayMac(ips: ReadonlyArray<{ ip: string; prefix: number }>): string {
  const v4 = ips.find((a) => parseIP(a.ip)?.family === 4);
  if (v4) return macFromIPv4(v4.ip);
  const v6 = ips[0]!;
  const bytes = toBytes(parseIP(v6.ip)!);
  const tail = v6.prefix >= 96 ? [0x02, 0x42, ...bytes.subarray(12)] : [0x0a, ...createHash('sha256').update(bytes).digest().subarray(0, 5)];
  return tail.map((x) => x.toString(16).padStart(2, '0')).join(':');
}

async function add(ctx: Ctx): Promise<Result> {
  const conf = ctx.config;
  if (conf.gateway.enabled && conf.gateway.ifname === ctx.ifname) {
    throw new CniError(ErrorCode.InvalidNetworkConfig, `CNI_IFNAME ${ctx.ifname} is also gateway.ifname`);
  }
  if (dnsEnabled(conf) && !conf.gateway.enabled) {
    throw new CniError(ErrorCode.InvalidNetworkConfig, 'dns.enabled on an overlay network needs the gateway bridge (gateway.enabled)', "the resolver answers the container on the gateway bridge's address");
  }
  const me = nodeName(conf);
  const myId = hostIdOf(conf);
  const subnets = overlaySubnets(conf);
  return withHandles(async (keep) => {
    const { cp, kv } = openControlPlane(conf);
    keep(kv);
    const host = keep(NetlinkHandle.open());
    const ns = keep(NetNs.open(ctx.netns));
    const cont = keep(NetlinkHandle.open(ctx.netns));
    return await UndoStack.run(async (undo) => {
      // 1. the network and this host, from etcd
      const hostRec = await ownHost(cp, me, myId);
      const underlay = underlayOf(host, hostRec.vtep);
      const joined = await cp.joinNetwork({ name: conf.name, subnet: subnets[0]!, subnets, vni: conf.vni, mtu: conf.mtu, encrypted: conf.encrypted });
      const network: NetworkRecord = joined.network;
      // a network this ADD created (or joined) and that ends up with no endpoint goes again
      undo.push('network record', () => reclaimIfUnused(cp, conf.name, ctx.log));
      const mtu = networkMtu(network, conf.mtu, underlay.mtu, underlay.family);
      const names = overlayNames(network.vni, netnsDir(conf));

      // 2. + 3. the network's namespace and the container's port on its bridge
      const ovVeth = overlayVethName(ctx.containerId, ctx.ifname);
      withNetworkLock(conf.stateDir, network.vni, () => {
        if (ensureVxlanNetwork(host, names, { vni: network.vni, mtu, localVtep: hostRec.vtep, underlayIndex: underlay.index })) {
          undo.push('overlay network', () => removeIfUnused(conf.stateDir, network.vni, names));
        }
        withHandle(names.netns, (ov) => {
          ov.linkAdd({ kind: 'veth', name: ovVeth, peerName: ctx.ifname, peerNetnsFd: ns.fd, mtu });
          undo.push('veth', () => withHandle(names.netns, (h) => h.linkDelIfExists(ovVeth)));
          ov.linkSetMaster(ovVeth, names.bridge);
          ov.linkSetUp(ovVeth);
        });
      });

      // 4. the address
      const result: Result = await ipam.ipamAdd(ctx);
      undo.push('ipam', () => ipam.ipamDel(ctx));
      const mine = overlayAddresses(result, subnets);
      const ip = mine[0]!.ip;
      const mac = (conf.runtimeConfig?.mac ?? overlayMac(mine)).toLowerCase();
      // The overlay carries only its subnets; the default route is the gateway bridge's (IPv4), and an
      // IPv6 default route has nowhere to go. Routes of a family the container has no address of cannot be made.
      const families = new Set(mine.map((a) => a.ip.includes(':')));
      const routes = (result.routes ?? []).filter((r) => r.dst !== '0.0.0.0/0' && r.dst !== '::/0' && families.has(r.dst.includes(':')));
      const cidrs = mine.map((a) => `${a.ip}/${a.prefix}`);
      applyToInterface(cont, ctx.ifname, { mac, ips: cidrs.map((address) => ({ address })), routes });

      // 5. the endpoint, and what this host already knows of the others
      const allIps = mine.length > 1 ? { ips: mine.map((a) => a.ip) } : {};
      const scope: ClusterScope = { prefix: cp.prefix, network: conf.name, subnets, node: me };
      // its names with it, in the same transaction: other hosts' resolvers watch them
      const dnsRecord = dnsEnabled(conf) ? [putOp(cp.prefix, recordOf(scope, entryOf(ctx, mine.map((a) => a.ip))))] : [];
      await cp.putEndpoint({ network: conf.name, containerId: ctx.containerId, ifname: ctx.ifname, ip, ...allIps, mac, host: me, hostId: myId }, joined.createRevision, dnsRecord);
      undo.push('endpoint', () => cp.deleteEndpoint(conf.name, ctx.containerId, ctx.ifname));
      if (!network.encrypted) {
        const snap = await cp.snapshot();
        withNetworkLock(conf.stateDir, network.vni, () =>
          withHandle(names.netns, (ov) => converge(ov, names, remoteEndpoints(snap, conf.name, me))),
        );
      }

      const ips: Result['ips'] = cidrs.map((address) => ({ address, interface: 0 }));
      const interfaces: NonNullable<Result['interfaces']> = [{ name: ctx.ifname, mac, sandbox: ctx.netns }];

      // 6. egress through the gateway bridge
      if (conf.gateway.enabled) {
        const gw = conf.gateway;
        const gwVeth = gatewayVethName(ctx.containerId, ctx.ifname);
        const pool = new GatewayPool(path.join(conf.stateDir, 'gw'), gw.subnet);
        ensureGatewayBridge(host, { bridge: gw.bridge, subnet: gw.subnet });
        sysctlSet('net.ipv4.ip_forward', '1');
        applyGatewayRules(deps.gatewayTable(), { bridge: gw.bridge, subnet: gw.subnet });
        const lease = pool.allocate(ctx.containerId, ctx.ifname);
        undo.push('gateway address', () => pool.release(ctx.containerId, ctx.ifname));
        host.linkAdd({ kind: 'veth', name: gwVeth, peerName: gw.ifname, peerNetnsFd: ns.fd });
        undo.push('gateway veth', () => host.linkDelIfExists(gwVeth));
        host.linkSetMaster(gwVeth, gw.bridge);
        host.linkSetIsolated(gwVeth, true);
        host.linkSetUp(gwVeth);
        cont.addrAdd(gw.ifname, `${lease.address}/${lease.prefix}`);
        cont.linkSetUp(gw.ifname);
        cont.routeAdd({ dst: '0.0.0.0/0', gw: lease.gateway, oifIndex: cont.link(gw.ifname).index });
        interfaces.push({ name: gw.ifname, mac: cont.link(gw.ifname).mac, sandbox: ctx.netns });
        ips.push({ address: `${lease.address}/${lease.prefix}`, gateway: lease.gateway, interface: 1 });
        routes.push({ dst: '0.0.0.0/0', gw: lease.gateway });

        // 7. names: this host's resolver answers on the gateway bridge, to this container's address there
        if (dnsEnabled(conf)) {
          registerNames(ctx, result, {
            internal: false,
            listen: [lease.gateway],
            subnets: [gw.subnet],
            addresses: mine.map((a) => a.ip),
            clients: [lease.address],
            cluster: clusterRef(scope, etcdFields(conf)),
          });
          undo.push('dns', () => removeName(ctx));
        }
      }

      return { cniVersion: ctx.cniVersion, interfaces, ips, routes, dns: result.dns };
    }, ctx.log);
  });
}

/**
 * The overlay MTU: the network's recorded one, else the config's, else what
 * the underlay leaves. For an encrypted network over a 1500-byte IPv4
 * underlay (shared/ipsec/mtu.ts has the derivation):
 *     VXLAN alone:  1500 - 20 (IPv4) - 8 (UDP) - 8 (VXLAN) - 14 (Ethernet) = 1450
 *     with ESP:     room for the ESP payload = 1500 - 20 - 8 (ESP header) - 8 (IV) - 16 (ICV) = 1448,
 *                   already a multiple of 4; minus pad length + next header (2) = 1446 bytes of
 *                   UDP datagram, minus UDP + VXLAN + Ethernet (30) = 1416
 * Over an IPv6 underlay the outer header is 40 bytes, 20 more: 1430 clear,
 * floor4(1500 - 40 - 32) - 2 - 30 = 1396 encrypted.
 * (Docker's 1424 = 1450 - 26 makes full-size frames 8 bytes too long.) An
 * explicit MTU above that would fragment every full frame: refused.
 */
export function networkMtu(network: Pick<NetworkRecord, 'mtu' | 'encrypted'>, confMtu: number | undefined, underlayMtu: number, underlayFamily: 4 | 6 = 4): number {
  const explicit = network.mtu ?? confMtu;
  if (!network.encrypted) return explicit ?? overlayMtu(underlayMtu, underlayFamily);
  const max = encryptedMtu(underlayMtu, underlayFamily).mtu;
  if (explicit !== undefined && explicit > max) {
    throw new CniError(ErrorCode.InvalidNetworkConfig, `mtu ${explicit} is too large for an encrypted overlay on a ${underlayMtu}-byte underlay`, `at most ${max}: VXLAN and ESP take the rest`);
  }
  return explicit ?? max;
}

/**
 * The IPAM's addresses on the overlay: one in each of its subnets (code 7
 * when one is missing or the IPAM gave an address outside all of them),
 * in the subnets' order (IPv4 first).
 */
function overlayAddresses(result: Result, subnets: readonly string[]): Array<{ ip: string; prefix: number }> {
  const given = (result.ips ?? []).map((x) => canonicalIp(x.address.split('/')[0]!));
  const out: Array<{ ip: string; prefix: number }> = [];
  for (const subnet of subnets) {
    const ip = given.find((a) => cidrContains(subnet, a));
    if (!ip) {
      throw new CniError(ErrorCode.InvalidNetworkConfig, `the IPAM gave no address in overlay subnet ${subnet} (it gave ${given.join(', ') || 'none'})`, 'the IPAM cannot serve this subnet');
    }
    out.push({ ip, prefix: parseCIDR(subnet)!.subnet.prefix });
  }
  return out;
}

/** Removes the network's namespace when no local container uses it any more. */
function removeIfUnused(stateDir: string, vni: number, names: OverlayNames): boolean {
  return withNetworkLock(stateDir, vni, () => {
    if (!isNetnsPath(names.netns) && !fs.existsSync(names.netns)) return false;
    if (isNetnsPath(names.netns) && withHandle(names.netns, (ov) => localPorts(ov, names)) > 0) return false;
    removeVxlanNetwork(names);
    return true;
  });
}

async function del(ctx: Ctx): Promise<void> {
  const conf = ctx.config;
  const { cp, kv } = openControlPlane(conf);
  try {
    // etcd first: if it cannot answer, DEL fails with 11 and the runtime
    // retries, rather than leaving an endpoint that other hosts still route to.
    await ipam.ipamDel(ctx);
    const network = await cp.getNetwork(conf.name);
    // the endpoint and its cluster-wide names, then this host's record of them
    await cp.deleteEndpoint(conf.name, ctx.containerId, ctx.ifname);
    removeName(ctx);
    await reclaimIfUnused(cp, conf.name, ctx.log);
    // DEL is idempotent: the namespace and links may already be gone.
    if (ctx.netns && isNetnsPath(ctx.netns)) {
      withHandle(ctx.netns, (c) => {
        c.linkDelIfExists(ctx.ifname);
        if (conf.gateway.enabled) c.linkDelIfExists(conf.gateway.ifname);
      });
    }
    if (conf.gateway.enabled) {
      withHandle(undefined, (h) => h.linkDelIfExists(gatewayVethName(ctx.containerId, ctx.ifname)));
      new GatewayPool(path.join(conf.stateDir, 'gw'), conf.gateway.subnet).release(ctx.containerId, ctx.ifname);
    }
    if (network) {
      const names = overlayNames(network.vni, netnsDir(conf));
      if (isNetnsPath(names.netns)) withHandle(names.netns, (ov) => ov.linkDelIfExists(overlayVethName(ctx.containerId, ctx.ifname)));
      removeIfUnused(conf.stateDir, network.vni, names);
    }
  } finally {
    kv.close();
  }
}

async function check(ctx: Ctx): Promise<void> {
  const conf = ctx.config;
  const prev = requirePrevResult(ctx);
  const fail = (msg: string) => new CniError(ErrorCode.Internal, msg);
  const me = nodeName(conf);
  const { cp, kv } = openControlPlane(conf);
  try {
    const network = await cp.getNetwork(conf.name);
    if (!network) throw fail(`overlay network ${conf.name} is not registered in etcd`);
    const ep = await cp.getEndpoint(conf.name, ctx.containerId, ctx.ifname);
    if (!ep) throw fail(`the endpoint of ${ctx.containerId}/${ctx.ifname} is not registered in etcd`);
    if (ep.host !== me) throw fail(`the endpoint of ${ctx.containerId}/${ctx.ifname} is registered on host ${ep.host}, not ${me}`);
    const myId = hostIdOf(conf);
    if (ep.hostId !== undefined && ep.hostId !== myId) throw fail(`the endpoint of ${ctx.containerId}/${ctx.ifname} was registered by another machine (host ID ${ep.hostId}), not this one (${myId})`);
    const names = overlayNames(network.vni, netnsDir(conf));
    if (!isNetnsPath(names.netns)) throw fail(`the namespace of overlay network ${conf.name} (${names.netns}) is missing`);
    withHandle(names.netns, (ov) => {
      const br = ov.linkByName(names.bridge);
      if (!br) throw fail(`bridge ${names.bridge} is missing`);
      const vx = ov.linkByName(names.vxlan);
      if (!vx || vx.kind !== 'vxlan' || vx.masterIndex !== br.index) throw fail(`VXLAN device ${names.vxlan} is missing or not on ${names.bridge}`);
      const port = ov.linkByName(overlayVethName(ctx.containerId, ctx.ifname));
      if (!port || port.masterIndex !== br.index) throw fail(`the container's port on ${names.bridge} is missing`);
    });
    withHandle(ctx.netns, (c) => {
      const link = verifyLink(c, ctx.ifname, ctx.netns, 'veth');
      if (link.mac !== ep.mac) throw fail(`${ctx.ifname} has MAC ${link.mac}, registered ${ep.mac}`);
      if (conf.gateway.enabled && !c.linkByName(conf.gateway.ifname)) throw fail(`${conf.gateway.ifname} (gateway bridge) is missing`);
      const have = new Set(c.addrList().map((a) => a.cidr));
      for (const ip of prev.ips ?? []) if (!have.has(ip.address)) throw fail(`address ${ip.address} is missing`);
      const own = new Set(c.addrList(ctx.ifname).map((a) => canonicalIp(a.address)));
      for (const a of endpointIps(ep)) if (!own.has(canonicalIp(a))) throw fail(`${ctx.ifname} lacks its registered address ${a}`);
    });
    if (conf.gateway.enabled) {
      withHandle(undefined, (h) => {
        const p = h.linkByName(gatewayVethName(ctx.containerId, ctx.ifname));
        const br = h.linkByName(conf.gateway.bridge);
        if (!p || !br || p.masterIndex !== br.index) throw fail(`the container's port on ${conf.gateway.bridge} is missing`);
      });
      if (!gatewayRulesPresent(deps.gatewayTable())) throw fail('the gateway bridge NAT rules are missing');
    }
    if (dnsEnabled(conf)) {
      // the names in etcd, as other hosts read them, then this host's resolver answering them
      const rec = await cp.getDnsRecord(conf.name, overlaySubnets(conf), ctx.containerId, ctx.ifname);
      const want = [...endpointIps(ep)].map(canonicalIp).sort().join();
      if (!rec) throw fail(`the DNS record of ${ctx.containerId}/${ctx.ifname} is missing from etcd (or invalid)`);
      if ([...rec.v4, ...rec.v6].map(canonicalIp).sort().join() !== want) throw fail(`the DNS record of ${ctx.containerId}/${ctx.ifname} names other addresses than its endpoint`);
      await checkName(ctx);
    }
    await ipam.ipamCheck(ctx);
  } finally {
    kv.close();
  }
}

async function gc(ctx: Ctx, valid: Attachment[]): Promise<void> {
  const conf = ctx.config;
  const me = nodeName(conf);
  const myId = hostIdOf(conf);
  const { cp, kv, gcGracePeriodMs } = openControlPlane(conf);
  try {
    await ipam.ipamGc(ctx, valid);
    const keep = new Set(valid.map((a) => `${a.containerID}/${a.ifname}`));
    const network = await cp.getNetwork(conf.name);
    // IPAM GC's grace: an endpoint goes once seen unkept in two GCs this far apart
    const gone = await cp.gcEndpoints(conf.name, me, myId, keep, gcGracePeriodMs);
    if (gone.length > 0) await reclaimIfUnused(cp, conf.name, ctx.log);
    // this host's names of unlisted attachments go at once (their etcd records went, or go, with their endpoints)
    gcNames(ctx, valid);
    if (conf.gateway.enabled) {
      // This host's side of an unlisted attachment (its gateway veth and address) goes at once,
      // as its overlay port does below: it is local, and the runtime says the container is gone.
      // Only the endpoint record, which other hosts act on, waits for the seen-twice grace.
      const pool = new GatewayPool(path.join(conf.stateDir, 'gw'), conf.gateway.subnet);
      for (const [, owner] of pool.entries()) {
        if (keep.has(owner)) continue;
        const slash = owner.lastIndexOf('/');
        const [containerId, ifname] = [owner.slice(0, slash), owner.slice(slash + 1)];
        withHandle(undefined, (h) => h.linkDelIfExists(gatewayVethName(containerId, ifname)));
        pool.release(containerId, ifname);
      }
    }
    if (!network) return;
    const names = overlayNames(network.vni, netnsDir(conf));
    if (!isNetnsPath(names.netns)) return;
    // ports of attachments that are gone (their namespace leaked): recognisable by name
    const keepPorts = new Set(valid.map((a) => overlayVethName(a.containerID, a.ifname)));
    withNetworkLock(conf.stateDir, network.vni, () =>
      withHandle(names.netns, (ov) => {
        const br = ov.linkByName(names.bridge);
        for (const l of ov.linkList()) {
          if (br && l.masterIndex === br.index && /^ve[0-9a-f]{13}$/.test(l.name) && !keepPorts.has(l.name)) ov.linkDelIfExists(l.name);
        }
      }),
    );
    removeIfUnused(conf.stateDir, network.vni, names);
  } finally {
    kv.close();
  }
}

async function status(ctx: Ctx): Promise<void> {
  const { cp, kv } = openControlPlane(ctx.config);
  try {
    if (!(await cp.getOwnHost(nodeName(ctx.config), hostIdOf(ctx.config)))) {
      throw new CniError(50, `no overlay agent is registered for node "${nodeName(ctx.config)}"`);
    }
    await ipam.ipamStatus(ctx);
  } finally {
    kv.close();
  }
}

export const plugin: Plugin<Conf> = {
  about: 'overlay: multi-host VXLAN networks with an etcd control plane (cni-ts)',
  schema,
  createsInterface: true,
  add,
  del,
  check,
  gc,
  status,
};
