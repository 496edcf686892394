/**
 * The etcd key layout and the values under it, shared by the store (the
 * plugin's side) and the maintenance command (the operator's side), so the
 * two can never disagree on where a thing lives.
 *
 * P = keyPrefix, N = P/networks/<network>:
 *   P/hosts/<node>                 {hostId}: who this node name belongs to
 *   P/alive/<node>                 {hostId, renewAfter}: lease-backed; kept by the host's liveness keeper (./liveness.ts)
 *   P/gone/<node>/<network>        older versions' maintenance sightings: deleted by renewal and decommission
 *   P/ranges/<network>             {ranges}: the network's address ranges, for the overlap check
 *   P/ranges-head                  bumped by every change under P/ranges/: the registry's compare target
 *   N/blocks/<block>               <node>: the claim, the compare-and-swap target
 *   N/hostblocks/<node>/<block>    {cidr, seq, last, used: {offset: seq}}: the block's state
 *   N/ips/<ip>                     {containerId, ifname, node, block, blockKey, seq}
 *   N/owners/<cid>/<ifname>/<ip>   {node, blockKey}: index by attachment
 *   N/leaks/<node>/<ip>            {seq, createRevision, firstSeen}: GC's first sighting
 */
import { z } from 'zod';
import type { Logger } from '../../shared/log';
import { parseIP } from '../../shared/ip';
import type { Compare, KeyValue, Op } from '../../shared/etcd/kv';

/**
 * Every value is written from one of these types and read back through its
 * zod schema (readRecord): a record someone wrote by hand, an older layout
 * or a corrupted value is skipped and logged, never trusted and never
 * allowed to throw out of an allocation, a GC or a maintenance pass.
 */
const nodeName = z.string().min(1).max(253).regex(/^[A-Za-z0-9][A-Za-z0-9_.-]*$/);
const decimal = z.string().regex(/^\d+$/);

/** What the block state key holds. Offsets are decimal (address - block network). */
export const blockDataSchema = z.object({
  cidr: z.string().regex(/^[0-9a-fA-F.:]+\/\d{1,3}$/),
  host: z.string(),
  seq: z.number().int().nonnegative(),
  last: decimal.optional(),
  used: z.record(decimal, z.number().int().nonnegative()),
});
export type BlockData = z.infer<typeof blockDataSchema>;

export const addressValueSchema = z.object({
  containerId: z.string().min(1),
  ifname: z.string().min(1),
  node: nodeName,
  block: z.string().min(1),
  blockKey: z.string().min(1),
  seq: z.number().int().nonnegative(),
  borrowed: z.boolean().optional(),
});
export type AddressValue = z.infer<typeof addressValueSchema>;

/** P/hosts/<node>: who holds the node name (compare-and-swap on its version). */
export const hostValueSchema = z.object({
  hostId: z.string().min(1).max(256),
  registeredAt: z.string().optional(),
});
export type HostValue = z.infer<typeof hostValueSchema>;

export const aliveValueSchema = z.object({
  hostId: z.string().min(1).max(256),
  /** epoch ms by the host's own clock: a CNI call after this renews the lease (the keeper renews by etcd's TTL) */
  renewAfter: z.number(),
});
export type AliveValue = z.infer<typeof aliveValueSchema>;

/** One allocatable range of a registered network, as text. */
export const registeredRangeSchema = z.object({ subnet: z.string(), start: z.string(), end: z.string() });
export type RegisteredRange = z.infer<typeof registeredRangeSchema>;

export const rangesValueSchema = z.object({ ranges: z.array(registeredRangeSchema) });
export type RangesValue = z.infer<typeof rangesValueSchema>;

/** N/leaks/<node>/<ip>: GC's first sighting of an unkept allocation. */
export const leakValueSchema = z.object({
  containerId: z.string(),
  ifname: z.string(),
  seq: z.number().int().nonnegative(),
  createRevision: decimal,
  firstSeen: z.number(),
});
export type LeakValue = z.infer<typeof leakValueSchema>;

/** N/blocks/<block>: the claim's value is the claimant's node name. */
export const claimValueSchema = nodeName;

/**
 * The record's value through its schema; undefined (and one line on `log`
 * naming the key) when it is not JSON or not of that shape.
 */
