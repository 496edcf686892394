/**
 * The etcd store: cluster-wide allocations without a cluster-wide lock.
 *
 * Each range set is cut into aligned blocks (/26 for IPv4, /122 for IPv6 by
 * default). A host claims a block with one transaction on
 * version(claim) == 0, Flannel's subnet-lease rule, so two hosts can never
 * win the same block; a lost race just means trying another. A host then
 * allocates inside its own blocks, where nobody else writes in the normal
 * case, claims another block when they are full, and only when no block is
 * left takes a single address from another host's block (a "borrow",
 * counted and logged on stderr).
 *
 * The keys are laid out in ./keys.ts.
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
 * a compare on what it saw, leaves it alone. GC also frees a leak only when
 * it has seen the same allocation (same sequence number) twice, at least a
 * grace period apart: the runtime's valid-attachments list may be older
 * than an ADD that is still in flight.
 *
 * Host identity: a node name is registered (P/hosts/<node>, compare-and-
 * swap) to one host ID, this host's random ID from shared/host-id.ts (not
 * /etc/machine-id, which cloned images share); another host claiming the
 * name is refused with 7 (checkHost).
 *
 * Liveness: every operation reads the host's liveness key P/alive/<node>,
 * which is attached to an etcd lease, creates it when it is missing, and
 * puts it on a new lease once half the TTL has passed by this host's clock.
 * What keeps it through hours without a CNI call is the liveness keeper of
 * the daemon or the overlay agent (./liveness.ts), fed by the record each
 * store writes of its connection (recordForKeeper). The key only ever
 * informs: the maintenance command (./maint.ts) reports a host without it
 * as suspect and frees nothing until an operator decommissions the host.
 * Renewing also deletes older versions' maintenance sightings (P/gone/).
 *
 * Every record read back is checked with the zod schema it was written
 * with (./keys.ts readRecord): a malformed one is skipped and logged, never
 * trusted and never thrown out of an allocation or a GC.
 *
 * Networks sharing a key prefix must not share addresses: blocks are keyed
 * per network, so two networks with overlapping ranges would hand out the
 * same address twice without either noticing. Each network registers its
 * ranges under P/ranges/<network>, in the same transaction as its first
 * block claim and guarded by the registry's head key, and a network whose
 * ranges overlap a registered one is refused with 7 before anything is
 * written.
 *
 * Cost of an ADD once the host holds a block with room: one read transaction
 * (host registration, liveness, the network registry, the owner's keys, the
 * host's blocks) and one allocation transaction.
 *
 * lock()/unlock() take no lock anywhere: the transactions are the exclusion.
 * lock() starts the operation's time budget (requestTimeoutMs): every etcd
 * call and every conflict retry of the operation fits in it, and past it the
 * operation fails with 11 (try again later).
 */
import { CniError, ErrorCode } from '../../shared/cni/errors';
import type { Allocation, AllocationStore, Owner } from '../allocator';
import { allocatable, describeRangeSet, rangeContains, type IpamConfig, type IpamRange, type RangeSet } from '../config';
import { noFreeAddress } from '../errors';
import { formatIP, mask, parseIP, type Family, type IP } from '../../shared/ip';
import { loadEtcdConfig, previousMachineId, type EtcdStoreConfig } from './config';
import {
  addressValueSchema,
  aliveKey,
  aliveValueSchema,
  batches,
  blockDataSchema,
  FREE_BATCH,
  freeTxn,
  claimValueSchema,
  goneKey,
  hostKey,
  hostValueSchema,
  leakValueSchema,
  networkKey,
  ownerPrefixKey,
  rangesHeadKey,
  rangesKey,
  rangesValueSchema,
  readRecord,
  TXN_BATCH_OPS,
  type AddressValue,
  type AliveValue,
  type BlockData,
  type BlockRef,
  type HeldAddress,
  type LeakValue,
  type RangesValue,
  type RegisteredRange,
} from './keys';
import { EtcdKV, tryAgainLater, type Compare, type KeyValue, type KV, type Op } from './kv';
import { DEFAULT_LIVENESS_DIR, recordStore } from './liveness';

export interface EtcdStoreOptions {
  /** the etcd client; default: etcd3 over the configured endpoints */
  kv?: KV;
  /** epoch milliseconds for GC's grace period (request deadlines always use the real clock) */
  clock?: () => number;
  /** one line per event worth an operator's eye (borrows); default stderr */
  log?: (line: string) => void;
  /** [0, 1); spreads block choices and retry delays */
  random?: () => number;
  /** this host's ID file (shared/host-id.ts); default /var/lib/cni-ts/host-id. Ignored when the config sets hostId. */
  hostIdFile?: string;
  /**
   * where the store records its connection for the liveness keeper
   * (./liveness.ts); default /var/lib/cni-ts/ipam-etcd; null: not recorded
   */
  livenessDir?: string | null;
}

interface BlockState {
  readonly id: string;
  readonly key: string;
  readonly network: bigint;
  readonly prefix: number;
  readonly family: Family;
  rev: bigint;
  data: BlockData;
}

/** Where lastReserved pointed the allocator, and why. */
interface Target {
  readonly ip: IP;
  readonly kind: 'mine' | 'claim' | 'borrow';
}

