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
import { connectEtcd } from '../../shared/etcd/client';
import type { EtcdStoreConfig } from './config';

import { EtcdCalls, type TxnRequest, type TxnResult } from '../../shared/etcd/txn';

export type { Compare, KeyValue, Op, TxnRequest, TxnResult } from '../../shared/etcd/txn';
export { tryAgainLater } from '../../shared/etcd/txn';

export interface KV {
  /** Runs one transaction; rejects with a CniError (11 when etcd cannot answer by `deadline`, epoch ms). */
  txn(req: TxnRequest, deadline: number): Promise<TxnResult>;
  /** Grants a lease of `ttlSeconds` (etcd's LeaseGrant) and returns its ID; same errors as txn. */
  grantLease(ttlSeconds: number, deadline: number): Promise<bigint>;
  close(): void;
}

/** etcd3's fault-handling policy that runs each call once, as it is (etcd3 only calls execute()). */
const PASS_THROUGH = {
  execute: <T>(fn: (context: { signal: AbortSignal; attempt: number }) => PromiseLike<T> | T): Promise<T> =>
    Promise.resolve().then(() => fn({ signal: new AbortController().signal, attempt: 0 })),
};

export class EtcdKV implements KV {
  // etcd3's types, loaded lazily: see the header comment.
  private readonly client: import('etcd3').Etcd3;
  private readonly etcd: typeof import('etcd3');
  private readonly calls: EtcdCalls;

  constructor(conf: Pick<EtcdStoreConfig, 'endpoints' | 'tls' | 'auth' | 'insecure' | 'requestTimeoutMs'>) {
    // Fast reconnects (shared/etcd/client.ts) rather than queueing behind an
    // unready channel: the deadline below bounds each call either way, and
    // 11 tells the runtime to retry.
    const { etcd, client } = connectEtcd({ endpoints: conf.endpoints, tls: conf.tls, auth: conf.auth, insecure: conf.insecure, timeoutMs: conf.requestTimeoutMs }, {
      // No retries and no circuit breaker inside etcd3: the store retries
      // conflicts itself within its deadline, and etcd3's breaker, once
      // open, fails every call for 5 s without trying etcd at all, which
      // turned one slow answer under load into a run of failed ADDs.
      faultHandling: { host: () => PASS_THROUGH, global: PASS_THROUGH },
    });
    this.etcd = etcd;
    this.client = client;
    this.calls = new EtcdCalls(conf.endpoints, conf.requestTimeoutMs);
  }

  txn(req: TxnRequest, deadline: number): Promise<TxnResult> {
    return this.calls.txn(this.etcd, this.client, req, deadline);
  }

  async grantLease(ttlSeconds: number, deadline: number): Promise<bigint> {
    const res = await this.calls.bounded(deadline, () => this.client.leaseClient.leaseGrant({ TTL: ttlSeconds, ID: 0 }, { deadline: new Date(deadline) }));
    return BigInt(res.ID);
  }

  /**
   * Renews `lease` once (etcd's LeaseKeepAlive, as `etcdctl lease
   * keep-alive --once`) and returns the TTL in seconds etcd now gives it;
   * 0 when the lease no longer exists. Same errors as txn.
   */
  async keepAliveOnce(lease: bigint, deadline: number): Promise<number> {
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
          stream.write({ ID: lease.toString() });
        });
        return Math.max(0, Number(res.TTL));
      } catch (err) {
        if (/not found/i.test((err as Error).message)) return 0;
        throw err;
      } finally {
        stream.cancel();
      }
    });
  }

  close(): void {
    this.client.close();
  }
}
