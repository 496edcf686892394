/**
 * One object per nftables table this project owns, bound at construction
 * to its family and name, as knftables binds its interface to one table.
 * Everything a plugin does to its table goes through it:
 *
 *   tx()            a Transaction bound to the table: objects carry no
 *                   family/table, the binding fills them in (and overrides
 *                   any a caller passes), so one table's code cannot write
 *                   into another's
 *   run(tx)         one atomic `nft -f -`
 *   runElements(b)  an ElementTx: set/map elements added and deleted as one
 *                   atomic nfnetlink batch, with no nft process and no
 *                   ruleset listing (realNft.elements), for the per-owner
 *                   state that changes on every ADD and DEL
 *   list()          the table as a Listing: over netlink on a real host
 *                   (microseconds, no process) or through the Nft (`nft -j`,
 *                   or the fake); both give chains with their rules'
 *                   comments, sets and maps with their elements
 *   ensureSkeleton  queue the table's shared objects unless its marker says
 *                   they are current (see "Markers")
 *   releaseOwner    DEL by owner tag, reading the table once
 *   withLock        the table's own lock (flock on a file per table)
 *   records         what the table was built from, on disk (records.ts), so
 *                   `cni-ts firewall-reload` rebuilds it after a flush;
 *                   absent on fakes unless a test gives one
 *   append(tx)      (TableTx) queue another transaction of the same table,
 *                   so a reload rebuilds many owners in one batch
 *
 * Markers: the one convention for "is this already installed?". A marker is
 * an empty chain whose comment names what was written (a version, or a
 * digest of a configuration). It is re-created last in the transaction that
 * writes what it describes, so it never describes rules that are not
 * there; reading it is one netlink request (shared/netlink/nftables.ts
 * nftGetChain), so an ADD whose skeleton is current starts no nft process
 * for it and queues only its own rules. A new version has a new comment, so
 * the next ADD rewrites the skeleton in place and keeps everyone's rules.
 *
 * Tags: everything an attachment puts in is commented with its owner tag
 * ("cni-ts:<network>:<containerID>[:<ifname>]"); network-wide rules carry
 * the network tag ("cni-ts:<network>").
 */
import { createHash } from 'node:crypto';
import { withFileLock } from '../sys/flock';
import { NftError } from './errors';
import type { Nft } from './nft-interface';
import type { FirewallRecords } from './records';
import { Transaction, type Chain, type ChainRef, type Element, type NftObject, type Rule, type RuleRef, type SetRef, type Table } from './transaction';
import type { ElementOp, Family, Listing, SetLayout, TableRef } from './types';

/** Every table this project creates starts with this. */
export const TABLE_PREFIX = 'cni_ts_';
/** Every comment this project writes starts with this. */
export const TAG_PREFIX = 'cni-ts';

/** The project table `cni_ts_<suffix>` in `family`. */
export function projectTable(family: Family, suffix: string): TableRef {
  return { family, table: `${TABLE_PREFIX}${suffix}` };
}

// ---- tags ---------------------------------------------------------------------

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

// ---- a transaction bound to one table --------------------------------------------

/** An object of a bound transaction: the table comes from the binding. */
export type Local<T> = T extends unknown ? Omit<T, 'family' | 'table'> : never;

export type ChainSpec = Local<Omit<Chain, 'kind'>>;
export type RuleSpec = string | { rule: string; comment?: string };

/** A Transaction whose every object is in one table (see the header). */
export class TableTx extends Transaction {
  constructor(readonly ref: TableRef) {
    super();
  }

  private bind<T>(obj: T): T & TableRef {
    return { ...obj, family: this.ref.family, table: this.ref.table };
  }

  override add(obj: Local<NftObject>): this {
    return super.add(this.bind(obj) as NftObject);
  }
  override create(obj: Local<Table | Chain | Element> | Local<NftObject & { kind: 'set' | 'map' }>): this {
    return super.create(this.bind(obj) as Parameters<Transaction['create']>[0]);
  }
  override insert(rule: Local<Rule>): this {
    return super.insert(this.bind(rule) as Rule);
  }
  override replace(rule: Local<Rule>): this {
    return super.replace(this.bind(rule) as Rule);
  }
  override delete(obj: Local<Table | ChainRef | SetRef | RuleRef | Element>): this {
    return super.delete(this.bind(obj) as Parameters<Transaction['delete']>[0]);
  }
  override flush(obj: Local<Table | ChainRef | SetRef>): this {
    return super.flush(this.bind(obj) as Parameters<Transaction['flush']>[0]);
  }
  override destroy(obj: Local<Table | ChainRef>): this {
    return super.destroy(this.bind(obj) as Parameters<Transaction['destroy']>[0]);
  }

