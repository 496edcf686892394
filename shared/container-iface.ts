/**
 * The container's end of an attachment, as every plugin that puts a link in
 * the container sets it up (bridge's veth end, macvlan, ipvlan, overlay):
 * the IPAM's result applied to CNI_IFNAME (MAC, addresses, up, routes), and
 * the small rules that go with it: which gateway a route takes, Docker's MAC
 * from an IPv4 address, the handles an ADD opens and must close.
 *
 * The IPAM client is passed in (IpamClient; ipam/client.ts satisfies it), so
 * shared/ does not import the IPAM that itself builds on shared/.
 */
import type { CniContext } from './cni/skel';
import type { Attachment, IPConfig, Result, Route } from './cni/types';
import { parseIP, toBytes } from './ip';
import type { Link, RouteSpec } from './netlink';
import type { UndoStack } from './undo';

/** The IPAM calls a main plugin makes; `import * as ipam from '../../ipam/client'` is one. */
export interface IpamClient {
  hasIpam(ctx: IpamCtx): boolean;
  ipamAdd(ctx: IpamCtx): Promise<Result>;
  ipamDel(ctx: IpamCtx): Promise<void>;
  ipamCheck(ctx: IpamCtx): Promise<void>;
  ipamGc(ctx: IpamCtx, valid: Attachment[]): Promise<void>;
  ipamStatus(ctx: IpamCtx): Promise<void>;
}
export type IpamCtx = CniContext<{ ipam?: { type: string } }>;

/**
 * ADD's addresses: the IPAM's result, its release pushed on `undo` at once;
 * a config without IPAM gets an empty result (the link comes up unaddressed).
 */
export async function ipamAddressesFor(ipam: IpamClient, ctx: IpamCtx, undo: UndoStack): Promise<Result> {
  if (!ipam.hasIpam(ctx)) return { cniVersion: ctx.cniVersion, ips: [], routes: [] };
  const result = await ipam.ipamAdd(ctx);
  undo.push('ipam', () => ipam.ipamDel(ctx));
  return result;
}

/** The gateway the IPAM gave for `dst`'s address family, if any: where a route without its own `gw` goes. */
export function gatewayFor(ips: ReadonlyArray<Pick<IPConfig, 'address' | 'gateway'>>, dst: string): string | undefined {
  const v6 = dst.includes(':');
  return ips.find((ip) => ip.address.includes(':') === v6 && ip.gateway)?.gateway;
}

/** Docker's container MAC: 02:42 followed by the IPv4 address's four bytes. */
export function macFromIPv4(ip: string): string {
  const v4 = parseIP(ip);
  if (v4?.family !== 4) throw new TypeError(`${ip} is not an IPv4 address`);
  return ['02', '42', ...[...toBytes(v4)].map((x) => x.toString(16).padStart(2, '0'))].join(':');
}

/** The kernel verbs applying a result needs inside the container; a NetlinkHandle on its namespace has them. */
export interface ContainerIfaceOps {
  linkSetMac(name: string, mac: string): void;
  addrAdd(name: string, cidr: string, opts?: { noDad?: boolean }): void;
  linkSetUp(name: string): void;
  link(name: string): Link;
  routeAdd(spec: RouteSpec): void;
}

export interface InterfaceSetup {
  /** set before anything else (a veth end takes Docker's MAC); absent: the link keeps its own */
  mac?: string;
  /** the addresses to put on the interface (CIDRs), with the gateways routes may go via */
  ips: ReadonlyArray<Pick<IPConfig, 'address' | 'gateway'>>;
  routes: readonly Route[];
  /** the gateway a route goes via; default: its own, else the IPAM's for its family (gatewayFor) */
  via?: (r: Route) => string | undefined;
}

/**
 * Applies a result to CNI_IFNAME inside the container, in the order the
 * kernel needs: MAC (while the link is down), addresses (IPv6 without DAD:
 * the address is the IPAM's, unique by construction, and DAD would hold it
 * "tentative" for a second after ADD returns), up, then the routes out of it
 * (a route via a gateway needs the subnet route the address brought).
 * Returns the link as it is now.
 */
export function applyToInterface(cont: ContainerIfaceOps, ifname: string, setup: InterfaceSetup): Link {
  if (setup.mac) cont.linkSetMac(ifname, setup.mac);
  for (const ip of setup.ips) cont.addrAdd(ifname, ip.address, { noDad: ip.address.includes(':') });
  cont.linkSetUp(ifname);
  const link = cont.link(ifname);
  const via = setup.via ?? ((r: Route) => r.gw ?? gatewayFor(setup.ips, r.dst));
  for (const r of setup.routes) cont.routeAdd({ dst: r.dst, gw: via(r), oifIndex: link.index });
  return link;
}

/**
 * Runs fn with a `keep` that registers each handle it opens; all are closed
 * when fn ends, newest first, whatever happened. Opened inside fn rather
 * than before it: in the long-lived daemon, a handle left open when a later
 * one fails to open (CNI_NETNS gone meanwhile) would leak an fd per call.
 */
export async function withHandles<T>(fn: (keep: <H extends { close(): void }>(h: H) => H) => Promise<T>): Promise<T> {
  const opened: Array<{ close(): void }> = [];
  try {
    return await fn((h) => (opened.push(h), h));
  } finally {
    for (const h of opened.reverse()) h.close();
  }
}
