/**
 * What every etcd user in the project shares beneath its own small KV
 * interface: transactions written as plain data (compare / success /
 * failure) turned into etcd3's requests and back, and one bound on every
 * call so an unreachable or slow etcd is always CNI error 11 (try again
 * later) within the caller's deadline, never a hang or a 999.
 */
import type { IRequestOp, Etcd3 as Etcd3Client } from 'etcd3';
import { CniError, ErrorCode } from '../cni/errors';
import type { Etcd3 } from './load';

export interface KeyValue {
  readonly key: string;
  readonly value: string;
  readonly createRevision: bigint;
  readonly modRevision: bigint;
  readonly version: bigint;
  /** '0' when the key has no lease */
  readonly lease: string;
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
  | { readonly put: string; readonly value: string; readonly lease?: bigint | string }
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

export function tryAgainLater(msg: string, details?: string): CniError {
  return new CniError(ErrorCode.TryAgainLater, msg, details);
}

/** gRPC/etcd3 error names after which trying again later can succeed. */
const TRANSIENT = ['Unavailable', 'DeadlineExceeded', 'Cancelled', 'ResourceExhausted', 'Aborted', 'Internal', 'ClientClosed', 'BrokenCircuit'];
const REFUSED = ['Unauthenticated', 'PermissionDenied', 'AuthenticationFailed', 'InvalidAuthToken'];

/** Bounds calls to one etcd and maps their failures to CniErrors. */
export class EtcdCalls {
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
export function prefixEnd(key: Buffer): Buffer {
  const end = Buffer.from(key);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i]! < 0xff) {
      end[i] = end[i]! + 1;
      return end.subarray(0, i + 1);
    }
  }
  return Buffer.from([0]);
}
