/**
 * rtnetlink address messages. Pure: no socket here.
 *
 *   struct ifaddrmsg { __u8 ifa_family; __u8 ifa_prefixlen; __u8 ifa_flags;
 *                      __u8 ifa_scope; __u32 ifa_index; };
 */
import * as C from './consts';
import { Attr, attrBytes, attrU32, decodeAttrs, readString, readU32 } from './codec';
import { Cidr, formatIp } from './ipaddr';

export function ifaddrmsg(family: number, prefixLen: number, index: number, scope = C.RT_SCOPE_UNIVERSE, flags = 0): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt8(family, 0);
  b.writeUInt8(prefixLen, 1);
  b.writeUInt8(flags & 0xff, 2);
  b.writeUInt8(scope, 3);
  b.writeUInt32LE(index, 4);
  return b;
}

export interface AddrOptions {
  /** skip IPv6 duplicate address detection (containers cannot wait for it) */
  noDad?: boolean;
  /** do not create the prefix route that comes with the address */
  noPrefixRoute?: boolean;
  scope?: number;
}

/** IFA_* attributes for an address; IPv4 gets its broadcast computed as `ip addr add ... brd +` would. */
export function addrAttrs(cidr: Cidr, opts: AddrOptions = {}): Attr[] {
  const attrs: Attr[] = [attrBytes(C.IFA_LOCAL, cidr.bytes), attrBytes(C.IFA_ADDRESS, cidr.bytes)];
  if (cidr.family === C.AF_INET && cidr.prefixLen < 31) {
    const brd = Buffer.from(cidr.bytes);
    for (let bit = cidr.prefixLen; bit < 32; bit++) brd[bit >> 3] |= 0x80 >> (bit & 7);
    attrs.push(attrBytes(C.IFA_BROADCAST, brd));
  }
  const flags = addrFlags(opts);
  if (flags) attrs.push(attrU32(C.IFA_FLAGS, flags));
  return attrs;
}

export function addrFlags(opts: AddrOptions): number {
  return (opts.noDad ? C.IFA_F_NODAD : 0) | (opts.noPrefixRoute ? C.IFA_F_NOPREFIXROUTE : 0);
}

/** An address as the kernel reports it (ip -j addr show). */
export interface Addr {
  index: number;
  family: number;
  /** "10.1.0.5" */
  address: string;
  prefixLen: number;
  /** "10.1.0.5/24" */
  cidr: string;
  scope: number;
  flags: number;
  label?: string;
}

export function parseAddr(payload: Buffer): Addr {
  const family = payload.readUInt8(0);
  const prefixLen = payload.readUInt8(1);
  const scope = payload.readUInt8(3);
  const index = payload.readUInt32LE(4);
  const a = decodeAttrs(payload, 8);
  // On point-to-point links IFA_ADDRESS is the peer; IFA_LOCAL is ours.
  const raw = a.get(C.IFA_LOCAL) ?? a.get(C.IFA_ADDRESS)!;
  const address = formatIp(family, raw);
  return {
    index,
    family,
    address,
    prefixLen,
    cidr: `${address}/${prefixLen}`,
    scope,
    flags: readU32(a.get(C.IFA_FLAGS)) ?? payload.readUInt8(2),
    label: readString(a.get(C.IFA_LABEL)),
  };
}
