/**
 * Address parsing for the netlink layer: IPv4/IPv6 text <-> bytes, CIDRs and
 * MACs. Small and dependency-free because it runs on every plugin call.
 */
import { AF_INET, AF_INET6 } from './consts';

export interface IpAddr {
  family: typeof AF_INET | typeof AF_INET6;
  bytes: Buffer;
}

export interface Cidr extends IpAddr {
  prefixLen: number;
}

export class AddressParseError extends Error {}

function parseV4(s: string): Buffer | undefined {
  const parts = s.split('.');
  if (parts.length !== 4) return undefined;
  const b = Buffer.alloc(4);
  for (let i = 0; i < 4; i++) {
    const p = parts[i];
    if (!/^\d{1,3}$/.test(p)) return undefined;
    const n = Number(p);
    if (n > 255 || (p.length > 1 && p[0] === '0')) return undefined;
    b[i] = n;
  }
  return b;
}

function parseV6(s: string): Buffer | undefined {
  if (!/^[0-9a-fA-F:.]+$/.test(s) || s.length < 2) return undefined;
  let tail4: Buffer | undefined;
  let text = s;
  const lastColon = s.lastIndexOf(':');
  if (s.indexOf('.', lastColon) !== -1) {
    tail4 = parseV4(s.slice(lastColon + 1));
    if (!tail4) return undefined;
    text = `${s.slice(0, lastColon + 1)}0:0`;
  }
  const halves = text.split('::');
  if (halves.length > 2) return undefined;
  const head = halves[0] ? halves[0].split(':') : [];
  const tail = halves.length === 2 && halves[1] ? halves[1].split(':') : [];
  const groups = head.length + tail.length;
  if (halves.length === 1 ? groups !== 8 : groups > 7) return undefined;
  const words = [...head, ...Array<string>(8 - groups).fill('0'), ...tail];
  const b = Buffer.alloc(16);
  for (let i = 0; i < 8; i++) {
    if (!/^[0-9a-fA-F]{1,4}$/.test(words[i])) return undefined;
    b.writeUInt16BE(parseInt(words[i], 16), i * 2);
  }
  if (tail4) tail4.copy(b, 12);
  return b;
}

export function parseIp(s: string): IpAddr {
  const v4 = parseV4(s);
  if (v4) return { family: AF_INET, bytes: v4 };
  const v6 = s.includes(':') ? parseV6(s) : undefined;
  if (v6) return { family: AF_INET6, bytes: v6 };
  throw new AddressParseError(`invalid IP address "${s}"`);
}

export function isIp(s: string): boolean {
  try {
    parseIp(s);
    return true;
  } catch {
    return false;
  }
}

/** "10.0.0.1/24" (host bits allowed: an interface address keeps them) */
export function parseCidr(s: string): Cidr {
  const slash = s.indexOf('/');
  if (slash === -1) throw new AddressParseError(`invalid CIDR "${s}": missing /prefix`);
  const ip = parseIp(s.slice(0, slash));
  const p = s.slice(slash + 1);
  const max = ip.family === AF_INET ? 32 : 128;
  if (!/^\d{1,3}$/.test(p) || Number(p) > max) throw new AddressParseError(`invalid CIDR "${s}": bad prefix length`);
  return { ...ip, prefixLen: Number(p) };
}

export function formatIp(family: number, b: Buffer): string {
  if (family === AF_INET) return `${b[0]}.${b[1]}.${b[2]}.${b[3]}`;
  const words: number[] = [];
  for (let i = 0; i < 16; i += 2) words.push(b.readUInt16BE(i));
  // IPv4-mapped (::ffff:a.b.c.d) keeps its dotted quad, as inet_ntop prints it
  if (words.slice(0, 5).every((w) => w === 0) && words[5] === 0xffff) return `::ffff:${b[12]}.${b[13]}.${b[14]}.${b[15]}`;
  // RFC 5952: compress the longest run (>= 2) of zero words
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (words[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLen && j - i >= 2) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = words.map((w) => w.toString(16));
  if (bestStart === -1) return hex.join(':');
  return `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLen).join(':')}`;
}

export function formatCidr(c: Cidr): string {
  return `${formatIp(c.family, c.bytes)}/${c.prefixLen}`;
}

/** The network part of a CIDR with host bits cleared ("10.0.0.5/24" -> 10.0.0.0/24). */
export function networkOf(c: Cidr): Cidr {
  const bytes = Buffer.from(c.bytes);
  for (let bit = c.prefixLen; bit < bytes.length * 8; bit++) bytes[bit >> 3] &= ~(0x80 >> (bit & 7));
  return { family: c.family, bytes, prefixLen: c.prefixLen };
}

/** The canonical text form of an IP ("::0:1" -> "::1"). */
export function canonicalIp(s: string): string {
  const ip = parseIp(s);
  return formatIp(ip.family, ip.bytes);
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
