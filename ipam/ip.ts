/**
 * IP addresses as bigints, and the little arithmetic IPAM needs.
 *
 * Why not the ip-address package: allocation walks ranges one address at a
 * time and compares addresses constantly; a bigint is the cheapest value that
 * does both for IPv4 and IPv6 alike, and parsing is a few lines once
 * shared/cni/ip has said the text is a valid address (with Go's rules, and
 * without node:net, whose load alone costs milliseconds per plugin call). Formatting follows the
 * rules Go's net.IP.String() uses (RFC 5952 for IPv6), because address file
 * names in the data dir must be the same strings host-local writes.
 */
import { isIPv4, isIPv6 } from '../shared/cni/ip';

export type Family = 4 | 6;

export interface IP {
  readonly family: Family;
  readonly value: bigint;
}

/** A subnet: its network address (host bits zero) and prefix length. */
export interface Subnet {
  readonly network: IP;
  readonly prefix: number;
}

export function bits(family: Family): number {
  return family === 4 ? 32 : 128;
}

/**
 * Parses a textual IPv4 or IPv6 address; undefined if it is not one.
 * An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is taken as the IPv4 address,
 * as Go's To4() does in host-local, so both spellings name the same file.
 */
export function parseIP(text: string): IP | undefined {
  if (isIPv4(text)) return { family: 4, value: parseV4(text) };
  if (!isIPv6(text)) return undefined;
  const value = parseV6(text);
  if (value >> 32n === 0xffffn) return { family: 4, value: value & 0xffffffffn };
  return { family: 6, value };
}

function parseV4(text: string): bigint {
  let v = 0;
  for (const part of text.split('.')) v = v * 256 + Number(part);
  return BigInt(v);
}

function parseV6(text: string): bigint {
  // isIPv6 has already accepted the text, so only the shapes it allows reach here.
  const lastColon = text.lastIndexOf(':');
  if (text.includes('.', lastColon)) {
    // a trailing embedded IPv4 address (::ffff:10.0.0.1) is two 16-bit groups
    const v4 = Number(parseV4(text.slice(lastColon + 1)));
    text = `${text.slice(0, lastColon + 1)}${(v4 >>> 16).toString(16)}:${(v4 & 0xffff).toString(16)}`;
  }
  const groupsOf = (s: string): number[] => (s === '' ? [] : s.split(':').map((g) => parseInt(g, 16)));
  const dbl = text.indexOf('::');
  let groups: number[];
  if (dbl >= 0) {
    const head = groupsOf(text.slice(0, dbl));
    const tail = groupsOf(text.slice(dbl + 2));
    groups = head.concat(new Array<number>(8 - head.length - tail.length).fill(0), tail);
  } else {
    groups = groupsOf(text);
  }
  let v = 0n;
  for (const g of groups) v = (v << 16n) | BigInt(g);
  return v;
}

/** The canonical text of an address: dotted quad, or RFC 5952 IPv6. */
export function formatIP(ip: IP): string {
  if (ip.family === 4) {
    const v = Number(ip.value);
    return `${(v >>> 24) & 255}.${(v >>> 16) & 255}.${(v >>> 8) & 255}.${v & 255}`;
  }
  const groups: number[] = [];
  for (let i = 7; i >= 0; i--) groups.push(Number((ip.value >> BigInt(i * 16)) & 0xffffn));
  // longest run of at least two zero groups, the first one on a tie
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (g: number[]): string => g.map((x) => x.toString(16)).join(':');
  if (bestStart < 0) return hex(groups);
  return `${hex(groups.slice(0, bestStart))}::${hex(groups.slice(bestStart + bestLen))}`;
}

/**
 * Parses "addr/prefix". The address may have host bits set ("10.1.0.1/24");
 * `subnet` is then the masked network and `ip` the address as written.
 */
export function parseCIDR(text: string): { ip: IP; subnet: Subnet } | undefined {
  const slash = text.indexOf('/');
  if (slash < 0) return undefined;
  const ip = parseIP(text.slice(0, slash));
  const prefixText = text.slice(slash + 1);
  if (!ip || !/^\d{1,3}$/.test(prefixText)) return undefined;
  const prefix = Number(prefixText);
  if (prefix > bits(ip.family)) return undefined;
  return { ip, subnet: { network: { family: ip.family, value: ip.value & mask(ip.family, prefix) }, prefix } };
}

export function mask(family: Family, prefix: number): bigint {
  const width = BigInt(bits(family));
  const all = (1n << width) - 1n;
  return (all << (width - BigInt(prefix))) & all;
}

/** The last address of a subnet (the IPv4 broadcast address). */
export function lastAddress(subnet: Subnet): bigint {
  const { family } = subnet.network;
  return subnet.network.value | (~mask(family, subnet.prefix) & ((1n << BigInt(bits(family))) - 1n));
}

export function subnetContains(subnet: Subnet, ip: IP): boolean {
  return ip.family === subnet.network.family && (ip.value & mask(ip.family, subnet.prefix)) === subnet.network.value;
}

export function formatCIDR(subnet: Subnet): string {
  return `${formatIP(subnet.network)}/${subnet.prefix}`;
}

export function ipEqual(a: IP | undefined, b: IP | undefined): boolean {
  return a !== undefined && b !== undefined && a.family === b.family && a.value === b.value;
}
