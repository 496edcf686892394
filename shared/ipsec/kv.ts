/**
 * The little of etcd the key ring and the leader election use, behind an
 * interface so their logic runs on MemoryKV in tests:
 *   compare-and-set on a key's mod revision (0 = absent), leases (a key put
 *   with a lease vanishes when the lease expires), and refreshing a lease.
 *
 * Failures arrive typed: etcd unreachable or timing out is
 * CniError 11 (try again later), refused credentials CniError 7; callers
 * keep their current keys and retry. Values (which hold keys) never appear
 * in an error.
 *
 * EtcdRingKV loads etcd3 only when constructed (its gRPC stack is slow to
 * require, and module-level code must stay free of I/O for the snapshot).
 */
import { connectEtcd } from '../etcd/client';
import { EtcdCalls } from '../etcd/txn';
import { CniError, ErrorCode } from '../cni/errors';
import type { Clock } from './keyring';

export interface Versioned {
  value: string;
  modRevision: bigint;
}

export interface RingKV {
  get(key: string): Promise<Versioned | undefined>;
  /** Writes only if the key's mod revision is `expected` (0n: the key must be absent). */
  putIf(key: string, value: string, expected: bigint, lease?: string): Promise<boolean>;
  /** Grants a lease of ttlSeconds; returns its id. */
  grantLease(ttlSeconds: number): Promise<string>;
  /** Refreshes the lease; false when it has expired or been revoked (its keys are gone). */
  keepAlive(lease: string): Promise<boolean>;
  /** Revokes the lease (its keys go with it); a lease already gone is fine. */
  revokeLease(lease: string): Promise<void>;
  close(): void;
}

export function unavailable(what: string): CniError {
  return new CniError(ErrorCode.TryAgainLater, `etcd unavailable: ${what}`);
}

/**
 * etcd in memory, with etcd's revision semantics (one global revision,
 * bumped by every write) and leases that expire by the injected clock.
 * `down = true` makes every call fail as an unreachable etcd does.
 */
export class MemoryKV implements RingKV {
  private revision = 1n;
  private readonly data = new Map<string, { value: string; modRevision: bigint; lease?: string }>();
  private readonly leases = new Map<string, { ttlMs: number; expiresAt: number }>();
  private nextLease = 1;
  down = false;
  /** how many calls were made, for tests on retries */
  calls = 0;

  constructor(private readonly clock: Clock) {}

  private enter(op: string): void {
    this.calls++;
    if (this.down) throw unavailable(`${op}: connection refused`);
    const now = this.clock();
    for (const [id, l] of this.leases) if (l.expiresAt <= now) this.expire(id);
  }

  private expire(id: string): void {
    this.leases.delete(id);
    for (const [k, v] of this.data) {
      if (v.lease === id) {
        this.data.delete(k);
        this.revision++;
      }
    }
  }

  async get(key: string): Promise<Versioned | undefined> {
    this.enter('get');
    const v = this.data.get(key);
    return v ? { value: v.value, modRevision: v.modRevision } : undefined;
  }

  async putIf(key: string, value: string, expected: bigint, lease?: string): Promise<boolean> {
    this.enter('put');
    if (lease !== undefined && !this.leases.has(lease)) throw new CniError(ErrorCode.Internal, `etcd: requested lease not found`);
    const cur = this.data.get(key)?.modRevision ?? 0n;
    if (cur !== expected) return false;
    this.revision++;
    this.data.set(key, { value, modRevision: this.revision, ...(lease !== undefined && { lease }) });
    return true;
  }

  async grantLease(ttlSeconds: number): Promise<string> {
    this.enter('lease grant');
    const id = String(this.nextLease++);
    this.leases.set(id, { ttlMs: ttlSeconds * 1000, expiresAt: this.clock() + ttlSeconds * 1000 });
    return id;
  }

  async keepAlive(lease: string): Promise<boolean> {
    this.enter('lease keepalive');
    const l = this.leases.get(lease);
    if (!l) return false;
    l.expiresAt = this.clock() + l.ttlMs;
    return true;
  }

