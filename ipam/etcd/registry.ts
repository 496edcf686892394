/**
 * The network registry: networks sharing a key prefix must not share
 * addresses. Blocks are keyed per network, so two networks with overlapping
 * ranges would hand out the same address twice without either noticing.
 * Each network registers its ranges under P/ranges/<network>, guarded by the
 * registry's head key (P/ranges-head, bumped by every registration), and a
 * network whose ranges overlap a registered one is refused with 7 before
 * anything is written.
 *
 * The registration rides on the network's first block claim (one
 * transaction: ./claims.ts), so a network that never gets a block never
 * registers; a network that holds blocks and whose ranges changed writes its
 * entry on its own (writeNow).
 */
import { CniError, ErrorCode } from '../../shared/cni/errors';
import { formatIP, parseIP } from '../../shared/ip';
import { lastElement, rangesHeadKey, rangesKey, rangesValueSchema, readRecord, type RangesValue, type RegisteredRange } from './keys';
import { tryAgainLater, type Compare, type KeyValue, type Op } from '../../shared/etcd/kv';
import type { Operation, StoreContext } from './operation';

/** Writes that register this network: the compares that guard them and the puts. */
export interface Registration {
  readonly compare: Compare[];
  readonly ops: Op[];
}

export class NetworkRegistry {
  /** set while this network's entry is missing or stale: the next block claim carries it */
  private due?: Registration;

  constructor(private readonly ctx: StoreContext) {}

  /** The reads check() needs: every network's entry, and the head key. */
  reads(): Op[] {
    return [{ get: `${this.ctx.conf.keyPrefix}/ranges/`, prefix: true }, { get: rangesHeadKey(this.ctx.conf.keyPrefix) }];
  }

  /** What the next block claim must write along, if anything. */
  get pending(): Registration | undefined {
    return this.due;
  }

  /** The claim carrying the pending registration succeeded. */
  written(): void {
    this.due = undefined;
  }

  /**
   * Refuses (7) ranges that overlap another network's under the same prefix,
   * and prepares this network's entry when it is missing or stale. Ranges,
   * not subnets, are compared: two macvlan networks may share an underlay
   * subnet with disjoint rangeStart..rangeEnd, which is exactly how an
   * underlay is split between them.
   */
  check(entries: readonly KeyValue[], head: KeyValue | undefined): void {
    const { conf, network } = this.ctx;
    const mine = this.registeredRanges();
    const ownKey = rangesKey(conf.keyPrefix, network);
    let own: KeyValue | undefined;
    for (const kv of entries) {
      if (kv.key === ownKey) {
        own = kv;
        continue;
      }
      const other = readRecord(rangesValueSchema, kv, this.ctx.log)?.ranges ?? [];
      for (const a of mine) {
        for (const b of other) {
          if (!rangesOverlap(a, b)) continue;
          throw new CniError(
            ErrorCode.InvalidNetworkConfig,
            `network ${network}: range ${a.start}-${a.end} overlaps range ${b.start}-${b.end} of network ${lastElement(kv.key)} under key prefix ${conf.keyPrefix}`,
            'networks sharing an etcd key prefix must not share addresses: give them disjoint subnets or ranges, or separate key prefixes',
          );
        }
      }
    }
    const value = JSON.stringify({ ranges: mine } satisfies RangesValue);
    if (own && own.value === value) {
      this.due = undefined;
      return;
    }
    const headKey = rangesHeadKey(conf.keyPrefix);
    this.due = {
      compare: [
        head ? { key: headKey, target: 'mod', value: head.modRevision } : { key: headKey, target: 'version', value: 0n },
        own ? { key: ownKey, target: 'mod', value: own.modRevision } : { key: ownKey, target: 'version', value: 0n },
      ],
      ops: [
        { put: ownKey, value },
        { put: headKey, value: network },
      ],
    };
  }

  /**
   * Writes the pending entry on its own: for a network whose ranges changed
   * while it holds blocks, where no claim is coming to carry it.
   */
  async writeNow(op: Operation): Promise<void> {
    if (!this.due) return;
    const r = await this.ctx.kv.txn({ compare: this.due.compare, success: this.due.ops }, op.deadline);
    if (!r.succeeded) {
      throw tryAgainLater(`etcd IPAM: the network registry changed while registering network ${this.ctx.network}`, 'another network registered at the same time; try again');
    }
    this.due = undefined;
  }

  /** This network's ranges as the registry records them, in a canonical order. */
  private registeredRanges(): RegisteredRange[] {
    return this.ctx.rangeSets
      .flat()
      .map((r) => ({ subnet: `${formatIP(r.subnet.network)}/${r.subnet.prefix}`, start: formatIP(r.rangeStart), end: formatIP(r.rangeEnd) }))
      .sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
  }
}

function rangesOverlap(a: RegisteredRange, b: RegisteredRange): boolean {
  const [as, ae, bs, be] = [a.start, a.end, b.start, b.end].map(parseIP);
  if (!as || !ae || !bs || !be || as.family !== bs.family) return false;
  return as.value <= be.value && bs.value <= ae.value;
}
