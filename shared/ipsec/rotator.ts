/**
 * The leader's side of key management, one tick at a time (the agent calls
 * tick() every few seconds; nothing here sleeps or reads the clock but
 * through the injected Clock).
 *
 *   not leader                 -> nothing
 *   no ring in etcd            -> create one (newRing)
 *   ring corrupt               -> restore the local copy if it is good
 *                                 (hosts still use those keys), else a new ring
 *   etcd's ring older than ours -> restore ours (a rollback in etcd: a
 *                                 backup restored, or a write of old keys)
 *   rotatedAt far in the future -> clamp it to now (a leader whose clock ran
 *                                 ahead must not stop rotations until then)
 *   rotation due (period, 12 h) -> write rotate(ring) by compare-and-set
 *
 * Every write is a compare-and-set on the revision read in the same tick:
 * if another leader (or a former one) wrote meanwhile, this tick does
 * nothing and the next one starts from what is there. etcd unreachable:
 * the tick throws CniError 11 having changed nothing; hosts keep the keys
 * they have, and the next tick retries.
 */
import { CniError, ErrorCode } from '../cni/errors';
import type { LeaderElection } from './election';
import {
  AesKeyBytes,
  Clock,
  DEFAULT_ROTATION_PERIOD_MS,
  KeyMaterialSource,
  KeyRing,
  RingCorruptError,
  newRing,
  randomKeyMaterial,
  rotate,
  rotationDue,
} from './keyring';
import { isRollback, type RingStore } from './ring-store';

/**
 * A ring's rotatedAt more than one rotation period ahead of this leader's
 * clock is taken for another clock's mistake and clamped to now. Less than
 * that, the leader waits (the existing rule: a clock behind the stamp never
 * rotates early), which delays a rotation by at most one period; without
 * the clamp, a stamp a year ahead would stop rotations for a year.
 */

export interface RotatorOptions {
  store: RingStore;
  election: LeaderElection;
  clock: Clock;
  /** default 12 h */
  periodMs?: number;
  keySource?: KeyMaterialSource;
  /** for a new ring; default 16 (AES-128, as Docker) */
  aesBytes?: AesKeyBytes;
  /**
   * Asked when a rotation is due: may the leader rotate `ring` now? The
   * overlay answers false while some host has not yet applied `ring`
   * (its next key would not be receivable there when peers start sending
   * with it). Omitted: always.
   */
  ready?: (ring: KeyRing, now: number) => Promise<boolean>;
}

export type TickResult =
  | { action: 'follower' }
  | { action: 'idle'; ring: KeyRing }
  | { action: 'created'; ring: KeyRing }
  | { action: 'rotated'; ring: KeyRing }
  | { action: 'restored'; ring: KeyRing; from: 'cache' | 'new' }
  | { action: 'waiting'; ring: KeyRing }
  /** rotatedAt was far ahead of this leader's clock: the same keys, stamped now, generation + 1 */
  | { action: 'clamped'; ring: KeyRing }
  | { action: 'lost-race' };

export class KeyRotator {
  constructor(private readonly o: RotatorOptions) {
    const p = o.periodMs ?? DEFAULT_ROTATION_PERIOD_MS;
    if (!Number.isFinite(p) || p <= 0) throw new CniError(ErrorCode.InvalidNetworkConfig, `ipsec key rotation period must be positive, got ${p}`);
  }

  get periodMs(): number {
    return this.o.periodMs ?? DEFAULT_ROTATION_PERIOD_MS;
  }

  async tick(): Promise<TickResult> {
    if (!(await this.o.election.campaign())) return { action: 'follower' };
    const now = this.o.clock();
    const source = this.o.keySource ?? randomKeyMaterial;
    const loaded = await this.o.store.load();
    switch (loaded.state) {
      case 'missing': {
        const ring = newRing(now, source, this.o.aesBytes ?? 16);
        return (await this.o.store.compareAndSet(ring, 0n)) ? { action: 'created', ring } : { action: 'lost-race' };
      }
      case 'corrupt': {
        let cached: KeyRing | undefined;
        try {
          cached = this.o.store.readCache();
        } catch (e) {
          if (!(e instanceof RingCorruptError)) throw e;
        }
        // Restoring with a higher generation makes every host accept it
        // again; the keys are the ones they already use, so nothing drops.
        const ring: KeyRing = cached ? { ...cached, generation: cached.generation + 1 } : newRing(now, source, this.o.aesBytes ?? 16);
        return (await this.o.store.compareAndSet(ring, loaded.revision))
          ? { action: 'restored', ring, from: cached ? 'cache' : 'new' }
          : { action: 'lost-race' };
      }
      case 'ok': {
        const held = this.o.store.held();
        if (held && isRollback(loaded.ring, held)) {
          // hosts refuse etcd's older ring and keep this one: make etcd agree, above both generations
          const ring: KeyRing = { ...held, generation: Math.max(held.generation, loaded.ring.generation) + 1 };
          return (await this.o.store.compareAndSet(ring, loaded.revision)) ? { action: 'restored', ring, from: 'cache' } : { action: 'lost-race' };
        }
        if (loaded.ring.rotatedAt > now + this.periodMs) {
          const ring: KeyRing = { ...loaded.ring, generation: loaded.ring.generation + 1, rotatedAt: now };
          return (await this.o.store.compareAndSet(ring, loaded.revision)) ? { action: 'clamped', ring } : { action: 'lost-race' };
        }
        if (!rotationDue(loaded.ring, now, this.periodMs)) return { action: 'idle', ring: loaded.ring };
        if (this.o.ready && !(await this.o.ready(loaded.ring, now))) return { action: 'waiting', ring: loaded.ring };
        const ring = rotate(loaded.ring, now, source);
        return (await this.o.store.compareAndSet(ring, loaded.revision)) ? { action: 'rotated', ring } : { action: 'lost-race' };
      }
    }
  }
}