interface Session {
  readonly deadline: number;
  /** the host's blocks, read once per operation */
  mine?: Map<string, BlockState>;
  /** every block's claimant; read only when the host's own blocks do not suffice */
  claims?: Map<string, string>;
  readonly targets: Map<string, Target>;
  /** lastResort() has re-read this host's blocks once in this operation */
  mineRefreshed?: boolean;
}

/** How many of the first unclaimed blocks a claim picks from at random. Wide,
 *  because lost races are what hosts starting together pay for: with 200
 *  hosts claiming at once, picking among 8 cost each several rounds of lost
 *  claims and re-reads (bench/etcd-ipam.ts). The price is a less compact
 *  layout of blocks in the subnet, which nothing depends on. */
const CLAIM_SPREAD = 1024;
const BACKOFF_FIRST_MS = 5;
const BACKOFF_MAX_MS = 250;

export interface EtcdStoreStats {
  claimed: number;
  borrowed: number;
  conflicts: number;
}

export class EtcdStore implements AllocationStore {
  readonly stats: EtcdStoreStats = { claimed: 0, borrowed: 0, conflicts: 0 };
  private session?: Session;
  private hostChecked = false;
  /** the registry writes the next block claim carries: set while this network's entry is missing or stale */
  private registration?: { readonly compare: Compare[]; readonly ops: Op[] };
  private closed = false;
  private readonly clock: () => number;
  private readonly log: (line: string) => void;
  private readonly random: () => number;
  private readonly net: string;
  private readonly livenessDir: string | null;
  private recorded = false;

  private constructor(
    readonly conf: EtcdStoreConfig,
    private readonly network: string,
    readonly rangeSets: readonly RangeSet[],
    private readonly kv: KV,
    options: EtcdStoreOptions,
  ) {
    this.clock = options.clock ?? Date.now;
    this.log = options.log ?? ((line) => process.stderr.write(`${line}\n`));
    this.random = options.random ?? Math.random;
    this.net = networkKey(conf.keyPrefix, network);
    this.livenessDir = options.livenessDir === undefined ? DEFAULT_LIVENESS_DIR : options.livenessDir;
  }

  /**
   * Validates ipam.etcd against the ranges (error 7, before any connection)
   * and returns the store; the connection is made on first use.
   */
  static open(ipam: IpamConfig, options: EtcdStoreOptions = {}): EtcdStore {
    const conf = loadEtcdConfig(ipam.etcd, ipam.rangeSets, { hostIdFile: options.hostIdFile });
    return new EtcdStore(conf, ipam.name, ipam.rangeSets, options.kv ?? new EtcdKV(conf), options);
  }

  get nodeName(): string {
    return this.conf.nodeName;
  }

  async lock(): Promise<void> {
    if (this.closed) throw new CniError(ErrorCode.Internal, 'etcd IPAM store used after close');
    this.session = { deadline: Date.now() + this.conf.requestTimeoutMs, targets: new Map() };
  }

  async unlock(): Promise<void> {
    this.session = undefined;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.session = undefined;
    this.kv.close();
  }

  async getByOwner(containerId: string, ifname: string): Promise<IP[]> {
    const owned = await this.load(ownerPrefixKey(this.net, containerId, ifname));
    return owned.map((kv) => parseIP(kv.key.slice(kv.key.lastIndexOf('/') + 1))).filter((ip): ip is IP => ip !== undefined);
  }

  /**
   * Chooses the next address for the set and returns the address the
   * allocator's round-robin walk should treat as "last", so that its first
   * candidate is exactly that choice: a free address in one of this host's
   * blocks, else the first address of an unclaimed block (claimed in
   * reserve), else a free address in another host's block.
   */
  async lastReserved(rangeSetId: string): Promise<IP | undefined> {
    const s = await this.ensureLoaded();
    const index = Number(rangeSetId);
    const set = this.rangeSets[index]!;
    const target = this.pickInMine(set) ?? (await this.pickUnclaimed(set)) ?? (await this.pickBorrow(set));
    // Nothing anywhere: say so now rather than let the allocator walk every
    // address of the set (2^64 of them in an IPv6 /64).
    if (!target) throw noFreeAddress(index, describeRangeSet(set));
    s.targets.set(rangeSetId, target);
    return predecessor(set, target.ip);
  }

