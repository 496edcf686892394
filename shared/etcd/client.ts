/**
 * How EtcdKV (./kv.ts, the project's one way to etcd) opens its etcd3
 * client: endpoints, TLS, auth and a dial timeout, with fast reconnects so a
 * restarted etcd is found again within a second.
 */
import { checkConnection } from './connection';
import { Etcd3, loadEtcd3 } from './load';

export interface EtcdConnection {
  /** "127.0.0.1:2379", "http://10.0.0.1:2379" or "https://..." */
  readonly endpoints: readonly string[];
  readonly tls?: { readonly ca: Buffer; readonly cert?: Buffer; readonly key?: Buffer };
  readonly auth?: { readonly username: string; readonly password: string };
  /** credentials over http:// were asked for explicitly ("insecure": true); see connection.ts */
  readonly insecure?: boolean;
  /** bounds dialing; callers bound each request themselves */
  readonly timeoutMs: number;
}

export interface EtcdClient {
  /** the etcd3 module (builders, CompareTarget, error classes) */
  readonly etcd: Etcd3;
  readonly client: InstanceType<Etcd3['Etcd3']>;
}

/** etcd3's fault-handling policy that runs each call once, as it is (etcd3 only calls execute()). */
const PASS_THROUGH = {
  execute: <T>(fn: (context: { signal: AbortSignal; attempt: number }) => PromiseLike<T> | T): Promise<T> =>
    Promise.resolve().then(() => fn({ signal: new AbortController().signal, attempt: 0 })),
};

/**
 * Throws CniError 7 (before loading anything) when `conn` breaks the rules of connection.ts.
 *
 * No retries and no circuit breaker inside etcd3: callers bound and retry their own calls, and etcd3's breaker,
 * once open, fails every call for 5 s without trying etcd at all, which
 * under load turned one slow answer into a run of failures (an overlay
 * agent that could not register for minutes on a loaded host).
 */
export function connectEtcd(conn: EtcdConnection): EtcdClient {
  checkConnection(conn, 'etcd');
  const etcd = loadEtcd3();
  const client = new etcd.Etcd3({
    hosts: conn.endpoints.map((e) => e.replace(/^https?:\/\//, '')),
    credentials: conn.tls ? { rootCertificate: conn.tls.ca, privateKey: conn.tls.key, certChain: conn.tls.cert } : undefined,
    auth: conn.auth ? { username: conn.auth.username, password: conn.auth.password } : undefined,
    dialTimeout: conn.timeoutMs,
    grpcOptions: { 'grpc.initial_reconnect_backoff_ms': 100, 'grpc.max_reconnect_backoff_ms': 1000 },
    // etcd3's own policy types are not exported in a usable form; the shape is what it calls
    ...({ faultHandling: { host: () => PASS_THROUGH, global: PASS_THROUGH } } as Record<string, unknown>),
  });
  return { etcd, client };
}
