/**
 * The project's one way to etcd: a small key-value interface (transactions,
 * leases, a prefix watch) that every typed store sits on (the IPAM's blocks
 * and hosts, the overlay's control plane, the IPsec key ring and election),
 * and its one implementation over etcd3. testkit/fake-kv.ts is its one fake,
 * held to a real etcd by test/shared/etcd/parity.test.ts.
 *
 * Every failure arrives as a CniError already: etcd unreachable, too slow or
 * overloaded is 11 (try again later) within the caller's deadline, refused
 * credentials are 7, anything else 999. Values (which may hold keys) never
 * appear in an error.
 *
 * etcd3 and its gRPC stack cost about 240 ms to require: EtcdKV loads them
 * (through ./load.ts, which also finds them inside the packaged executable)
 * only when constructed, never at module load, so plugins that never talk to
 * etcd never pay for them. Import this module for types freely.
 */
import type { IRequestOp, Etcd3 as Etcd3Client } from 'etcd3';
import { CniError, ErrorCode } from '../cni/errors';
import type { SecureConnection } from './connection';
import { connectEtcd } from './client';
import type { Etcd3 } from './load';

/**
 * A lease's ID as etcd3 gives it: the decimal string of etcd's int64 ('0'
 * on a key means "no lease"). A string, not a bigint, because that is what
 * travels through etcd3's requests and what a key's `lease` reads back as.
 */
export type LeaseId = string;

export interface KeyValue {
  readonly key: string;
  readonly value: string;
  readonly createRevision: bigint;
  readonly modRevision: bigint;
  readonly version: bigint;
  /** '0' when the key has no lease */
  readonly lease: LeaseId;
}

/**
 * A comparison on one key; a missing key has version, create and mod
 * revision 0. With `prefix`, on every key starting with `key` (etcd's
 * range compare): it holds when it holds for each of them, and compares
 * as a missing key when there is none, so `create == 0` over a prefix
 * means "no key under it".
 */
export type Compare =
  | { readonly key: string; readonly prefix?: boolean; readonly target: 'version' | 'create' | 'mod'; readonly op?: '==' | '!='; readonly value: bigint }
  | { readonly key: string; readonly prefix?: boolean; readonly target: 'value'; readonly op?: '==' | '!='; readonly value: string };

export type Op =
  | { readonly get: string; readonly prefix?: boolean }
  /** with `lease`, etcd deletes the key when that lease expires */
  | { readonly put: string; readonly value: string; readonly lease?: LeaseId }
  | { readonly delete: string; readonly prefix?: boolean };

export interface TxnRequest {
  readonly compare?: readonly Compare[];
  readonly success?: readonly Op[];
  readonly failure?: readonly Op[];
}

export interface TxnResult {
  readonly succeeded: boolean;
  /** per op of the branch taken: the keys a get found (sorted by key), [] for puts and deletes */
  readonly results: readonly (readonly KeyValue[])[];
  /** etcd's revision after the transaction */
  readonly revision: bigint;
}

export interface Watch {
  cancel(): Promise<void>;
}

/** Deadlines are epoch milliseconds; a call still unanswered then fails with CniError 11. */
export interface KV {
  /** One transaction (a read is one with no comparisons). */
  txn(req: TxnRequest, deadline: number): Promise<TxnResult>;
  /** A new lease of `ttlSeconds` (etcd's LeaseGrant). */
  leaseGrant(ttlSeconds: number, deadline: number): Promise<LeaseId>;
  /**
   * Renews the lease once (as `etcdctl lease keep-alive --once`) and returns
   * the TTL in seconds etcd now gives it: 0 when the lease is gone (expired
   * or revoked, and its keys with it).
   */
  leaseKeepAlive(id: LeaseId, deadline: number): Promise<number>;
  /** Revokes the lease, deleting every key on it; a lease already gone is fine. */
  leaseRevoke(id: LeaseId, deadline: number): Promise<void>;
  /**
   * Calls onChange (no arguments: re-read) after any change under prefix.
   * The watch re-establishes itself after etcd restarts; onChange fires then
   * too, since events may have been missed. Readers converge on what they
   * re-read, so a missed or repeated call never leaves them wrong.
   */
  watchPrefix(prefix: string, onChange: () => void): Promise<Watch>;
  close(): void;
}

/** CniError 11: etcd could not answer now; the caller (or the runtime) may try again. */
export function tryAgainLater(msg: string, details?: string): CniError {
  return new CniError(ErrorCode.TryAgainLater, msg, details);
}

