/**
 * Block claims: which blocks are whose, claiming one, and choosing where
 * the next address comes from.
 *
 * A host claims a block with one transaction on version(claim) == 0,
 * Flannel's subnet-lease rule, so two hosts can never win the same block; a
 * lost race just means trying another. A host then allocates inside its own
 * blocks, where nobody else writes in the normal case, claims another block
 * when they are full, and only when no block is left takes a single address
 * from another host's block (a "borrow", ./store.ts).
 */
import type { RangeSet } from '../config';
import { formatIP, type Family, type IP } from '../../shared/ip';
import { blocksFrom, blocksOf, addressesIn, firstFree, parseBlockState, type Block, type BlockState } from './blocks';
import { claimValueSchema, readRecord, type BlockData } from './keys';
import type { Operation, StoreContext, Target } from './operation';
import type { NetworkRegistry } from './registry';

/**
 * How many of the first unclaimed blocks a claim picks from at random. Wide,
 * because lost races are what hosts starting together pay for: with 200
 * hosts claiming at once, picking among 8 cost each several rounds of lost
 * claims and re-reads (bench/etcd-ipam.ts). The price is a less compact
 * layout of blocks in the subnet, which nothing depends on.
 */
const CLAIM_SPREAD = 1024;

/** The prefix length of this store's blocks in the family. */
export function blockPrefix(ctx: StoreContext, family: Family): number {
  return family === 4 ? ctx.conf.blockSizeV4 : ctx.conf.blockSizeV6;
}

/** N/hostblocks/<node>/<id>: the block's state; with id '', the prefix of the node's blocks. */
export function hostBlockKey(ctx: StoreContext, node: string, id: string): string {
  return `${ctx.net}/hostblocks/${node}/${id}`;
}

/** This host's blocks, read again (another process of this host may have claimed one). */
export async function reloadMine(ctx: StoreContext, op: Operation): Promise<void> {
  const { results } = await ctx.kv.txn({ success: [{ get: hostBlockKey(ctx, ctx.conf.nodeName, ''), prefix: true }] }, op.deadline);
  op.mine = blocksFrom(results[0]!, ctx.log);
}

/** Every block's claimant, read once per operation (again after a lost claim). */
export async function loadClaims(ctx: StoreContext, op: Operation): Promise<Map<string, string>> {
  if (!op.claims) {
    const prefix = `${ctx.net}/blocks/`;
    const { results } = await ctx.kv.txn({ success: [{ get: prefix, prefix: true }] }, op.deadline);
    // A malformed claim still claims: its block is nobody's to take, so it
    // stays in the map (under a name no node has) and is never borrowed from.
    op.claims = new Map(results[0]!.map((kv) => [kv.key.slice(prefix.length), readRecord(claimValueSchema, kv, ctx.log) ?? '']));
  }
  return op.claims;
}

/**
 * Claims the block for this node (version == 0 on the claim key), carrying
 * the network's pending registration (./registry.ts); true if won.
 */
export async function claim(ctx: StoreContext, op: Operation, registry: NetworkRegistry, block: Block): Promise<boolean> {
  const { conf } = ctx;
  const claimKey = `${ctx.net}/blocks/${block.id}`;
  const key = hostBlockKey(ctx, conf.nodeName, block.id);
  const data: BlockData = { cidr: `${formatIP({ family: block.family, value: block.network })}/${block.prefix}`, host: conf.nodeName, seq: 0, used: {} };
  const registration = registry.pending;
  const r = await ctx.kv.txn(
    {
      compare: [{ key: claimKey, target: 'version', value: 0n }, ...(registration?.compare ?? [])],
      success: [{ put: claimKey, value: conf.nodeName }, { put: key, value: JSON.stringify(data) }, ...(registration?.ops ?? [])],
      failure: [{ get: claimKey }, ...registry.reads()],
    },
    op.deadline,
  );
  if (r.succeeded) {
    registry.written();
    ctx.stats.claimed++;
    op.claims?.set(block.id, conf.nodeName);
    op.myBlocks.set(block.id, { ...block, key, rev: r.revision, data });
    return true;
  }
  // Lost to a registration made since our read, perhaps of an overlapping
  // network: check again (7 if it overlaps), then retry.
  if (registration) registry.check(r.results[1]!, r.results[2]![0]);
  ctx.stats.conflicts++;
  // Others are claiming right now: learn all their claims at the next look
  // (one read), not one lost race at a time.
  op.claims = undefined;
  return false;
}

/** The block's state; undefined when there is none, null when it is malformed (logged). */
export async function readBlock(ctx: StoreContext, op: Operation, key: string): Promise<BlockState | undefined | null> {
  const { results } = await ctx.kv.txn({ success: [{ get: key }] }, op.deadline);
  const kv = results[0]![0];
  if (!kv) return undefined;
  return parseBlockState(kv, ctx.log) ?? null;
}

/** A free address in one of this host's blocks: the most recently written block first, after its last allocation. */
export function pickInMine(op: Operation, set: RangeSet): Target | undefined {
  const blocks = [...op.myBlocks.values()].sort((a, b) => (a.rev === b.rev ? 0 : a.rev > b.rev ? -1 : 1));
  for (const st of blocks) {
    const after = st.data.last !== undefined ? st.network + BigInt(st.data.last) : undefined;
    const v = firstFree(st, set, after) ?? (after !== undefined ? firstFree(st, set) : undefined);
    if (v !== undefined) return { ip: { family: st.family, value: v }, kind: 'mine' };
  }
  return undefined;
}

/** The first address of an unclaimed block, picked at random among the first CLAIM_SPREAD of them. */
export async function pickUnclaimed(ctx: StoreContext, op: Operation, set: RangeSet): Promise<Target | undefined> {
  const claims = await loadClaims(ctx, op);
  const found: IP[] = [];
  for (const b of blocksOf(set, blockPrefix(ctx, set[0]!.subnet.network.family))) {
    if (claims.has(b.id)) continue;
    const first = addressesIn(set, b).next();
    if (first.done) continue;
    found.push({ family: b.family, value: first.value });
    if (found.length >= CLAIM_SPREAD) break;
  }
  if (found.length === 0) return undefined;
  return { ip: found[Math.floor(ctx.random() * found.length)]!, kind: 'claim' };
}

/** A free address in another host's block: the last resort. */
export async function pickBorrow(ctx: StoreContext, op: Operation, set: RangeSet): Promise<Target | undefined> {
  const prefix = `${ctx.net}/hostblocks/`;
  const { results } = await ctx.kv.txn({ success: [{ get: prefix, prefix: true }] }, op.deadline);
  for (const kv of results[0]!) {
    const st = parseBlockState(kv, ctx.log);
    if (!st || st.data.host === ctx.conf.nodeName) continue;
    const v = firstFree(st, set);
    if (v !== undefined) return { ip: { family: st.family, value: v }, kind: 'borrow' };
  }
  return undefined;
}
