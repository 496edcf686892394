/**
 * The "etcd" section of cluster-ipam's configuration, read only when
 * "store": "etcd" is selected:
 *
 *   "ipam": {
 *     "type": "cluster-ipam",
 *     "store": "etcd",
 *     "ranges": [[{ "subnet": "10.22.0.0/16" }]],
 *     "etcd": {
 *       "endpoints": ["https://10.0.0.1:2379"],
 *       "caFile": "/etc/cni/etcd/ca.pem", "certFile": "...", "keyFile": "...",   // optional TLS
 *       "username": "cni", "passwordFile": "/etc/cni/etcd/password",              // optional auth (file: root, 0600)
 *       "insecure": false,          // true allows credentials over http://
 *       "keyPrefix": "/cni-ts/ipam",
 *       "requestTimeoutMs": 5000,   // the whole store operation's bound; past it: error 11
 *       "blockSize": 26,            // IPv4 per-host block prefix length
 *       "blockSizeV6": 122,         // IPv6 per-host block prefix length
 *       "nodeName": "node-a",       // default: os.hostname()
 *       "hostId": "...",            // default: this host's random ID (shared/host-id.ts); set only to simulate hosts in tests
 *       "gcGracePeriodMs": 900000,  // a leak is freed only when seen twice this far apart
 *       "livenessTtlMs": 3600000    // the host's liveness lease: kept by the daemon's or agent's keeper (./liveness.ts)
 *     }
 *   }
 *
 * Everything here is checked before any connection is made, so a bad
 * section is error 7 with nothing written.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import { z } from 'zod';
import { CniError, ErrorCode } from '../../shared/cni/errors';
import { DEFAULT_HOST_ID_FILE, hostId } from '../../shared/host-id';
import { fieldsSchema, resolveConnection, type ConnectionFields } from '../../shared/etcd/connection';
import type { RangeSet } from '../config';
import { formatCIDR } from '../../shared/ip';

export const DEFAULT_KEY_PREFIX = '/cni-ts/ipam';
export const DEFAULT_REQUEST_TIMEOUT_MS = 5000;
export const DEFAULT_BLOCK_SIZE_V4 = 26;
export const DEFAULT_BLOCK_SIZE_V6 = 122;
/** Calico's default leak grace period (kube-controllers), for the same reason:
 *  a runtime's list of valid attachments may predate an ADD in flight. */
export const DEFAULT_GC_GRACE_PERIOD_MS = 15 * 60 * 1000;
/** An hour: the daemon's or the overlay agent's liveness keeper renews it
 *  (./liveness.ts), and CNI calls put it on a new lease past half of it. */
export const DEFAULT_LIVENESS_TTL_MS = 60 * 60 * 1000;

const MACHINE_ID_FILES = ['/etc/machine-id', '/var/lib/dbus/machine-id'];

const etcdSectionSchema = z
  .object({
    endpoints: z.array(z.string().min(1)).min(1).default(['http://127.0.0.1:2379']),
    // TLS files, username/passwordFile, insecure: shared/etcd/connection.ts's rules
    caFile: fieldsSchema.caFile,
    certFile: fieldsSchema.certFile,
    keyFile: fieldsSchema.keyFile,
    username: fieldsSchema.username,
    passwordFile: fieldsSchema.passwordFile,
    insecure: fieldsSchema.insecure,
    password: fieldsSchema.password,
    keyPrefix: z
      .string()
      .regex(/^\/[^\s]*[^/\s]$/, 'must start with "/" and not end with "/"')
      .default(DEFAULT_KEY_PREFIX),
    requestTimeoutMs: z.number().int().min(100).max(600_000).default(DEFAULT_REQUEST_TIMEOUT_MS),
    blockSize: z.number().int().min(16, 'blocks larger than /16 are not supported').max(32).default(DEFAULT_BLOCK_SIZE_V4),
    blockSizeV6: z.number().int().min(112, 'blocks larger than /112 are not supported').max(128).default(DEFAULT_BLOCK_SIZE_V6),
    nodeName: z.string().min(1).max(253).regex(/^[A-Za-z0-9][A-Za-z0-9_.-]*$/, 'not a valid node name').optional(),
    hostId: z.string().min(1).max(256).optional(),
    gcGracePeriodMs: z.number().int().min(0).default(DEFAULT_GC_GRACE_PERIOD_MS),
    // etcd grants no lease shorter than about 2 s (1.5 election timeouts)
    livenessTtlMs: z.number().int().min(2000).max(30 * 24 * 3600 * 1000).default(DEFAULT_LIVENESS_TTL_MS),
  })
  .strict();

