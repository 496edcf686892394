/**
 * The etcd store's blocks as geometry: which aligned block an address lies
 * in, which blocks a range set touches, which of a block's addresses the set
 * may hand out, and a block's state record checked against the block its
 * key names. Pure: nothing here talks to etcd (./claims.ts reads, claims and
 * picks blocks; ./addresses.ts writes inside them).
 */
import { allocatable, rangeContains, type IpamRange, type RangeSet } from '../config';
import { formatIP, mask, parseIP, type Family, type IP } from '../../shared/ip';
import { blockDataSchema, lastElement, readRecord, type BlockData } from './keys';
import type { KeyValue } from '../../shared/etcd/kv';
import type { Logger } from '../../shared/log';

/** One aligned block: its ID (`<network>_<prefix>`, as keys name it) and extent. */
export interface Block {
  readonly id: string;
  readonly network: bigint;
  readonly prefix: number;
  readonly family: Family;
}

/** A block's state as read (or last written by this operation), with the revision to compare on. */
export interface BlockState extends Block {
  /** N/hostblocks/<node>/<id> */
  readonly key: string;
  rev: bigint;
  data: BlockData;
}

export function blockId(family: Family, network: bigint, prefix: number): string {
  return `${formatIP({ family, value: network })}_${prefix}`;
}

/** The block of `prefix` that holds ip. */
export function blockOf(ip: IP, prefix: number): Block {
  const network = ip.value & mask(ip.family, prefix);
  return { id: blockId(ip.family, network, prefix), network, prefix, family: ip.family };
}

/**
 * The block's state, or undefined (one line on `log`) when the record is
 * malformed or its cidr is not the block its key names: a state that lies
 * about its block would let an address be marked used in the wrong bitmap.
 */
export function parseBlockState(kv: KeyValue, log: Logger): BlockState | undefined {
  const data = readRecord(blockDataSchema, kv, log);
  if (!data) return undefined;
  const id = lastElement(kv.key);
  const slash = data.cidr.lastIndexOf('/');
  const net = parseIP(data.cidr.slice(0, slash));
  const prefix = Number(data.cidr.slice(slash + 1));
  if (!net || !(prefix >= 0 && prefix <= (net.family === 4 ? 32 : 128)) || id !== blockId(net.family, net.value, prefix) || net.value !== (net.value & mask(net.family, prefix))) {
    log(`cluster-ipam: skipping malformed etcd record ${kv.key}: cidr ${data.cidr} is not the block the key names`);
    return undefined;
  }
  return { id, key: kv.key, network: net.value, prefix, family: net.family, rev: kv.modRevision, data };
}

/** The sound block states among `kvs`, by block ID (malformed ones logged and left out). */
export function blocksFrom(kvs: readonly KeyValue[], log: Logger): Map<string, BlockState> {
  const out = new Map<string, BlockState>();
  for (const kv of kvs) {
    const st = parseBlockState(kv, log);
    if (st) out.set(st.id, st);
  }
  return out;
}

/** The set's allocatable addresses inside one block, in the set's order. */
export function* addressesIn(set: RangeSet, block: Block): Generator<bigint> {
  const { network, prefix, family } = block;
  const last = network | (~mask(family, prefix) & ((1n << BigInt(family === 4 ? 32 : 128)) - 1n));
  for (const range of set) {
    if (range.subnet.network.family !== family) continue;
    const lo = range.rangeStart.value > network ? range.rangeStart.value : network;
    const hi = range.rangeEnd.value < last ? range.rangeEnd.value : last;
    for (let v = lo; v <= hi; v++) if (allocatable(range, v)) yield v;
  }
}

/** The first free address of the block in the set, after `after` if given. */
export function firstFree(st: BlockState, set: RangeSet, after?: bigint): bigint | undefined {
  for (const v of addressesIn(set, st)) {
    if (after !== undefined && v <= after) continue;
    if (st.data.used[(v - st.network).toString()] === undefined) return v;
  }
  return undefined;
}

/** Every block the set's ranges touch, in the set's order (lazily: an IPv6 /64 has 2^58 of them). */
export function* blocksOf(set: RangeSet, prefix: number): Generator<Block> {
  const seen = new Set<string>();
  for (const range of set) {
    const family = range.subnet.network.family;
    const size = 1n << BigInt((family === 4 ? 32 : 128) - prefix);
    for (let n = range.rangeStart.value & mask(family, prefix); n <= range.rangeEnd.value; n += size) {
      const id = blockId(family, n, prefix);
      if (seen.has(id)) continue;
      seen.add(id);
      yield { id, network: n, prefix, family };
    }
  }
}

/**
 * The address the allocator's walk (candidates()) must start after so that
 * its first candidate is `ip`: the one before it in its range, or the end of
 * the previous range when ip opens its range.
 */
export function predecessor(set: RangeSet, ip: IP): IP | undefined {
  const k = set.findIndex((r: IpamRange) => rangeContains(r, ip));
  const range = set[k]!;
  if (ip.value > range.rangeStart.value) return { family: ip.family, value: ip.value - 1n };
  return k === 0 ? undefined : set[k - 1]!.rangeEnd;
}
