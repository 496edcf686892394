/**
 * The one IP module: address and CIDR text with Go's rules, addresses as
 * (family, bigint) values, and the CIDR arithmetic IPAM, the plugins and the
 * netlink codec need. Everything that reads or writes an IP address goes
 * through here; shared/netlink/ipaddr.ts only turns these values into the
 * kernel's bytes and back.
 *
 * Why a bigint: allocation walks ranges one address at a time and compares
 * addresses constantly; a bigint is the cheapest value that does both for
 * IPv4 and IPv6 alike, and masks are plain `&`.
 *
 * Why not node:net or the ip-address package: node:net costs milliseconds
 * to load in every plugin call, ip-address more, and neither has Go's rules,
 * which are what the runtime reading our results applies (net.ParseIP):
 * IPv4 octets without leading zeros, IPv6 with at most one "::" and an
 * optional dotted IPv4 tail, no zone.
 *
 * Formatting is RFC 5952 (Go's net.IP.String() and inet_ntop agree on it),
 * because host-local's address files are named by these strings and `ip`
 * prints them; an IPv4-mapped IPv6 value keeps its dotted tail
 * (::ffff:10.0.0.1), as inet_ntop prints it and RFC 5952 section 5 asks.
 */

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

/** An address with a prefix length as written: host bits may be set ("10.1.0.5/24" on an interface). */
export interface Prefixed {
  readonly ip: IP;
  readonly prefix: number;
}

export function bits(family: Family): number {
  return family === 4 ? 32 : 128;
}

// ---- parsing -------------------------------------------------------------------

function parseV4(s: string): bigint | undefined {
  const parts = s.split('.');
  if (parts.length !== 4) return undefined;
  let v = 0;
  for (const p of parts) {
    if (!/^(0|[1-9]\d{0,2})$/.test(p)) return undefined;
    const n = Number(p);
    if (n > 255) return undefined;
    v = v * 256 + n;
  }
  return BigInt(v);
}

/** The eight 16-bit groups of an IPv6 address as one value, or undefined when it is not one. */
function parseV6(s: string): bigint | undefined {
  if (!s.includes(':')) return undefined;
  const halves = s.split('::');
  if (halves.length > 2) return undefined;
  const parseHalf = (text: string, allowV4Tail: boolean): number[] | undefined => {
    if (text === '') return [];
    const out: number[] = [];
    const parts = text.split(':');
    for (let i = 0; i < parts.length; i++) {
      const g = parts[i];
      if (allowV4Tail && i === parts.length - 1 && g.includes('.')) {
        const v4 = parseV4(g);
        if (v4 === undefined) return undefined;
        out.push(Number(v4 >> 16n), Number(v4 & 0xffffn));
      } else if (/^[0-9a-fA-F]{1,4}$/.test(g)) {
        out.push(parseInt(g, 16));
      } else {
        return undefined;
      }
    }
    return out;
  };
  const head = parseHalf(halves[0], halves.length === 1);
  const tail = halves.length === 2 ? parseHalf(halves[1], true) : [];
  if (!head || !tail) return undefined;
  if (halves.length === 1 ? head.length !== 8 : head.length + tail.length > 7) return undefined; // "::" is at least one zero group
  const groups = [...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail];
  // one BigInt of 32 hex digits: several times cheaper than eight shifts
  return BigInt(`0x${groups.map((g) => g.toString(16).padStart(4, '0')).join('')}`);
}

/**
 * An address as written: an IPv4-mapped IPv6 address (::ffff:a.b.c.d) stays
 * IPv6, as the kernel and inet_pton see it. Undefined if it is not one.
 */
export function parseAddress(text: string): IP | undefined {
  const v4 = parseV4(text);
  if (v4 !== undefined) return { family: 4, value: v4 };
  const v6 = parseV6(text);
  return v6 === undefined ? undefined : { family: 6, value: v6 };
}

/** True for an IPv6 value in ::ffff:0:0/96. */
export function isV4Mapped(ip: IP): boolean {
  return ip.family === 6 && ip.value >> 32n === 0xffffn;
}

/** The IPv4 address an IPv4-mapped IPv6 address stands for (Go's To4()); any other address unchanged. */
export function unmap(ip: IP): IP {
  return isV4Mapped(ip) ? { family: 4, value: ip.value & 0xffffffffn } : ip;
}

/**
 * Parses a textual IPv4 or IPv6 address the way host-local reads one:
 * an IPv4-mapped IPv6 address is taken as the IPv4 address (Go's To4()),
 * so both spellings name the same file. Undefined if it is not an address.
 */
export function parseIP(text: string): IP | undefined {
  const ip = parseAddress(text);
  return ip && unmap(ip);
}

/** "ADDRESS/PREFIX" as written (no unmapping), with a decimal prefix that fits the family; undefined otherwise. */
export function parsePrefixed(text: string): Prefixed | undefined {
  const slash = text.indexOf('/');
  if (slash < 0) return undefined;
  const ip = parseAddress(text.slice(0, slash));
  const prefix = parsePrefixLength(text.slice(slash + 1));
  if (!ip || prefix === undefined || prefix > bits(ip.family)) return undefined;
  return { ip, prefix };
}

/** The prefix length text of a CIDR: one to three decimal digits (range is the caller's: it depends on the family). */
export function parsePrefixLength(text: string): number | undefined {
  return /^\d{1,3}$/.test(text) ? Number(text) : undefined;
}

