/**
 * The little of etcd the store uses: one transaction verb (a read is a
 * transaction with no comparisons), behind an interface so the store's
 * logic does not depend on etcd3's builders, and so every failure arrives
 * as a CniError already: unreachable, timed out or overloaded etcd is
 * 11 (try again later), refused credentials are 7.
 *
 * This file is the only one that loads etcd3, and only when EtcdKV is
 * constructed: etcd3 and its gRPC stack cost about 240 ms to require, which
 * the local store must never pay.
 */
import { CniError, ErrorCode } from '../../shared/cni/errors';
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
  | { readonly put: string; readonly value: string }
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
  close(): void;
}

/** The gRPC codes after which trying again later can succeed. */
const TRANSIENT = ['Unavailable', 'DeadlineExceeded', 'Cancelled', 'ResourceExhausted', 'Aborted', 'Internal', 'ClientClosed'];
const REFUSED = ['Unauthenticated', 'PermissionDenied', 'AuthenticationFailed', 'InvalidAuthToken'];

export function tryAgainLater(msg: string, details?: string): CniError {
  return new CniError(ErrorCode.TryAgainLater, msg, details);
}

export class EtcdKV implements KV {
  // etcd3's types, loaded lazily: see the header comment.
  private readonly client: import('etcd3').Etcd3;
  private readonly etcd: typeof import('etcd3');

  constructor(private readonly conf: Pick<EtcdStoreConfig, 'endpoints' | 'tls' | 'auth' | 'requestTimeoutMs'>) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    this.etcd = require('etcd3') as typeof import('etcd3');
    this.client = new this.etcd.Etcd3({
      hosts: conf.endpoints.map((e) => e.replace(/^https?:\/\//, '')),
      credentials: conf.tls ? { rootCertificate: conf.tls.ca, privateKey: conf.tls.key, certChain: conf.tls.cert } : undefined,
      auth: conf.auth ? { username: conf.auth.username, password: conf.auth.password } : undefined,
      dialTimeout: conf.requestTimeoutMs,
      // Fail fast rather than queue behind an unready channel: the deadline
      // below bounds the call either way, and 11 tells the runtime to retry.
      grpcOptions: { 'grpc.initial_reconnect_backoff_ms': 100, 'grpc.max_reconnect_backoff_ms': 1000 },
    });
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
      if ('put' in o) return { request_put: { key: Buffer.from(o.put), value: Buffer.from(o.value) } };
      const key = Buffer.from(o.delete);
      return { request_delete_range: o.prefix ? { key, range_end: prefixEnd(key) } : { key } };
    };
    const remaining = deadline - Date.now();
    if (remaining <= 0) throw this.timeout();
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<never>((_, reject) => {
      // The gRPC deadline should fire first; this is the bound if it does not
      // (a call stuck waiting for a channel that never becomes ready).
      timer = setTimeout(() => reject(this.timeout()), remaining + 50);
    });
    try {
      const res = await Promise.race([
        this.client.kv.txn(
          { compare, success: (req.success ?? []).map(op), failure: (req.failure ?? []).map(op) },
          { deadline: new Date(deadline) },
        ),
        expired,
      ]);
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