/** gRPC/etcd3 error names after which trying again later can succeed. */
const TRANSIENT = ['Unavailable', 'DeadlineExceeded', 'Cancelled', 'ResourceExhausted', 'Aborted', 'Internal', 'ClientClosed', 'BrokenCircuit'];
const REFUSED = ['Unauthenticated', 'PermissionDenied', 'AuthenticationFailed', 'InvalidAuthToken'];

/**
 * Bounds calls to one etcd and maps their failures to CniErrors; turns
 * transactions written as plain data into etcd3's requests and back.
 */
class EtcdCalls {
  constructor(
    private readonly endpoints: readonly string[],
    private readonly timeoutMs: number,
  ) {}

  /** One gRPC call, failing with 11 at `deadline` (epoch ms) even if gRPC's own deadline does not fire. */
  async bounded<T>(deadline: number, call: () => Promise<T>): Promise<T> {
    const remaining = deadline - Date.now();
    if (remaining <= 0) throw this.timeout();
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<never>((_, reject) => {
      // The gRPC deadline should fire first; this is the bound if it does not
      // (a call stuck waiting for a channel that never becomes ready).
      timer = setTimeout(() => reject(this.timeout()), remaining + 50);
    });
    try {
      return await Promise.race([call(), expired]);
    } catch (err) {
      throw this.mapError(err);
    } finally {
      clearTimeout(timer);
    }
  }

  timeout(): CniError {
    return tryAgainLater(`etcd did not answer within ${this.timeoutMs} ms`, `endpoints: ${this.endpoints.join(', ')}`);
  }

  mapError(err: unknown): CniError {
    if (err instanceof CniError) return err;
    const name = (err as Error | undefined)?.constructor?.name ?? '';
    const message = (err as Error | undefined)?.message ?? String(err);
    const where = `endpoints: ${this.endpoints.join(', ')}`;
    if (REFUSED.some((n) => name.includes(n))) return new CniError(ErrorCode.InvalidNetworkConfig, `etcd refused the credentials: ${message}`, where);
    if (TRANSIENT.some((n) => name.includes(n)) || /deadline|unavailable|connect|timed? ?out|closed/i.test(message)) {
      return tryAgainLater(`etcd unavailable: ${message}`, where);
    }
    return new CniError(ErrorCode.Internal, `etcd request failed: ${message}`, where, { cause: err });
  }

  /** One transaction, bounded by `deadline`. */
  async txn(etcd: Etcd3, client: Etcd3Client, req: TxnRequest, deadline: number): Promise<TxnResult> {
    const { CompareResult, CompareTarget } = etcd;
    const compare = (req.compare ?? []).map((c) => {
      const key = Buffer.from(c.key);
      const base = { key, ...(c.prefix && { range_end: prefixEnd(key) }), result: c.op === '!=' ? CompareResult.NotEqual : CompareResult.Equal };
      switch (c.target) {
        case 'version':
          return { ...base, target: CompareTarget.Version, version: c.value.toString() };
        case 'create':
          return { ...base, target: CompareTarget.Create, create_revision: c.value.toString() };
        case 'mod':
          return { ...base, target: CompareTarget.Mod, mod_revision: c.value.toString() };
        case 'value':
          return { ...base, target: CompareTarget.Value, value: Buffer.from(c.value) };
      }
    });
    const res = await this.bounded(deadline, () =>
      client.kv.txn({ compare, success: (req.success ?? []).map(requestOp), failure: (req.failure ?? []).map(requestOp) }, { deadline: new Date(deadline) }),
    );
    return {
      succeeded: res.succeeded,
      revision: BigInt(res.header.revision),
      results: res.responses.map((r) =>
        (r.response_range?.kvs ?? []).map((kv) => ({
          key: kv.key.toString(),
          value: kv.value.toString(),
          createRevision: BigInt(kv.create_revision),
          modRevision: BigInt(kv.mod_revision),
          version: BigInt(kv.version),
          lease: String(kv.lease ?? '0'),
        })),
      ),
    };
  }
}

function requestOp(o: Op): IRequestOp {
  if ('get' in o) {
    const key = Buffer.from(o.get);
    return { request_range: o.prefix ? { key, range_end: prefixEnd(key) } : { key } };
  }
  if ('put' in o) {
    return { request_put: { key: Buffer.from(o.put), value: Buffer.from(o.value), ...(o.lease !== undefined ? { lease: o.lease.toString() } : {}) } };
  }
  const key = Buffer.from(o.delete);
  return { request_delete_range: o.prefix ? { key, range_end: prefixEnd(key) } : { key } };
}

