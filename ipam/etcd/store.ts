/**
 * The etcd store: cluster-wide allocations without a cluster-wide lock.
 *
 * Each range set is cut into aligned blocks (/26 for IPv4, /122 for IPv6 by
 * default, ./blocks.ts). A host claims blocks with a compare-and-swap and
 * allocates inside its own (./claims.ts), one transaction per address
 * (./addresses.ts); only when no block is left does it take a single address
 * from another host's block (a "borrow", counted and logged). GC frees a
 * leak only once it has seen it twice a grace period apart (./gc.ts). A node
 * name belongs to one host, whose liveness key the store renews
 * (./hosts.ts), and networks under one key prefix never overlap
 * (./registry.ts). The keys are laid out in ./keys.ts.
 *
 * Every record read back is checked with the zod schema it was written
 * with (./keys.ts readRecord): a malformed one is skipped and logged, never
 * trusted and never thrown out of an allocation or a GC.
 *
 * An operation (withinOperation) takes no lock anywhere: the transactions
 * are the exclusion. It is a time budget (requestTimeoutMs) and one read of
 * this host's blocks (./operation.ts). Cost of an ADD once the host holds a
 * block with room: one read transaction (host registration, liveness, the
 * network registry, the owner's keys, the host's blocks) and one allocation
 * transaction.
 */
import { CniError, ErrorCode } from '../../shared/cni/errors';
import { stderrLog, type Logger } from '../../shared/log';
import type { Allocation, AllocationStore, Owner } from '../allocator';
import { describeRangeSet, type IpamConfig, type RangeSet } from '../config';
import { noFreeAddress } from '../errors';
import { formatIP, parseIP, type IP } from '../../shared/ip';
import { free, tryAllocate } from './addresses';
import { blockOf, blocksFrom, predecessor } from './blocks';
import { blockPrefix, claim, hostBlockKey, loadClaims, pickBorrow, pickInMine, pickUnclaimed, readBlock, reloadMine } from './claims';
import { loadEtcdConfig, type EtcdStoreConfig } from './config';
import { collectLeaks, gcReads } from './gc';
import { HostIdentity } from './hosts';
import { lastElement, networkKey, ownerPrefixKey, readRecord, addressValueSchema } from './keys';
import { EtcdKV, type KeyValue, type KV, type Op } from '../../shared/etcd/kv';
import { DEFAULT_LIVENESS_DIR } from './liveness';
import { Operation, type EtcdStoreStats, type StoreContext } from './operation';
import { NetworkRegistry } from './registry';

export type { EtcdStoreStats } from './operation';

export interface EtcdStoreOptions {
  /** the etcd client; default: etcd3 over the configured endpoints */
  kv?: KV;
  /** epoch milliseconds for GC's grace period (request deadlines always use the real clock) */
  clock?: () => number;
  /** one line per event worth an operator's eye (borrows, skipped records): the call's logger; default stderr */
  log?: Logger;
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

export class EtcdStore implements AllocationStore {
  readonly stats: EtcdStoreStats = { claimed: 0, borrowed: 0, conflicts: 0 };
  private readonly ctx: StoreContext;
  private readonly hosts: HostIdentity;
  private readonly registry: NetworkRegistry;
  private current?: Operation;
  private closed = false;

