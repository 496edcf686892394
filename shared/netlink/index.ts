/**
 * netlink-ts: the project's netlink package. Layers, bottom up:
 *   ../sys/native.ts  loads the native binding (its C source is ./native/); netlink uses only its socket verbs
 *   codec.ts    netlink wire format, pure
 *   socket.ts   request/ack/dump over one socket bound to one namespace
 *   link/addr/route/neigh.ts  rtnetlink message codecs, pure
 *   handle.ts   typed verbs (linkAdd, addrAdd, routeAdd, neighSet, fdbAdd, ...)
 *   xfrm/       xfrm state and policy codecs and XfrmHandle, laid out the same way
 *   ipaddr.ts   addresses as the kernel's bytes; the text is shared/ip.ts's
 */
export * from './consts';
export { NetlinkError, isNetlinkError, isNotFound, errnoName, EEXIST, ENODEV, ENOENT, EBUSY, EINVAL, EOPNOTSUPP } from './errors';
export { NetlinkHandle, withHandle, linkExistsInNetns } from './handle';
export type { NeighSpec, FdbSpec } from './handle';
export type { Link, LinkSpec, MacvlanMode, IpvlanMode, IpvlanFlag } from './link';
export type { Addr, AddrOptions } from './addr';
export type { Route, RouteSpec } from './route';
export type { Neigh } from './neigh';
export { parseIp, parseCidr, formatIp, formatCidr, networkOf, canonicalIp, parseMac, formatMac, isIp, AddressParseError } from './ipaddr';
export type { IpAddr, Cidr } from './ipaddr';
export { nftGetChain, NETLINK_NETFILTER } from './nftables';
export type { ChainInfo } from './nftables';
export { XfrmHandle, withXfrmHandle } from './xfrm';
export type { XfrmStateSpec, XfrmStateId, XfrmState, XfrmPolicySpec, XfrmPolicyId, XfrmPolicy, XfrmSelector, XfrmTmpl, XfrmAead, XfrmMark, XfrmMode, XfrmDir } from './xfrm';
