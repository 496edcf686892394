/**
 * portmap's configuration and the pure half of its logic: which host ports
 * a container claims, for which address family, forwarded to which address.
 *
 * The config is the reference portmap's (plugins/meta/portmap): the mappings
 * arrive through the `portMappings` capability as
 * runtimeConfig.portMappings = [{hostPort, containerPort, protocol, hostIP}],
 * and `snat` (default true) controls the masquerading that makes localhost
 * and hairpin connections work. Keys the reference has only for its iptables
 * rules (markMasqBit) are accepted and ignored; keys whose meaning we cannot
 * honour (conditionsV4/V6, externalSetMarkChain, backend "iptables") are
 * refused with code 2 rather than silently dropped.
 *
 * Address families follow the reference: the container's first IPv4 and
 * first IPv6 address on CNI_IFNAME (from prevResult) are the DNAT targets; a
 * mapping without hostIP is published on every family the container has;
 * one with a hostIP only on that address's family ("0.0.0.0" and "::" mean
 * every address of their own family); a hostIP of a family the container
 * lacks is skipped, as the reference does, so a runtime may send one mapping
 * per family for a single-stack container.
 *
 * Port ranges (Docker's `-p 8000-8010:80-90`, netavark's `range`): a mapping
 * may carry `range`, the number of consecutive ports it publishes, from
 * hostPort to hostPort+range-1, forwarded port by port to containerPort to
 * containerPort+range-1. One claim stands for the whole range (rules.ts
 * writes one DNAT rule for it); its ports are registered one map element
 * each, so conflicts, DEL and CHECK treat a range's ports as any others.
 */
import { z } from 'zod';
import { netConfBase } from '../../shared/cni/config';
import { CniError, ErrorCode, unsupportedField } from '../../shared/cni/errors';
import type { Result } from '../../shared/cni/types';
import { AF_INET } from '../../shared/netlink/consts';
import { canonicalIp, formatCidr, networkOf, parseCidr, parseIp } from '../../shared/netlink/ipaddr';

export type Protocol = 'tcp' | 'udp' | 'sctp';
/** nft's names for the address families (meta nfproto). */
export type IpFamily = 'ipv4' | 'ipv6';

const port = z.number().int().min(1).max(65535);

const portMappingSchema = z
  .object({
    hostPort: port,
    containerPort: port,
    // Docker's default; kubelet and podman always send it, lower case.
    protocol: z
      .string()
      .default('tcp')
      .transform((p) => p.toLowerCase())
      .pipe(z.enum(['tcp', 'udp', 'sctp'])),
    hostIP: z.string().optional(),
    /** netavark's field: how many consecutive ports, from hostPort and containerPort on (1: just those) */
    range: z.number().int().min(1).max(65535).optional(),
  })
  .passthrough()
  .superRefine((m, ctx) => {
    const n = m.range ?? 1;
    for (const key of ['hostPort', 'containerPort'] as const) {
      if (m[key] + n - 1 > 65535) ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['range'], message: `${key} ${m[key]} + range ${n} goes past port 65535` });
    }
  });

export type PortMapping = z.infer<typeof portMappingSchema>;

/**
 * The most mappings one container may publish: room for a few thousand
 * ports (the capability has no ranges, each port is one mapping), while
 * bounding the transaction and the conflict check one call can ask of the
 * host.
 */
export const MAX_PORT_MAPPINGS = 4096;

/**
 * The most host ports one request may publish, ranges counted port by
 * port (each is a map element): every port of one protocol and family.
 */
export const MAX_PUBLISHED_PORTS = 65536;

// The length is checked before any element is parsed, so an oversized list
// costs one comparison, not a parse of every element.
const portMappingsSchema = z
  .array(z.unknown())
  .max(MAX_PORT_MAPPINGS, { message: `at most ${MAX_PORT_MAPPINGS} port mappings are accepted` })
  .pipe(z.array(portMappingSchema));

export const schema = netConfBase.extend({
  /** masquerade localhost and hairpin connections (the reference's default) */
  snat: z.boolean().default(true),
  /** masquerade every forwarded connection, so containers see the host as the client */
  masqAll: z.boolean().default(false),
  /**
   * serve wildcard mappings on [::1] too, through the userspace relay (Docker's
   * userland proxy does by default). Off by default: the relay is a process per
   * host and every ADD waits for it; an explicit hostIP "::1" is always served.
   */
  ipv6Localhost: z.boolean().default(false),
  /** the reference's iptables mark bit: we masquerade without marks, so it is accepted and unused */
  markMasqBit: z.number().int().min(0).max(31).optional(),
  backend: z.string().optional(),
  conditionsV4: z.unknown().optional(),
  conditionsV6: z.unknown().optional(),
  externalSetMarkChain: z.unknown().optional(),
  runtimeConfig: z
    .object({ portMappings: portMappingsSchema.optional() })
    .passthrough()
    .optional(),
});

