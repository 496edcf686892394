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
 * is constructed, as in ipam/etcd/kv.ts, never at module load: plugins that
 * never talk to etcd must not pay for it.
 */
import { connectEtcd } from '../../shared/etcd/client';
import type { SecureConnection } from '../../shared/etcd/connection';
import { EtcdCalls, tryAgainLater, type TxnRequest, type TxnResult } from '../../shared/etcd/txn';

export type { SecureConnection } from '../../shared/etcd/connection';
export type { Compare, KeyValue, Op, TxnRequest, TxnResult } from '../../shared/etcd/txn';
export { tryAgainLater } from '../../shared/etcd/txn';

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

export interface EtcdConnection extends SecureConnection {
  readonly requestTimeoutMs: number;
}

export class EtcdKV implements KV {
  private readonly client: import('etcd3').Etcd3;
  private readonly etcd: typeof import('etcd3');

  private readonly calls: EtcdCalls;

  constructor(conf: EtcdConnection) {
    ({ etcd: this.etcd, client: this.client } = connectEtcd({ ...conf, timeoutMs: conf.requestTimeoutMs }));
    this.calls = new EtcdCalls(conf.endpoints, conf.requestTimeoutMs);
  }

  txn(req: TxnRequest, deadline: number): Promise<TxnResult> {
    return this.calls.txn(this.etcd, this.client, req, deadline);
  }

  async leaseGrant(ttlSeconds: number, deadline: number): Promise<string> {
    const res = await this.calls.bounded(deadline, () => this.client.leaseClient.leaseGrant({ TTL: ttlSeconds, ID: 0 }, { deadline: new Date(deadline) }));
    if (res.error) throw tryAgainLater(`etcd refused a lease: ${res.error}`);
    return String(res.ID);
  }

  async leaseKeepAlive(id: string, deadline: number): Promise<boolean> {
    return this.calls.bounded(deadline, async () => {
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
    await this.calls.bounded(deadline, () => this.client.leaseClient.leaseRevoke({ ID: id }, { deadline: new Date(deadline) }));
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
}
