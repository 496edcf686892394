/**
 * Just enough IP text validation for results and prevResults.
 *
 * Written here rather than taken from node:net (which costs a couple of
 * milliseconds to load in every plugin call) or ip-address (heavier still).
 * The rules follow Go's net.ParseIP/ParseCIDR, which is what the reference
 * runtime uses to read our output: IPv4 octets without leading zeros, IPv6
 * with at most one "::" and an optional dotted IPv4 tail, no zone.
 */

export function isIPv4(s: string): boolean {
  const parts = s.split('.');
  if (parts.length !== 4) return false;
  for (const p of parts) {
    if (!/^(0|[1-9]\d{0,2})$/.test(p) || Number(p) > 255) return false;
  }
  return true;
}

export function isIPv6(s: string): boolean {
  return parseIPv6(s) !== undefined;
}

/** The eight 16-bit groups of an IPv6 address, or undefined when it is not one. */
function parseIPv6(s: string): number[] | undefined {
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
        if (!isIPv4(g)) return undefined;
        const [a, b, c, d] = g.split('.').map(Number);
        out.push((a << 8) | b, (c << 8) | d);
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
  if (halves.length === 1) return head.length === 8 ? head : undefined;
  // "::" stands for at least one zero group.
  if (head.length + tail.length > 7) return undefined;
  return [...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail];
}

export function isIP(s: string): boolean {
  return isIPv4(s) || isIPv6(s);
}

/** "ADDRESS/PREFIX" with a prefix that fits the address family. */
export function isCidr(s: string): boolean {
  const slash = s.indexOf('/');
  if (slash < 0) return false;
  const ip = s.slice(0, slash);
  const prefix = s.slice(slash + 1);
  if (!/^\d{1,3}$/.test(prefix)) return false;
  const bits = Number(prefix);
  if (isIPv4(ip)) return bits <= 32;
  if (isIPv6(ip)) return bits <= 128;
  return false;
}

/**
 * "4" or "6" for the 0.3.x/0.4.0 `version` field of an ip entry. Like the
 * reference (IP.To4() != nil), an IPv4-mapped IPv6 address counts as IPv4.
 */
export function ipFamilyOfCidr(cidr: string): '4' | '6' {
  const ip = cidr.split('/', 1)[0];
  const g = parseIPv6(ip);
  if (!g) return '4';
  const mapped = g.slice(0, 5).every((x) => x === 0) && g[5] === 0xffff;
  return mapped ? '4' : '6';
}
