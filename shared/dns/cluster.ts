/**
 * Cluster-wide names: a network's DNS records in etcd, so a container on
 * host A resolves one on host B by name (overlay networks, and
 * macvlan/ipvlan networks using the etcd IPAM).
 *
 * FOR PLUGINS (overlay, macvlan, ipvlan): one call, `clusterNames(kv, scope, op)`,
 * after the host-local record (shared/dns/index.ts registerNames) on ADD, and
 * before the local removal on DEL/GC:
 *
 *   const scope = { prefix: '<the IPAM's or overlay's etcd key prefix>', network: conf.name,
 *                   subnets: ['10.1.0.0/16', ...], node: '<this host's node name>' };
 *   ADD: await clusterNames(kv, scope, { op: 'add', entry })     entry: shared/dns/records.ts DnsEntry
 *   DEL: await clusterNames(kv, scope, { op: 'del', containerId, ifname })
 *   GC:  await clusterNames(kv, scope, { op: 'gc', valid })       removes only this node's records
 * and pass `cluster: clusterRef(scope, etcdFields)` to registerNames, so the
 * resolver (which has no argv for it) learns where to watch from the
 * network's description on disk: the prefix, the subnets and the etcd
 * connection's *fields* (endpoints, file paths: never a secret; the
 * resolver reads the password file itself, under connection.ts's rules).
 * etcd failures arrive as CniError 11 (KV's contract): the plugin fails and
 * undoes, as for its other etcd writes.
 *
 * Keys: <prefix>/dns/<network>/<containerId>/<ifname>, one per endpoint, no
 * lease (as the overlay's endpoints: records belong to containers, which
 * outlive agents and resolvers; GC removes leaks). Every record read back
 * is validated (zod), must sit under the key its content names, and may
 * name only addresses inside the network's subnets: a neighbour host that
 * writes a record naming another network's address (or junk) is ignored,
 * so it can never make us answer for another network.
 */
import { z } from 'zod';
import type { Attachment } from '../cni/types';
import { CniError, ErrorCode } from '../cni/errors';
import type { KV, KeyValue, Op } from '../etcd/kv';
import { cidrContains, isIPv4, isIPv6 } from '../ip';
import { fieldsSchema, type ConnectionFields } from '../etcd/connection';
import { isDnsName } from './config';
import type { DnsEntry } from './records';

const nodeName = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]*$/).max(253);
const netName = z.string().regex(/^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/).max(128);
const cidr = z.string().regex(/^[0-9a-fA-F:.]+\/\d{1,3}$/);

/** One endpoint's names and addresses, as etcd holds it. */
export const clusterRecordSchema = z
  .object({
    network: netName,
    containerId: z.string().min(1).max(256).regex(/^[^/\s]+$/),
    ifname: z.string().min(1).max(16).regex(/^[^/\s]+$/),
    names: z.array(z.string().refine(isDnsName)).max(64),
    v4: z.array(z.string().refine(isIPv4, 'not an IPv4 address')).max(16),
    v6: z.array(z.string().refine(isIPv6, 'not an IPv6 address')).max(16),
    /** node name of the host that wrote it: GC removes only its own */
    host: nodeName,
  })
  .strict();
export type ClusterRecord = z.infer<typeof clusterRecordSchema>;

/** Where a network's cluster records live and what they may name. */
export interface ClusterScope {
  readonly prefix: string;
  readonly network: string;
  /** the network's address subnets: a record naming an address outside them is ignored */
  readonly subnets: readonly string[];
  /** this host's node name */
  readonly node: string;
  /** bound of each etcd call (default 5000 ms); past it, CniError 11 */
  readonly timeoutMs?: number;
}

/**
 * What the resolver needs to watch a network's cluster records, written into
 * the network's description on disk (records.ts network.json, 0600): the
 * scope and the etcd connection's fields as the plugin's config has them.
 */
export const clusterRefSchema = z
  .object({
    prefix: z.string().regex(/^\/[^\s]*[^/\s]$/),
    subnets: z.array(cidr).min(1).max(16),
    node: nodeName,
    etcd: z.object({ ...fieldsSchema, requestTimeoutMs: z.number().int().min(100).max(600_000).optional() }).strict(),
  })
  .strict();
export type ClusterRef = z.infer<typeof clusterRefSchema>;

/** The fields of an etcd section the resolver may be given (never an inline password: connection.ts refuses it anyway). */
export interface EtcdFields extends Omit<ConnectionFields, 'password'> {
  readonly requestTimeoutMs?: number;
}

/** The network description's `cluster` field for a scope and its etcd connection fields. */
export function clusterRef(scope: ClusterScope, etcd: EtcdFields): ClusterRef {
  const pick: Record<string, unknown> = {};
  for (const k of ['endpoints', 'caFile', 'certFile', 'keyFile', 'username', 'passwordFile', 'insecure', 'requestTimeoutMs'] as const) {
    if (etcd[k] !== undefined) pick[k] = Array.isArray(etcd[k]) ? [...(etcd[k] as string[])] : etcd[k];
  }
  return clusterRefSchema.parse({ prefix: scope.prefix, subnets: [...scope.subnets], node: scope.node, etcd: pick });
}

export function clusterPrefix(prefix: string, network: string): string {
  return `${prefix}/dns/${network}/`;
}

export function clusterKey(prefix: string, network: string, containerId: string, ifname: string): string {
  return `${clusterPrefix(prefix, network)}${containerId}/${ifname}`;
}

