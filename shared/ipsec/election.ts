/**
 * Leader election on an etcd lease: the leader is whoever holds
 * `<prefix>/leader`, a key put with the candidate's lease and only if
 * absent. A leader that dies stops refreshing its lease; etcd drops the key
 * when the lease's TTL runs out, and the next candidate to campaign wins.
 *
 * Being leader only decides who *attempts* rotations: the ring itself is
 * written by compare-and-set, so a former leader that has not yet noticed
 * its loss (a long GC pause) cannot undo or repeat a rotation.
 */
import { get, putIf, type KV, type LeaseId } from '../etcd/kv';

export interface ElectionOptions {
  /** etcd key prefix shared with the ring, e.g. "/cni-ts/ipsec" */
  prefix: string;
  /** this candidate's name (the hostname, say); written as the key's value */
  candidate: string;
  /** default 15 s: how long a dead leader holds the office */
  ttlSeconds?: number;
  /** how long one etcd call may take; default 5000 ms */
  timeoutMs?: number;
}

export class LeaderElection {
  readonly leaderKey: string;
  private lease: LeaseId | undefined;

  constructor(
    private readonly kv: KV,
    private readonly opts: ElectionOptions,
  ) {
    this.leaderKey = `${opts.prefix.replace(/\/+$/, '')}/leader`;
  }

  private deadline(): number {
    return Date.now() + (this.opts.timeoutMs ?? 5000);
  }

  /**
   * One round: refresh our lease (or get one) and try to hold the key.
   * True when we are the leader now. Call it more often than ttlSeconds.
   * Throws CniError 11 when etcd cannot answer (we then assume we are not).
   */
  async campaign(): Promise<boolean> {
    if (this.lease !== undefined && (await this.kv.leaseKeepAlive(this.lease, this.deadline())) === 0) this.lease = undefined;
    this.lease ??= await this.kv.leaseGrant(this.opts.ttlSeconds ?? 15, this.deadline());
    const cur = await get(this.kv, this.leaderKey, this.deadline());
    if (cur) return cur.value === this.opts.candidate && this.holdsKey();
    const won = await putIf(this.kv, this.leaderKey, this.opts.candidate, 0n, this.deadline(), this.lease);
    this.heldWith = won ? this.lease : undefined;
    return won;
  }

  /** The lease our key was written with; a key of the same name from an earlier lease of ours is not ours now. */
  private heldWith: LeaseId | undefined;

  private holdsKey(): boolean {
    return this.heldWith !== undefined && this.heldWith === this.lease;
  }

  /** Who leads now, undefined when nobody. */
  async leader(): Promise<string | undefined> {
    return (await get(this.kv, this.leaderKey, this.deadline()))?.value;
  }

  /** Give the office up now (on shutdown), instead of after the TTL. */
  async resign(): Promise<void> {
    const l = this.lease;
    this.lease = undefined;
    this.heldWith = undefined;
    if (l !== undefined) await this.kv.leaseRevoke(l, this.deadline());
  }
}
