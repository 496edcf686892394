/**
 * The resolver's side of cluster-wide names (cluster.ts): for each network
 * whose description on disk carries a `cluster` reference, a watch on its
 * records in etcd, so a container on this host resolves one on another host
 * by name, and a snapshot of them on disk.
 *
 * - The etcd connection comes from the network's description (the fields of
 *   the plugin's own config: endpoints and file paths), resolved under
 *   shared/etcd/connection.ts's rules: the password is read from its 0600
 *   root-owned file here, never passed in argv and never logged.
 * - Each change under the network's prefix (or a reconnect) re-reads the
 *   whole prefix; every record is validated (cluster.ts decodeRecords): a
 *   forged or malformed one is ignored.
 * - After each successful read the records are written to
 *   <dir>/cluster/<network>.json (atomically, 0600). A resolver started, or
 *   running, while etcd is down answers the cluster names from it; local
 *   names come from the host's own records and never depend on etcd.
 * - A failed read is retried every retryMs until etcd answers again.
 * - Every resyncMs the prefix is read anyway: after etcd comes back, the
 *   watch reconnects on its own backoff (seconds to tens of seconds), and a
 *   change made in between (a DEL on another host) would otherwise go
 *   unseen until the next event.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import type { Logger } from '../log';
import { canonicalIp } from '../netlink/ipaddr';
import type { KV, Watch } from '../etcd/kv';
import { writeFileAtomic } from '../sys/file';
import { type ClusterRecord, type ClusterRef, type ClusterScope, clusterPrefix, clusterRecordSchema, decodeRecords, listClusterRecords } from './cluster';
import type { DnsEntry, LoadedNetwork } from './records';

export const SNAPSHOT_DIR = 'cluster';
export const DEFAULT_RETRY_MS = 2000;
export const DEFAULT_RESYNC_MS = 5000;

const snapshotSchema = z.object({ network: z.string(), prefix: z.string(), records: z.array(z.unknown()) });

/** The KV a reference connects to: EtcdKV by default; a test passes a fake. */
export type KvFactory = (ref: ClusterRef) => KV;

export function defaultKvFactory(ref: ClusterRef): KV {
  /* eslint-disable @typescript-eslint/no-require-imports */
  const { resolveConnection } = require('../etcd/connection') as typeof import('../etcd/connection');
  const { EtcdKV } = require('../etcd/kv') as typeof import('../etcd/kv');
  /* eslint-enable @typescript-eslint/no-require-imports */
  const { requestTimeoutMs, ...fields } = ref.etcd;
  return new EtcdKV({ ...resolveConnection(fields, 'dns cluster etcd'), requestTimeoutMs: requestTimeoutMs ?? 5000 });
}

export interface ClusterWatchOptions {
  /** the records directory; snapshots go under <dir>/cluster */
  dir: string;
  kv?: KvFactory;
  log?: Logger;
  /** something the resolver answers changed */
  onChange: () => void;
  retryMs?: number;
  /** how often the prefix is read even without a watch event (default DEFAULT_RESYNC_MS) */
  resyncMs?: number;
}

interface Watched {
  readonly id: string;
  readonly scope: ClusterScope;
  kv?: KV;
  watch?: Watch;
  records: ClusterRecord[];
  reading: boolean;
  again: boolean;
  timer?: NodeJS.Timeout;
  resync?: NodeJS.Timeout;
  failing: boolean;
  closed: boolean;
}

export class ClusterWatch {
  private readonly watched = new Map<string, Watched>();
  private readonly log: Logger;
  private readonly kvOf: KvFactory;
  private readonly retryMs: number;

  constructor(private readonly opts: ClusterWatchOptions) {
    this.log = opts.log ?? (() => {});
    this.kvOf = opts.kv ?? defaultKvFactory;
    this.retryMs = opts.retryMs ?? DEFAULT_RETRY_MS;
  }

  /** Watches the cluster networks among `nets` (started from their snapshot), stops the others. */
  sync(nets: readonly LoadedNetwork[]): void {
    const want = new Map<string, LoadedNetwork & { cluster: ClusterRef }>();
    for (const n of nets) if (n.cluster) want.set(n.name, n as LoadedNetwork & { cluster: ClusterRef });
    for (const [name, w] of this.watched) {
      const n = want.get(name);
      if (!n || refId(n.cluster) !== w.id) {
        this.stop(w);
        this.watched.delete(name);
        // a network no longer served here: its snapshot would only go stale
        if (!n) fs.rmSync(this.snapshotFile(name), { force: true });
      }
    }
    for (const [name, n] of want) if (!this.watched.has(name)) this.start(name, n.cluster);
  }

  /** The network's cluster records as last read (or loaded from the snapshot). */
  records(network: string): readonly ClusterRecord[] {
    return this.watched.get(network)?.records ?? [];
  }

  /** Whether the last read of the network's records failed (etcd unreachable: answering from the snapshot). */
  stale(network: string): boolean {
    return this.watched.get(network)?.failing ?? false;
  }

  close(): void {
    for (const w of this.watched.values()) this.stop(w);
    this.watched.clear();
  }

  snapshotFile(network: string): string {
    return path.join(this.opts.dir, SNAPSHOT_DIR, `${network}.json`);
  }