export function readRecord<T>(schema: z.ZodType<T, z.ZodTypeDef, unknown>, kv: { key: string; value: string }, log: Logger): T | undefined {
  let json: unknown = kv.value;
  if (!(schema instanceof z.ZodString)) {
    try {
      json = JSON.parse(kv.value);
    } catch {
      log(`cluster-ipam: skipping malformed etcd record ${kv.key}: not JSON`);
      return undefined;
    }
  }
  const r = schema.safeParse(json);
  if (r.success) return r.data;
  const issue = r.error.issues[0]!;
  log(`cluster-ipam: skipping malformed etcd record ${kv.key}: ${issue.path.join('.') || 'value'}: ${issue.message}`);
  return undefined;
}

/**
 * etcd refuses a transaction of more than 128 operations (--max-txn-ops,
 * default 128): anything that writes a number of keys that grows with the
 * cluster goes through here, in slices that fit with room for the caller's
 * compares.
 */
export const TXN_BATCH_OPS = 96;

export function batches<T>(items: readonly T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

/** How many addresses one freeing transaction carries: 3 deletes and a compare each, plus the block's put and compare. */
export const FREE_BATCH = Math.floor((TXN_BATCH_OPS - 1) / 3);

/** An allocation as read back: its key (with revisions), its value, its address. */
export interface HeldAddress {
  readonly kv: KeyValue;
  readonly v: AddressValue;
  readonly ip: string;
}

/** A block state key as read: data null when the record is malformed, undefined when there is none. */
export type BlockRef =
  | { readonly key: string; readonly rev: bigint; readonly data: BlockData | null }
  | { readonly key: string; readonly data: undefined };

/**
 * The one transaction that frees `batch` (at most FREE_BATCH addresses of
 * one block, held by `node`), shared by GC (gc.ts) and decommission
 * (decommission.ts): each address key compared at the revision it was read, the
 * block's state at its revision with the addresses dropped from it (or,
 * when the state is malformed, `null`: compared as it is and left alone;
 * when it is gone, `undefined`: compared absent). Returns the block's new
 * state, to chain the next batch of the same block.
 */
export function freeTxn(
  net: string,
  node: string,
  batch: readonly HeldAddress[],
  block: BlockRef,
): { compare: Compare[]; ops: Op[]; data?: BlockData } {
  const compare: Compare[] = batch.map((a) => ({ key: a.kv.key, target: 'mod', value: a.kv.modRevision }));
  const ops: Op[] = batch.flatMap((a): Op[] => [
    { delete: a.kv.key },
    { delete: ownerPrefixKey(net, a.v.containerId, a.v.ifname) + a.ip },
    { delete: `${net}/leaks/${node}/${a.ip}` },
  ]);
  if (block.data === undefined) {
    compare.push({ key: block.key, target: 'version', value: 0n });
    return { compare, ops };
  }
  compare.push({ key: block.key, target: 'mod', value: block.rev });
  if (block.data === null) return { compare, ops };
  const used = { ...block.data.used };
  for (const a of batch) delete used[offsetIn(block.data.cidr, a.ip)];
  const data: BlockData = { ...block.data, seq: block.data.seq + 1, used };
  ops.push({ put: block.key, value: JSON.stringify(data) });
  return { compare, ops, data };
}

/** The address's offset in its block, as BlockData.used keys it. */
function offsetIn(cidr: string, ip: string): string {
  const net = parseIP(cidr.slice(0, cidr.lastIndexOf('/')));
  const addr = parseIP(ip);
  return net && addr ? (addr.value - net.value).toString() : '';
}

export function hostKey(prefix: string, node: string): string {
  return `${prefix}/hosts/${node}`;
}

export function aliveKey(prefix: string, node: string): string {
  return `${prefix}/alive/${node}`;
}

/** With network undefined: the prefix of every sighting of the node. */
export function goneKey(prefix: string, node: string, network?: string): string {
  return `${prefix}/gone/${node}/${network ?? ''}`;
}

export function rangesKey(prefix: string, network: string): string {
  return `${prefix}/ranges/${network}`;
}

export function rangesHeadKey(prefix: string): string {
  return `${prefix}/ranges-head`;
}

export function networkKey(prefix: string, network: string): string {
  return `${prefix}/networks/${network}`;
}

/** The owner index prefix of one attachment; the address follows it. */
export function ownerPrefixKey(net: string, containerId: string, ifname: string): string {
  return `${net}/owners/${encodeURIComponent(containerId.trim())}/${encodeURIComponent(ifname)}/`;
}

/** The last path element of a key. */
export function lastElement(key: string): string {
  return key.slice(key.lastIndexOf('/') + 1);
}
