/**
 * The little of etcd the overlay's control plane uses: transactions (puts
 * may carry a lease), leases (the host registration's liveness) and a
 * prefix watch that only says "something changed" (the agent re-reads and
 * converges, so a missed or repeated event can never leave it wrong).
 *
 * Behind an interface so the logic runs against FakeKV (fake-kv.ts) in unit
 * tests and against a real etcd in kernel tests, and so every failure
 * arrives as a CniError: etcd unreachable or too slow is 11 (try again later).
 *
 * etcd3 (and its gRPC stack, ~240 ms to load) is required only when EtcdKV
 * is constructed, as in ipam/etcd/kv.ts, never at module load: the bundle is
 * evaluated into a V8 startup snapshot and plugins that never talk to etcd
 * must not pay for it.
 */
import { connectEtcd } from '../../shared/etcd/client';
import { CniError, ErrorCode } from '../../shared/cni/errors';

export interface KeyValue {
  readonly key: string;
  readonly value: string;
  readonly modRevision: bigint;
  readonly version: bigint;
  /** '0' when the key has no lease */
  readonly lease: string;
}

export type Compare =
  | { readonly key: string; readonly target: 'version' | 'mod'; readonly op?: '==' | '!='; readonly value: bigint }
  | { readonly key: string; readonly target: 'value'; readonly op?: '==' | '!='; readonly value: string };

export type Op =
  | { readonly get: string; readonly prefix?: boolean }
  | { readonly put: string; readonly value: string; readonly lease?: string }
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

export interface Unwatch {
  cancel(): Promise<void>;
}

export interface KV {
  /** One transaction; rejects with a CniError (11 when etcd cannot answer by `deadline`, epoch ms). */
  txn(req: TxnRequest, deadline: number): Promise<TxnResult>;
  /** A new lease of `ttlSeconds`; resolves to its ID. */
  leaseGrant(ttlSeconds: number, deadline: number): Promise<string>;
  /** Refreshes a lease; false when etcd no longer knows it (expired or revoked). */
  leaseKeepAlive(id: string, deadline: number): Promise<boolean>;
  /** Revokes a lease, deleting every key attached to it. */
  leaseRevoke(id: string, deadline: number): Promise<void>;
  /**
   * Calls onChange (no arguments: re-read) after any change under prefix.
   * The watch re-establishes itself after etcd restarts; onChange also
   * fires then, since events may have been missed.
   */
  watchPrefix(prefix: string, onChange: () => void): Promise<Unwatch>;
  close(): void;
}

export function tryAgainLater(msg: string, details?: string): CniError {
  return new CniError(ErrorCode.TryAgainLater, msg, details);
}

export interface EtcdConnection {
  readonly endpoints: readonly string[];
  readonly tls?: { readonly ca: Buffer; readonly cert?: Buffer; readonly key?: Buffer };
  readonly auth?: { readonly username: string; readonly password: string };
  readonly requestTimeoutMs: number;
}

const TRANSIENT = ['Unavailable', 'DeadlineExceeded', 'Cancelled', 'ResourceExhausted', 'Aborted', 'Internal', 'ClientClosed'];
const REFUSED = ['Unauthenticated', 'PermissionDenied', 'AuthenticationFailed', 'InvalidAuthToken'];

export class EtcdKV implements KV {
  private readonly client: import('etcd3').Etcd3;
  private readonly etcd: typeof import('etcd3');

  constructor(private readonly conf: EtcdConnection) {
    ({ etcd: this.etcd, client: this.client } = connectEtcd({ ...conf, timeoutMs: conf.requestTimeoutMs }));
  }

  async txn(req: TxnRequest, deadline: number): Promise<TxnResult> {
    const { CompareResult, CompareTarget } = this.etcd;
    const compare = (req.compare ?? []).map((c) => {
      const base = { key: Buffer.from(c.key), result: c.op === '!=' ? CompareResult.NotEqual : CompareResult.Equal };
      switch (c.target) {
        case 'version':
          return { ...base, target: CompareTarget.Version, version: c.value.toString() };
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
      if ('put' in o) return { request_put: { key: Buffer.from(o.put), value: Buffer.from(o.value), lease: o.lease } };
      const key = Buffer.from(o.delete);
      return { request_delete_range: o.prefix ? { key, range_end: prefixEnd(key) } : { key } };
    };
    const res = await this.bounded(deadline, () =>
      this.client.kv.txn({ compare, success: (req.success ?? []).map(op), failure: (req.failure ?? []).map(op) }, { deadline: new Date(deadline) }),
    );
    return {
      succeeded: res.succeeded,
      revision: BigInt(res.header.revision),
      results: res.responses.map((r) =>
        (r.response_range?.kvs ?? []).map((kv) => ({
          key: kv.key.toString(),
          value: kv.value.toString(),
          modRevision: BigInt(kv.mod_revision),
          version: BigInt(kv.version),
          lease: String(kv.lease ?? '0'),
        })),
      ),
    };
  }

  async leaseGrant(ttlSeconds: number, deadline: number): Promise<string> {
    const res = await this.bounded(deadline, () => this.client.leaseClient.leaseGrant({ TTL: ttlSeconds, ID: 0 }, { deadline: new Date(deadline) }));
    if (res.error) throw tryAgainLater(`etcd refused a lease: ${res.error}`);
    return String(res.ID);
  }

  async leaseKeepAlive(id: string, deadline: number): Promise<boolean> {
    return this.bounded(deadline, async () => {
      const stream = await this.client.leaseClient.leaseKeepAlive({ deadline: new Date(deadline) });
      try {
        const res = await new Promise<{ TTL: string }>((resolve, reject) => {
          stream.on('data', resolve);
          stream.on('error', reject);
          stream.write({ ID: id });
        });
        // etcd answers TTL 0 for a lease it does not know (expired or revoked)
        return res.TTL !== '0';
      } finally {
        stream.end();
      }
    });
  }

  async leaseRevoke(id: string, deadline: number): Promise<void> {
    await this.bounded(deadline, () => this.client.leaseClient.leaseRevoke({ ID: id }, { deadline: new Date(deadline) }));
  }

  async watchPrefix(prefix: string, onChange: () => void): Promise<Unwatch> {
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

  private async bounded<T>(deadline: number, fn: () => Promise<T>): Promise<T> {
    const remaining = deadline - Date.now();
    if (remaining <= 0) throw this.timeout();
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<never>((_, reject) => {
      // the gRPC deadline should fire first; this bounds a call stuck on a channel that never becomes ready
      timer = setTimeout(() => reject(this.timeout()), remaining + 50);
    });
    try {
      return await Promise.race([fn(), expired]);
    } catch (err) {
      throw this.mapError(err);
    } finally {
      clearTimeout(timer);
    }
  }

  private timeout(): CniError {
    return tryAgainLater(`etcd did not answer within ${this.conf.requestTimeoutMs} ms`, `endpoints: ${this.conf.endpoints.join(', ')}`);
  }

  private mapError(err: unknown): CniError {
    if (err instanceof CniError) return err;
    const name = (err as Error | undefined)?.constructor?.name ?? '';
    const message = (err as Error | undefined)?.message ?? String(err);
    const where = `endpoints: ${this.conf.endpoints.join(', ')}`;
    if (REFUSED.some((n) => name.includes(n))) return new CniError(ErrorCode.InvalidNetworkConfig, `etcd refused the credentials: ${message}`, where);
    if (TRANSIENT.some((n) => name.includes(n)) || /deadline|unavailable|connect|timed? ?out|closed/i.test(message)) {
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