  async revokeLease(lease: string): Promise<void> {
    this.enter('lease revoke');
    if (this.leases.has(lease)) this.expire(lease);
  }

  close(): void {}

  /** Test helper: overwrite a key as a broken writer would. */
  corrupt(key: string, value: string): void {
    this.revision++;
    this.data.set(key, { value, modRevision: this.revision });
  }

  /** Test helper: the raw value. */
  peek(key: string): string | undefined {
    return this.data.get(key)?.value;
  }
}

export interface EtcdRingKVConfig {
  /** "http://10.0.0.1:2379" or "https://..." */
  endpoints: readonly string[];
  tls?: { ca: Buffer; cert?: Buffer; key?: Buffer };
  auth?: { username: string; password: string };
  /** per request; default 5000 */
  timeoutMs?: number;
}

/** RingKV on a real etcd through etcd3. */
export class EtcdRingKV implements RingKV {
  private readonly etcd: typeof import('etcd3');
  private readonly client: import('etcd3').Etcd3;
  private readonly leases = new Map<string, import('etcd3').Lease>();
  private readonly timeoutMs: number;
  private readonly calls: EtcdCalls;

  constructor(conf: EtcdRingKVConfig) {
    this.timeoutMs = conf.timeoutMs ?? 5000;
    ({ etcd: this.etcd, client: this.client } = connectEtcd({ ...conf, timeoutMs: this.timeoutMs }));
    this.calls = new EtcdCalls(conf.endpoints, this.timeoutMs);
  }

  private deadline(): { deadline: Date } {
    return { deadline: new Date(Date.now() + this.timeoutMs) };
  }

  /** One call, bounded by the configured timeout; etcd failures become CniErrors (11 when unreachable). */
  private call<T>(fn: () => Promise<T>): Promise<T> {
    return this.calls.bounded(Date.now() + this.timeoutMs, fn);
  }

  async get(key: string): Promise<Versioned | undefined> {
    const res = await this.calls.txn(this.etcd, this.client, { success: [{ get: key }] }, Date.now() + this.timeoutMs);
    const kv = res.results[0]?.[0];
    return kv ? { value: kv.value, modRevision: kv.modRevision } : undefined;
  }

  async putIf(key: string, value: string, expected: bigint, lease?: string): Promise<boolean> {
    const res = await this.calls.txn(
      this.etcd,
      this.client,
      { compare: [{ key, target: 'mod', value: expected }], success: [{ put: key, value, lease }] },
      Date.now() + this.timeoutMs,
    );
    return res.succeeded;
  }

  async grantLease(ttlSeconds: number): Promise<string> {
    return this.call(async () => {
      const lease = this.client.lease(ttlSeconds, { autoKeepAlive: false });
      // An unreachable etcd makes etcd3 emit 'lost'; the rejected grant is what we report.
      lease.on('lost', () => undefined);
      const id = await lease.grant();
      this.leases.set(id, lease);
      return id;
    });
  }

  async keepAlive(lease: string): Promise<boolean> {
    const l = this.leases.get(lease);
    if (!l) return false;
    const alive = await this.call(async () => {
      try {
        // etcd answers a keepalive of an expired lease with TTL 0, which
        // etcd3 turns into an EtcdLeaseInvalidError ("expired or revoked").
        return Number((await l.keepaliveOnce(this.deadline())).TTL) > 0;
      } catch (e) {
        if (/LeaseInvalid/.test((e as Error)?.constructor?.name ?? '') || /expired or revoked|lease not found/i.test((e as Error).message ?? '')) return false;
        throw e;
      }
    });
    if (!alive) {
      this.leases.delete(lease);
      l.release();
    }
    return alive;
  }

  async revokeLease(lease: string): Promise<void> {
    const l = this.leases.get(lease);
    if (!l) return;
    this.leases.delete(lease);
    await this.call(async () => {
      try {
        await l.revoke(this.deadline());
      } catch (e) {
        if (!/not found|revoked/i.test((e as Error).message ?? '')) throw e;
      }
    });
  }

  close(): void {
    for (const l of this.leases.values()) l.release();
    this.leases.clear();
    this.client.close();
  }
}
