/**
 * The etcd store as ipam/plugin.ts's openStore() gets it: synchronously, and
 * without loading anything of the store until its first call. That first
 * call imports ./store (and, when it connects, etcd3 and gRPC), so a
 * local-store invocation, which imports this file, pays nothing for etcd.
 *
 * A dynamic import rather than require(): esbuild bundles it as a lazy
 * module all the same, and vitest can resolve it to TypeScript source.
 */
import type { Logger } from '../../shared/log';
import type { Allocation, AllocationStore, Owner } from '../allocator';
import type { IpamConfig } from '../config';
import type { IP } from '../../shared/ip';
import type { EtcdStore } from './store';

export function openEtcdStore(conf: IpamConfig, log?: Logger): AllocationStore {
  return new LazyEtcdStore(conf, log);
}

class LazyEtcdStore implements AllocationStore {
  private store?: Promise<EtcdStore>;

  constructor(
    private readonly conf: IpamConfig,
    private readonly log: Logger | undefined,
  ) {}

  /** The real store; config errors (code 7) surface on this first call. */
  get(): Promise<EtcdStore> {
    this.store ??= import('./store').then((m) => m.EtcdStore.open(this.conf, { log: this.log }));
    return this.store;
  }

  async withinOperation<T>(fn: () => Promise<T>): Promise<T> {
    return (await this.get()).withinOperation(fn);
  }
  async reserve(containerId: string, ifname: string, ip: IP, rangeSetId: string): Promise<boolean> {
    return (await this.get()).reserve(containerId, ifname, ip, rangeSetId);
  }
  async lastReserved(rangeSetId: string): Promise<IP | undefined> {
    return (await this.get()).lastReserved(rangeSetId);
  }
  async releaseByOwner(containerId: string, ifname: string): Promise<IP[]> {
    return (await this.get()).releaseByOwner(containerId, ifname);
  }
  async getByOwner(containerId: string, ifname: string): Promise<IP[]> {
    return (await this.get()).getByOwner(containerId, ifname);
  }
  async listAll(): Promise<Allocation[]> {
    return (await this.get()).listAll();
  }
  async gc(keep: readonly Owner[]): Promise<Allocation[]> {
    return (await this.get()).gc(keep);
  }
  async close(): Promise<void> {
    // Never opened: nothing to close (and no reason to load etcd3 now).
    if (!this.store) return;
    const store = await this.store.catch(() => undefined);
    await store?.close();
  }
}
