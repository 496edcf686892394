/**
 * One address's transactions: allocating it and freeing it.
 *
 * An allocation is one transaction: it compares the block state's mod
 * revision (nobody changed the block since we read it) and the address key's
 * version (nobody holds the address), and writes the block (sequence number
 * + 1, the address marked used with that number), the address key and the
 * owner index together. A release is the mirror image. So there is never a
 * half-written allocation, whatever fails when.
 *
 * Sequence numbers are Calico's answer to ABA: an address released and
 * handed out again between GC's look and GC's free carries another sequence
 * number (and the key another create revision), so GC, which frees only with
 * a compare on what it saw (expectRev), leaves it alone.
 */
import type { Owner } from '../allocator';
import { allocatable, rangeContains, type RangeSet } from '../config';
import { formatIP, type IP } from '../../shared/ip';
import { parseBlockState, type BlockState } from './blocks';
import { addressValueSchema, freeTxn, ownerPrefixKey, readRecord, type AddressValue, type BlockData, type BlockRef } from './keys';
import type { Operation, StoreContext } from './operation';

/**
 * One allocation transaction. 'taken': the address is in use; 'conflict':
 * the block changed under us (its state is refreshed from the failure
 * branch, so a retry needs no extra read).
 */
export async function tryAllocate(
  ctx: StoreContext,
  op: Operation,
  st: BlockState,
  set: RangeSet,
  ip: IP,
  owner: Owner,
  borrowed: boolean,
): Promise<'ok' | 'taken' | 'conflict'> {
  const range = set.find((r) => rangeContains(r, ip));
  if (!range || !allocatable(range, ip.value)) return 'taken';
  const offset = (ip.value - st.network).toString();
  if (st.data.used[offset] !== undefined) return 'taken';
  const node = ctx.conf.nodeName;
  const ipText = formatIP(ip);
  const ipKey = `${ctx.net}/ips/${ipText}`;
  const seq = st.data.seq + 1;
  const data: BlockData = { ...st.data, seq, last: offset, used: { ...st.data.used, [offset]: seq } };
  const value: AddressValue = {
    containerId: owner.containerId.trim(),
    ifname: owner.ifname,
    node,
    block: st.id,
    blockKey: st.key,
    seq,
    ...(borrowed ? { borrowed: true } : {}),
  };
  const r = await ctx.kv.txn(
    {
      compare: [
        { key: st.key, target: 'mod', value: st.rev },
        { key: ipKey, target: 'version', value: 0n },
      ],
      success: [
        { put: st.key, value: JSON.stringify(data) },
        { put: ipKey, value: JSON.stringify(value) },
        { put: ownerPrefixKey(ctx.net, owner.containerId, owner.ifname) + ipText, value: JSON.stringify({ node, blockKey: st.key }) },
      ],
      failure: [{ get: st.key }, { get: ipKey }],
    },
    op.deadline,
  );
  if (r.succeeded) {
    st.rev = r.revision;
    st.data = data;
    return 'ok';
  }
  ctx.stats.conflicts++;
  const [blockNow, ipNow] = r.results;
  if (ipNow!.length > 0) return 'taken';
  const fresh = blockNow![0] && parseBlockState(blockNow![0], ctx.log);
  if (!fresh) {
    // The block is gone (reclaimed): forget it; the caller looks again.
    op.mine?.delete(st.id);
    op.claims?.delete(st.id);
    return 'conflict';
  }
  st.rev = fresh.rev;
  st.data = fresh.data;
  return st.data.used[offset] !== undefined ? 'taken' : 'conflict';
}

/**
 * Frees one address held by owner, updating its block in the same
 * transaction (keys.ts freeTxn, as GC's batches). With `expectRev`, only if
 * the address key is still exactly that version (GC's guard). Returns
 * whether something was freed.
 */
export async function free(ctx: StoreContext, op: Operation, ip: IP, owner: Owner, expectRev?: bigint): Promise<boolean> {
  const { kv } = ctx;
  const ipText = formatIP(ip);
  const ipKey = `${ctx.net}/ips/${ipText}`;
  for (let attempt = 0; ; attempt++) {
    const read = await kv.txn({ success: [{ get: ipKey }] }, op.deadline);
    const ipKv = read.results[0]![0];
    const v = ipKv && readRecord(addressValueSchema, ipKv, ctx.log);
    if (!ipKv || !v || v.containerId !== owner.containerId.trim() || v.ifname !== owner.ifname || (expectRev !== undefined && ipKv.modRevision !== expectRev)) {
      // Not (or no longer) this owner's: only the stale index entry goes.
      if (expectRev === undefined) await kv.txn({ success: [{ delete: ownerPrefixKey(ctx.net, owner.containerId, owner.ifname) + ipText }] }, op.deadline);
      return false;
    }
    const { compare, ops, data } = freeTxn(ctx.net, ctx.conf.nodeName, [{ kv: ipKv, v, ip: ipText }], await readBlockRef(ctx, op, v.blockKey));
    const r = await kv.txn({ compare, success: ops }, op.deadline);
    if (r.succeeded) {
      // Keep this operation's view of our own block current (an ADD that
      // fails half-way releases and may be retried by the caller).
      if (data) op.wrote(v.block, v.blockKey, r.revision, data);
      return true;
    }
    ctx.stats.conflicts++;
    await op.backoff(attempt);
  }
}

/**
 * The block's state as freeTxn takes it, read now: data null when the
 * record is malformed (logged; its addresses still go, the block is left as
 * it is), undefined when there is none.
 */
export async function readBlockRef(ctx: StoreContext, op: Operation, key: string): Promise<BlockRef> {
  const { results } = await ctx.kv.txn({ success: [{ get: key }] }, op.deadline);
  const kv = results[0]![0];
  return kv ? { key, rev: kv.modRevision, data: parseBlockState(kv, ctx.log)?.data ?? null } : { key, data: undefined };
}
