/**
 * The overlay plugin's configuration:
 *
 *   {
 *     "type": "overlay",
 *     "name": "ov1",                      // the overlay network (cluster-wide)
 *     "subnet": "10.50.0.0/24",           // IPv4 or IPv6; default: the IPAM's first range's subnet
 *     "subnets": ["10.50.0.0/24", "fd50::/64"], // dual stack: one per family (default: each IPAM range set's first)
 *     "vni": 5000,                        // default: allocated from 4096 up
 *     "mtu": 1450,                        // default: underlay MTU - 50, IPv6 underlay - 70 (encrypted: see main.ts networkMtu)
 *     "encrypted": false,                 // IPsec ESP between hosts (AES-GCM), keys rotated by the agents
 *     "nodeName": "node-a",               // default: ipam.etcd.nodeName, else the hostname
 *     "stateDir": "/run/cni-ts/overlay",  // network namespaces, locks, gateway pool
 *     "hostIdFile": "/var/lib/cni-ts/host-id", // this host's random ID (the agent's --host-id-file)
 *     "etcd": { "endpoints": ["127.0.0.1:2379"], "keyPrefix": "/cni-ts/overlay", "requestTimeoutMs": 5000,
 *               "caFile": ..., "username": ..., "passwordFile": ..., "insecure": false, "gcGracePeriodMs": 900000 },
 *     "gateway": { "enabled": true, "bridge": "cni_gwbridge", "subnet": "172.18.0.0/16", "ifname": "eth1" },
 *     "ipam": { "type": "cluster-ipam", "store": "etcd", ... }
 *   }
 *
 * The etcd connection defaults to the IPAM's (ipam.etcd: endpoints, TLS,
 * credentials), so a conflist names etcd once; either way it obeys
 * shared/etcd/connection.ts (no inline password, no credentials in clear).
 *
 * The agent reads the same etcd and stateDir settings from its flags.
 */
import * as os from 'node:os';
import { z } from 'zod';
import { netConfBase } from '../../shared/cni/config';
import { CniError, ErrorCode } from '../../shared/cni/errors';
import { formatCIDR, isIPv4, parseCIDR, type Family } from '../../shared/ip';
import { fieldsSchema, resolveConnection, type ConnectionFields } from '../../shared/etcd/connection';
import { DEFAULT_HOST_ID_FILE, hostId } from '../../shared/host-id';
import { OVERLAY_STATE_DIR } from '../../shared/paths';
import { DEFAULT_PREFIX } from './controlplane';
import { dnsConf } from '../../shared/dns/config';
import type { EtcdFields } from '../../shared/dns/cluster';
import type { EtcdKVOptions } from '../../shared/etcd/kv';

export const DEFAULT_STATE_DIR = OVERLAY_STATE_DIR;

const ifname = z.string().min(1).max(15).regex(/^[A-Za-z0-9_.-]+$/);

const etcdSchema = z
  .object({
    // endpoints, TLS files, username/passwordFile, insecure: the rules are shared/etcd/connection.ts's
    ...fieldsSchema,
    keyPrefix: z.string().regex(/^\/[^\s]*[^/\s]$/, 'must start with "/" and not end with "/"').default(DEFAULT_PREFIX),
    requestTimeoutMs: z.number().int().min(100).max(600_000).optional(),
    /** an endpoint of this host not among the runtime's attachments is removed once seen so twice this far apart (IPAM GC's rule) */
    gcGracePeriodMs: z.number().int().min(0).optional(),
  })
  .strict();

/**
 * The gateway bridge's IPv4 subnet, checked in the schema so a bad one is
 * code 7 before anything is created: the gateway pool would refuse it only at
 * ADD's last step, after the overlay port, the address and the endpoint. The
 * network address itself (no host bits), /8 to /30 (a gateway and at least
 * one container address).
 */
const gatewaySubnet = z.string().superRefine((s, c) => {
  const problem = gatewaySubnetProblem(s);
  if (problem) c.addIssue({ code: z.ZodIssueCode.custom, message: problem });
});

