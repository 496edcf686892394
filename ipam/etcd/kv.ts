/**
 * The little of etcd the store uses: one transaction verb (a read is a
 * transaction with no comparisons), behind an interface so the store's
 * logic does not depend on etcd3's builders, and so every failure arrives
 * as a CniError already: unreachable, timed out or overloaded etcd is
 * 11 (try again later), refused credentials are 7.
 *
 * This file is the store's only way to etcd3, and it loads it (through
 * shared/etcd, which also finds it inside the packaged executable) only
 * when EtcdKV is constructed: etcd3 and its gRPC stack cost about 240 ms
 * to require, which the local store must never pay.
 */
import { CniError, ErrorCode } from '../../shared/cni/errors';
import { connectEtcd } from '../../shared/etcd/client';
import type { EtcdStoreConfig } from './config';

export interface KeyValue {
  readonly key: string;
  readonly value: string;
  readonly createRevision: bigint;
  readonly modRevision: bigint;
  readonly version: bigint;
}

/** A comparison on one key; a missing key has version, create and mod revision 0. */
export type Compare =
  | { readonly key: string; readonly target: 'version' | 'create' | 'mod'; readonly op?: '==' | '!='; readonly value: bigint }
  | { readonly key: string; readonly target: 'value'; readonly op?: '==' | '!='; readonly value: string };

export type Op =
  | { readonly get: string; readonly prefix?: boolean }
  /** with `lease`, the key is deleted by etcd when that lease expires */
  | { readonly put: string; readonly value: string; readonly lease?: bigint }
  | { readonly delete: string; readonly prefix?: boolean };

export interface TxnRequest {
  readonly compare?: readonly Compare[];
  readonly success?: readonly Op[];
  readonly failure?: readonly Op[];
}

export interface TxnResult {
  readonly succeeded: boolean;
  /** per op of the branch taken: the keys a get found, [] for puts and deletes */
  readonly results: readonly (readonly KeyValue[])[];
  readonly revision: bigint;
}

export interface KV {
  /** Runs one transaction; rejects with a CniError (11 when etcd cannot answer by `deadline`, epoch ms). */
  txn(req: TxnRequest, deadline: number): Promise<TxnResult>;
  /** Grants a lease of `ttlSeconds` (etcd's LeaseGrant) and returns its ID; same errors as txn. */
  grantLease(ttlSeconds: number, deadline: number): Promise<bigint>;
  close(): void;
}

/** The gRPC codes after which trying again later can succeed. */
const TRANSIENT = ['Unavailable', 'DeadlineExceeded', 'Cancelled', 'ResourceExhausted', 'Aborted', 'Internal', 'ClientClosed', 'BrokenCircuit'];
/** etcd3's fault-handling policy that runs each call once, as it is (etcd3 only calls execute()). */
const PASS_THROUGH = {
  execute: <T>(fn: (context: { signal: AbortSignal; attempt: number }) => PromiseLike<T> | T): Promise<T> =>
    Promise.resolve().then(() => fn({ signal: new AbortController().signal, attempt: 0 })),
};

const REFUSED = ['Unauthenticated', 'PermissionDenied', 'AuthenticationFailed', 'InvalidAuthToken'];

export function tryAgainLater(msg: string, details?: string): CniError {
  return new CniError(ErrorCode.TryAgainLater, msg, details);
}

export class EtcdKV implements KV {
  // etcd3's types, loaded lazily: see the header comment.
  private readonly client: import('etcd3').Etcd3;
  private readonly etcd: typeof import('etcd3');

  constructor(private readonly conf: Pick<EtcdStoreConfig, 'endpoints' | 'tls' | 'auth' | 'requestTimeoutMs'>) {
    // Fast reconnects (shared/etcd/client.ts) rather than queueing behind an
    // unready channel: the deadline below bounds each call either way, and
    // 11 tells the runtime to retry.
    const { etcd, client } = connectEtcd({ endpoints: conf.endpoints, tls: conf.tls, auth: conf.auth, timeoutMs: conf.requestTimeoutMs }, {
      // No retries and no circuit breaker inside etcd3: the store retries
      // conflicts itself within its deadline, and etcd3's breaker, once
      // open, fails every call for 5 s without trying etcd at all, which
      // turned one slow answer under load into a run of failed ADDs.
      faultHandling: { host: () => PASS_THROUGH, global: PASS_THROUGH },
    });
    this.etcd = etcd;
    this.client = client;
  }

  async txn(req: TxnRequest, deadline: number): Promise<TxnResult> {
    const { CompareResult, CompareTarget } = this.etcd;
    const compare = (req.compare ?? []).map((c) => {
      const base = { key: Buffer.from(c.key), result: c.op === '!=' ? CompareResult.NotEqual : CompareResult.Equal };
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
    const op = (o: Op): import('etcd3').IRequestOp => {
      if ('get' in o) {
        const key = Buffer.from(o.get);
        return { request_range: o.prefix ? { key, range_end: prefixEnd(key) } : { key } };
      }
      if ('put' in o) {
        return { request_put: { key: Buffer.from(o.put), value: Buffer.from(o.value), ...(o.lease !== undefined ? { lease: o.lease.toString() } : {}) } };
      }
      const key = Buffer.from(o.delete);
      return { request_delete_range: o.prefix ? { key, range_end: prefixEnd(key) } : { key } };
    };
    const res = await this.bounded(
      () =>
        this.client.kv.txn(
          { compare, success: (req.success ?? []).map(op), failure: (req.failure ?? []).map(op) },
          { deadline: new Date(deadline) },
        ),
      deadline,
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
        })),
      ),
    };
  }

  async grantLease(ttlSeconds: number, deadline: number): Promise<bigint> {
    const res = await this.bounded(() => this.client.leaseClient.leaseGrant({ TTL: ttlSeconds, ID: 0 }, { deadline: new Date(deadline) }), deadline);
    return BigInt(res.ID);
  }

  /** One gRPC call, failing with 11 at `deadline` even if gRPC's own deadline does not fire. */
  private async bounded<T>(call: () => Promise<T>, deadline: number): Promise<T> {
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

  close(): void {
    this.client.close();
  }

  private timeout(): CniError {
    return tryAgainLater(
      `etcd did not answer within ${this.conf.requestTimeoutMs} ms`,
      `endpoints: ${this.conf.endpoints.join(', ')}`,
    );
  }

  private mapError(err: unknown): CniError {
    if (err instanceof CniError) return err;
    const name = (err as Error | undefined)?.constructor?.name ?? '';
    const message = (err as Error | undefined)?.message ?? String(err);
    const where = `endpoints: ${this.conf.endpoints.join(', ')}`;
    if (REFUSED.some((n) => name.includes(n))) {
      return new CniError(ErrorCode.InvalidNetworkConfig, `etcd refused the credentials: ${message}`, where);
    }
    if (TRANSIENT.some((n) => name.includes(n)) || /deadline|unavailable|connect|timed? ?out/i.test(message)) {
      return tryAgainLater(`etcd unavailable: ${message}`, where);
    }
    return new CniError(ErrorCode.Internal, `etcd request failed: ${message}`, where, { cause: err });
  }
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
