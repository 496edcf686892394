/**
 * Addresses for the netlink layer: the kernel's bytes <-> text, CIDRs and
 * MACs. The text is read and written by the one IP module (shared/ip.ts);
 * this file only turns its values into the family numbers and network-order
 * bytes netlink carries, and raises AddressParseError for text that is not
 * an address (the plugins map it to a CNI error).
 */
import { AF_INET, AF_INET6 } from './consts';
import { type IP, fromBytes, formatIP, mask, parseAddress, parsePrefixLength, toBytes } from '../ip';

export interface IpAddr {
  family: typeof AF_INET | typeof AF_INET6;
  bytes: Buffer;
}

export interface Cidr extends IpAddr {
  prefixLen: number;
}

export class AddressParseError extends Error {}

function toIpAddr(ip: IP): IpAddr {
  return { family: ip.family === 4 ? AF_INET : AF_INET6, bytes: toBytes(ip) };
}

function toIp(a: IpAddr): IP {
  return fromBytes(a.family === AF_INET ? 4 : 6, a.bytes);
}

/** The address's family and network-order bytes; an IPv4-mapped IPv6 address stays 16 bytes, as inet_pton reads it. */
export function parseIp(s: string): IpAddr {
  const ip = parseAddress(s);
  if (!ip) throw new AddressParseError(`invalid IP address "${s}"`);
  return toIpAddr(ip);
}

export function isIp(s: string): boolean {
  return parseAddress(s) !== undefined;
}

/** "10.0.0.1/24" (host bits allowed: an interface address keeps them) */
export function parseCidr(s: string): Cidr {
  const slash = s.indexOf('/');
  if (slash === -1) throw new AddressParseError(`invalid CIDR "${s}": missing /prefix`);
  const ip = parseIp(s.slice(0, slash));
  const prefixLen = parsePrefixLength(s.slice(slash + 1));
  const max = ip.family === AF_INET ? 32 : 128;
  if (prefixLen === undefined || prefixLen > max) throw new AddressParseError(`invalid CIDR "${s}": bad prefix length`);
  return { ...ip, prefixLen };
}

export function formatIp(family: number, b: Buffer): string {
  return formatIP(fromBytes(family === AF_INET ? 4 : 6, b));
}

export function formatCidr(c: Cidr): string {
  return `${formatIp(c.family, c.bytes)}/${c.prefixLen}`;
}

/** The network part of a CIDR with host bits cleared ("10.0.0.5/24" -> 10.0.0.0/24). */
export function networkOf(c: Cidr): Cidr {
  const ip = toIp(c);
  const network = toIpAddr({ family: ip.family, value: ip.value & mask(ip.family, c.prefixLen) });
  return { ...network, prefixLen: c.prefixLen };
}

/** The canonical text form of an IP ("::0:1" -> "::1"). */
export function canonicalIp(s: string): string {
  const ip = parseAddress(s);
  if (!ip) throw new AddressParseError(`invalid IP address "${s}"`);
  return formatIP(ip);
}

export function parseMac(s: string): Buffer {
  const parts = s.split(/[:-]/);
  if (parts.length !== 6 || parts.some((p) => !/^[0-9a-fA-F]{2}$/.test(p))) {
    throw new AddressParseError(`invalid MAC address "${s}"`);
  }
  return Buffer.from(parts.map((p) => parseInt(p, 16)));
}

export function formatMac(b: Buffer): string {
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');
}
