/**
 * cluster-ipam's configuration: host-local's field names and meaning, so a
 * host-local "ipam" section works here by changing its "type", plus `store`
 * to pick where allocations live.
 *
 *   "ipam": {
 *     "type": "cluster-ipam",
 *     "ranges": [                                   // one range set per address family (or more)
 *       [{ "subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10", "rangeEnd": "10.1.0.200", "gateway": "10.1.0.1" }],
 *       [{ "subnet": "fd00:1::/64" }]
 *     ],
 *     "routes": [{ "dst": "0.0.0.0/0" }],
 *     "dataDir": "/var/lib/cni/networks",           // local store only
 *     "resolvConf": "/etc/resolv.conf",             // optional: DNS in the result
 *     "store": "local"                              // or "etcd" (issue 5)
 *   }
 *
 * The legacy single-range form (subnet/rangeStart/rangeEnd/gateway directly
 * under "ipam") is accepted and becomes the first range set, as in host-local.
 * Static addresses come from runtimeConfig.ips (the `ips` capability),
 * args.cni.ips and CNI_ARGS IP=; runtimeConfig.ipRanges (the `ipRanges`
 * capability) is prepended to the range sets.
 *
 * Shape errors come from zod; the semantic checks (CIDRs, gateway and range
 * bounds inside the subnet, overlaps) follow, each a CniError with code 7
 * that names the range set and range at fault.
 */
import { z } from 'zod';
import { NAME_PATTERN } from '../shared/cni/env';
import { CniError, ErrorCode } from '../shared/cni/errors';
import { LOCAL_IPAM_DATA_DIR } from '../shared/paths';
import { formatCIDR, formatIP, lastAddress, parseCIDR, parseIP, subnetContains, type IP, type Subnet } from '../shared/ip';

export const DEFAULT_DATA_DIR = LOCAL_IPAM_DATA_DIR;

const rangeSchema = z.object({
  subnet: z.string(),
  rangeStart: z.string().optional(),
  rangeEnd: z.string().optional(),
  gateway: z.string().optional(),
});

const rangeSetSchema = z.array(rangeSchema);

