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
  })
  .passthrough();

export type PortMapping = z.infer<typeof portMappingSchema>;

export const schema = netConfBase.extend({
  /** masquerade localhost and hairpin connections (the reference's default) */
  snat: z.boolean().default(true),
  /** masquerade every forwarded connection, so containers see the host as the client */
  masqAll: z.boolean().default(false),
  /** the reference's iptables mark bit: we masquerade without marks, so it is accepted and unused */
  markMasqBit: z.number().int().min(0).max(31).optional(),
  backend: z.string().optional(),
  conditionsV4: z.unknown().optional(),
  conditionsV6: z.unknown().optional(),
  externalSetMarkChain: z.unknown().optional(),
  runtimeConfig: z
    .object({ portMappings: z.array(portMappingSchema).optional() })
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
}

export function describeClaim(c: Pick<Claim, 'family' | 'protocol' | 'hostPort' | 'hostIP'>): string {
  const host = c.hostIP ? (c.family === 'ipv6' ? `[${c.hostIP}]` : c.hostIP) : c.family === 'ipv6' ? '[::]' : '0.0.0.0';
  return `${c.protocol} ${host}:${c.hostPort}`;
}

/** Whether two claims compete for the same host port: same family, protocol and port, and addresses that overlap. */
export function overlaps(a: Pick<Claim, 'family' | 'protocol' | 'hostPort' | 'hostIP'>, b: Pick<Claim, 'family' | 'protocol' | 'hostPort' | 'hostIP'>): boolean {
  return a.family === b.family && a.protocol === b.protocol && a.hostPort === b.hostPort && (!a.hostIP || !b.hostIP || a.hostIP === b.hostIP);
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
      const same = claims.find((c) => overlaps(c, claim));
      if (same) {
        if (same.hostIP === claim.hostIP && same.containerPort === claim.containerPort) continue;
        throw new CniError(
          ErrorCode.InvalidNetworkConfig,
          `runtimeConfig.portMappings[${index}] competes with portMappings[${same.index}] for ${describeClaim(claim)}`,
          'each host address and port can be forwarded to one container port only',
        );
      }
      claims.push({ ...claim, index });
    }
  });
  return claims.map(({ index: _index, ...c }) => c);
}