/** The section's connection fields as written (paths, not contents), endpoints resolved. */
export type StoreConnectionFields = Omit<ConnectionFields, 'password'> & { readonly endpoints: readonly string[] };

export interface EtcdTls {
  readonly ca: Buffer;
  readonly cert?: Buffer;
  readonly key?: Buffer;
}

export interface EtcdStoreConfig {
  readonly endpoints: readonly string[];
  readonly tls?: EtcdTls;
  readonly auth?: { readonly username: string; readonly password: string };
  /** credentials over http:// asked for explicitly */
  readonly insecure?: boolean;
  readonly keyPrefix: string;
  readonly requestTimeoutMs: number;
  readonly blockSizeV4: number;
  readonly blockSizeV6: number;
  readonly nodeName: string;
  /** this host's random ID (shared/host-id.ts): two hosts claiming one nodeName differ here */
  readonly hostId: string;
  /** the connection as configured (file paths, never a secret): what the liveness keeper records */
  readonly connection: StoreConnectionFields;
  readonly gcGracePeriodMs: number;
  /** TTL of the lease behind the host's liveness key (P/alive/<node>) */
  readonly livenessTtlMs: number;
}

function invalid(msg: string, details?: string): CniError {
  return new CniError(ErrorCode.InvalidNetworkConfig, msg, details);
}

/**
 * Validates ipam.etcd against the network's range sets. `raw` is the
 * section as given (undefined: all defaults).
 */
export function loadEtcdConfig(raw: unknown, rangeSets: readonly RangeSet[], options: { hostIdFile?: string } = {}): EtcdStoreConfig {
  const parsed = etcdSectionSchema.safeParse(raw ?? {});
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const where = ['ipam', 'etcd', ...issue.path].join('.');
    throw invalid(`invalid IPAM config: ${where}: ${issue.message}`);
  }
  const c = parsed.data;

  // https:// without a CA, credentials in clear, an inline password: refused (shared/etcd/connection.ts)
  const conn = resolveConnection(c, 'ipam.etcd');

  rangeSets.forEach((set, s) => {
    set.forEach((range, r) => {
      const family = range.subnet.network.family;
      const block = family === 4 ? c.blockSize : c.blockSizeV6;
      const field = family === 4 ? 'blockSize' : 'blockSizeV6';
      if (block < range.subnet.prefix) {
        throw invalid(
          `range set ${s} range ${r}: subnet ${formatCIDR(range.subnet)} is smaller than one /${block} block`,
          `set ipam.etcd.${field} to ${range.subnet.prefix} or more (a longer prefix, a smaller block)`,
        );
      }
    });
  });

  return {
    endpoints: c.endpoints,
    tls: conn.tls,
    auth: conn.auth,
    insecure: conn.insecure,
    keyPrefix: c.keyPrefix,
    requestTimeoutMs: c.requestTimeoutMs,
    blockSizeV4: c.blockSize,
    blockSizeV6: c.blockSizeV6,
    nodeName: c.nodeName ?? nodeNameFromHostname(),
    hostId: c.hostId ?? thisHostId(options.hostIdFile ?? DEFAULT_HOST_ID_FILE),
    connection: {
      endpoints: c.endpoints,
      ...(c.caFile !== undefined && { caFile: c.caFile }),
      ...(c.certFile !== undefined && { certFile: c.certFile }),
      ...(c.keyFile !== undefined && { keyFile: c.keyFile }),
      ...(c.username !== undefined && { username: c.username }),
      ...(c.passwordFile !== undefined && { passwordFile: c.passwordFile }),
      ...(c.insecure && { insecure: true }),
    },
    gcGracePeriodMs: c.gcGracePeriodMs,
    livenessTtlMs: c.livenessTtlMs,
  };
}

function nodeNameFromHostname(): string {
  const name = os.hostname();
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(name)) {
    throw invalid(`hostname "${name}" cannot be a node name`, 'set ipam.etcd.nodeName');
  }
  return name;
}

function thisHostId(file: string): string {
  try {
    return hostId(file);
  } catch (err) {
    throw new CniError(ErrorCode.Internal, `cannot establish this host's ID: ${(err as Error).message}`, `the host ID is kept in ${file}`);
  }
}

/**
 * What identified this host before host IDs: /etc/machine-id. Read only to
 * move a registration made by an older version over to the host ID
 * (hosts.ts register); undefined when there is none.
 */
export function previousMachineId(): string | undefined {
  for (const file of MACHINE_ID_FILES) {
    try {
      const id = fs.readFileSync(file, 'utf8').trim();
      if (id) return id;
    } catch {
      // next candidate
    }
  }
  return undefined;
}
