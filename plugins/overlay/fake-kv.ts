/**
 * An in-memory KV with etcd's semantics for what the overlay uses:
 * revisions, compare-and-put transactions, leases whose expiry deletes
 * their keys, and prefix watches. `down = true` makes every call fail as
 * an unreachable etcd does (CniError 11), so fault handling is testable
 * without killing a server.
 */
import type { Compare, KV, KeyValue, Op, TxnRequest, TxnResult, Unwatch } from './kv';
import { tryAgainLater } from './kv';

interface Stored {
  value: string;
  createRevision: bigint;
  modRevision: bigint;
  version: bigint;
  lease: string;
}

export class FakeKV implements KV {
  /** simulate etcd being unreachable */
  down = false;
  private readonly data = new Map<string, Stored>();
  private readonly leases = new Map<string, number>();
  private readonly watchers = new Set<{ prefix: string; onChange: () => void }>();
  private revision = 1n;
  private nextLease = 100;

  async txn(req: TxnRequest, _deadline: number): Promise<TxnResult> {
    this.check();
    const ok = (req.compare ?? []).every((c) => this.compare(c));
    const ops = (ok ? req.success : req.failure) ?? [];
    for (const o of ops) {
      // etcd refuses the whole transaction, before writing anything
      if ('put' in o && o.lease !== undefined && String(o.lease) !== '0' && !this.leases.has(String(o.lease))) throw tryAgainLater(`etcdserver: requested lease not found (${o.lease})`);
    }
    const touched: string[] = [];
    const writes = ops.some((o) => !('get' in o));
    if (writes) this.revision++;
    const results = ops.map((o) => this.apply(o, touched));
    this.notify(touched);
    return { succeeded: ok, results, revision: this.revision };
  }

  async leaseGrant(_ttl: number, _deadline: number): Promise<string> {
    this.check();
    const id = String(this.nextLease++);
    this.leases.set(id, 1);
    return id;
  }

  async leaseKeepAlive(id: string, _deadline: number): Promise<boolean> {
    this.check();
    return this.leases.has(id);
  }

  async leaseRevoke(id: string, _deadline: number): Promise<void> {
    this.check();
    this.expire(id);
  }

  /** What etcd does when a lease's TTL runs out. */
  expire(id: string): void {
    this.leases.delete(id);
    const gone = [...this.data].filter(([, v]) => v.lease === id).map(([k]) => k);
    if (gone.length) this.revision++;
    for (const k of gone) this.data.delete(k);
    this.notify(gone);
  }

  async watchPrefix(prefix: string, onChange: () => void): Promise<Unwatch> {
    this.check();
    const w = { prefix, onChange };
    this.watchers.add(w);
    return { cancel: async () => void this.watchers.delete(w) };
  }

  close(): void {}

  /** every key and value, for assertions */
  dump(): Record<string, string> {
    return Object.fromEntries([...this.data].sort(([a], [b]) => (a < b ? -1 : 1)).map(([k, v]) => [k, v.value]));
  }

  private check(): void {
    if (this.down) throw tryAgainLater('etcd unavailable: connect ECONNREFUSED (fake)');
  }

  private compare(c: Compare): boolean {
    if (c.prefix) {
      // etcd: each key in the range must satisfy it; an empty range compares as one missing key
      const keys = [...this.data.keys()].filter((k) => k.startsWith(c.key));
      return keys.length === 0 ? this.compare({ ...c, prefix: false, key: '\u0000absent' }) : keys.every((k) => this.compare({ ...c, prefix: false, key: k }));
    }
    const s = this.data.get(c.key);
    let eq: boolean;
    if (c.target === 'value') eq = s?.value === c.value;
    else eq = (c.target === 'version' ? (s?.version ?? 0n) : c.target === 'create' ? (s?.createRevision ?? 0n) : (s?.modRevision ?? 0n)) === c.value;
    return c.op === '!=' ? !eq : eq;
  }

  private apply(o: Op, touched: string[]): KeyValue[] {
    if ('get' in o) {
      return [...this.data]
        .filter(([k]) => (o.prefix ? k.startsWith(o.get) : k === o.get))
        .sort(([a], [b]) => (a < b ? -1 : 1))
        .map(([key, s]) => ({ key, value: s.value, createRevision: s.createRevision, modRevision: s.modRevision, version: s.version, lease: s.lease }));
    }
    if ('put' in o) {
      const lease = String(o.lease ?? '0');
      const prev = this.data.get(o.put);
      this.data.set(o.put, { value: o.value, createRevision: prev?.createRevision ?? this.revision, modRevision: this.revision, version: (prev?.version ?? 0n) + 1n, lease });
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
