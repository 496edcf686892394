/**
 * NetlinkHandle: the typed kernel verbs, one handle per network namespace
 * (as vishvananda/netlink's NewHandleAt), so code never wonders which
 * namespace it is changing. Each verb names the `ip`/`bridge` command it
 * equals.
 */
import * as C from './consts';
import { attrBytes, attrNested, attrString, attrU32, attrU8 } from './codec';
import { AddrOptions, Addr, addrAttrs, addrFlags, ifaddrmsg, parseAddr } from './addr';
import { ENODEV, NetlinkError, isNotFound } from './errors';
import { Cidr, parseCidr, parseIp, parseMac } from './ipaddr';
import { Link, LinkSpec, ifinfomsg, linkAddAttrs, parseLink } from './link';
import { Neigh, ndmsg, parseNeigh } from './neigh';
import { Route, RouteSpec, parseRoute, routeMessage } from './route';
import { NetlinkSocket } from './socket';
import { NetNs } from '../netns/netns';

export interface NeighSpec {
  /** device name */
  dev: string;
  ip: string;
  mac: string;
  /** NUD_* state; permanent by default (static entries never expire) */
  state?: number;
}

export interface FdbSpec {
  /** the VXLAN (or bridge port) device name */
  dev: string;
  mac: string;
  /** remote VTEP address for VXLAN entries */
  dst?: string;
  vni?: number;
  /** add to the list for this MAC instead of replacing it (all-zero MAC flooding lists) */
  append?: boolean;
}

export class NetlinkHandle {
  private constructor(
    private readonly sock: NetlinkSocket,
    /** the namespace path this handle talks to; undefined = the caller's */
    readonly netnsPath: string | undefined,
  ) {}

  /** A handle on the namespace at netnsPath, or on the current namespace. */
  static open(netnsPath?: string): NetlinkHandle {
    if (netnsPath === undefined) return new NetlinkHandle(NetlinkSocket.open(C.NETLINK_ROUTE), undefined);
    const ns = NetNs.open(netnsPath);
    try {
      return new NetlinkHandle(NetlinkSocket.open(C.NETLINK_ROUTE, ns.fd), netnsPath);
    } finally {
      ns.close();
    }
  }

  close(): void {
    this.sock.close();
  }

  // ---- links ---------------------------------------------------------------

  /** ip -j link show */
  linkList(): Link[] {
    return this.sock
      .request(C.RTM_GETLINK, C.NLM_F_DUMP, ifinfomsg(), [], 'ip link show')
      .filter((m) => m.type === C.RTM_NEWLINK)
      .map((m) => parseLink(m.payload));
  }

  /** ip link show NAME; undefined when there is no such link */
  linkByName(name: string): Link | undefined {
    // IFNAMSIZ: no link can have a longer name (the kernel would say ERANGE)
    if (name.length > 15) return undefined;
    try {
      const [m] = this.sock.request(C.RTM_GETLINK, 0, ifinfomsg(), [attrString(C.IFLA_IFNAME, name)], `ip link show ${name}`);
      return m ? parseLink(m.payload) : undefined;
    } catch (e) {
      if (isNotFound(e)) return undefined;
      throw e;
    }
  }

  /** ip link show NAME, failing with ENODEV when absent */
  link(name: string): Link {
    const l = this.linkByName(name);
    if (!l) throw new NetlinkError(ENODEV, `ip link show ${name}`);
    return l;
  }

  linkByIndex(index: number): Link | undefined {
    try {
      const [m] = this.sock.request(C.RTM_GETLINK, 0, ifinfomsg(index), [], `ip link show index ${index}`);
      return m ? parseLink(m.payload) : undefined;
    } catch (e) {
      if (isNotFound(e)) return undefined;
      throw e;
    }
  }

  /** ip link add NAME [mtu M] [address MAC] [netns NS] type KIND ... ; fails with EEXIST if present */
  linkAdd(spec: LinkSpec): void {
    const flags = spec.up ? C.IFF_UP : 0;
    this.sock.request(
      C.RTM_NEWLINK,
      C.NLM_F_CREATE | C.NLM_F_EXCL,
      ifinfomsg(0, flags, flags),
      linkAddAttrs(spec),
      `ip link add ${spec.name} type ${spec.kind}`,
    );
  }

