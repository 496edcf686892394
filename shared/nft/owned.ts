/**
 * Helpers for the tables this project owns: naming, ownership tags, and the
 * two operations every plugin needs.
 *
 * ADD: `ensureTable` + `syncChain` queue idempotent commands (nft's `add
 * table`/`add chain` succeed when the object exists; a flushed and
 * rewritten chain is knftables' "reconcile by flush"), so ADD needs no
 * listing: one `nft -f -`.
 *
 * DEL: everything a container put in is tagged with a comment
 * (`ownerTag`, "cni-ts:<network>:<containerID>[:<ifname>]"); network-wide
 * rules carry `networkTag` ("cni-ts:<network>"). `releaseOwner` lists the
 * table once, deletes the owner's rules and elements by handle/key, the
 * network's own rules when no other owner of that network remains, and,
 * if asked, chains/sets/the table left empty, all in one transaction: two
 * nft processes per DEL.
 *
 * Concurrency: plugin processes for different containers run at the same
 * time, and a DEL's listing can be stale by the time its transaction runs
 * (a concurrent ADD may have put a rule into the chain this DEL found empty
 * and deletes; nft's `delete chain` takes the rules with it). So every
 * writer stamps the table: ensureTable replaces the single element of the
 * `generation` set with a random number, and a DEL's transaction starts by
 * deleting the element it listed. If anyone wrote in between, that element
 * is gone, nft fails the whole batch with ENOENT, and the DEL retries with a
 * fresh listing: compare-and-swap inside one atomic nft transaction, no
 * lock file. Writers that bypass ensureTable must call bumpGeneration.
 */
import { createHash, randomBytes } from 'node:crypto';
import { NftError } from './errors';
import type { Family, ListedSet, Listing, Nft, TableRef } from './nft-interface';
import { Transaction, type Chain, type NftMap, type NftSet } from './transaction';

/** Every table this project creates starts with this. */
export const TABLE_PREFIX = 'cni_ts_';
/** Every comment this project writes starts with this. */
export const TAG_PREFIX = 'cni-ts';

/** The project table `cni_ts_<suffix>` in `family`. */
export function projectTable(family: Family, suffix: string): TableRef {
  return { family, table: `${TABLE_PREFIX}${suffix}` };
}

export interface Owner {
  network: string;
  containerID: string;
  /** Omit to mean every interface of the container on that network. */
  ifname?: string;
}

/** Budget per tag part, so that the longest tag fits nft's 128-character comment. */
const NET_MAX = 40;
const CID_MAX = 64;
const IF_MAX = 15;

/**
 * Tags are hierarchical with ":" (which network names, container IDs and
 * interface names cannot contain), so a network's tag is a prefix of each
 * of its owners'. A part longer than its budget is shortened to a prefix
 * plus a hash of the whole, the same on ADD and DEL.
 */