  async reserve(containerId: string, ifname: string, ip: IP, rangeSetId: string): Promise<boolean> {
    const s = await this.ensureLoaded();
    const set = this.rangeSets[Number(rangeSetId)]!;
    const target = s.targets.get(rangeSetId);
    // The allocator asks for a specific address without lastReserved only
    // for a static request: that may come from any block.
    const mayBorrow = async (): Promise<boolean> => target === undefined || target.kind === 'borrow' || this.lastResort(set);
    const { id, network, prefix } = this.blockOf(ip);
    for (let attempt = 0; ; attempt++) {
      const mine = s.mine!.get(id);
      if (mine) {
        const r = await this.tryAllocate(mine, set, ip, { containerId, ifname }, false);
        if (r !== 'conflict') return r === 'ok';
      } else {
        const claimant = (await this.loadClaims()).get(id);
        if (claimant === undefined) {
          // Room in a block of ours (claimed by lastResort during this
          // walk): the walk gets there; a second block would be waste.
          if (target !== undefined && target.ip.value !== ip.value && this.pickInMine(set) !== undefined) return false;
          // Unclaimed: ours now if we win it.
          await this.claim(id, network, prefix, ip.family);
          continue;
        }
        // A malformed claim (readRecord logged it): its block is nobody's to use.
        if (claimant === '') return false;
        if (claimant === this.conf.nodeName) {
          // Claimed by us in a call that did not read it (another process of this host).
          await this.reloadMine();
          if (!s.mine!.has(id)) return false;
          continue;
        }
        if (!(await mayBorrow())) return false;
        const foreign = await this.readBlock(this.blockKey(claimant, id));
        // Its state is malformed (logged): which addresses it holds is unknown, so none is taken from it.
        if (foreign === null) return false;
        if (!foreign) {
          s.claims!.delete(id);
          continue;
        }
        const r = await this.tryAllocate(foreign, set, ip, { containerId, ifname }, true);
        if (r === 'ok') {
          this.stats.borrowed++;
          this.log(
            `cluster-ipam: node ${this.conf.nodeName} borrowed ${formatIP(ip)} for ${containerId}/${ifname} from block ${foreign.data.cidr} of node ${claimant} (network ${this.network}; borrows by this process: ${this.stats.borrowed})`,
          );
        }
        if (r !== 'conflict') return r === 'ok';
      }
      await this.backoff(attempt);
    }
  }

  /**
   * Whether the allocator's walk, standing on a free address of another
   * host's block, may borrow it: only when this host's blocks are full and
   * no block is left to claim. The walk visits each address once, so an
   * address passed over is not seen again in this ADD: when a block is
   * still unclaimed it is claimed here and now (the walk reaches it later,
   * wrapping around if need be), rather than hoping it is still free when
   * the walk gets there. This is what keeps an ADD from failing with free
   * addresses left when the target it aimed at was taken by a racing host.
   */
  private async lastResort(set: RangeSet): Promise<boolean> {
    if (this.pickInMine(set) !== undefined) {
      // Our view of our blocks dates from the start of the ADD, and racing
      // hosts borrow from them: look again (once) before passing this address by.
      if (this.session!.mineRefreshed) return false;
      this.session!.mineRefreshed = true;
      await this.reloadMine();
      if (this.pickInMine(set) !== undefined) return false;
    }
    for (;;) {
      const unclaimed = await this.pickUnclaimed(set);
      if (!unclaimed) return true;
      const { id, network, prefix } = this.blockOf(unclaimed.ip);
      if (await this.claim(id, network, prefix, unclaimed.ip.family)) return false;
    }
  }

  async releaseByOwner(containerId: string, ifname: string): Promise<IP[]> {
    const deadline = this.deadline();
    const { results } = await this.kv.txn(
      { success: [{ get: ownerPrefixKey(this.net, containerId, ifname), prefix: true }, { get: this.aliveKey }] },
      deadline,
    );
    await this.renewLiveness(results[1]![0]);
    const released: IP[] = [];
    for (const ownerKv of results[0]!) {
      const ip = parseIP(ownerKv.key.slice(ownerKv.key.lastIndexOf('/') + 1));
      if (!ip) continue;
      if (await this.free(ip, { containerId, ifname })) released.push(ip);
    }
    return released;
  }

  async listAll(): Promise<Allocation[]> {
    const { results } = await this.kv.txn({ success: [{ get: `${this.net}/ips/`, prefix: true }, { get: this.aliveKey }] }, this.deadline());
    // STATUS comes here: the call runtimes make most regularly keeps the host alive.
    await this.renewLiveness(results[1]![0]);
    return results[0]!.flatMap((kv) => {
      const ip = parseIP(kv.key.slice(kv.key.lastIndexOf('/') + 1));
      const v = ip && readRecord(addressValueSchema, kv, this.log);
      return ip && v ? [{ ip, containerId: v.containerId, ifname: v.ifname }] : [];
    });
  }

