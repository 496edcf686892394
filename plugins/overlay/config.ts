/**
 * The overlay plugin's configuration:
 *
 *   {
 *     "type": "overlay",
 *     "name": "ov1",                      // the overlay network (cluster-wide)
 *     "subnet": "10.50.0.0/24",           // default: the IPAM's first range's subnet
 *     "vni": 5000,                        // default: allocated from 4096 up
 *     "mtu": 1450,                        // default: underlay MTU - 50 (encrypted: - 84, see main.ts networkMtu)
 *     "encrypted": false,                 // IPsec ESP between hosts (AES-GCM), keys rotated by the agents
 *     "nodeName": "node-a",               // default: ipam.etcd.nodeName, else the hostname
 *     "stateDir": "/run/cni-ts/overlay",  // network namespaces, locks, gateway pool
 *     "etcd": { "endpoints": ["127.0.0.1:2379"], "keyPrefix": "/cni-ts/overlay", "requestTimeoutMs": 5000 },
 *     "gateway": { "enabled": true, "bridge": "cni_gwbridge", "subnet": "172.18.0.0/16", "ifname": "eth1" },
 *     "ipam": { "type": "cluster-ipam", "store": "etcd", ... }
 *   }
 *
 * The etcd connection defaults to the IPAM's (ipam.etcd: endpoints, TLS,
 * credentials), so a conflist names etcd once.
 *
 * The agent reads the same etcd and stateDir settings from its flags.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import { z } from 'zod';
import { netConfBase } from '../../shared/cni/config';
import { CniError, ErrorCode } from '../../shared/cni/errors';
import { isIPv4 } from '../../shared/cni/ip';
import { formatCIDR, parseCIDR } from '../../ipam/ip';
import { DEFAULT_PREFIX } from './controlplane';
import type { EtcdConnection } from './kv';

export const DEFAULT_STATE_DIR = '/run/cni-ts/overlay';

const ifname = z.string().min(1).max(15).regex(/^[A-Za-z0-9_.-]+$/);

const etcdSchema = z
  .object({
    endpoints: z.array(z.string().regex(/^(https?:\/\/)?[^\s/]+:\d+$/, 'not host:port or http(s)://host:port')).min(1).optional(),
    keyPrefix: z.string().regex(/^\/[^\s]*[^/\s]$/, 'must start with "/" and not end with "/"').default(DEFAULT_PREFIX),
    requestTimeoutMs: z.number().int().min(100).max(600_000).optional(),
    caFile: z.string().min(1).optional(),
    certFile: z.string().min(1).optional(),
    keyFile: z.string().min(1).optional(),
    username: z.string().min(1).optional(),
    password: z.string().optional(),
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
  subnet: z.string().optional(),
  vni: z.number().int().min(1).max(0xffffff).optional(),
  mtu: z.number().int().min(576).max(65535).optional(),
  /** IPsec ESP between the hosts of this network (agent.ts, encryption.ts); recorded with the network */
  encrypted: z.boolean().default(false),
  nodeName: z.string().min(1).max(253).regex(/^[A-Za-z0-9][A-Za-z0-9_.-]*$/).optional(),
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

interface IpamEtcd {
  endpoints?: string[];
  caFile?: string;
  certFile?: string;
  keyFile?: string;
  username?: string;
  password?: string;
  requestTimeoutMs?: number;
  nodeName?: string;
}

function ipamEtcd(conf: Conf): IpamEtcd {
  const section = (conf.ipam as { etcd?: unknown } | undefined)?.etcd;
  return section && typeof section === 'object' ? (section as IpamEtcd) : {};
}

/** The etcd connection: the overlay's own section, else the IPAM's, else 127.0.0.1:2379. */
export function etcdConnection(conf: Conf): EtcdConnection & { keyPrefix: string } {
  const own = conf.etcd;
  const fromIpam = ipamEtcd(conf);
  const src = own?.endpoints ? own : { ...fromIpam, ...own };
  const endpoints = src.endpoints ?? ['http://127.0.0.1:2379'];
  const secure = endpoints.some((e) => e.startsWith('https://'));
  if (secure && !src.caFile) throw invalid('overlay etcd: TLS needs caFile');
  if ((src.certFile === undefined) !== (src.keyFile === undefined)) throw invalid('overlay etcd: certFile and keyFile go together');
  if ((src.username === undefined) !== (src.password === undefined)) throw invalid('overlay etcd: username and password go together');
  const read = (f: string) => {
    try {
      return fs.readFileSync(f);
    } catch (e) {
      throw invalid(`overlay etcd: cannot read ${f}`, (e as Error).message);
    }
  };
  return {
    endpoints,
    keyPrefix: own?.keyPrefix ?? DEFAULT_PREFIX,
    requestTimeoutMs: own?.requestTimeoutMs ?? fromIpam.requestTimeoutMs ?? 5000,
    tls: src.caFile ? { ca: read(src.caFile), cert: src.certFile ? read(src.certFile) : undefined, key: src.keyFile ? read(src.keyFile) : undefined } : undefined,
    auth: src.username !== undefined ? { username: src.username, password: src.password! } : undefined,
  };
}

/** This host's node name: the overlay's, the IPAM's, else the hostname. */
export function nodeName(conf: Conf): string {
  const name = conf.nodeName ?? ipamEtcd(conf).nodeName ?? os.hostname();
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(name)) throw invalid(`"${name}" cannot be a node name`, 'set nodeName');
  return name;
}

/** The overlay subnet: configured, else the IPAM's first range's. */
export function overlaySubnet(conf: Conf): string {
  if (conf.subnet) return conf.subnet;
  const ipam = conf.ipam as { subnet?: string; ranges?: Array<Array<{ subnet?: string }>> } | undefined;
  const subnet = ipam?.ranges?.[0]?.[0]?.subnet ?? ipam?.subnet;
  if (!subnet) throw invalid('overlay: no subnet', 'set "subnet", or give the IPAM a range');
  return subnet;
}