/** The range end that selects every key starting with `key`. */
function prefixEnd(key: Buffer): Buffer {
  const end = Buffer.from(key);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i]! < 0xff) {
      end[i] = end[i]! + 1;
      return end.subarray(0, i + 1);
    }
  }
  return Buffer.from([0]);
}

export interface EtcdKVOptions extends SecureConnection {
  /** bounds dialing; each call is bounded by its own deadline */
  readonly requestTimeoutMs: number;
}

/** KV on a real etcd through etcd3. */
export class EtcdKV implements KV {
  // etcd3's types only: the module itself is loaded in the constructor (see the header)
  private readonly client: Etcd3Client;
  private readonly etcd: Etcd3;
  private readonly calls: EtcdCalls;

  /** Throws CniError 7, before loading etcd3, when `conf` breaks the rules of ./connection.ts. */
  constructor(conf: EtcdKVOptions) {
    // No retries and no circuit breaker inside etcd3 (./client.ts): callers
    // retry conflicts themselves within their deadlines, and 11 tells the
    // runtime to try again.
    ({ etcd: this.etcd, client: this.client } = connectEtcd({
      endpoints: conf.endpoints,
      tls: conf.tls,
      auth: conf.auth,
      insecure: conf.insecure,
      timeoutMs: conf.requestTimeoutMs,
    }));
    this.calls = new EtcdCalls(conf.endpoints, conf.requestTimeoutMs);
  }

  txn(req: TxnRequest, deadline: number): Promise<TxnResult> {
    return this.calls.txn(this.etcd, this.client, req, deadline);
  }

  async leaseGrant(ttlSeconds: number, deadline: number): Promise<LeaseId> {
    const res = await this.calls.bounded(deadline, () => this.client.leaseClient.leaseGrant({ TTL: ttlSeconds, ID: 0 }, { deadline: new Date(deadline) }));
    if (res.error) throw tryAgainLater(`etcd refused a lease: ${res.error}`);
    return String(res.ID);
  }

  async leaseKeepAlive(id: LeaseId, deadline: number): Promise<number> {
    return this.calls.bounded(deadline, async () => {
      const stream = await this.client.leaseClient.leaseKeepAlive({ deadline: new Date(deadline) });
      // after our one answer the stream is cancelled: that error is ours, not a failure
      stream.on('error', () => {});
      try {
        // a promise settles once: later events of the stream change nothing
        const res = await new Promise<{ TTL: string }>((resolve, reject) => {
          stream.on('data', resolve);
          stream.on('error', reject);
          stream.on('end', () => reject(new Error('etcd closed the lease keep-alive stream')));
          stream.write({ ID: id });
        });
        // etcd answers TTL 0 for a lease it does not know (expired or revoked)
        return Math.max(0, Number(res.TTL));
      } catch (err) {
        if (/not found/i.test((err as Error).message)) return 0;
        throw err;
      } finally {
        stream.cancel();
      }
    });
  }

  async leaseRevoke(id: LeaseId, deadline: number): Promise<void> {
    await this.calls.bounded(deadline, async () => {
      try {
        await this.client.leaseClient.leaseRevoke({ ID: id }, { deadline: new Date(deadline) });
      } catch (err) {
        // gone already (expired, or revoked by another holder): what revoking wanted
        if (!/not found/i.test((err as Error).message)) throw err;
      }
    });
  }

  async watchPrefix(prefix: string, onChange: () => void): Promise<Watch> {
    const watcher = await this.client.watch().prefix(prefix).create();
    watcher.on('put', () => onChange());
    watcher.on('delete', () => onChange());
    // After a reconnect events may have been missed: say so.
    watcher.on('connected', () => onChange());
    watcher.on('error', () => onChange());
    return { cancel: () => watcher.cancel() };
  }

  close(): void {
    this.client.close();
  }
}

/** The key as etcd holds it now; undefined when absent. */
export async function get(kv: KV, key: string, deadline: number): Promise<KeyValue | undefined> {
  const { results } = await kv.txn({ success: [{ get: key }] }, deadline);
  return results[0]?.[0];
}

/**
 * Puts `value` only if the key's mod revision is still `expected`: a
 * compare-and-set on what the caller read. etcd compares a missing key's mod
 * revision as 0, so 0n means "only if absent". False when someone wrote first.
 */
export async function putIf(kv: KV, key: string, value: string, expected: bigint, deadline: number, lease?: LeaseId): Promise<boolean> {
  const res = await kv.txn({ compare: [{ key, target: 'mod', value: expected }], success: [{ put: key, value, ...(lease !== undefined && { lease }) }] }, deadline);
  return res.succeeded;
}
