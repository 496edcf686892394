/**
 * CHECK, container side: does the interface a plugin made still look the way
 * its ADD left it (the prevResult)? Shared by every plugin that puts one link
 * in the container (bridge's veth end, macvlan, ipvlan), so they all judge
 * "still there" the same way and say it in the same words.
 *
 * What is verified, in this order, each failure a CniError with code 999
 * (ErrorCode.Internal, as the reference plugins answer a failed CHECK):
 *   1. the interface is present, and of the plugin's link kind;
 *   2. the plugin's own checks on that link (mode, parent, MTU: `extra`);
 *   3. its MAC is the one prevResult reported for it (when asked to);
 *   4. every address in prevResult is on it;
 *   5. every route in prevResult is there, out of that interface.
 *
 * The kernel is read through ContainerLinks, which NetlinkHandle satisfies.
 * checkContainerAttachment is the CHECK tail those plugins share: the above
 * inside CNI_NETNS, then the IPAM's own CHECK.
 */
import { CniError, ErrorCode } from './cni/errors';
import { requirePrevResult } from './cni/skel';
import type { Result } from './cni/types';
import type { IpamClient, IpamCtx } from './container-iface';
import { AF_INET6, formatCidr, networkOf, parseCidr, withHandle, type Addr, type Link, type Route } from './netlink';

/** The reads CHECK needs inside the container; a NetlinkHandle opened on its namespace has them. */
export interface ContainerLinks {
  linkByName(name: string): Link | undefined;
  addrList(name?: string): Addr[];
  routeList(): Route[];
}

export interface ContainerExpectation {
  /** CNI_IFNAME */
  ifname: string;
  /** CNI_NETNS, only for the message */
  netns: string;
  /** the link kind the plugin creates: "veth", "macvlan", "ipvlan" */
  kind: string;
  /**
   * Compare the MAC with prevResult's (default true). ipvlan links share
   * their parent's MAC, which is not the plugin's to keep, so it says false.
   */
  checkMac?: boolean;
  /** the plugin's own checks of the link, after its kind and before its MAC */
  extra?: (link: Link) => void;
}

export const checkFailed = (msg: string): CniError => new CniError(ErrorCode.Internal, msg);

/**
 * Everything above, in order; returns the container's link. Throws the
 * first difference found.
 */
export function verifyContainerInterface(cont: ContainerLinks, want: ContainerExpectation, prev: Result): Link {
  const link = verifyLink(cont, want.ifname, want.netns, want.kind);
  want.extra?.(link);
  if (want.checkMac ?? true) verifyMac(link, prev);
  verifyAddresses(cont, want.ifname, prev);
  verifyRoutes(cont, link, prev);
  return link;
}

/**
 * The CHECK tail of a plugin with one link in the container: that link
 * against prevResult (verifyContainerInterface, in CNI_NETNS), then the
 * IPAM's CHECK when the config has an IPAM. Returns the container's link.
 */
export async function checkContainerAttachment(
  ctx: IpamCtx,
  ipam: IpamClient,
  want: Omit<ContainerExpectation, 'ifname' | 'netns'>,
): Promise<Link> {
  const prev = requirePrevResult(ctx);
  const link = withHandle(ctx.netns, (cont) => verifyContainerInterface(cont, { ...want, ifname: ctx.ifname, netns: ctx.netns }, prev));
  if (ipam.hasIpam(ctx)) await ipam.ipamCheck(ctx);
  return link;
}

/** The interface exists in the container and is a `kind`. */
export function verifyLink(cont: ContainerLinks, ifname: string, netns: string, kind: string): Link {
  const link = cont.linkByName(ifname);
  if (!link) throw checkFailed(`${ifname} is missing in ${netns}`);
  if (link.kind !== kind) throw checkFailed(`${ifname} is a ${link.kind ?? 'device'}, not ${article(kind)} ${kind}`);
  return link;
}

/** The link's MAC is the one prevResult gave for this interface in the sandbox (if it gave one). */
export function verifyMac(link: Link, prev: Result): void {
  const want = prev.interfaces?.find((i) => i.name === link.name && i.sandbox);
  if (want?.mac && link.mac !== want.mac.toLowerCase()) throw checkFailed(`${link.name} has MAC ${link.mac}, expected ${want.mac}`);
}

/** Every prevResult address is on the interface (compared as normalised CIDRs). */
export function verifyAddresses(cont: ContainerLinks, ifname: string, prev: Result): void {
  const have = new Set(cont.addrList(ifname).map((a) => a.cidr));
  for (const ip of prev.ips ?? []) {
    if (!have.has(formatCidr(parseCidr(ip.address)))) throw checkFailed(`address ${ip.address} is missing on ${ifname}`);
  }
}

/**
 * Every prevResult route exists in the main table, out of `link`, via its
 * gateway when it names one. The family is compared too: the kernel shows
 * 0.0.0.0/0 and ::/0 both as "default".
 */
export function verifyRoutes(cont: ContainerLinks, link: Link, prev: Result): void {
  const routes = cont.routeList();
  for (const r of prev.routes ?? []) {
    const v6 = r.dst.includes(':');
    const dst = isDefault(r.dst) ? 'default' : formatCidr(networkOf(parseCidr(r.dst)));
    const found = routes.some((k) => k.dst === dst && (k.family === AF_INET6) === v6 && (!r.gw || k.gw === r.gw) && k.oifIndex === link.index);
    if (!found) throw checkFailed(`route to ${r.dst}${r.gw ? ` via ${r.gw}` : ''} is missing`);
  }
}

function isDefault(dst: string): boolean {
  return dst === '0.0.0.0/0' || dst === '::/0';
}

/** "an ipvlan", "a macvlan", "a veth": the messages are read by people. */
function article(word: string): string {
  return /^[aeiou]/i.test(word) ? 'an' : 'a';
}