  /**
   * Frees this host's allocations (its own and its borrows) whose attachment
   * is not kept, once each has been seen unkept twice at least
   * gcGracePeriodMs apart with the same sequence number. Returns what was
   * freed in this call.
   */
  async gc(keep: readonly Owner[]): Promise<Allocation[]> {
    const node = this.conf.nodeName;
    const keepKeys = new Set(keep.map((o) => `${o.containerId.trim()}\n${o.ifname}`));
    const leakPrefix = `${this.net}/leaks/${node}/`;
    const { results } = await this.kv.txn(
      { success: [{ get: `${this.net}/ips/`, prefix: true }, { get: leakPrefix, prefix: true }, { get: this.aliveKey }] },
      this.deadline(),
    );
    await this.renewLiveness(results[2]![0]);
    const leaks = new Map(results[1]!.map((kv) => [kv.key.slice(leakPrefix.length), readRecord(leakValueSchema, kv, this.log)]));
    const now = this.clock();
    const freed: Allocation[] = [];
    const due: HeldAddress[] = [];
    const notes: Op[] = [];
    const seen = new Set<string>();
    for (const kv of results[0]!) {
      const ipText = kv.key.slice(kv.key.lastIndexOf('/') + 1);
      const v = parseIP(ipText) && readRecord(addressValueSchema, kv, this.log);
      if (!v || v.node !== node || keepKeys.has(`${v.containerId}\n${v.ifname}`)) continue;
      seen.add(ipText);
      const leak = leaks.get(ipText);
      const same = leak !== undefined && leak.seq === v.seq && leak.createRevision === kv.createRevision.toString();
      if (same && now - leak.firstSeen >= this.conf.gcGracePeriodMs) {
        due.push({ kv, v, ip: ipText });
      } else if (!same) {
        const note: LeakValue = { containerId: v.containerId, ifname: v.ifname, seq: v.seq, createRevision: kv.createRevision.toString(), firstSeen: now };
        notes.push({ put: leakPrefix + ipText, value: JSON.stringify(note) });
      }
    }
    for (const a of await this.freeSeen(due)) freed.push({ ip: parseIP(a.ip)!, containerId: a.v.containerId, ifname: a.v.ifname });
    // Sightings of allocations that are gone, kept again or replaced are void.
    for (const ipText of leaks.keys()) if (!seen.has(ipText)) notes.push({ delete: leakPrefix + ipText });
    // In slices: etcd refuses a transaction past 128 operations, and one GC
    // after a drain with hundreds of failed DELs writes a sighting each.
    for (const batch of batches(notes, TXN_BATCH_OPS)) await this.kv.txn({ success: batch }, this.deadline());
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
  private async freeSeen(due: readonly HeldAddress[]): Promise<HeldAddress[]> {
    const freed: HeldAddress[] = [];
    const byBlock = new Map<string, HeldAddress[]>();
    for (const a of due) {
      if (!byBlock.has(a.v.blockKey)) byBlock.set(a.v.blockKey, []);
      byBlock.get(a.v.blockKey)!.push(a);
    }
    const refOf = async (key: string): Promise<BlockRef> => {
      const { results } = await this.kv.txn({ success: [{ get: key }] }, this.deadline());
      const kv = results[0]![0];
      return kv ? { key, rev: kv.modRevision, data: this.blockState(kv)?.data ?? null } : { key, data: undefined };
    };
    for (const [blockKey, list] of byBlock) {
      let ref = await refOf(blockKey);
      for (const batch of batches(list, FREE_BATCH)) {
        const { compare, ops, data } = freeTxn(this.net, this.conf.nodeName, batch, ref);
        const r = await this.kv.txn({ compare, success: ops }, this.deadline());
        if (r.succeeded) {
          freed.push(...batch);
          if (data) {
            ref = { key: blockKey, rev: r.revision, data };
            const mine = this.session?.mine?.get(batch[0]!.v.block);
            if (mine && mine.key === blockKey) {
              mine.rev = r.revision;
              mine.data = data;
            }
          }
          continue;
        }
        this.stats.conflicts++;
        for (const a of batch) {
          if (await this.free(parseIP(a.ip)!, { containerId: a.v.containerId, ifname: a.v.ifname }, a.kv.modRevision)) freed.push(a);
        }
        ref = await refOf(blockKey);
      }
    }
    return freed;
  }

  // --- internals ---------------------------------------------------------

  private deadline(): number {
    return this.session?.deadline ?? Date.now() + this.conf.requestTimeoutMs;
  }

  private ensureSession(): Session {
    if (this.closed) throw new CniError(ErrorCode.Internal, 'etcd IPAM store used after close');
    // Called outside lock(): an operation of its own, with its own budget.
    this.session ??= { deadline: Date.now() + this.conf.requestTimeoutMs, targets: new Map() };
    return this.session;
  }

  private async ensureLoaded(): Promise<Session> {
    const s = this.ensureSession();
    if (!s.mine) await this.load();
    return s;
  }

  /**
   * The operation's one read: this node's registration, its blocks, and
   * (given an owner prefix) the owner's index keys, which it returns.
   * Registers the node on first sight and refuses a node name that another
   * machine holds.
   */
  private async load(ownerPrefix?: string): Promise<KeyValue[]> {
    const s = this.ensureSession();
    const registered = hostKey(this.conf.keyPrefix, this.conf.nodeName);
    const ops: Op[] = [
      { get: registered },
      { get: this.blockKey(this.conf.nodeName, ''), prefix: true },
      { get: this.aliveKey },
      { get: `${this.conf.keyPrefix}/ranges/`, prefix: true },
      { get: rangesHeadKey(this.conf.keyPrefix) },
    ];
    if (ownerPrefix) ops.push({ get: ownerPrefix, prefix: true });
    const { results } = await this.kv.txn({ success: ops }, s.deadline);
    // Refuse an overlapping network before writing anything at all.
    this.checkRanges(results[3]!, results[4]![0]);
    // A registration the maintenance command removed (the host looked gone) is made again.
    if (!this.hostChecked || !results[0]![0]) await this.checkHost(registered, results[0]![0]);
    this.recordForKeeper();
    await this.renewLiveness(results[2]![0]);
    s.mine = this.blocksFrom(results[1]!);
    if (this.registration && s.mine.size > 0) {
      // The network's ranges changed while it holds blocks: no claim is
      // coming to carry the new entry, so it is written now.
      const r = await this.kv.txn({ compare: this.registration.compare, success: this.registration.ops }, s.deadline);
      if (!r.succeeded) throw tryAgainLater(`etcd IPAM: the network registry changed while registering network ${this.network}`, 'another network registered at the same time; try again');
      this.registration = undefined;
    }
    return ownerPrefix ? [...results[5]!] : [];
  }

  private get aliveKey(): string {
    return aliveKey(this.conf.keyPrefix, this.conf.nodeName);
  }

  /** This network's ranges as the registry records them, in a canonical order. */
  private registeredRanges(): RegisteredRange[] {
    return this.rangeSets
      .flat()
      .map((r) => ({ subnet: `${formatIP(r.subnet.network)}/${r.subnet.prefix}`, start: formatIP(r.rangeStart), end: formatIP(r.rangeEnd) }))
      .sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
  }

  /**
   * Refuses (7) ranges that overlap another network's under the same prefix,
   * and prepares this network's registry entry when it is missing or stale.
   * Ranges, not subnets, are compared: two macvlan networks may share an
   * underlay subnet with disjoint rangeStart..rangeEnd, which is exactly how
   * an underlay is split between them.
   */
  private checkRanges(entries: readonly KeyValue[], head: KeyValue | undefined): void {
    const mine = this.registeredRanges();
    const ownKey = rangesKey(this.conf.keyPrefix, this.network);
    let own: KeyValue | undefined;
    for (const kv of entries) {
      if (kv.key === ownKey) {
        own = kv;
        continue;
      }
      const other = readRecord(rangesValueSchema, kv, this.log)?.ranges ?? [];
      for (const a of mine) {
        for (const b of other) {
          if (!rangesOverlap(a, b)) continue;
          throw new CniError(
            ErrorCode.InvalidNetworkConfig,
            `network ${this.network}: range ${a.start}-${a.end} overlaps range ${b.start}-${b.end} of network ${kv.key.slice(kv.key.lastIndexOf('/') + 1)} under key prefix ${this.conf.keyPrefix}`,
            'networks sharing an etcd key prefix must not share addresses: give them disjoint subnets or ranges, or separate key prefixes',
          );
        }
      }
    }
    const value = JSON.stringify({ ranges: mine } satisfies RangesValue);
    if (own && own.value === value) {
      this.registration = undefined;
      return;
    }
    const headKey = rangesHeadKey(this.conf.keyPrefix);
    this.registration = {
      compare: [
        head ? { key: headKey, target: 'mod', value: head.modRevision } : { key: headKey, target: 'version', value: 0n },
        own ? { key: ownKey, target: 'mod', value: own.modRevision } : { key: ownKey, target: 'version', value: 0n },
      ],
      ops: [
        { put: ownKey, value },
        { put: headKey, value: this.network },
      ],
    };
  }

  /**
   * Renews the liveness lease when its key is missing, not ours, or past
   * half its TTL: a new lease and the key put on it (the old lease then
   * expires holding nothing), and the maintenance command's sightings of
   * this host dropped in the same transaction.
   */
  private async renewLiveness(alive: KeyValue | undefined): Promise<void> {
    const now = this.clock();
    const v = alive && readRecord(aliveValueSchema, alive, this.log);
    if (v && v.hostId === this.conf.hostId && now < v.renewAfter) return;
    const lease = await this.kv.grantLease(Math.ceil(this.conf.livenessTtlMs / 1000), this.deadline());
    const value: AliveValue = { hostId: this.conf.hostId, renewAfter: now + Math.floor(this.conf.livenessTtlMs / 2) };
    await this.kv.txn(
      {
        success: [
          { put: this.aliveKey, value: JSON.stringify(value), lease },
          { delete: goneKey(this.conf.keyPrefix, this.conf.nodeName), prefix: true },
        ],
      },
      this.deadline(),
    );
  }

  private async reloadMine(): Promise<void> {
    const s = this.ensureSession();
    const { results } = await this.kv.txn({ success: [{ get: this.blockKey(this.conf.nodeName, ''), prefix: true }] }, s.deadline);
    s.mine = this.blocksFrom(results[0]!);
  }

  private blocksFrom(kvs: readonly KeyValue[]): Map<string, BlockState> {
    const mine = new Map<string, BlockState>();
    for (const kv of kvs) {
      const st = this.blockState(kv);
      if (st) mine.set(st.id, st);
    }
    return mine;
  }

  /** The block's state, or undefined (logged) when the record is malformed or not the block its key names. */
  private blockState(kv: KeyValue): BlockState | undefined {
    const data = readRecord(blockDataSchema, kv, this.log);
    if (!data) return undefined;
    const id = kv.key.slice(kv.key.lastIndexOf('/') + 1);
    const slash = data.cidr.lastIndexOf('/');
    const net = parseIP(data.cidr.slice(0, slash));
    const prefix = Number(data.cidr.slice(slash + 1));
    if (!net || !(prefix >= 0 && prefix <= (net.family === 4 ? 32 : 128)) || id !== blockId(net.family, net.value, prefix) || net.value !== (net.value & mask(net.family, prefix))) {
      this.log(`cluster-ipam: skipping malformed etcd record ${kv.key}: cidr ${data.cidr} is not the block the key names`);
      return undefined;
    }
    return { id, key: kv.key, network: net.value, prefix, family: net.family, rev: kv.modRevision, data };
  }

  /**
   * Registers this host under its node name (compare-and-swap on the key's
   * version), or checks that the registration is this host's: a second
   * host claiming the node name with another ID is refused (7), whatever
   * else it shares with the first (cloned images share /etc/machine-id,
   * which is why the ID is this host's own random one, shared/host-id.ts).
   *
   * Migration from the machine-id era: a registration holding this
   * machine's /etc/machine-id is taken over (compare-and-swap on its mod
   * revision) by this host's new ID, once. Of two clones sharing that
   * machine-id under one node name, the first to upgrade wins and the other
   * is refused from then on, which is the refusal the machine-id never gave.
   *
   * A registration that is not a host record at all (written by hand,
   * corrupted) is logged and taken over the same way: nobody can prove it
   * theirs, and refusing would stop the node for good.
   */
  private async checkHost(hostKey: string, existing: KeyValue | undefined): Promise<void> {
    const value = JSON.stringify({ hostId: this.conf.hostId, registeredAt: new Date(this.clock()).toISOString() });
    let current = existing;
    for (let attempt = 0; ; attempt++) {
      if (!current) {
        const r = await this.kv.txn(
          { compare: [{ key: hostKey, target: 'version', value: 0n }], success: [{ put: hostKey, value }], failure: [{ get: hostKey }] },
          this.deadline(),
        );
        if (r.succeeded) break;
        current = r.results[0]![0];
        if (!current) continue;
      }
      const holder = readRecord(hostValueSchema, current, this.log)?.hostId;
      if (holder === this.conf.hostId) break;
      const migrating = holder !== undefined && holder === previousMachineId();
      if (holder !== undefined && !migrating) {
        throw new CniError(
          ErrorCode.InvalidNetworkConfig,
          `node name "${this.conf.nodeName}" is registered in etcd by another host (host ID ${holder}; this host is ${this.conf.hostId})`,
          `${hostKey} belongs to another machine: give each host its own ipam.etcd.nodeName; if that host is gone for good, run "cni-ts ipam-maint decommission ${this.conf.nodeName}" first. (A host's ID is kept in its host-id file, /var/lib/cni-ts/host-id: hosts cloned from one image after it was written share it; remove it on the clone before first use.)`,
        );
      }
      this.log(
        migrating
          ? `cluster-ipam: node ${this.conf.nodeName}: registration by this machine's machine-id moved to its host ID ${this.conf.hostId}`
          : `cluster-ipam: node ${this.conf.nodeName}: unreadable registration replaced by host ID ${this.conf.hostId}`,
      );
      const r = await this.kv.txn(
        { compare: [{ key: hostKey, target: 'mod', value: current.modRevision }], success: [{ put: hostKey, value }], failure: [{ get: hostKey }] },
        this.deadline(),
      );
      if (r.succeeded) break;
      current = r.results[0]![0];
      await this.backoff(attempt);
    }
    this.hostChecked = true;
  }

  /**
   * Records how this store reaches etcd (no secret: file paths only) for the
   * liveness keeper of the daemon or the overlay agent (./liveness.ts), once
   * per process. A failure costs the host its keeper, not the operation:
   * logged, never thrown.
   */
  private recordForKeeper(): void {
    if (this.recorded || this.livenessDir === null) return;
    this.recorded = true;
    try {
      recordStore(this.livenessDir, {
        ...this.conf.connection,
        endpoints: [...this.conf.connection.endpoints],
        keyPrefix: this.conf.keyPrefix,
        nodeName: this.conf.nodeName,
        hostId: this.conf.hostId,
        livenessTtlMs: this.conf.livenessTtlMs,
        requestTimeoutMs: this.conf.requestTimeoutMs,
      });
    } catch (err) {
      this.log(`cluster-ipam: cannot record this store for the liveness keeper in ${this.livenessDir}: ${(err as Error).message}`);
    }
  }

  private async loadClaims(): Promise<Map<string, string>> {
    const s = this.ensureSession();
    if (!s.claims) {
      const prefix = `${this.net}/blocks/`;
      const { results } = await this.kv.txn({ success: [{ get: prefix, prefix: true }] }, s.deadline);
      // A malformed claim still claims: its block is nobody's to take, so it
      // stays in the map (under a name no node has) and is never borrowed from.
      s.claims = new Map(results[0]!.map((kv) => [kv.key.slice(prefix.length), readRecord(claimValueSchema, kv, this.log) ?? '']));
    }
    return s.claims;
  }

  /** Claims the block for this node (version == 0 on the claim key); true if won. */
  private async claim(id: string, network: bigint, prefix: number, family: Family): Promise<boolean> {
    const s = this.ensureSession();
    const claimKey = `${this.net}/blocks/${id}`;
    const key = this.blockKey(this.conf.nodeName, id);
    const data: BlockData = { cidr: `${formatIP({ family, value: network })}/${prefix}`, host: this.conf.nodeName, seq: 0, used: {} };
    const registration = this.registration;
    const r = await this.kv.txn(
      {
        compare: [{ key: claimKey, target: 'version', value: 0n }, ...(registration?.compare ?? [])],
        success: [{ put: claimKey, value: this.conf.nodeName }, { put: key, value: JSON.stringify(data) }, ...(registration?.ops ?? [])],
        failure: [{ get: claimKey }, { get: `${this.conf.keyPrefix}/ranges/`, prefix: true }, { get: rangesHeadKey(this.conf.keyPrefix) }],
      },
      s.deadline,
    );
    if (!r.succeeded && registration) {
      // Lost to a registration made since our read, perhaps of an
      // overlapping network: check again (7 if it overlaps), then retry.
      this.checkRanges(r.results[1]!, r.results[2]![0]);
    }
    if (r.succeeded) {
      this.registration = undefined;
      this.stats.claimed++;
      s.claims?.set(id, this.conf.nodeName);
      s.mine!.set(id, { id, key, network, prefix, family, rev: r.revision, data });
      return true;
    }
    this.stats.conflicts++;
    // Others are claiming right now: learn all their claims at the next
    // look (one read), not one lost race at a time.
    s.claims = undefined;
    return false;
  }

  /** The block's state; undefined when there is none, null when it is malformed (logged). */
  private async readBlock(key: string): Promise<BlockState | undefined | null> {
    const { results } = await this.kv.txn({ success: [{ get: key }] }, this.deadline());
    const kv = results[0]![0];
    if (!kv) return undefined;
    return this.blockState(kv) ?? null;
  }

  /**
   * One allocation transaction. 'taken': the address is in use;
   * 'conflict': the block changed under us (its state is refreshed from the
   * failure branch, so a retry needs no extra read).
   */
  private async tryAllocate(
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
    const ipText = formatIP(ip);
    const ipKey = `${this.net}/ips/${ipText}`;
    const seq = st.data.seq + 1;
    const data: BlockData = { ...st.data, seq, last: offset, used: { ...st.data.used, [offset]: seq } };
    const value: AddressValue = {
      containerId: owner.containerId.trim(),
      ifname: owner.ifname,
      node: this.conf.nodeName,
      block: st.id,
      blockKey: st.key,
      seq,
      ...(borrowed ? { borrowed: true } : {}),
    };
    const r = await this.kv.txn(
      {
        compare: [
          { key: st.key, target: 'mod', value: st.rev },
          { key: ipKey, target: 'version', value: 0n },
        ],
        success: [
          { put: st.key, value: JSON.stringify(data) },
          { put: ipKey, value: JSON.stringify(value) },
          { put: ownerPrefixKey(this.net, owner.containerId, owner.ifname) + ipText, value: JSON.stringify({ node: this.conf.nodeName, blockKey: st.key }) },
        ],
        failure: [{ get: st.key }, { get: ipKey }],
      },
      this.deadline(),
    );
    if (r.succeeded) {
      st.rev = r.revision;
      st.data = data;
      return 'ok';
    }
    this.stats.conflicts++;
    const [blockNow, ipNow] = r.results;
    if (ipNow!.length > 0) return 'taken';
    const fresh = blockNow![0] && this.blockState(blockNow![0]);
    if (!fresh) {
      // The block is gone (reclaimed): forget it; the caller looks again.
      this.session?.mine?.delete(st.id);
      this.session?.claims?.delete(st.id);
      return 'conflict';
    }
    st.rev = fresh.rev;
    st.data = fresh.data;
    return st.data.used[offset] !== undefined ? 'taken' : 'conflict';
  }

  /**
   * Frees one address held by owner, updating its block in the same
   * transaction. With `expectRev`, only if the address key is still exactly
   * that version (GC's guard). Returns whether something was freed.
   */
  private async free(ip: IP, owner: Owner, expectRev?: bigint): Promise<boolean> {
    const ipText = formatIP(ip);
    const ipKey = `${this.net}/ips/${ipText}`;
    const ownerKey = ownerPrefixKey(this.net, owner.containerId, owner.ifname) + ipText;
    const leakKey = `${this.net}/leaks/${this.conf.nodeName}/${ipText}`;
    for (let attempt = 0; ; attempt++) {
      const read = await this.kv.txn({ success: [{ get: ipKey }] }, this.deadline());
      const ipKv = read.results[0]![0];
      const v = ipKv && readRecord(addressValueSchema, ipKv, this.log);
      if (!ipKv || !v || v.containerId !== owner.containerId.trim() || v.ifname !== owner.ifname || (expectRev !== undefined && ipKv.modRevision !== expectRev)) {
        // Not (or no longer) this owner's: only the stale index entry goes.
        if (expectRev === undefined) await this.kv.txn({ success: [{ delete: ownerKey }] }, this.deadline());
        return false;
      }
      const blockRead = await this.kv.txn({ success: [{ get: v.blockKey }] }, this.deadline());
      const blockKv = blockRead.results[0]![0];
      const st = blockKv && this.blockState(blockKv);
      const ops: Op[] = [{ delete: ipKey }, { delete: ownerKey }, { delete: leakKey }];
      const compare: Compare[] = [{ key: ipKey, target: 'mod', value: ipKv.modRevision }];
      let data: BlockData | undefined;
      if (st) {
        const offset = (ip.value - st.network).toString();
        const used = { ...st.data.used };
        delete used[offset];
        data = { ...st.data, seq: st.data.seq + 1, used };
        ops.push({ put: st.key, value: JSON.stringify(data) });
        compare.push({ key: st.key, target: 'mod', value: st.rev });
      } else if (blockKv) {
        // The block's state is malformed (logged): the address still goes, the block is left as it is.
        compare.push({ key: v.blockKey, target: 'mod', value: blockKv.modRevision });
      } else {
        compare.push({ key: v.blockKey, target: 'version', value: 0n });
      }
      const r = await this.kv.txn({ compare, success: ops }, this.deadline());
      if (r.succeeded) {
        // Keep this operation's view of our own block current (an ADD that
        // fails half-way releases and may be retried by the caller).
        const mine = this.session?.mine?.get(v.block);
        if (mine && data && mine.key === v.blockKey) {
          mine.rev = r.revision;
          mine.data = data;
        }
        return true;
      }
      this.stats.conflicts++;
      await this.backoff(attempt);
    }
  }

  private pickInMine(set: RangeSet): Target | undefined {
    const blocks = [...this.session!.mine!.values()].sort((a, b) => (a.rev === b.rev ? 0 : a.rev > b.rev ? -1 : 1));
    for (const st of blocks) {
      const after = st.data.last !== undefined ? st.network + BigInt(st.data.last) : undefined;
      const v = firstFree(st, set, after) ?? (after !== undefined ? firstFree(st, set) : undefined);
      if (v !== undefined) return { ip: { family: st.family, value: v }, kind: 'mine' };
    }
    return undefined;
  }

  private async pickUnclaimed(set: RangeSet): Promise<Target | undefined> {
    const claims = await this.loadClaims();
    const found: IP[] = [];
    for (const b of blocksOf(set, this.blockPrefix(set[0]!.subnet.network.family))) {
      if (claims.has(b.id)) continue;
      const first = addressesIn(set, b.network, b.prefix, b.family).next();
      if (first.done) continue;
      found.push({ family: b.family, value: first.value });
      if (found.length >= CLAIM_SPREAD) break;
    }
    if (found.length === 0) return undefined;
    return { ip: found[Math.floor(this.random() * found.length)]!, kind: 'claim' };
  }

  private async pickBorrow(set: RangeSet): Promise<Target | undefined> {
    const prefix = `${this.net}/hostblocks/`;
    const { results } = await this.kv.txn({ success: [{ get: prefix, prefix: true }] }, this.deadline());
    for (const kv of results[0]!) {
      const st = this.blockState(kv);
      if (!st || st.data.host === this.conf.nodeName) continue;
      const v = firstFree(st, set);
      if (v !== undefined) return { ip: { family: st.family, value: v }, kind: 'borrow' };
    }
    return undefined;
  }

  private blockPrefix(family: Family): number {
    return family === 4 ? this.conf.blockSizeV4 : this.conf.blockSizeV6;
  }

  private blockOf(ip: IP): { id: string; network: bigint; prefix: number } {
    const prefix = this.blockPrefix(ip.family);
    const network = ip.value & mask(ip.family, prefix);
    return { id: blockId(ip.family, network, prefix), network, prefix };
  }

  private blockKey(node: string, id: string): string {
    return `${this.net}/hostblocks/${node}/${id}`;
  }

  private async backoff(attempt: number): Promise<void> {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** Math.min(attempt, 10));
    const delay = Math.round(base * (0.5 + this.random()));
    if (Date.now() + delay >= this.deadline()) {
      throw tryAgainLater(`etcd IPAM: conflicting updates did not settle within ${this.conf.requestTimeoutMs} ms`, `network ${this.network}, node ${this.conf.nodeName}`);
    }
    await new Promise((resolve) => setTimeout(resolve, delay));
  }
}