  /** ip link del NAME */
  linkDel(name: string): void {
    this.sock.request(C.RTM_DELLINK, 0, ifinfomsg(), [attrString(C.IFLA_IFNAME, name)], `ip link del ${name}`);
  }

  /** ip link del NAME, treating "no such device" as success (DEL is idempotent) */
  linkDelIfExists(name: string): boolean {
    try {
      this.linkDel(name);
      return true;
    } catch (e) {
      if (isNotFound(e)) return false;
      throw e;
    }
  }

  private setLink(name: string, op: string, attrs: ReturnType<typeof attrU32>[], flags = 0, change = 0): void {
    const index = this.link(name).index;
    this.sock.request(C.RTM_SETLINK, 0, ifinfomsg(index, flags, change), attrs, op);
  }

  /** ip link set NAME up */
  linkSetUp(name: string): void {
    this.setLink(name, `ip link set ${name} up`, [], C.IFF_UP, C.IFF_UP);
  }

  /** ip link set NAME down */
  linkSetDown(name: string): void {
    this.setLink(name, `ip link set ${name} down`, [], 0, C.IFF_UP);
  }

  /** ip link set NAME mtu MTU */
  linkSetMtu(name: string, mtu: number): void {
    this.setLink(name, `ip link set ${name} mtu ${mtu}`, [attrU32(C.IFLA_MTU, mtu)]);
  }

  /** ip link set NAME address MAC */
  linkSetMac(name: string, mac: string): void {
    this.setLink(name, `ip link set ${name} address ${mac}`, [attrBytes(C.IFLA_ADDRESS, parseMac(mac))]);
  }

  /** ip link set NAME master MASTER ; ip link set NAME nomaster when master is undefined */
  linkSetMaster(name: string, master: string | undefined): void {
    const masterIndex = master === undefined ? 0 : this.link(master).index;
    this.setLink(name, `ip link set ${name} ${master ? `master ${master}` : 'nomaster'}`, [attrU32(C.IFLA_MASTER, masterIndex)]);
  }

  /** ip link set NAME netns NS (NS given as an open namespace fd) */
  linkSetNetns(name: string, nsFd: number): void {
    this.setLink(name, `ip link set ${name} netns`, [attrU32(C.IFLA_NET_NS_FD, nsFd)]);
  }

  /** ip link set NAME name NEWNAME */
  linkRename(name: string, newName: string): void {
    this.setLink(name, `ip link set ${name} name ${newName}`, [attrString(C.IFLA_IFNAME, newName)]);
  }

  /** ip link set NAME promisc on|off */
  linkSetPromisc(name: string, on: boolean): void {
    this.setLink(name, `ip link set ${name} promisc ${on ? 'on' : 'off'}`, [], on ? C.IFF_PROMISC : 0, C.IFF_PROMISC);
  }

  /**
   * bridge link set dev NAME hairpin on|off : lets a frame leave through the
   * port it came in on, so a container can reach itself via a published port.
   */
  linkSetHairpin(name: string, on: boolean): void {
    this.setBridgePort(name, `bridge link set dev ${name} hairpin ${on ? 'on' : 'off'}`, C.IFLA_BRPORT_MODE, on);
  }

  /** bridge link set dev NAME learning on|off */
  linkSetLearning(name: string, on: boolean): void {
    this.setBridgePort(name, `bridge link set dev ${name} learning ${on ? 'on' : 'off'}`, C.IFLA_BRPORT_LEARNING, on);
  }

  /** bridge link set dev NAME isolated on|off : isolated ports cannot talk to each other */
  linkSetIsolated(name: string, on: boolean): void {
    this.setBridgePort(name, `bridge link set dev ${name} isolated ${on ? 'on' : 'off'}`, C.IFLA_BRPORT_ISOLATED, on);
  }

  private setBridgePort(name: string, op: string, attr: number, on: boolean): void {
    const index = this.link(name).index;
    // AF_BRIDGE + nested IFLA_PROTINFO is the bridge port's own setlink path.
    this.sock.request(C.RTM_SETLINK, 0, ifinfomsg(index, 0, 0, C.AF_BRIDGE), [attrNested(C.IFLA_PROTINFO, [attrU8(attr, on ? 1 : 0)], true)], op);
  }