/** The record of a local entry on `scope`'s network (its addresses must be inside the subnets: code-free check, the caller's IPAM gave them). */
export function recordOf(scope: Pick<ClusterScope, 'network' | 'node'>, e: DnsEntry): ClusterRecord {
  return clusterRecordSchema.parse({ network: scope.network, containerId: e.containerId, ifname: e.ifname, names: e.names, v4: e.v4, v6: e.v6, host: scope.node });
}

/** The put of one record (for a caller folding it into its own transaction, as the overlay's endpoint write does). */
export function putOp(prefix: string, r: ClusterRecord): Op {
  return { put: clusterKey(prefix, r.network, r.containerId, r.ifname), value: JSON.stringify(clusterRecordSchema.parse(r)) };
}

export function deleteOp(prefix: string, network: string, containerId: string, ifname: string): Op {
  return { delete: clusterKey(prefix, network, containerId, ifname) };
}

/**
 * One key read back: the record, or why it is ignored. Never the value in
 * the reason (it is whatever someone wrote).
 */
export function decodeRecord(kv: Pick<KeyValue, 'key' | 'value'>, prefix: string, network: string, subnets: readonly string[]): { record: ClusterRecord } | { ignored: string } {
  let raw: unknown;
  try {
    raw = JSON.parse(kv.value);
  } catch {
    return { ignored: `${kv.key}: not JSON` };
  }
  const r = clusterRecordSchema.safeParse(raw);
  if (!r.success) {
    const i = r.error.issues[0]!;
    return { ignored: `${kv.key}: ${i.path.join('.') || 'value'}: ${i.message}` };
  }
  const rec = r.data;
  if (rec.network !== network || kv.key !== clusterKey(prefix, rec.network, rec.containerId, rec.ifname)) {
    return { ignored: `${kv.key}: its content names another key` };
  }
  const outside = [...rec.v4, ...rec.v6].find((a) => !subnets.some((s) => cidrContains(s, a)));
  if (outside !== undefined) return { ignored: `${kv.key}: names ${outside}, outside the network's subnets` };
  return { record: rec };
}

/** Every valid record of the network among `kvs`; the rest reported through `warn`. */
export function decodeRecords(kvs: readonly Pick<KeyValue, 'key' | 'value'>[], prefix: string, network: string, subnets: readonly string[], warn: (msg: string) => void = () => {}): ClusterRecord[] {
  const out: ClusterRecord[] = [];
  for (const kv of kvs) {
    const d = decodeRecord(kv, prefix, network, subnets);
    if ('record' in d) out.push(d.record);
    else warn(`dns: ignoring cluster record ${d.ignored}`);
  }
  return out;
}

/** The network's records as etcd holds them now (validated; the ignored ones through `warn`). */
export async function listClusterRecords(kv: KV, scope: ClusterScope, warn?: (msg: string) => void): Promise<ClusterRecord[]> {
  const { results } = await kv.txn({ success: [{ get: clusterPrefix(scope.prefix, scope.network), prefix: true }] }, deadline(scope));
  return decodeRecords(results[0] ?? [], scope.prefix, scope.network, scope.subnets, warn);
}

export type ClusterOp =
  | { readonly op: 'add'; readonly entry: DnsEntry }
  | { readonly op: 'del'; readonly containerId: string; readonly ifname: string }
  | { readonly op: 'gc'; readonly valid: readonly Pick<Attachment, 'containerID' | 'ifname'>[] };

function deadline(scope: ClusterScope): number {
  return Date.now() + (scope.timeoutMs ?? 5000);
}

/**
 * The plugins' one call for the cluster records (see the header). ADD
 * writes (or rewrites) the endpoint's record; DEL deletes it (absent is
 * fine); GC deletes this node's records whose attachment `valid` does not
 * list, each only if unchanged since read (a concurrent re-ADD wins).
 */
export async function clusterNames(kv: KV, scope: ClusterScope, o: ClusterOp): Promise<void> {
  switch (o.op) {
    case 'add': {
      const rec = recordOf(scope, o.entry);
      const outside = [...rec.v4, ...rec.v6].find((a) => !scope.subnets.some((s) => cidrContains(s, a)));
      if (outside !== undefined) {
        // other hosts would ignore it (decodeRecord): refused here rather than published in vain
        throw new CniError(ErrorCode.InvalidNetworkConfig, `dns: ${outside} is outside the network's subnets ${scope.subnets.join(', ')}`, 'the IPAM gave an address the network does not hold');
      }
      await kv.txn({ success: [putOp(scope.prefix, rec)] }, deadline(scope));
      return;
    }
    case 'del':
      await kv.txn({ success: [deleteOp(scope.prefix, scope.network, o.containerId, o.ifname)] }, deadline(scope));
      return;
    case 'gc': {
      const keep = new Set(o.valid.map((a) => `${a.containerID}/${a.ifname}`));
      const d = deadline(scope);
      const { results } = await kv.txn({ success: [{ get: clusterPrefix(scope.prefix, scope.network), prefix: true }] }, d);
      for (const k of results[0] ?? []) {
        const dec = decodeRecord(k, scope.prefix, scope.network, scope.subnets);
        // only this node's own, well-formed records: another host's (or junk) is not ours to judge
        if (!('record' in dec) || dec.record.host !== scope.node) continue;
        if (keep.has(`${dec.record.containerId}/${dec.record.ifname}`)) continue;
        await kv.txn({ compare: [{ key: k.key, target: 'mod', value: k.modRevision }], success: [{ delete: k.key }] }, d);
      }
      return;
    }
  }
}