  private constructor(
    readonly conf: EtcdStoreConfig,
    network: string,
    readonly rangeSets: readonly RangeSet[],
    kv: KV,
    options: EtcdStoreOptions,
  ) {
    this.ctx = {
      conf,
      network,
      net: networkKey(conf.keyPrefix, network),
      rangeSets,
      kv,
      log: options.log ?? stderrLog,
      clock: options.clock ?? Date.now,
      random: options.random ?? Math.random,
      stats: this.stats,
    };
    this.hosts = new HostIdentity(this.ctx, options.livenessDir === undefined ? DEFAULT_LIVENESS_DIR : options.livenessDir);
    this.registry = new NetworkRegistry(this.ctx);
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

  /** One operation: one time budget and one read of this host's blocks, shared by every call fn makes. */
  async withinOperation<T>(fn: () => Promise<T>): Promise<T> {
    this.assertOpen();
    if (this.current) throw new CniError(ErrorCode.Internal, 'etcd IPAM store: an operation started inside another');
    this.current = new Operation(this.ctx);
    try {
      return await fn();
    } finally {
      this.current = undefined;
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.current = undefined;
    this.ctx.kv.close();
  }

  async getByOwner(containerId: string, ifname: string): Promise<IP[]> {
    const owned = await this.load(this.op(), ownerPrefixKey(this.ctx.net, containerId, ifname));
    return owned.map((kv) => parseIP(lastElement(kv.key))).filter((ip): ip is IP => ip !== undefined);
  }

  /**
   * Chooses the next address for the set and returns the address the
   * allocator's round-robin walk should treat as "last", so that its first
   * candidate is exactly that choice: a free address in one of this host's
   * blocks, else the first address of an unclaimed block (claimed in
   * reserve), else a free address in another host's block.
   */
  async lastReserved(rangeSetId: string): Promise<IP | undefined> {
    const op = await this.loaded();
    const index = Number(rangeSetId);
    const set = this.rangeSets[index]!;
    const target = pickInMine(op, set) ?? (await pickUnclaimed(this.ctx, op, set)) ?? (await pickBorrow(this.ctx, op, set));
    // Nothing anywhere: say so now rather than let the allocator walk every
    // address of the set (2^64 of them in an IPv6 /64).
    if (!target) throw noFreeAddress(index, describeRangeSet(set));
    op.targets.set(rangeSetId, target);
    return predecessor(set, target.ip);
  }

  async reserve(containerId: string, ifname: string, ip: IP, rangeSetId: string): Promise<boolean> {
    const op = await this.loaded();
    const { ctx } = this;
    const set = this.rangeSets[Number(rangeSetId)]!;
    const owner = { containerId, ifname };
    const target = op.targets.get(rangeSetId);
    // The allocator asks for a specific address without lastReserved only
    // for a static request: that may come from any block.
    const mayBorrow = async (): Promise<boolean> => target === undefined || target.kind === 'borrow' || this.lastResort(op, set);
    const block = blockOf(ip, blockPrefix(ctx, ip.family));
    for (let attempt = 0; ; attempt++) {
      const mine = op.myBlocks.get(block.id);
      if (mine) {
        const r = await tryAllocate(ctx, op, mine, set, ip, owner, false);
        if (r !== 'conflict') return r === 'ok';
      } else {
        const claimant = (await loadClaims(ctx, op)).get(block.id);
        if (claimant === undefined) {
          // Room in a block of ours (claimed by lastResort during this
          // walk): the walk gets there; a second block would be waste.
          if (target !== undefined && target.ip.value !== ip.value && pickInMine(op, set) !== undefined) return false;
          // Unclaimed: ours now if we win it.
          await claim(ctx, op, this.registry, block);
          continue;
        }
        // A malformed claim (readRecord logged it): its block is nobody's to use.
        if (claimant === '') return false;
        if (claimant === this.conf.nodeName) {
          // Claimed by us in a call that did not read it (another process of this host).
          await reloadMine(ctx, op);
          if (!op.myBlocks.has(block.id)) return false;
          continue;
        }
        if (!(await mayBorrow())) return false;
        const foreign = await readBlock(ctx, op, hostBlockKey(ctx, claimant, block.id));
        // Its state is malformed (logged): which addresses it holds is unknown, so none is taken from it.
        if (foreign === null) return false;
        if (!foreign) {
          op.claims!.delete(block.id);
          continue;
        }
        const r = await tryAllocate(ctx, op, foreign, set, ip, owner, true);
        if (r === 'ok') {
          this.stats.borrowed++;
          ctx.log(
            `cluster-ipam: node ${this.conf.nodeName} borrowed ${formatIP(ip)} for ${containerId}/${ifname} from block ${foreign.data.cidr} of node ${claimant} (network ${ctx.network}; borrows by this process: ${this.stats.borrowed})`,
          );
        }
        if (r !== 'conflict') return r === 'ok';
      }
      await op.backoff(attempt);
    }
  }

  async releaseByOwner(containerId: string, ifname: string): Promise<IP[]> {
    const op = this.op();
    const { results } = await this.ctx.kv.txn(
      { success: [{ get: ownerPrefixKey(this.ctx.net, containerId, ifname), prefix: true }, { get: this.hosts.aliveKey }] },
      op.deadline,
    );
    await this.hosts.renewLiveness(op, results[1]![0]);
    const released: IP[] = [];
    for (const ownerKv of results[0]!) {
      const ip = parseIP(lastElement(ownerKv.key));
      if (!ip) continue;
      if (await free(this.ctx, op, ip, { containerId, ifname })) released.push(ip);
    }
    return released;
  }

  async listAll(): Promise<Allocation[]> {
    const op = this.op();
    const { results } = await this.ctx.kv.txn({ success: [{ get: `${this.ctx.net}/ips/`, prefix: true }, { get: this.hosts.aliveKey }] }, op.deadline);
    // STATUS comes here: the call runtimes make most regularly keeps the host alive.
    await this.hosts.renewLiveness(op, results[1]![0]);
    return results[0]!.flatMap((kv) => {
      const ip = parseIP(lastElement(kv.key));
      const v = ip && readRecord(addressValueSchema, kv, this.ctx.log);
      return ip && v ? [{ ip, containerId: v.containerId, ifname: v.ifname }] : [];
    });
  }

  /** Frees this host's leaks not in `keep`, each once seen twice a grace period apart (./gc.ts). */
  async gc(keep: readonly Owner[]): Promise<Allocation[]> {
    const op = this.op();
    const { results } = await this.ctx.kv.txn({ success: [...gcReads(this.ctx), { get: this.hosts.aliveKey }] }, op.deadline);
    await this.hosts.renewLiveness(op, results[2]![0]);
    return collectLeaks(this.ctx, op, keep, results[0]!, results[1]!);
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
  private async lastResort(op: Operation, set: RangeSet): Promise<boolean> {
    if (pickInMine(op, set) !== undefined) {
      // Our view of our blocks dates from the start of the ADD, and racing
      // hosts borrow from them: look again (once) before passing this address by.
      if (op.mineRefreshed) return false;
      op.mineRefreshed = true;
      await reloadMine(this.ctx, op);
      if (pickInMine(op, set) !== undefined) return false;
    }
    for (;;) {
      const unclaimed = await pickUnclaimed(this.ctx, op, set);
      if (!unclaimed) return true;
      if (await claim(this.ctx, op, this.registry, blockOf(unclaimed.ip, blockPrefix(this.ctx, unclaimed.ip.family)))) return false;
    }
  }

  /** The current operation, or (for a call made outside withinOperation) one of its own. */
  private op(): Operation {
    this.assertOpen();
    return this.current ?? new Operation(this.ctx);
  }

  /** The operation, its one read done. */
  private async loaded(): Promise<Operation> {
    const op = this.op();
    if (!op.mine) await this.load(op);
    return op;
  }

  /**
   * The operation's one read: this node's registration, its blocks, its
   * liveness key, the network registry and (given an owner prefix) the
   * owner's index keys, which it returns. Then, in order: an overlapping
   * network is refused before anything is written; the node is registered
   * (or refused, when another host holds its name); the store is recorded
   * for the keeper; liveness is renewed; a registry entry gone stale while
   * the network holds blocks is written.
   */
  private async load(op: Operation, ownerPrefix?: string): Promise<KeyValue[]> {
    const ops: Op[] = [
      { get: this.hosts.hostKey },
      { get: hostBlockKey(this.ctx, this.conf.nodeName, ''), prefix: true },
      { get: this.hosts.aliveKey },
      ...this.registry.reads(),
    ];
    if (ownerPrefix) ops.push({ get: ownerPrefix, prefix: true });
    const { results } = await this.ctx.kv.txn({ success: ops }, op.deadline);
    const [host, blocks, alive, entries, head, owned] = results;
    this.registry.check(entries!, head![0]);
    await this.hosts.ensureRegistered(op, host![0]);
    this.hosts.recordForKeeper();
    await this.hosts.renewLiveness(op, alive![0]);
    op.mine = blocksFrom(blocks!, this.ctx.log);
    if (op.mine.size > 0) await this.registry.writeNow(op);
    return ownerPrefix ? [...owned!] : [];
  }

  private assertOpen(): void {
    if (this.closed) throw new CniError(ErrorCode.Internal, 'etcd IPAM store used after close');
  }
}