export type PortmapConf = z.infer<typeof schema>;

/** Refuse the reference's keys we cannot honour (code 2), so a config never means less than it says. */
export function rejectUnsupported(conf: PortmapConf): void {
  if (conf.backend !== undefined && conf.backend !== 'nftables') throw unsupportedField('backend', conf.backend);
  for (const key of ['conditionsV4', 'conditionsV6', 'externalSetMarkChain'] as const) {
    if (conf[key] !== undefined && conf[key] !== null) throw unsupportedField(key, conf[key]);
  }
}

/** The container's address of one family: the DNAT target, and its subnet (hairpin sources). */
export interface ContainerAddr {
  family: IpFamily;
  /** canonical text, e.g. "10.1.0.5" or "fd00::5" */
  ip: string;
  /** the subnet with host bits cleared, e.g. "10.1.0.0/24" */
  subnet: string;
}

/**
 * The first IPv4 and first IPv6 address prevResult gives the container on
 * `ifname`. Addresses tied to another interface, or to a host-side one (no
 * sandbox), are not the container's (reference: parseConfig).
 */
export function containerAddrs(prev: Result | undefined, ifname: string): ContainerAddr[] {
  const out: ContainerAddr[] = [];
  for (const ip of prev?.ips ?? []) {
    if (ip.interface !== undefined) {
      const intf = prev?.interfaces?.[ip.interface];
      if (intf && (intf.name !== ifname || !intf.sandbox)) continue;
    }
    let cidr;
    try {
      cidr = parseCidr(ip.address);
    } catch {
      continue; // parsePrevResult already vetted it; nothing sensible to forward to otherwise
    }
    const family: IpFamily = cidr.family === AF_INET ? 'ipv4' : 'ipv6';
    if (out.some((a) => a.family === family)) continue;
    out.push({ family, ip: canonicalIp(ip.address.split('/')[0]), subnet: formatCidr(networkOf(cidr)) });
  }
  return out;
}

/**
 * One published port on one family: what the container owns in the host's
 * port space. `hostIP` is absent for "every local address of the family".
 */
export interface Claim {
  family: IpFamily;
  protocol: Protocol;
  hostPort: number;
  hostIP?: string;
  containerIP: string;
  containerPort: number;
  /** A port range: this many consecutive ports from hostPort (and containerPort) on; absent for one port. */
  range?: number;
}

export function describeClaim(c: Pick<Claim, 'family' | 'protocol' | 'hostPort' | 'hostIP'> & { range?: number }): string {
  const host = c.hostIP ? (c.family === 'ipv6' ? `[${c.hostIP}]` : c.hostIP) : c.family === 'ipv6' ? '[::]' : '0.0.0.0';
  const ports = c.range && c.range > 1 ? `${c.hostPort}-${c.hostPort + c.range - 1}` : `${c.hostPort}`;
  return `${c.protocol} ${host}:${ports}`;
}

/** The single-port claims a claim stands for: itself, or each port of its range. */
export function claimPorts(c: Claim): Claim[] {
  if (!c.range || c.range <= 1) return [c];
  const { range, ...one } = c;
  const out: Claim[] = [];
  for (let i = 0; i < range; i++) out.push({ ...one, hostPort: c.hostPort + i, containerPort: c.containerPort + i });
  return out;
}

/** Every single-port claim of `claims`. */
export function allPorts(claims: readonly Claim[]): Claim[] {
  return claims.flatMap(claimPorts);
}

/** Whether two claims compete for the same host port: same family, protocol and port, and addresses that overlap. */
export function overlaps(a: Pick<Claim, 'family' | 'protocol' | 'hostPort' | 'hostIP'>, b: Pick<Claim, 'family' | 'protocol' | 'hostPort' | 'hostIP'>): boolean {
  return a.family === b.family && a.protocol === b.protocol && a.hostPort === b.hostPort && (!a.hostIP || !b.hostIP || a.hostIP === b.hostIP);
}

/**
 * Claims grouped by family, protocol and host port, wildcard and
 * per-address apart: what can overlap a claim is found with two lookups, so
 * checking n claims against each other or against m held ones costs n + m,
 * not n x m (a request may carry thousands of mappings).
 */
export interface ClaimBucket<C> {
  wildcard: C[];
  byHostIP: Map<string, C[]>;
}

type PortOf = Pick<Claim, 'family' | 'protocol' | 'hostPort' | 'hostIP'>;

const portKey = (c: PortOf): string => `${c.family} ${c.protocol} ${c.hostPort}`;

function addToBuckets<C extends PortOf>(buckets: Map<string, ClaimBucket<C>>, c: C): void {
  let b = buckets.get(portKey(c));
  if (!b) buckets.set(portKey(c), (b = { wildcard: [], byHostIP: new Map() }));
  if (!c.hostIP) b.wildcard.push(c);
  else {
    const list = b.byHostIP.get(c.hostIP);
    if (list) list.push(c);
    else b.byHostIP.set(c.hostIP, [c]);
  }
}