  // ---- addresses -------------------------------------------------------------

  /** ip addr add CIDR dev NAME [nodad] [noprefixroute] */
  addrAdd(name: string, cidr: string, opts: AddrOptions = {}): void {
    const c = parseCidr(cidr);
    const index = this.link(name).index;
    this.sock.request(
      C.RTM_NEWADDR,
      C.NLM_F_CREATE | C.NLM_F_EXCL,
      ifaddrmsg(c.family, c.prefixLen, index, opts.scope, addrFlags(opts)),
      addrAttrs(c, opts),
      `ip addr add ${cidr} dev ${name}`,
    );
  }

  /** ip addr del CIDR dev NAME */
  addrDel(name: string, cidr: string): void {
    const c: Cidr = parseCidr(cidr);
    const index = this.link(name).index;
    this.sock.request(C.RTM_DELADDR, 0, ifaddrmsg(c.family, c.prefixLen, index), [attrBytes(C.IFA_LOCAL, c.bytes)], `ip addr del ${cidr} dev ${name}`);
  }

  /** ip -j addr show [dev NAME] [-4|-6] */
  addrList(name?: string, family: number = C.AF_UNSPEC): Addr[] {
    const index = name === undefined ? undefined : this.link(name).index;
    return this.sock
      .request(C.RTM_GETADDR, C.NLM_F_DUMP, ifaddrmsg(family, 0, 0), [], `ip addr show${name ? ` dev ${name}` : ''}`)
      .filter((m) => m.type === C.RTM_NEWADDR)
      .map((m) => parseAddr(m.payload))
      .filter((a) => (index === undefined || a.index === index) && (family === C.AF_UNSPEC || a.family === family));
  }

  // ---- routes ----------------------------------------------------------------

  /** ip route add DST [via GW] [dev NAME] [src SRC] [metric N] [mtu M] [table T] */
  routeAdd(spec: RouteSpec): void {
    const { header, attrs } = routeMessage(spec, false);
    this.sock.request(C.RTM_NEWROUTE, C.NLM_F_CREATE | C.NLM_F_EXCL, header, attrs, `ip route add ${describeRoute(spec)}`);
  }

  /** ip route replace ... */
  routeReplace(spec: RouteSpec): void {
    const { header, attrs } = routeMessage(spec, false);
    this.sock.request(C.RTM_NEWROUTE, C.NLM_F_CREATE | C.NLM_F_REPLACE, header, attrs, `ip route replace ${describeRoute(spec)}`);
  }

  /** ip route del ... */
  routeDel(spec: RouteSpec): void {
    const { header, attrs } = routeMessage(spec, true);
    this.sock.request(C.RTM_DELROUTE, 0, header, attrs, `ip route del ${describeRoute(spec)}`);
  }

  /** ip -j route show [table T] (main by default; pass RT_TABLE_UNSPEC for all) for one family or both */
  routeList(family: number = C.AF_UNSPEC, table: number = C.RT_TABLE_MAIN): Route[] {
    return this.sock
      .request(C.RTM_GETROUTE, C.NLM_F_DUMP, Buffer.alloc(12, 0).fill(family, 0, 1), [], 'ip route show')
      .filter((m) => m.type === C.RTM_NEWROUTE)
      .map((m) => parseRoute(m.payload))
      .filter((r) => (family === C.AF_UNSPEC || r.family === family) && (table === C.RT_TABLE_UNSPEC || r.table === table));
  }

  // ---- neighbours and FDB ----------------------------------------------------

  /** ip neigh replace IP lladdr MAC dev NAME nud permanent */
  neighSet(n: NeighSpec): void {
    const ip = parseIp(n.ip);
    const index = this.link(n.dev).index;
    this.sock.request(
      C.RTM_NEWNEIGH,
      C.NLM_F_CREATE | C.NLM_F_REPLACE,
      ndmsg(ip.family, index, n.state ?? C.NUD_PERMANENT, 0),
      [attrBytes(C.NDA_DST, ip.bytes), attrBytes(C.NDA_LLADDR, parseMac(n.mac))],
      `ip neigh replace ${n.ip} lladdr ${n.mac} dev ${n.dev}`,
    );
  }