function gatewaySubnetProblem(s: string): string | undefined {
  const slash = s.indexOf('/');
  const cidr = slash > 0 && isIPv4(s.slice(0, slash)) ? parseCIDR(s) : undefined;
  if (!cidr) return `${JSON.stringify(s)} is not an IPv4 CIDR (a.b.c.d/len)`;
  if (cidr.subnet.prefix < 8 || cidr.subnet.prefix > 30) return `${s}: the prefix must be /8 to /30`;
  if (cidr.ip.value !== cidr.subnet.network.value) return `${s} has host bits set (the network is ${formatCIDR(cidr.subnet)})`;
  return undefined;
}

export const schema = netConfBase.extend({
  /** names across every host of the network, from etcd (main.ts step 7; needs the gateway bridge: the resolver answers there) */
  dns: dnsConf.optional(),
  subnet: z.string().optional(),
  subnets: z.array(z.string()).min(1).max(2).optional(),
  vni: z.number().int().min(1).max(0xffffff).optional(),
  mtu: z.number().int().min(576).max(65535).optional(),
  /** IPsec ESP between the hosts of this network (agent.ts, encryption.ts); recorded with the network */
  encrypted: z.boolean().default(false),
  nodeName: z.string().min(1).max(253).regex(/^[A-Za-z0-9][A-Za-z0-9_.-]*$/).optional(),
  /** where this host's random ID lives (shared/host-id.ts); the agent is given the same file */
  hostIdFile: z.string().regex(/^\//, 'must be an absolute path').default(DEFAULT_HOST_ID_FILE),
  stateDir: z.string().regex(/^\//, 'must be an absolute path').default(DEFAULT_STATE_DIR),
  etcd: etcdSchema.optional(),
  gateway: z
    .object({
      enabled: z.boolean().default(true),
      bridge: ifname.default('cni_gwbridge'),
      subnet: gatewaySubnet.default('172.18.0.0/16'),
      ifname: ifname.default('eth1'),
    })
    .strict()
    .default({}),
  runtimeConfig: z
    .object({
      mac: z
        .string()
        .regex(/^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$/, 'not a MAC address (xx:xx:xx:xx:xx:xx)')
        .refine((m) => (parseInt(m.slice(0, 2), 16) & 1) === 0, 'a multicast MAC cannot be an interface address')
        .optional(),
    })
    .passthrough()
    .optional(),
});
export type Conf = z.infer<typeof schema>;

function invalid(msg: string, details?: string): CniError {
  return new CniError(ErrorCode.InvalidNetworkConfig, msg, details);
}

interface IpamEtcd extends ConnectionFields {
  requestTimeoutMs?: number;
  nodeName?: string;
  gcGracePeriodMs?: number;
}

function ipamEtcd(conf: Conf): IpamEtcd {
  const section = (conf.ipam as { etcd?: unknown } | undefined)?.etcd;
  return section && typeof section === 'object' ? (section as IpamEtcd) : {};
}

/** IPAM GC's default grace (ipam/etcd/config.ts DEFAULT_GC_GRACE_PERIOD_MS): the same reasons hold for endpoints. */
export const DEFAULT_GC_GRACE_PERIOD_MS = 15 * 60 * 1000;

/**
 * The etcd connection: the overlay's own section, else the IPAM's, else
 * 127.0.0.1:2379, under shared/etcd/connection.ts's rules (code 7 when
 * broken: https:// without a CA, credentials in clear, an inline password).
 */
export function etcdConnection(conf: Conf): EtcdKVOptions & { keyPrefix: string; gcGracePeriodMs: number } {
  const own = conf.etcd;
  const fromIpam = ipamEtcd(conf);
  const where = own?.endpoints ? 'etcd' : 'ipam.etcd';
  const src: ConnectionFields = own?.endpoints ? own : { ...fromIpam, ...stripUndefined(own ?? {}) };
  const conn = resolveConnection(src, where);
  return {
    ...conn,
    keyPrefix: own?.keyPrefix ?? DEFAULT_PREFIX,
    requestTimeoutMs: own?.requestTimeoutMs ?? fromIpam.requestTimeoutMs ?? 5000,
    gcGracePeriodMs: own?.gcGracePeriodMs ?? fromIpam.gcGracePeriodMs ?? DEFAULT_GC_GRACE_PERIOD_MS,
  };
}

/**
 * The etcd section etcdConnection resolves, as fields (endpoints, file
 * paths; never a secret): what the resolver is told, so it connects as the
 * plugin does and reads the password file itself.
 */
export function etcdFields(conf: Conf): EtcdFields {
  const own = conf.etcd;
  const fromIpam = ipamEtcd(conf);
  const src: ConnectionFields = own?.endpoints ? own : { ...fromIpam, ...stripUndefined(own ?? {}) };
  const { endpoints, caFile, certFile, keyFile, username, passwordFile, insecure } = src;
  const requestTimeoutMs = own?.requestTimeoutMs ?? fromIpam.requestTimeoutMs;
  return stripUndefined({ endpoints, caFile, certFile, keyFile, username, passwordFile, insecure, requestTimeoutMs });
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/** This host's ID (code 7 when its file is unreadable or malformed: never silently a new identity). */
export function hostIdOf(conf: Conf): string {
  try {
    return hostId(conf.hostIdFile);
  } catch (e) {
    throw invalid(`cannot read this host's ID from ${conf.hostIdFile}`, (e as Error).message);
  }
}

/** This host's node name: the overlay's, the IPAM's, else the hostname. */
export function nodeName(conf: Conf): string {
  const name = conf.nodeName ?? ipamEtcd(conf).nodeName ?? os.hostname();
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(name)) throw invalid(`"${name}" cannot be a node name`, 'set nodeName');
  return name;
}

/** The overlay subnet: configured, else the IPAM's first range's. */
export function overlaySubnet(conf: Conf): string {
  return overlaySubnets(conf)[0]!;
}

/**
 * The overlay's subnets, canonical, IPv4 first: `subnets`, else `subnet`,
 * else the first range of the IPAM's first range set of each family (a
 * dual-stack IPAM has one set per family). At most one per family: the overlay's addresses
 * per container are one IPv4 and one IPv6 (code 7 otherwise).
 */
export function overlaySubnets(conf: Conf): string[] {
  const explicit = conf.subnets ?? (conf.subnet ? [conf.subnet] : undefined);
  const given = explicit ?? subnetsOfIpam(conf.ipam);
  if (given.length === 0) throw invalid('overlay: no subnet', 'set "subnet", or give the IPAM a range');
  const byFamily = new Map<Family, string>();
  for (const s of given) {
    const c = parseCIDR(s);
    if (!c) throw invalid(`overlay subnet "${s}" is not a CIDR`);
    const canonical = formatCIDR(c.subnet);
    const family = c.subnet.network.family;
    // from the IPAM, the first range set of each family is the overlay's (as before dual stack: the first)
    if (byFamily.has(family) && !explicit) continue;
    if (byFamily.has(family)) throw invalid(`overlay: two IPv${family} subnets (${byFamily.get(family)}, ${canonical})`, 'an overlay has at most one subnet per address family');
    byFamily.set(family, canonical);
  }
  return [4, 6].map((f) => byFamily.get(f as Family)).filter((s): s is string => s !== undefined);
}

/** The IPAM block as far as the overlay reads it; the IPAM checks the rest itself. */
const ipamSubnetsSchema = z
  .object({
    subnet: z.string().optional(),
    ranges: z.array(z.array(z.object({ subnet: z.string().optional() }).passthrough())).optional(),
  })
  .passthrough();

/** The first subnet of each of the IPAM's range sets (or its `subnet`); code 7 when they are not shaped as the IPAM's. */
function subnetsOfIpam(ipam: unknown): string[] {
  if (ipam === undefined) return [];
  const parsed = ipamSubnetsSchema.safeParse(ipam);
  if (!parsed.success) throw invalid('overlay: ipam.ranges must be a list of range sets, each a list of ranges', 'e.g. "ranges": [[{"subnet": "10.1.0.0/16"}]]');
  const { ranges, subnet } = parsed.data;
  if (ranges) return ranges.map((set) => set[0]?.subnet).filter((s): s is string => !!s);
  return subnet ? [subnet] : [];
}