  private start(name: string, ref: ClusterRef): void {
    const scope: ClusterScope = { prefix: ref.prefix, network: name, subnets: ref.subnets, node: ref.node, timeoutMs: ref.etcd.requestTimeoutMs };
    const w: Watched = { id: refId(ref), scope, records: this.loadSnapshot(scope), reading: false, again: false, failing: false, closed: false };
    this.watched.set(name, w);
    try {
      w.kv = this.kvOf(ref);
    } catch (e) {
      // a broken connection (a missing password file, say): the snapshot serves; nothing to retry until the config changes
      this.log(`dns: network ${name}: cannot connect to etcd: ${(e as Error).message}`);
      w.failing = true;
      return;
    }
    void this.read(w);
    this.startWatch(w);
    w.resync = setInterval(() => void this.read(w), this.opts.resyncMs ?? DEFAULT_RESYNC_MS);
    w.resync.unref();
  }

  private startWatch(w: Watched): void {
    if (w.closed || !w.kv) return;
    w.kv.watchPrefix(clusterPrefix(w.scope.prefix, w.scope.network), () => void this.read(w)).then(
      (watch) => {
        if (w.closed) void watch.cancel().catch(() => {});
        else w.watch = watch;
      },
      (e: Error) => {
        this.log(`dns: network ${w.scope.network}: cannot watch etcd (${e.message}); trying again`);
        if (!w.closed) setTimeout(() => this.startWatch(w), this.retryMs).unref();
      },
    );
  }

  private stop(w: Watched): void {
    w.closed = true;
    if (w.timer) clearTimeout(w.timer);
    if (w.resync) clearInterval(w.resync);
    void w.watch?.cancel().catch(() => {});
    try {
      w.kv?.close();
    } catch {
      /* already closed */
    }
  }

  /** Re-reads the network's records; concurrent calls coalesce into one more read. */
  private async read(w: Watched): Promise<void> {
    if (w.closed || !w.kv) return;
    if (w.reading) {
      w.again = true;
      return;
    }
    w.reading = true;
    try {
      do {
        w.again = false;
        let recs: ClusterRecord[];
        try {
          recs = await listClusterRecords(w.kv, w.scope, this.log);
        } catch (e) {
          if (!w.failing) this.log(`dns: network ${w.scope.network}: etcd unreachable (${(e as Error).message}); answering cluster names from the last snapshot`);
          w.failing = true;
          if (!w.closed && !w.timer) {
            w.timer = setTimeout(() => {
              w.timer = undefined;
              void this.read(w);
            }, this.retryMs);
            w.timer.unref();
          }
          return;
        }
        if (w.closed) return;
        if (w.failing) this.log(`dns: network ${w.scope.network}: etcd answers again`);
        w.failing = false;
        const changed = JSON.stringify(recs) !== JSON.stringify(w.records);
        w.records = recs;
        this.writeSnapshot(w);
        if (changed) this.opts.onChange();
      } while (w.again && !w.closed);
    } finally {
      w.reading = false;
    }
  }

  private writeSnapshot(w: Watched): void {
    try {
      const data = JSON.stringify({ network: w.scope.network, prefix: w.scope.prefix, records: w.records });
      writeFileAtomic(this.snapshotFile(w.scope.network), data, { mode: 0o600, mkdir: true, unlessSame: true });
    } catch (e) {
      this.log(`dns: network ${w.scope.network}: cannot write the cluster snapshot: ${(e as Error).message}`);
    }
  }

  /** The snapshot's records, validated as etcd's are (it is a file: trusted no more than etcd). */
  private loadSnapshot(scope: ClusterScope): ClusterRecord[] {
    let raw: unknown;
    try {
      raw = JSON.parse(fs.readFileSync(this.snapshotFile(scope.network), 'utf8'));
    } catch {
      return [];
    }
    const s = snapshotSchema.safeParse(raw);
    if (!s.success || s.data.network !== scope.network || s.data.prefix !== scope.prefix) return [];
    // the same checks as a read from etcd: a record as it would sit under its key
    const kvs = s.data.records.flatMap((r) => {
      const p = clusterRecordSchema.safeParse(r);
      return p.success ? [{ key: `${clusterPrefix(scope.prefix, scope.network)}${p.data.containerId}/${p.data.ifname}`, value: JSON.stringify(p.data) }] : [];
    });
    return decodeRecords(kvs, scope.prefix, scope.network, scope.subnets, this.log);
  }
}

function refId(ref: ClusterRef): string {
  return JSON.stringify(ref);
}

/**
 * The network as the resolver answers for it: its local entries (this
 * host's, authoritative: they never wait for etcd) and the cluster records
 * of the other hosts. A record written by this node, or for an attachment
 * this host has locally, is left to the local entry.
 */
export function withClusterRecords(net: LoadedNetwork, records: readonly ClusterRecord[]): LoadedNetwork {
  if (!net.cluster || records.length === 0) return net;
  const local = new Set(net.entries.map((e) => `${e.containerId}/${e.ifname}`));
  const remote: DnsEntry[] = records
    .filter((r) => r.host !== net.cluster!.node && !local.has(`${r.containerId}/${r.ifname}`))
    .map((r) => ({ containerId: r.containerId, ifname: r.ifname, names: r.names, v4: r.v4, v6: r.v6 }));
  return { ...net, entries: [...net.entries, ...remote] };
}

/** The sources a clientsOnly network serves: its entries' clients (CHECK asks from the container too). */
export function clientsOf(net: LoadedNetwork): Set<string> | undefined {
  if (!net.clientsOnly) return undefined;
  const out = new Set<string>();
  for (const a of net.entries.flatMap((e) => e.clients ?? [])) {
    try {
      out.add(canonicalIp(a));
    } catch {
      /* validated already */
    }
  }
  return out;
}
