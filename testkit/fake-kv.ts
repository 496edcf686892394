/**
 * THE fake of shared/etcd/kv.ts's KV: etcd in memory, with etcd's semantics
 * for everything the project uses, held to a real etcd by
 * test/shared/etcd/parity.test.ts:
 *   - one global revision, bumped once by each transaction that changes
 *     something (a delete of nothing changes nothing); create and mod
 *     revisions and versions per key, as etcd reports them;
 *   - compares on one key or a prefix, as shared/etcd/kv.ts describes;
 *   - leases that expire by the injected clock (checked at every call), or
 *     at once with expire(id), deleting their keys; a put on an unknown
 *     lease refuses the whole transaction, as etcd does;
 *   - prefix watches that say "something changed" after each change;
 *   - `down = true`: every call fails with the CniError (11) an unreachable
 *     etcd gives, so fault handling is testable without killing a server.
 */
import { CniError, ErrorCode } from '../shared/cni/errors';
import type { Compare, KV, KeyValue, LeaseId, Op, TxnRequest, TxnResult, Watch } from '../shared/etcd/kv';
import { tryAgainLater } from '../shared/etcd/kv';

interface Stored {
  value: string;
  createRevision: bigint;
  modRevision: bigint;
  version: bigint;
  lease: LeaseId;
}

export class FakeKV implements KV {
  /** simulate etcd being unreachable */
  down = false;
  /** how many calls were made, for tests on retries */
  calls = 0;
  private readonly data = new Map<string, Stored>();
  private readonly leases = new Map<LeaseId, { ttlSeconds: number; expiresAt: number }>();
  private readonly watchers = new Set<{ prefix: string; onChange: () => void }>();
  private revision = 1n;
  private nextLease = 100;

  /** `clock` (epoch ms) decides when leases run out */
  constructor(private readonly clock: () => number = Date.now) {}

  async txn(req: TxnRequest, _deadline: number): Promise<TxnResult> {
    this.enter();
    const ok = (req.compare ?? []).every((c) => this.compare(c));
    const ops = (ok ? req.success : req.failure) ?? [];
    for (const o of ops) {
      // etcd refuses the whole transaction, before writing anything
      if ('put' in o && o.lease !== undefined && o.lease !== '0' && !this.leases.has(o.lease)) throw leaseNotFound();
    }
    const touched: string[] = [];
    // every write of one transaction carries the same new revision; it becomes current only if something changed
    const rev = this.revision + 1n;
    const results = ops.map((o) => this.apply(o, rev, touched));
    if (touched.length) this.revision = rev;
    this.notify(touched);
    return { succeeded: ok, results, revision: this.revision };
  }

  async leaseGrant(ttlSeconds: number, _deadline: number): Promise<LeaseId> {
    this.enter();
    const id = String(this.nextLease++);
    this.leases.set(id, { ttlSeconds, expiresAt: this.clock() + ttlSeconds * 1000 });
    return id;
  }

  async leaseKeepAlive(id: LeaseId, _deadline: number): Promise<number> {
    this.enter();
    const l = this.leases.get(id);
    if (!l) return 0;
    l.expiresAt = this.clock() + l.ttlSeconds * 1000;
    return l.ttlSeconds;
  }

  async leaseRevoke(id: LeaseId, _deadline: number): Promise<void> {
    this.enter();
    this.expire(id);
  }

  async watchPrefix(prefix: string, onChange: () => void): Promise<Watch> {
    this.enter();
    const w = { prefix, onChange };
    this.watchers.add(w);
    return { cancel: async () => void this.watchers.delete(w) };
  }

  close(): void {}

  /** What etcd does when a lease's TTL runs out: the lease and every key on it go, in one revision. */
  expire(id: LeaseId): void {
    if (!this.leases.delete(id)) return;
    const gone = [...this.data].filter(([, v]) => v.lease === id).map(([k]) => k);
    if (gone.length) this.revision++;
    for (const k of gone) this.data.delete(k);
    this.notify(gone);
  }

  /** every key and value, for assertions */
  dump(): Record<string, string> {
    return Object.fromEntries([...this.data].sort(([a], [b]) => (a < b ? -1 : 1)).map(([k, v]) => [k, v.value]));
  }

  /** the raw value of a key, for assertions */
  peek(key: string): string | undefined {
    return this.data.get(key)?.value;
  }

  /** Overwrites a key as a broken or hostile writer would (no lease, no compare). */
  corrupt(key: string, value: string): void {
    const rev = this.revision + 1n;
    this.apply({ put: key, value }, rev, []);
    this.revision = rev;
    this.notify([key]);
  }

  private enter(): void {
    this.calls++;
    if (this.down) throw tryAgainLater('etcd unavailable: connect ECONNREFUSED (fake)');
    const now = this.clock();
    for (const [id, l] of [...this.leases]) if (l.expiresAt <= now) this.expire(id);
  }

  private compare(c: Compare): boolean {
    if (c.prefix) {
      // etcd: each key in the range must satisfy it; an empty range compares as one missing key
      const keys = [...this.data.keys()].filter((k) => k.startsWith(c.key));
      if (keys.length === 0) return this.holds(c, undefined);
      return keys.every((k) => this.holds(c, this.data.get(k)));
    }
    return this.holds(c, this.data.get(c.key));
  }

  private holds(c: Compare, s: Stored | undefined): boolean {
    let eq: boolean;
    if (c.target === 'value') {
      // etcd: a value compare on a missing key fails whatever the op
      if (!s) return false;
      eq = s.value === c.value;
    } else {
      const have = c.target === 'version' ? s?.version : c.target === 'create' ? s?.createRevision : s?.modRevision;
      eq = (have ?? 0n) === c.value;
    }
    return c.op === '!=' ? !eq : eq;
  }

  private apply(o: Op, rev: bigint, touched: string[]): KeyValue[] {
    if ('get' in o) {
      return [...this.data]
        .filter(([k]) => (o.prefix ? k.startsWith(o.get) : k === o.get))
        .sort(([a], [b]) => (a < b ? -1 : 1))
        .map(([key, s]) => ({ key, ...s }));
    }
    if ('put' in o) {
      const prev = this.data.get(o.put);
      this.data.set(o.put, { value: o.value, createRevision: prev?.createRevision ?? rev, modRevision: rev, version: (prev?.version ?? 0n) + 1n, lease: o.lease ?? '0' });
      touched.push(o.put);
      return [];
    }
    for (const k of [...this.data.keys()]) {
      if (o.prefix ? k.startsWith(o.delete) : k === o.delete) {
        this.data.delete(k);
        touched.push(k);
      }
    }
    return [];
  }

  private notify(keys: readonly string[]): void {
    for (const w of this.watchers) if (keys.some((k) => k.startsWith(w.prefix))) queueMicrotask(w.onChange);
  }
}

/** etcd's answer to a put on a lease it does not know, as EtcdKV reports it (see the parity test). */
function leaseNotFound(): CniError {
  return new CniError(ErrorCode.Internal, 'etcd request failed: etcdserver: requested lease not found');
}
