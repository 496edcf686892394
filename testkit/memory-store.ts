/**
 * An in-memory AllocationStore: the contract the local store and the etcd
 * store both meet, with nothing behind it. Allocator tests run against it
 * and against the real local store side by side, so a behaviour that holds
 * for one and not the other shows up as a failing pair.
 */
import type { Allocation, AllocationStore, Owner } from '../ipam/allocator';
import { formatIP, parseIP, type IP } from '../shared/ip';

export class MemoryStore implements AllocationStore {
  /** address text -> owner */
  readonly byIP = new Map<string, Owner>();
  readonly last = new Map<string, string>();
  locked = false;
  closed = false;

  /** One operation at a time, as the file lock of the local store makes it. */
  async withinOperation<T>(fn: () => Promise<T>): Promise<T> {
    if (this.locked) throw new Error('MemoryStore: an operation started inside another');
    this.locked = true;
    try {
      return await fn();
    } finally {
      this.locked = false;
    }
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  async reserve(containerId: string, ifname: string, ip: IP, rangeSetId: string): Promise<boolean> {
    this.assertLocked();
    const key = formatIP(ip);
    if (this.byIP.has(key)) return false;
    this.byIP.set(key, { containerId, ifname });
    this.last.set(rangeSetId, key);
    return true;
  }

  async lastReserved(rangeSetId: string): Promise<IP | undefined> {
    const text = this.last.get(rangeSetId);
    return text === undefined ? undefined : parseIP(text);
  }

  async releaseByOwner(containerId: string, ifname: string): Promise<IP[]> {
    this.assertLocked();
    const out: IP[] = [];
    for (const [key, o] of this.byIP) {
      if (o.containerId === containerId && o.ifname === ifname) {
        this.byIP.delete(key);
        out.push(parseIP(key)!);
      }
    }
    return out;
  }

  async getByOwner(containerId: string, ifname: string): Promise<IP[]> {
    return [...this.byIP]
      .filter(([, o]) => o.containerId === containerId && o.ifname === ifname)
      .map(([key]) => parseIP(key)!);
  }

  async listAll(): Promise<Allocation[]> {
    return [...this.byIP].map(([key, o]) => ({ ...o, ip: parseIP(key)! }));
  }

  async gc(keep: readonly Owner[]): Promise<Allocation[]> {
    this.assertLocked();
    const kept = new Set(keep.map((o) => `${o.containerId}\0${o.ifname}`));
    const out: Allocation[] = [];
    for (const [key, o] of this.byIP) {
      if (!kept.has(`${o.containerId}\0${o.ifname}`)) {
        this.byIP.delete(key);
        out.push({ ...o, ip: parseIP(key)! });
      }
    }
    return out;
  }

  private assertLocked(): void {
    if (!this.locked) throw new Error('MemoryStore: modified outside an operation');
  }
}