export function bucketClaims<C extends PortOf>(claims: readonly C[]): Map<string, ClaimBucket<C>> {
  const buckets = new Map<string, ClaimBucket<C>>();
  for (const c of claims) addToBuckets(buckets, c);
  return buckets;
}

/** The bucket's claims that overlap `c` (see overlaps): all of them for a wildcard, else the wildcard ones and those on its address. */
export function overlapping<C>(buckets: ReadonlyMap<string, ClaimBucket<C>>, c: PortOf): C[] {
  const b = buckets.get(portKey(c));
  if (!b) return [];
  if (!c.hostIP) return [...b.wildcard, ...[...b.byHostIP.values()].flat()];
  return [...b.wildcard, ...(b.byHostIP.get(c.hostIP) ?? [])];
}

/** The first claim of `buckets` that overlaps `c`, without listing them all. */
function firstOverlapping<C>(buckets: ReadonlyMap<string, ClaimBucket<C>>, c: PortOf): C | undefined {
  const b = buckets.get(portKey(c));
  if (!b) return undefined;
  if (b.wildcard.length) return b.wildcard[0];
  if (c.hostIP) return b.byHostIP.get(c.hostIP)?.[0];
  for (const list of b.byHostIP.values()) return list[0];
  return undefined;
}

/**
 * Turn the requested mappings into claims for the container's addresses.
 * Throws CniError 7 for a hostIP that is not an address, ::1 (IPv6 has no
 * route_localnet, so the kernel would drop the forwarded packets), and for
 * two mappings of the request competing for one host port; an identical
 * mapping given twice counts once.
 */
export function claimsFor(mappings: readonly PortMapping[], addrs: readonly ContainerAddr[]): Claim[] {
  const claims: Array<Claim & { index: number }> = [];
  const held = new Map<string, ClaimBucket<Claim & { index: number }>>();
  let ports = 0;
  mappings.forEach((m, index) => {
    let hostIP: string | undefined;
    let families: IpFamily[] = addrs.map((a) => a.family);
    if (m.hostIP !== undefined && m.hostIP !== '') {
      let parsed;
      try {
        parsed = parseIp(m.hostIP);
      } catch {
        throw new CniError(ErrorCode.InvalidNetworkConfig, `runtimeConfig.portMappings[${index}].hostIP: ${JSON.stringify(m.hostIP)} is not an IP address`);
      }
      const family: IpFamily = parsed.family === AF_INET ? 'ipv4' : 'ipv6';
      const text = canonicalIp(m.hostIP);
      if (text === '::1') {
        throw new CniError(
          ErrorCode.InvalidNetworkConfig,
          `runtimeConfig.portMappings[${index}].hostIP: ::1 cannot be forwarded to a container`,
          'IPv6 has no route_localnet: the kernel drops packets from ::1 that leave the loopback device; publish on 127.0.0.1 or another address',
        );
      }
      families = families.filter((f) => f === family);
      if (text !== '0.0.0.0' && text !== '::') hostIP = text;
    }
    for (const family of families) {
      const addr = addrs.find((a) => a.family === family) as ContainerAddr;
      const claim: Claim = { family, protocol: m.protocol, hostPort: m.hostPort, containerIP: addr.ip, containerPort: m.containerPort };
      if (hostIP) claim.hostIP = hostIP;
      if (m.range !== undefined && m.range > 1) claim.range = m.range;
      // Each port of a range on its own: a mapping repeated exactly counts
      // once, any other overlap (a range over a port or a range) competes.
      const singles = claimPorts(claim).map((one) => ({ ...one, index }));
      const same = singles.map((one) => firstOverlapping(held, one));
      const duplicate = (one: Claim, s: Claim | undefined): boolean => s !== undefined && s.hostIP === one.hostIP && s.containerPort === one.containerPort;
      if (same.every((s, i) => duplicate(singles[i], s))) continue;
      const i = same.findIndex((s) => s !== undefined);
      if (i >= 0) {
        throw new CniError(
          ErrorCode.InvalidNetworkConfig,
          `runtimeConfig.portMappings[${index}] competes with portMappings[${same[i]!.index}] for ${describeClaim(singles[i])}`,
          'each host address and port can be forwarded to one container port only',
        );
      }
      ports += singles.length;
      if (ports > MAX_PUBLISHED_PORTS) {
        throw new CniError(ErrorCode.InvalidNetworkConfig, `runtimeConfig.portMappings: more than ${MAX_PUBLISHED_PORTS} host ports requested`, 'ranges count one port each');
      }
      claims.push({ ...claim, index });
      for (const one of singles) addToBuckets(held, one);
    }
  });
  return claims.map(({ index: _index, ...c }) => c);
}