  /** Queue every command of `other` (a transaction of this same table) after ours. */
  append(other: TableTx): this {
    if (other.ref.family !== this.ref.family || other.ref.table !== this.ref.table) {
      throw new NftError('invalid', `cannot append a transaction of ${other.ref.family} ${other.ref.table} to one of ${this.ref.family} ${this.ref.table}`, '', -1);
    }
    for (const c of other.commands) {
      const obj = c.obj as never;
      if (c.verb === 'add') Transaction.prototype.add.call(this, obj);
      else if (c.verb === 'create') Transaction.prototype.create.call(this, obj);
      else if (c.verb === 'insert') Transaction.prototype.insert.call(this, obj);
      else if (c.verb === 'replace') Transaction.prototype.replace.call(this, obj);
      else if (c.verb === 'delete') Transaction.prototype.delete.call(this, obj);
      else Transaction.prototype.flush.call(this, obj);
    }
    if (other.error) throw other.error;
    return this;
  }

  /** Reconcile by flush: `add chain`, `flush chain`, then every rule, so the chain holds exactly `rules`. */
  syncChain(chain: ChainSpec, rules: readonly RuleSpec[]): this {
    this.add({ kind: 'chain', ...chain });
    this.flush({ kind: 'chain', name: chain.name });
    for (const r of rules) this.add({ kind: 'rule', chain: chain.name, ...(typeof r === 'string' ? { rule: r } : r) });
    return this;
  }

  /**
   * (Re)write a marker (see the header): a chain's comment cannot be
   * changed in place, so add (in case it is missing), delete, add with the
   * comment. Queue it last, after what it describes.
   */
  marker(m: Marker): this {
    this.add({ kind: 'chain', name: m.chain });
    this.delete({ kind: 'chain', name: m.chain });
    return this.add({ kind: 'chain', name: m.chain, comment: m.comment });
  }
}

// ---- an element batch bound to one table -------------------------------------------

/** One element of a bound batch: the set names a layout the batch knows. */
export interface ElementSpec {
  set: string;
  key: readonly string[];
  value?: readonly string[];
  comment?: string;
}

/**
 * Element adds and deletes of one table, applied by OwnedTable.runElements
 * as one atomic batch. `layouts` are the table's sets, as its skeleton
 * defines them: the real implementation lays keys out by them.
 */
export class ElementTx {
  readonly ops: ElementOp[] = [];

  constructor(
    readonly ref: TableRef,
    readonly layouts: Readonly<Record<string, SetLayout>>,
  ) {}

  get size(): number {
    return this.ops.length;
  }

  private push(op: ElementOp): this {
    if (!this.layouts[op.set]) throw new NftError('invalid', `set ${op.set} is not one of ${this.ref.family} ${this.ref.table}'s`, '', -1);
    this.ops.push(op);
    return this;
  }

  /** `add element`: a no-op when the key holds this value already, 'exists' when it holds another. */
  add(e: ElementSpec): this {
    return this.push({ verb: 'add', ...e });
  }

  /** `delete element`: 'not-found' when the key is absent. */
  delete(e: Pick<ElementSpec, 'set' | 'key'>): this {
    return this.push({ verb: 'delete', set: e.set, key: e.key });
  }

  /**
   * Delete an element only if it holds `e.value` (or is absent): add, then
   * delete. The add is a no-op on our own element and fails ('exists') on
   * another value, so a release never removes someone else's key.
   */
  release(e: ElementSpec): this {
    return this.add(e).delete(e);
  }
}

// ---- the owned table ------------------------------------------------------------

/** An empty chain whose comment says what was written (see the header). */
export interface Marker {
  chain: string;
  comment: string;
}

/** A table's shared objects (table, maps, base chains and their fixed rules), written whole when its marker is not current. */
export interface Skeleton {
  marker: Marker;
  queue(tx: TableTx): void;
}

export interface OwnedTableDeps {
  nft: Nft;
  /** How list() reads the table; default nft.list (`nft -j`, or the fake's model). */
  list?: (ref: TableRef) => Listing | undefined;
  /** A chain's comment read without nft; undefined when the chain is absent. Absent: markers are never trusted, so skeletons are always written. */
  chain?: (ref: TableRef, name: string) => { comment?: string } | undefined;
  /** Runs fn holding the table's lock; default withFileLock on lockFile. */
  lock?: <T>(fn: () => T) => T;
  /** Default /run/cni-ts/<table>.lock (root-only directory). */
  lockFile?: string;
  /** Where the table's owners record what it was built from (records.ts); absent: nothing is recorded. */
  records?: FirewallRecords;
}

export interface ReleaseOptions {
  /** The owner's chains (or how to find them in the listing): deleted with their rules, and every map element that jumps to them. */
  chains?: readonly string[] | ((listing: Listing) => readonly string[]);
  /** Fresh listings to try after a conflict with a concurrent writer (default 3). */
  retries?: number;
}

export interface ReleaseResult {
  rules: number;
  elements: number;
  chains: string[];
}

export class OwnedTable implements TableRef {
  readonly family: Family;
  readonly table: string;

  constructor(
    ref: TableRef,
    private readonly deps: OwnedTableDeps,
  ) {
    this.family = ref.family;
    this.table = ref.table;
  }

  get ref(): TableRef {
    return { family: this.family, table: this.table };
  }

  get nft(): Nft {
    return this.deps.nft;
  }