/**
 * Parses "addr/prefix" as host-local does (IPv4-mapped addresses unmapped).
 * The address may have host bits set ("10.1.0.1/24"); `subnet` is then the
 * masked network and `ip` the address as written.
 */
export function parseCIDR(text: string): { ip: IP; subnet: Subnet } | undefined {
  const slash = text.indexOf('/');
  if (slash < 0) return undefined;
  const ip = parseIP(text.slice(0, slash));
  const prefix = parsePrefixLength(text.slice(slash + 1));
  if (!ip || prefix === undefined || prefix > bits(ip.family)) return undefined;
  return { ip, subnet: subnetOf(ip, prefix) };
}

// ---- validation of result text (Go's net.ParseIP / ParseCIDR) -------------------------

export function isIPv4(s: string): boolean {
  return parseV4(s) !== undefined;
}

export function isIPv6(s: string): boolean {
  return parseV6(s) !== undefined;
}

export function isIP(s: string): boolean {
  return parseAddress(s) !== undefined;
}

/** "ADDRESS/PREFIX" with a prefix that fits the address family. */
export function isCidr(s: string): boolean {
  return parsePrefixed(s) !== undefined;
}

/**
 * "4" or "6" for the 0.3.x/0.4.0 `version` field of an ip entry. Like the
 * reference (IP.To4() != nil), an IPv4-mapped IPv6 address counts as IPv4.
 */
export function ipFamilyOfCidr(cidr: string): '4' | '6' {
  const v6 = parseV6(cidr.split('/', 1)[0]);
  if (v6 === undefined) return '4';
  return isV4Mapped({ family: 6, value: v6 }) ? '4' : '6';
}

// ---- formatting -------------------------------------------------------------------------

/** The canonical text of an address: dotted quad, or RFC 5952 IPv6. */
export function formatIP(ip: IP): string {
  if (ip.family === 4) return formatV4(ip.value);
  if (isV4Mapped(ip)) return `::ffff:${formatV4(ip.value & 0xffffffffn)}`;
  const groups = new Array<number>(8);
  for (let i = 0; i < 4; i++) {
    // four 32-bit words as Numbers: cheaper than eight 16-bit BigInt shifts
    const w = Number(BigInt.asUintN(32, ip.value >> BigInt(96 - 32 * i)));
    groups[2 * i] = w >>> 16;
    groups[2 * i + 1] = w & 0xffff;
  }
  // the longest run of at least two zero groups, the first one on a tie
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

function formatV4(value: bigint): string {
  const v = Number(value);
  return `${(v >>> 24) & 255}.${(v >>> 16) & 255}.${(v >>> 8) & 255}.${v & 255}`;
}

/** The canonical text of a textual address ("::0:1" -> "::1"); undefined when it is not one. */
export function canonicalAddress(text: string): string | undefined {
  const ip = parseAddress(text);
  return ip && formatIP(ip);
}

export function formatCIDR(subnet: Subnet): string {
  return `${formatIP(subnet.network)}/${subnet.prefix}`;
}

// ---- bytes (network order, as the kernel and the wire carry them) ---------------------------

/** 4 bytes for IPv4, 16 for IPv6, most significant first. */
export function toBytes(ip: IP): Buffer {
  return Buffer.from(ip.value.toString(16).padStart(bits(ip.family) / 4, '0'), 'hex');
}

/** The address in the first 4 (IPv4) or 16 (IPv6) bytes of b. */
export function fromBytes(family: Family, b: Buffer): IP {
  const n = bits(family) / 8;
  if (b.length < n) throw new RangeError(`${b.length} bytes hold no IPv${family} address`);
  return { family, value: family === 4 ? BigInt(b.readUInt32BE(0)) : BigInt(`0x${b.toString('hex', 0, n)}`) };
}

// ---- CIDR arithmetic ----------------------------------------------------------------------

export function mask(family: Family, prefix: number): bigint {
  const width = BigInt(bits(family));
  const all = (1n << width) - 1n;
  return (all << (width - BigInt(prefix))) & all;
}

/** The subnet of `prefix` bits that holds ip ("10.1.2.3", 16 -> 10.1.0.0/16). */
export function subnetOf(ip: IP, prefix: number): Subnet {
  return { network: { family: ip.family, value: ip.value & mask(ip.family, prefix) }, prefix };
}

/** The last address of a subnet (the IPv4 broadcast address). */
export function lastAddress(subnet: Subnet): bigint {
  const { family } = subnet.network;
  return subnet.network.value | (~mask(family, subnet.prefix) & ((1n << BigInt(bits(family))) - 1n));
}

export function subnetContains(subnet: Subnet, ip: IP): boolean {
  return ip.family === subnet.network.family && (ip.value & mask(ip.family, subnet.prefix)) === subnet.network.value;
}

/** Whether the CIDR text (host bits ignored) holds the address text; false when either is not valid or the families differ. */
export function cidrContains(cidr: string, ip: string): boolean {
  const c = parsePrefixed(cidr);
  const a = parseAddress(ip);
  return c !== undefined && a !== undefined && subnetContains(subnetOf(c.ip, c.prefix), a);
}

export function ipEqual(a: IP | undefined, b: IP | undefined): boolean {
  return a !== undefined && b !== undefined && a.family === b.family && a.value === b.value;
}