export const ipamSectionSchema = z.object({
  type: z.string(),
  ranges: z.array(rangeSetSchema).optional(),
  // legacy single range
  subnet: z.string().optional(),
  rangeStart: z.string().optional(),
  rangeEnd: z.string().optional(),
  gateway: z.string().optional(),
  routes: z.array(z.object({ dst: z.string(), gw: z.string().optional() })).optional(),
  // absolute: a relative one would land wherever the runtime's working directory is
  dataDir: z.string().regex(/^\//, 'must be an absolute path').default(DEFAULT_DATA_DIR),
  resolvConf: z.string().optional(),
  store: z.enum(['local', 'etcd']).default('local'),
  // Reserved for the etcd store's settings (endpoints, TLS, prefix...): its
  // own schema validates them when that store is opened.
  etcd: z.unknown().optional(),
});

/** The part of the network configuration an IPAM plugin reads: the whole
 *  config is passed to it, with its own section under "ipam". */
export const netConfSchema = z.object({
  cniVersion: z.string(),
  name: z.string(),
  ipam: ipamSectionSchema,
  runtimeConfig: z
    .object({
      ips: z.array(z.string()).optional(),
      ipRanges: z.array(rangeSetSchema).optional(),
    })
    .optional(),
  args: z.object({ cni: z.object({ ips: z.array(z.string()).optional() }).optional() }).optional(),
});

export type IpamSection = z.infer<typeof ipamSectionSchema>;

/** One range after validation: every field present and consistent. */
export interface IpamRange {
  readonly subnet: Subnet;
  /** first allocatable candidate, inclusive (default: the network address + 1) */
  readonly rangeStart: IP;
  /** last allocatable candidate, inclusive (default: the last address, or the one before the IPv4 broadcast) */
  readonly rangeEnd: IP;
  /** default: the network address + 1, as host-local; never handed out */
  readonly gateway: IP;
}

/** Ranges of one family that together form one pool; an ADD takes one address from each set. */
export type RangeSet = readonly IpamRange[];

export interface IpamRoute {
  readonly dst: string;
  readonly gw?: string;
}

export interface IpamConfig {
  readonly cniVersion: string;
  /** the network name: the local store's directory under dataDir */
  readonly name: string;
  readonly type: string;
  readonly rangeSets: readonly RangeSet[];
  readonly routes: readonly IpamRoute[];
  readonly dataDir: string;
  readonly resolvConf?: string;
  readonly store: 'local' | 'etcd';
  readonly etcd?: unknown;
  /** static requests, in the order host-local gathers them: CNI_ARGS, args, runtimeConfig */
  readonly requestedIPs: readonly IP[];
}

function invalid(msg: string, details?: string): CniError {
  return new CniError(ErrorCode.InvalidNetworkConfig, msg, details);
}

/**
 * Validates a network configuration (already JSON-parsed) for IPAM and
 * returns it normalized. `cniArgs` is CNI_ARGS as key/value pairs; its `IP`
 * (one address, or several separated by commas) requests static addresses.
 */
export function loadIpamConfig(netConf: unknown, cniArgs?: Readonly<Record<string, string>>): IpamConfig {
  if (typeof netConf === 'object' && netConf !== null && !('ipam' in netConf)) {
    throw invalid('IPAM config missing "ipam" key');
  }
  const parsed = netConfSchema.safeParse(netConf);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const where = issue.path.length ? issue.path.map((p) => (typeof p === 'number' ? `[${p}]` : `.${p}`)).join('').replace(/^\./, '') : 'config';
    throw invalid(`invalid IPAM config: ${where}: ${issue.message}`, parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; '));
  }
  const conf = parsed.data;
  const ipam = conf.ipam;

  if (!NAME_PATTERN.test(conf.name)) {
    // The name is a directory under dataDir: it must never escape it.
    throw invalid(`invalid network name "${conf.name}"`, 'the name must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$');
  }

  const rawSets: z.infer<typeof rangeSetSchema>[] = [];
  if (conf.runtimeConfig?.ipRanges) rawSets.push(...conf.runtimeConfig.ipRanges);
  if (ipam.subnet !== undefined) {
    rawSets.push([{ subnet: ipam.subnet, rangeStart: ipam.rangeStart, rangeEnd: ipam.rangeEnd, gateway: ipam.gateway }]);
  } else if (ipam.rangeStart !== undefined || ipam.rangeEnd !== undefined || ipam.gateway !== undefined) {
    throw invalid('ipam.rangeStart/rangeEnd/gateway given without ipam.subnet');
  }
  if (ipam.ranges) rawSets.push(...ipam.ranges);
  if (rawSets.length === 0) throw invalid('no IP ranges specified', 'set ipam.ranges (or the legacy ipam.subnet)');

  const rangeSets = rawSets.map((set, i) => canonicalizeRangeSet(set, i));
  checkOverlaps(rangeSets);

  const routes = (ipam.routes ?? []).map((route, i): IpamRoute => {
    const dst = parseCIDR(route.dst);
    if (!dst) throw invalid(`routes[${i}]: invalid dst "${route.dst}"`, 'dst must be a CIDR such as 0.0.0.0/0');
    if (route.gw === undefined) return { dst: formatCIDR(dst.subnet) };
    const gw = parseIP(route.gw);
    if (!gw) throw invalid(`routes[${i}]: invalid gw "${route.gw}"`);
    if (gw.family !== dst.subnet.network.family) throw invalid(`routes[${i}]: gw ${route.gw} is not of the same family as dst ${route.dst}`);
    return { dst: formatCIDR(dst.subnet), gw: formatIP(gw) };
  });

  const requested: string[] = [];
  const envIP = cniArgs?.IP;
  if (envIP) requested.push(...envIP.split(',').map((s) => s.trim()).filter(Boolean));
  if (conf.args?.cni?.ips) requested.push(...conf.args.cni.ips);
  if (conf.runtimeConfig?.ips) requested.push(...conf.runtimeConfig.ips);
  const requestedIPs: IP[] = [];
  const seen = new Set<string>();
  for (const text of requested) {
    // the ips capability writes addresses in CIDR form; only the address counts
    const ip = text.includes('/') ? parseCIDR(text)?.ip : parseIP(text);
    if (!ip) throw invalid(`invalid requested IP address "${text}"`, 'from CNI_ARGS IP=, args.cni.ips or runtimeConfig.ips');
    // the same address asked for through two channels is one request
    if (!seen.has(formatIP(ip))) requestedIPs.push(ip);
    seen.add(formatIP(ip));
  }

  return {
    cniVersion: conf.cniVersion,
    name: conf.name,
    type: ipam.type,
    rangeSets,
    routes,
    dataDir: ipam.dataDir,
    resolvConf: ipam.resolvConf,
    store: ipam.store,
    etcd: ipam.etcd,
    requestedIPs,
  };
}

function canonicalizeRangeSet(raw: z.infer<typeof rangeSetSchema>, setIndex: number): RangeSet {
  if (raw.length === 0) throw invalid(`range set ${setIndex} is empty`);
  const set = raw.map((r, j) => canonicalizeRange(r, `range set ${setIndex} range ${j}`));
  const family = set[0]!.subnet.network.family;
  for (let j = 1; j < set.length; j++) {
    if (set[j]!.subnet.network.family !== family) {
      throw invalid(`range set ${setIndex} mixes IPv4 and IPv6`, 'put each address family in its own range set');
    }
  }
  return set;
}

function canonicalizeRange(raw: z.infer<typeof rangeSchema>, where: string): IpamRange {
  const cidr = parseCIDR(raw.subnet);
  if (!cidr) throw invalid(`${where}: invalid subnet "${raw.subnet}"`, 'subnet must be a CIDR such as 10.1.0.0/24');
  const subnet = cidr.subnet;
  const family = subnet.network.family;
  // Host-local's rule: a network with no room besides network and broadcast
  // (IPv4 /31, /32; IPv6 /127, /128) cannot be allocated from.
  if (subnet.prefix > (family === 4 ? 30 : 126)) {
    throw invalid(`${where}: subnet ${formatCIDR(subnet)} is too small to allocate from`);
  }
  const last = lastAddress(subnet);
  const inSubnet = (field: string, text: string | undefined): IP | undefined => {
    if (text === undefined) return undefined;
    const ip = parseIP(text);
    if (!ip) throw invalid(`${where}: invalid ${field} "${text}"`);
    if (!subnetContains(subnet, ip)) throw invalid(`${where}: ${field} ${text} is outside subnet ${formatCIDR(subnet)}`);
    return ip;
  };
  const gateway = inSubnet('gateway', raw.gateway) ?? { family, value: subnet.network.value + 1n };
  const rangeStart = inSubnet('rangeStart', raw.rangeStart) ?? { family, value: subnet.network.value + 1n };
  const rangeEnd = inSubnet('rangeEnd', raw.rangeEnd) ?? { family, value: family === 4 ? last - 1n : last };
  if (rangeStart.value > rangeEnd.value) {
    throw invalid(`${where}: rangeStart ${formatIP(rangeStart)} is after rangeEnd ${formatIP(rangeEnd)}`);
  }
  const range: IpamRange = { subnet, rangeStart, rangeEnd, gateway };
  if (allocatableCount(range) === 0n) {
    throw invalid(`${where}: ${describeRange(range)} holds no allocatable address`, 'the network, broadcast and gateway addresses are never handed out');
  }
  return range;
}

/** Whether an address of the range may be handed out (network, IPv4 broadcast and gateway never are). */
export function allocatable(range: IpamRange, value: bigint): boolean {
  if (value === range.subnet.network.value || value === range.gateway.value) return false;
  return !(range.subnet.network.family === 4 && value === lastAddress(range.subnet));
}

/** How many addresses of the range can be handed out. */
export function allocatableCount(range: IpamRange): bigint {
  let n = range.rangeEnd.value - range.rangeStart.value + 1n;
  const skipped = new Set<bigint>([range.subnet.network.value, range.gateway.value]);
  if (range.subnet.network.family === 4) skipped.add(lastAddress(range.subnet));
  for (const v of skipped) if (v >= range.rangeStart.value && v <= range.rangeEnd.value) n--;
  return n;
}

export function rangeContains(range: IpamRange, ip: IP): boolean {
  return ip.family === range.subnet.network.family && ip.value >= range.rangeStart.value && ip.value <= range.rangeEnd.value;
}

export function describeRange(range: IpamRange): string {
  return `${formatCIDR(range.subnet)} (${formatIP(range.rangeStart)}-${formatIP(range.rangeEnd)})`;
}

export function describeRangeSet(set: RangeSet): string {
  return set.map(describeRange).join(', ');
}

/** No address may belong to two ranges, within a set or across sets:
 *  an address would then have two pools competing for it. */
function checkOverlaps(sets: readonly RangeSet[]): void {
  const all: { range: IpamRange; set: number; index: number }[] = [];
  sets.forEach((set, s) => set.forEach((range, index) => all.push({ range, set: s, index })));
  for (let a = 0; a < all.length; a++) {
    for (let b = a + 1; b < all.length; b++) {
      const x = all[a]!;
      const y = all[b]!;
      if (x.range.subnet.network.family !== y.range.subnet.network.family) continue;
      if (x.range.rangeStart.value <= y.range.rangeEnd.value && y.range.rangeStart.value <= x.range.rangeEnd.value) {
        const name = (e: typeof x): string => `range set ${e.set} range ${e.index}`;
        throw invalid(
          `${name(x)} overlaps ${name(y)}`,
          `${describeRange(x.range)} and ${describeRange(y.range)} share addresses`,
        );
      }
    }
  }
}