  /** What the table was built from (records.ts), when this table keeps records. */
  get records(): FirewallRecords | undefined {
    return this.deps.records;
  }

  /** A new transaction bound to this table. */
  tx(): TableTx {
    return new TableTx(this.ref);
  }

  /** One atomic `nft -f -` (nothing when tx is empty). */
  run(tx: Transaction): void {
    this.deps.nft.run(tx);
  }

  /** A new element batch of this table's sets. */
  elementTx(layouts: Readonly<Record<string, SetLayout>>): ElementTx {
    return new ElementTx(this.ref, layouts);
  }

  /**
   * Apply an element batch atomically (nothing when empty): over netlink
   * where the Nft can (realNft, FakeNft), else as `add/delete element`
   * lines of one `nft -f -`.
   */
  runElements(b: ElementTx): void {
    if (b.size === 0) return;
    if (b.ref.family !== this.family || b.ref.table !== this.table) {
      throw new NftError('invalid', `an element batch of ${b.ref.family} ${b.ref.table} cannot run on ${this.family} ${this.table}`, '', -1);
    }
    if (this.deps.nft.elements) return this.deps.nft.elements(this.family, this.table, b.layouts, b.ops);
    const tx = this.tx();
    for (const op of b.ops) {
      if (op.verb === 'add') tx.add({ kind: 'element', set: op.set, key: op.key, ...(op.value && { value: op.value }), ...(op.comment !== undefined && { comment: op.comment }) });
      else tx.delete({ kind: 'element', set: op.set, key: op.key });
    }
    this.run(tx);
  }

  /** The table as it is now; undefined when it does not exist. */
  list(): Listing | undefined {
    return this.deps.list ? this.deps.list(this.ref) : this.deps.nft.list(this.family, this.table);
  }

  /** Whether the kernel's marker chain carries exactly this comment (false when it cannot be read without nft). */
  isCurrent(m: Marker): boolean {
    return this.deps.chain?.(this.ref, m.chain)?.comment === m.comment;
  }

  /**
   * Queue the skeleton and its marker into tx unless the marker says the
   * skeleton is current. Returns whether it queued.
   */
  ensureSkeleton(tx: TableTx, skeleton: Skeleton): boolean {
    if (this.isCurrent(skeleton.marker)) return false;
    skeleton.queue(tx);
    tx.marker(skeleton.marker);
    return true;
  }

  /** Runs fn (synchronous) holding this table's lock. */
  withLock<T>(fn: () => T): T {
    if (this.deps.lock) return this.deps.lock(fn);
    return withFileLock(this.deps.lockFile ?? `/run/cni-ts/${this.table}.lock`, fn);
  }

  /**
   * DEL of one owner, reading the table once: its rules and elements
   * tagged `tag` (tagMatches), its chains (opts.chains) with every element
   * that jumps to them, in one transaction. A concurrent writer that makes
   * the batch conflict (EBUSY, ENOENT, EEXIST) means a fresh listing and
   * another try. Undefined when the table does not exist (DEL is idempotent).
   */
  releaseOwner(tag: string | undefined, opts: ReleaseOptions = {}): ReleaseResult | undefined {
    const retries = opts.retries ?? 3;
    for (let attempt = 0; ; attempt++) {
      const listing = this.list();
      if (!listing) return undefined;
      const chains = typeof opts.chains === 'function' ? opts.chains(listing) : (opts.chains ?? []);
      const { tx, result } = this.releaseTx(listing, tag, chains);
      if (tx.size === 0) return result;
      try {
        this.run(tx);
        return result;
      } catch (err) {
        const conflict = err instanceof NftError && (err.kind === 'busy' || err.kind === 'not-found' || err.kind === 'exists');
        if (!conflict || attempt >= retries) throw err;
      }
    }
  }

  private releaseTx(listing: Listing, tag: string | undefined, chains: readonly string[]): { tx: TableTx; result: ReleaseResult } {
    const tx = this.tx();
    const result: ReleaseResult = { rules: 0, elements: 0, chains: [] };
    const mine = new Set(chains);
    const jumpsHere = (value: string | undefined): boolean => {
      const target = value === undefined ? undefined : /^(?:jump|goto) (\S+)$/.exec(value)?.[1];
      return target !== undefined && mine.has(target);
    };
    const tagged = (comment: string | undefined): boolean => tag !== undefined && tagMatches(comment, tag);
    for (const s of listing.sets)
      for (const e of s.elements)
        if (tagged(e.comment) || jumpsHere(e.value)) {
          tx.delete({ kind: 'element', set: s.name, key: e.key });
          result.elements++;
        }
    for (const c of listing.chains) {
      if (mine.has(c.name)) {
        tx.flush({ kind: 'chain', name: c.name });
        tx.delete({ kind: 'chain', name: c.name });
        result.chains.push(c.name);
        result.rules += c.rules.length;
        continue;
      }
      for (const r of c.rules)
        if (tagged(r.comment)) {
          tx.delete({ kind: 'rule', chain: c.name, handle: r.handle });
          result.rules++;
        }
    }
    return { tx, result };
  }
}