  /** ip neigh del IP dev NAME */
  neighDel(dev: string, ipText: string): void {
    const ip = parseIp(ipText);
    const index = this.link(dev).index;
    this.sock.request(C.RTM_DELNEIGH, 0, ndmsg(ip.family, index, 0, 0), [attrBytes(C.NDA_DST, ip.bytes)], `ip neigh del ${ipText} dev ${dev}`);
  }

  /** ip -j neigh show nud all [dev NAME] (ARP/NDP entries of every state) */
  neighList(dev?: string, family: number = C.AF_UNSPEC): Neigh[] {
    const index = dev === undefined ? undefined : this.link(dev).index;
    return this.sock
      .request(C.RTM_GETNEIGH, C.NLM_F_DUMP, ndmsg(family, 0, 0, 0), [], 'ip neigh show')
      .filter((m) => m.type === C.RTM_NEWNEIGH)
      .map((m) => parseNeigh(m.payload))
      .filter((n) => n.family !== C.AF_BRIDGE && (index === undefined || n.ifindex === index));
  }

  /** bridge fdb replace|append MAC dev NAME [dst IP] [vni N] self permanent */
  fdbAdd(f: FdbSpec): void {
    const index = this.link(f.dev).index;
    const attrs = [attrBytes(C.NDA_LLADDR, parseMac(f.mac))];
    if (f.dst) attrs.push(attrBytes(C.NDA_DST, parseIp(f.dst).bytes));
    if (f.vni !== undefined) attrs.push(attrU32(C.NDA_VNI, f.vni));
    this.sock.request(
      C.RTM_NEWNEIGH,
      C.NLM_F_CREATE | (f.append ? C.NLM_F_APPEND : C.NLM_F_REPLACE),
      ndmsg(C.AF_BRIDGE, index, C.NUD_PERMANENT, C.NTF_SELF),
      attrs,
      `bridge fdb ${f.append ? 'append' : 'replace'} ${f.mac} dev ${f.dev}${f.dst ? ` dst ${f.dst}` : ''}`,
    );
  }

  /** bridge fdb del MAC dev NAME [dst IP] self */
  fdbDel(f: FdbSpec): void {
    const index = this.link(f.dev).index;
    const attrs = [attrBytes(C.NDA_LLADDR, parseMac(f.mac))];
    if (f.dst) attrs.push(attrBytes(C.NDA_DST, parseIp(f.dst).bytes));
    this.sock.request(C.RTM_DELNEIGH, 0, ndmsg(C.AF_BRIDGE, index, 0, C.NTF_SELF), attrs, `bridge fdb del ${f.mac} dev ${f.dev}`);
  }

  /** bridge -j fdb show [dev NAME] */
  fdbList(dev?: string): Neigh[] {
    const index = dev === undefined ? undefined : this.link(dev).index;
    return this.sock
      .request(C.RTM_GETNEIGH, C.NLM_F_DUMP, ndmsg(C.AF_BRIDGE, 0, 0, 0), [], 'bridge fdb show')
      .filter((m) => m.type === C.RTM_NEWNEIGH)
      .map((m) => parseNeigh(m.payload))
      .filter((n) => n.family === C.AF_BRIDGE && (index === undefined || n.ifindex === index));
  }
}

function describeRoute(r: RouteSpec): string {
  return `${r.dst}${r.gw ? ` via ${r.gw}` : ''}${r.oifIndex !== undefined ? ` oif ${r.oifIndex}` : ''}`;
}

/** Run fn with a handle on netnsPath and always close it. */
export function withHandle<T>(netnsPath: string | undefined, fn: (h: NetlinkHandle) => T): T {
  const h = NetlinkHandle.open(netnsPath);
  try {
    return fn(h);
  } finally {
    h.close();
  }
}

/** Does a link called ifname exist in the namespace at netnsPath? (for the ADD rule of the spec) */
export function linkExistsInNetns(netnsPath: string, ifname: string): boolean {
  return withHandle(netnsPath, (h) => h.linkByName(ifname) !== undefined);
}