function part(what: string, value: string, max: number): string {
  if (value === '' || /[:\s"]/.test(value)) throw new NftError('invalid', `${what} ${JSON.stringify(value)} cannot be part of a tag`, '', -1);
  if (value.length <= max) return value;
  const hash = createHash('sha256').update(value).digest('hex').slice(0, 16);
  return `${value.slice(0, max - 17)}~${hash}`;
}

/** "cni-ts:<network>": tags rules that belong to a network as a whole. */
export function networkTag(network: string): string {
  return `${TAG_PREFIX}:${part('network', network, NET_MAX)}`;
}

/** "cni-ts:<network>:<containerID>[:<ifname>]": tags one attachment's rules and elements. */
export function ownerTag(owner: Owner): string {
  const base = `${networkTag(owner.network)}:${part('container ID', owner.containerID, CID_MAX)}`;
  return owner.ifname === undefined ? base : `${base}:${part('ifname', owner.ifname, IF_MAX)}`;
}

/**
 * Whether a comment carries `tag`: equal to it, or extending it with a
 * deeper level (":...") or a human note (" ...").
 */
export function tagMatches(comment: string | undefined, tag: string): boolean {
  if (comment === undefined || !comment.startsWith(tag)) return false;
  const next = comment.charAt(tag.length);
  return next === '' || next === ':' || next === ' ';
}

/** Reserved set name: the table's write stamp (see the header). */
export const GENERATION_SET = 'generation';

/** Queue the replacement of the table's write stamp; the table must exist or be added earlier in tx. */
export function bumpGeneration(tx: Transaction, ref: TableRef): void {
  tx.add({ kind: 'set', ...ref, name: GENERATION_SET, type: 'mark' });
  tx.flush({ kind: 'set', ...ref, name: GENERATION_SET });
  tx.add({ kind: 'element', ...ref, set: GENERATION_SET, key: String(randomBytes(4).readUInt32BE(0)) });
}

export type ChainSpec = Omit<Chain, 'kind' | 'family' | 'table'>;
export type SetSpec = Omit<NftSet, 'family' | 'table'> | Omit<NftMap, 'family' | 'table'>;

/**
 * Queue `add table`, `add set/map` and `add chain` for each (idempotent, no
 * listing needed), and stamp the table (bumpGeneration).
 */
export function ensureTable(tx: Transaction, ref: TableRef, chains: readonly ChainSpec[] = [], sets: readonly SetSpec[] = [], comment?: string): void {
  tx.add({ kind: 'table', ...ref, ...(comment !== undefined && { comment }) });
  bumpGeneration(tx, ref);
  for (const s of sets) tx.add({ ...s, ...ref } as NftSet | NftMap);
  for (const c of chains) tx.add({ kind: 'chain', ...ref, ...c });
}

export type RuleSpec = string | { rule: string; comment?: string };

/** Reconcile by flush: `add chain`, `flush chain`, then every rule, so the chain holds exactly `rules`. */
export function syncChain(tx: Transaction, ref: TableRef, chain: ChainSpec, rules: readonly RuleSpec[]): void {
  tx.add({ kind: 'chain', ...ref, ...chain });
  tx.flush({ kind: 'chain', ...ref, name: chain.name });
  for (const r of rules) {
    const spec = typeof r === 'string' ? { rule: r } : r;
    tx.add({ kind: 'rule', ...ref, chain: chain.name, ...spec });
  }
}

export interface RemovalOptions {
  /** Also delete chains and sets left without rules/elements and not referenced (never a base chain with policy drop). */
  prune?: boolean;
  /** Delete the whole table when no rule and no element is left in it. */
  dropEmptyTable?: boolean;
  /** Fresh listings to try after a conflict with a concurrent writer (default 3). */
  retries?: number;
}

export interface RemovalPlan {
  rules: Array<{ chain: string; handle: number; comment: string }>;
  elements: Array<{ set: string; key: string; comment: string }>;
  /** Chains and sets deleted because they were left empty (prune), or all of them when the table goes. */
  chains: string[];
  sets: string[];
  table: boolean;
}

/** Chains a verdict-map element's value jumps or goes to ("jump x"). */
function chainJumpsOf(value: string | undefined): string[] {
  return value === undefined ? [] : [...value.matchAll(/\b(?:jump|goto)\s+([A-Za-z_][A-Za-z0-9_-]*)/g)].map((m) => m[1]);
}

/**
 * Decide, from one listing, what removing every rule and element whose
 * comment `matches` means, including what is left empty. Pure: tests call it
 * directly; `queueRemoval` turns the plan into commands.
 */
export function planRemoval(listing: Listing, matches: (comment: string | undefined) => boolean, opts: RemovalOptions = {}): RemovalPlan {
  const plan: RemovalPlan = { rules: [], elements: [], chains: [], sets: [], table: false };
  const jumpedTo = new Set<string>();
  const usedSets = new Set<string>();
  let rulesLeft = 0;
  for (const c of listing.chains)
    for (const r of c.rules) {
      if (matches(r.comment)) plan.rules.push({ chain: c.name, handle: r.handle, comment: r.comment ?? '' });
      else {
        rulesLeft++;
        r.jumps.forEach((j) => jumpedTo.add(j));
        r.sets.forEach((s) => usedSets.add(s));
      }
    }
  const left = new Map<ListedSet, number>();
  for (const s of listing.sets) {
    if (s.name === GENERATION_SET) continue;
    let n = 0;
    for (const e of s.elements) {
      if (matches(e.comment)) plan.elements.push({ set: s.name, key: e.key, comment: e.comment ?? '' });
      else {
        n++;
        chainJumpsOf(e.value).forEach((j) => jumpedTo.add(j));
      }
    }
    left.set(s, n);
  }
  const elementsLeft = [...left.values()].reduce((a, b) => a + b, 0);
  const dropPolicy = listing.chains.some((c) => c.policy === 'drop');
  if (opts.dropEmptyTable && rulesLeft === 0 && elementsLeft === 0 && !dropPolicy) {
    plan.table = true;
    plan.chains = listing.chains.map((c) => c.name);
    plan.sets = listing.sets.map((s) => s.name);
    return plan;
  }
  if (opts.prune) {
    const removed = new Set(plan.rules.map((r) => `${r.chain}/${r.handle}`));
    for (const c of listing.chains) {
      const remaining = c.rules.filter((r) => !removed.has(`${c.name}/${r.handle}`)).length;
      if (remaining === 0 && !jumpedTo.has(c.name) && c.policy !== 'drop') plan.chains.push(c.name);
    }
    for (const s of listing.sets) if (left.get(s) === 0 && !usedSets.has(s.name)) plan.sets.push(s.name);
  }
  return plan;
}

/**
 * Queue a plan's deletions in an order the kernel accepts: the write stamp
 * the listing saw (fails the batch if anyone wrote since), then rules,
 * elements, sets (no rule uses them any more), chains (none jumps to them
 * any more); or the whole table.
 */
export function queueRemoval(tx: Transaction, listing: Listing, plan: RemovalPlan): void {
  const ref: TableRef = { family: listing.family, table: listing.table };
  const stamp = listing.sets.find((s) => s.name === GENERATION_SET);
  for (const e of stamp?.elements ?? []) tx.delete({ kind: 'element', ...ref, set: GENERATION_SET, key: e.key });
  if (stamp && !plan.table) tx.add({ kind: 'element', ...ref, set: GENERATION_SET, key: String(randomBytes(4).readUInt32BE(0)) });
  if (plan.table) {
    // `delete table` takes everything with it; the stamp above already
    // guarantees nobody wrote since the listing that found it empty.
    tx.delete({ kind: 'table', ...ref });
    return;
  }
  const goneSets = new Set(plan.sets);
  for (const r of plan.rules) tx.delete({ kind: 'rule', ...ref, chain: r.chain, handle: r.handle });
  for (const e of plan.elements) if (!goneSets.has(e.set)) tx.delete({ kind: 'element', ...ref, set: e.set, key: e.key });
  for (const name of plan.sets) {
    const kind = listing.sets.find((s) => s.name === name)?.kind ?? 'set';
    tx.delete({ kind, ...ref, name });
  }
  for (const name of plan.chains) tx.delete({ kind: 'chain', ...ref, name });
}

const isEmptyPlan = (p: RemovalPlan): boolean =>
  !p.table && p.rules.length + p.elements.length + p.chains.length + p.sets.length === 0;

/**
 * List `ref` once, plan with `decide`, run the plan as one transaction;
 * retry with a fresh listing when a concurrent writer made it conflict
 * (EBUSY, or ENOENT for something already gone). Returns undefined when the
 * table does not exist (nothing to do: DEL is idempotent).
 */
export function removeWhere(nft: Nft, ref: TableRef, decide: (listing: Listing) => RemovalPlan, retries = 3): RemovalPlan | undefined {
  for (let attempt = 0; ; attempt++) {
    const listing = nft.list(ref.family, ref.table);
    if (!listing) return undefined;
    const plan = decide(listing);
    if (isEmptyPlan(plan)) return plan;
    const tx = new Transaction();
    queueRemoval(tx, listing, plan);
    try {
      nft.run(tx);
      return plan;
    } catch (err) {
      const conflict = err instanceof NftError && (err.kind === 'busy' || err.kind === 'not-found');
      if (!conflict || attempt >= retries) throw err;
    }
  }
}

/** Delete every rule and element tagged `tag` (see tagMatches), and what that leaves empty if asked. */
export function removeTagged(nft: Nft, ref: TableRef, tag: string, opts: RemovalOptions = {}): RemovalPlan | undefined {
  return removeWhere(nft, ref, (l) => planRemoval(l, (c) => tagMatches(c, tag), opts), opts.retries);
}

export interface ReleaseResult extends RemovalPlan {
  /** True when no other owner of the network remained, so the network's own rules went too. */
  lastOfNetwork: boolean;
}

/**
 * DEL for one attachment: remove the owner's rules and elements; if no other
 * owner of the same network is left in the table, also the network-wide
 * ones (tagged exactly networkTag, or networkTag plus a note). Returns
 * undefined when the table does not exist.
 */
export function releaseOwner(nft: Nft, ref: TableRef, owner: Owner, opts: RemovalOptions = {}): ReleaseResult | undefined {
  const mine = ownerTag(owner);
  const net = networkTag(owner.network);
  const isOwner = (c: string | undefined): boolean => c !== undefined && c.startsWith(`${net}:`);
  let last = false;
  const plan = removeWhere(
    nft,
    ref,
    (listing) => {
      const comments = [
        ...listing.chains.flatMap((c) => c.rules.map((r) => r.comment)),
        ...listing.sets.flatMap((s) => s.elements.map((e) => e.comment)),
      ];
      last = !comments.some((c) => isOwner(c) && !tagMatches(c, mine));
      const matches = (c: string | undefined): boolean => tagMatches(c, mine) || (last && tagMatches(c, net) && !isOwner(c));
      return planRemoval(listing, matches, opts);
    },
    opts.retries,
  );
  return plan && { ...plan, lastOfNetwork: last };
}