function rangesOverlap(a: RegisteredRange, b: RegisteredRange): boolean {
  const [as, ae, bs, be] = [a.start, a.end, b.start, b.end].map(parseIP);
  if (!as || !ae || !bs || !be || as.family !== bs.family) return false;
  return as.value <= be.value && bs.value <= ae.value;
}

function blockId(family: Family, network: bigint, prefix: number): string {
  return `${formatIP({ family, value: network })}_${prefix}`;
}

/** The set's allocatable addresses inside one block, in the set's order. */
function* addressesIn(set: RangeSet, network: bigint, prefix: number, family: Family): Generator<bigint> {
  const last = network | (~mask(family, prefix) & ((1n << BigInt(family === 4 ? 32 : 128)) - 1n));
  for (const range of set) {
    if (range.subnet.network.family !== family) continue;
    const lo = range.rangeStart.value > network ? range.rangeStart.value : network;
    const hi = range.rangeEnd.value < last ? range.rangeEnd.value : last;
    for (let v = lo; v <= hi; v++) if (allocatable(range, v)) yield v;
  }
}

/** The first free address of the block in the set, after `after` if given. */
function firstFree(st: BlockState, set: RangeSet, after?: bigint): bigint | undefined {
  for (const v of addressesIn(set, st.network, st.prefix, st.family)) {
    if (after !== undefined && v <= after) continue;
    if (st.data.used[(v - st.network).toString()] === undefined) return v;
  }
  return undefined;
}

/** Every block the set's ranges touch, in the set's order (lazily: an IPv6 /64 has 2^58 of them). */
function* blocksOf(set: RangeSet, prefix: number): Generator<{ id: string; network: bigint; prefix: number; family: Family }> {
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
function predecessor(set: RangeSet, ip: IP): IP | undefined {
  const k = set.findIndex((r: IpamRange) => rangeContains(r, ip));
  const range = set[k]!;
  if (ip.value > range.rangeStart.value) return { family: ip.family, value: ip.value - 1n };
  return k === 0 ? undefined : set[k - 1]!.rangeEnd;
}

