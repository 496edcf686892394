/**
 * GC of this host's leaked allocations (CNI GC with the runtime's list of
 * valid attachments).
 *
 * GC frees a leak only when it has seen the same allocation (same sequence
 * number, same create revision) unkept twice, at least gcGracePeriodMs
 * apart: the runtime's valid-attachments list may be older than an ADD
 * still in flight. The first sighting is written under N/leaks/<node>/<ip>.
 * Frees compare on exactly what GC read, so an address released and handed
 * out again in between is left alone (./addresses.ts).
 */
import type { Allocation, Owner } from '../allocator';
import { parseIP } from '../../shared/ip';
import { free, readBlockRef } from './addresses';
import {
  addressValueSchema,
  batches,
  FREE_BATCH,
  freeTxn,
  lastElement,
  leakValueSchema,
  readRecord,
  TXN_BATCH_OPS,
  type HeldAddress,
  type LeakValue,
} from './keys';
import type { KeyValue, Op } from '../../shared/etcd/kv';
import type { Operation, StoreContext } from './operation';

/** What GC reads in the operation's one read, after the caller's own reads. */
export function gcReads(ctx: StoreContext): Op[] {
  return [
    { get: `${ctx.net}/ips/`, prefix: true },
    { get: leakPrefix(ctx), prefix: true },
  ];
}

/**
 * Frees this host's allocations (its own and its borrows) whose attachment
 * is not kept, once each has been seen unkept twice at least
 * gcGracePeriodMs apart with the same sequence number; writes the first
 * sightings and drops the void ones. `ips` and `leaks` are what gcReads()
 * read. Returns what was freed in this call.
 */
export async function collectLeaks(
  ctx: StoreContext,
  op: Operation,
  keep: readonly Owner[],
  ips: readonly KeyValue[],
  leakKvs: readonly KeyValue[],
): Promise<Allocation[]> {
  const node = ctx.conf.nodeName;
  const prefix = leakPrefix(ctx);
  const keepKeys = new Set(keep.map((o) => `${o.containerId.trim()}\n${o.ifname}`));
  const leaks = new Map(leakKvs.map((kv) => [kv.key.slice(prefix.length), readRecord(leakValueSchema, kv, ctx.log)]));
  const now = ctx.clock();
  const due: HeldAddress[] = [];
  const notes: Op[] = [];
  const seen = new Set<string>();
  for (const kv of ips) {
    const ipText = lastElement(kv.key);
    const v = parseIP(ipText) && readRecord(addressValueSchema, kv, ctx.log);
    if (!v || v.node !== node || keepKeys.has(`${v.containerId}\n${v.ifname}`)) continue;
    seen.add(ipText);
    const leak = leaks.get(ipText);
    const same = leak !== undefined && leak.seq === v.seq && leak.createRevision === kv.createRevision.toString();
    if (same && now - leak.firstSeen >= ctx.conf.gcGracePeriodMs) {
      due.push({ kv, v, ip: ipText });
    } else if (!same) {
      const note: LeakValue = { containerId: v.containerId, ifname: v.ifname, seq: v.seq, createRevision: kv.createRevision.toString(), firstSeen: now };
      notes.push({ put: prefix + ipText, value: JSON.stringify(note) });
    }
  }
  const freed = (await freeSeen(ctx, op, due)).map((a) => ({ ip: parseIP(a.ip)!, containerId: a.v.containerId, ifname: a.v.ifname }));
  // Sightings of allocations that are gone, kept again or replaced are void.
  for (const ipText of leaks.keys()) if (!seen.has(ipText)) notes.push({ delete: prefix + ipText });
  // In slices: etcd refuses a transaction past 128 operations, and one GC
  // after a drain with hundreds of failed DELs writes a sighting each.
  for (const batch of batches(notes, TXN_BATCH_OPS)) await ctx.kv.txn({ success: batch }, op.deadline);
  return freed;
}

/**
 * Frees allocations exactly as GC read them: block by block, in slices
 * etcd accepts (keys.ts freeTxn, the transaction decommission uses too).
 * A slice that loses a compare (an address released or reused, the block
 * changed) is done again one address at a time, each under its own
 * compare, so a race costs round trips, never a wrong free. Returns what
 * was freed.
 */
async function freeSeen(ctx: StoreContext, op: Operation, due: readonly HeldAddress[]): Promise<HeldAddress[]> {
  const freed: HeldAddress[] = [];
  const byBlock = new Map<string, HeldAddress[]>();
  for (const a of due) {
    if (!byBlock.has(a.v.blockKey)) byBlock.set(a.v.blockKey, []);
    byBlock.get(a.v.blockKey)!.push(a);
  }
  for (const [blockKey, list] of byBlock) {
    let ref = await readBlockRef(ctx, op, blockKey);
    for (const batch of batches(list, FREE_BATCH)) {
      const { compare, ops, data } = freeTxn(ctx.net, ctx.conf.nodeName, batch, ref);
      const r = await ctx.kv.txn({ compare, success: ops }, op.deadline);
      if (r.succeeded) {
        freed.push(...batch);
        if (data) {
          ref = { key: blockKey, rev: r.revision, data };
          op.wrote(batch[0]!.v.block, blockKey, r.revision, data);
        }
        continue;
      }
      ctx.stats.conflicts++;
      for (const a of batch) {
        if (await free(ctx, op, parseIP(a.ip)!, { containerId: a.v.containerId, ifname: a.v.ifname }, a.kv.modRevision)) freed.push(a);
      }
      ref = await readBlockRef(ctx, op, blockKey);
    }
  }
  return freed;
}

function leakPrefix(ctx: StoreContext): string {
  return `${ctx.net}/leaks/${ctx.conf.nodeName}/`;
}
