/**
 * The key ring in etcd, and its local copy.
 *
 * etcd: one key, `<prefix>/ring`, holding the whole ring (serializeRing), so
 * that a rotation is one compare-and-set on its mod revision: two leaders
 * racing cannot both rotate, and no reader ever sees half a rotation.
 * Access control is etcd's (TLS client certificates, users): a host removed
 * from the cluster loses its etcd credentials and so every key made after.
 *
 * Local copy: `<cacheDir>/ring.json`, mode 0600 in a 0700 directory,
 * written atomically (temporary file, fsync, rename, fsync of the
 * directory): a host that restarts while etcd is unreachable still has the
 * keys its peers use, and a crash mid-write leaves the old copy, never half
 * of one. Nothing here logs; errors name files and revisions, not contents.
 *
 * No rollback: a ring in etcd with a lower generation than the highest this
 * host has taken (the local copy, or what this process handed out), or the
 * same generation with other keys, is refused: the host keeps its ring and
 * `problem` says why. Whoever can write etcd (a restored backup, an
 * attacker holding old, maybe leaked keys) cannot move a host back to
 * them; the leader restores the newest ring it holds (rotator.ts).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CniError, ErrorCode } from '../cni/errors';
import { KeyRing, RingCorruptError, parseRing, serializeRing, type RingKey } from './keyring';
import { get, putIf, type KV } from '../etcd/kv';
import { writeFileAtomic } from '../sys/file';

export type LoadResult =
  | { state: 'missing' }
  | { state: 'ok'; ring: KeyRing; revision: bigint }
  | { state: 'corrupt'; error: RingCorruptError; revision: bigint };

export interface RingStoreOptions {
  /** etcd key prefix, e.g. "/cni-ts/ipsec" */
  prefix: string;
  /** where the local copy lives, e.g. "/var/lib/cni-ts/ipsec"; omitted: no local copy */
  cacheDir?: string;
  /** how long one etcd call may take; default 5000 ms */
  timeoutMs?: number;
}

export const CACHE_FILE = 'ring.json';

/** etcd holds an older ring than one this host already took. */
export class RingRollbackError extends Error {
  constructor(found: number, held: number) {
    super(`ipsec key ring in etcd has generation ${found}, ${found === held ? 'with other keys than' : 'older than'} generation ${held} already applied here; keeping ${held}`);
    this.name = 'RingRollbackError';
  }
}

function sameKeys(a: readonly RingKey[], b: readonly RingKey[]): boolean {
  return a.length === b.length && a.every((k, i) => k.id === b[i]!.id && k.material.equals(b[i]!.material));
}

/** Is `found` a step back from `held` (older, or the same generation with other keys)? */
export function isRollback(found: KeyRing, held: KeyRing | undefined): boolean {
  if (!held) return false;
  return found.generation < held.generation || (found.generation === held.generation && !sameKeys(found.keys, held.keys));
}

export class RingStore {
  readonly ringKey: string;
  /** the newest ring this store has handed out (so no rollback even without a local copy) */
  private highest: KeyRing | undefined;

  constructor(
    private readonly kv: KV,
    private readonly opts: RingStoreOptions,
  ) {
    this.ringKey = `${opts.prefix.replace(/\/+$/, '')}/ring`;
  }

  private deadline(): number {
    return Date.now() + (this.opts.timeoutMs ?? 5000);
  }

  /** The ring in etcd, as found. Throws CniError 11 when etcd cannot answer. */
  async load(): Promise<LoadResult> {
    const v = await get(this.kv, this.ringKey, this.deadline());
    if (!v) return { state: 'missing' };
    try {
      return { state: 'ok', ring: parseRing(v.value), revision: v.modRevision };
    } catch (e) {
      if (e instanceof RingCorruptError) return { state: 'corrupt', error: e, revision: v.modRevision };
      throw e;
    }
  }

  /** Writes `ring` if etcd still holds revision `expected` (0n: no ring yet). False when someone wrote first. */
  async compareAndSet(ring: KeyRing, expected: bigint): Promise<boolean> {
    return putIf(this.kv, this.ringKey, serializeRing(ring), expected, this.deadline());
  }

  /**
   * What a host should use: etcd's ring (refreshing the local copy), or,
   * when etcd is unreachable or holds a corrupt ring, the local copy.
   * Undefined when there is neither: the host installs no SA yet.
   * etcd's ring always wins over the local copy when it parses: it is the
   * one every other host reads.
   */
  async fetch(): Promise<{ ring: KeyRing | undefined; source: 'etcd' | 'cache' | 'none'; problem?: Error }> {
    let loaded: LoadResult;
    try {
      loaded = await this.load();
    } catch (e) {
      if (!(e instanceof CniError && e.code === ErrorCode.TryAgainLater)) throw e;
      const cached = this.readCache();
      return { ring: cached, source: cached ? 'cache' : 'none', problem: e };
    }
    const cached = this.readCacheQuietly();
    const held = this.held(cached);
    if (loaded.state === 'ok') {
      if (isRollback(loaded.ring, held)) return { ring: held, source: 'cache', problem: new RingRollbackError(loaded.ring.generation, held!.generation) };
      if (!cached || serializeRing(cached) !== serializeRing(loaded.ring)) this.writeCache(loaded.ring);
      this.highest = loaded.ring;
      return { ring: loaded.ring, source: 'etcd' };
    }
    if (loaded.state === 'corrupt') return { ring: cached, source: cached ? 'cache' : 'none', problem: loaded.error };
    return { ring: cached, source: cached ? 'cache' : 'none' };
  }

  /** The newest ring this host holds: the local copy or what this store handed out last, whichever is newer. */
  held(cached: KeyRing | undefined = this.readCacheQuietly()): KeyRing | undefined {
    const h = this.highest;
    if (!h) return cached;
    if (!cached) return h;
    return cached.generation > h.generation ? cached : h;
  }

  private get cachePath(): string | undefined {
    return this.opts.cacheDir === undefined ? undefined : path.join(this.opts.cacheDir, CACHE_FILE);
  }

  /** The local copy; undefined when absent; RingCorruptError when unreadable as a ring. */
  readCache(): KeyRing | undefined {
    const file = this.cachePath;
    if (!file) return undefined;
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw e;
    }
    return parseRing(text);
  }

  private readCacheQuietly(): KeyRing | undefined {
    try {
      return this.readCache();
    } catch (e) {
      if (e instanceof RingCorruptError) return undefined; // etcd's copy will replace it
      throw e;
    }
  }

  /** Atomically replaces the local copy (0600). */
  writeCache(ring: KeyRing): void {
    const file = this.cachePath;
    if (!file) return;
    // 0600 from the first byte: the file is never, even for an instant, readable by others.
    writeFileAtomic(file, serializeRing(ring), { mkdir: true, syncDir: true });
  }
}
