/**
 * What the etcd store's parts share (StoreContext), and one operation's
 * scope (Operation): the store takes no lock anywhere, since its
 * transactions compare-and-swap, so an operation is a time budget and a view
 * of the blocks read once.
 *
 * The budget (requestTimeoutMs) starts with the operation: every etcd call
 * and every conflict retry of the operation fits in it, and past it the
 * operation fails with 11 (try again later). A store call made outside
 * withinOperation() is an operation of its own.
 */
import { CniError, ErrorCode } from '../../shared/cni/errors';
import type { Logger } from '../../shared/log';
import type { RangeSet } from '../config';
import type { IP } from '../../shared/ip';
import type { BlockState } from './blocks';
import type { EtcdStoreConfig } from './config';
import { tryAgainLater, type KV } from '../../shared/etcd/kv';

export interface EtcdStoreStats {
  claimed: number;
  borrowed: number;
  conflicts: number;
}

/** One store's fixed parts, handed to each of its modules. */
export interface StoreContext {
  readonly conf: EtcdStoreConfig;
  /** the network's name */
  readonly network: string;
  /** N = P/networks/<network> (./keys.ts) */
  readonly net: string;
  readonly rangeSets: readonly RangeSet[];
  readonly kv: KV;
  /** one line per event worth an operator's eye (borrows, skipped records) */
  readonly log: Logger;
  /** epoch ms for GC's grace period and the liveness renewal (deadlines always use the real clock) */
  readonly clock: () => number;
  /** [0, 1): spreads block choices and retry delays */
  readonly random: () => number;
  readonly stats: EtcdStoreStats;
}

/** Where lastReserved pointed the allocator, and why. */
export interface Target {
  readonly ip: IP;
  readonly kind: 'mine' | 'claim' | 'borrow';
}

const BACKOFF_FIRST_MS = 5;
const BACKOFF_MAX_MS = 250;

export class Operation {
  /** epoch ms: the whole operation's bound */
  readonly deadline: number;
  /** this host's blocks, read once per operation */
  mine?: Map<string, BlockState>;
  /** every block's claimant; read only when this host's own blocks do not suffice */
  claims?: Map<string, string>;
  /** per range set: what lastReserved chose */
  readonly targets = new Map<string, Target>();
  /** lastResort() has re-read this host's blocks once in this operation */
  mineRefreshed = false;

  constructor(private readonly ctx: StoreContext) {
    this.deadline = Date.now() + ctx.conf.requestTimeoutMs;
  }

  /** This host's blocks as read by the operation's first read (./store.ts load). */
  get myBlocks(): Map<string, BlockState> {
    if (!this.mine) throw new CniError(ErrorCode.Internal, 'etcd IPAM store: blocks used before the operation read them');
    return this.mine;
  }

  /** Keeps the operation's view of one of our blocks current after a write of ours to it. */
  wrote(blockId: string, blockKey: string, rev: bigint, data: BlockState['data']): void {
    const st = this.mine?.get(blockId);
    if (st && st.key === blockKey) {
      st.rev = rev;
      st.data = data;
    }
  }

  /** Waits before retrying a lost compare-and-swap; 11 when the budget would run out first. */
  async backoff(attempt: number): Promise<void> {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** Math.min(attempt, 10));
    const delay = Math.round(base * (0.5 + this.ctx.random()));
    if (Date.now() + delay >= this.deadline) {
      throw tryAgainLater(
        `etcd IPAM: conflicting updates did not settle within ${this.ctx.conf.requestTimeoutMs} ms`,
        `network ${this.ctx.network}, node ${this.ctx.conf.nodeName}`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, delay));
  }
}
