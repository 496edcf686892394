/**
 * The key ring state machine: pure, with an injected clock and key source.
 */
import { inspect } from 'node:util';
import { describe, expect, it } from 'vitest';
import {
  DEFAULT_ROTATION_PERIOD_MS,
  KeyRing,
  RingCorruptError,
  describeRing,
  newRing,
  parseRing,
  primaryKey,
  rotate,
  rotationDue,
  serializeRing,
  validateRing,
} from '../../../shared/ipsec/keyring';
import { Secret } from '../../../shared/ipsec/secret';

const H = 60 * 60 * 1000;
const T0 = Date.UTC(2026, 0, 1);

/** Deterministic material: byte n repeated, n counting up. */
function counterSource() {
  let n = 0;
  return (aes: 16 | 32) => Buffer.alloc(aes + 4, ++n);
}

const ids = (r: KeyRing) => r.keys.map((k) => k.id);

describe('key ring', () => {
  it('starts with a primary to send with and the next key already receivable', () => {
    const r = newRing(T0, counterSource());
    expect(ids(r)).toEqual([1, 2]);
    expect(r.primaryId).toBe(1);
    expect(r.generation).toBe(1);
    expect(r.keys.every((k) => k.material.length === 20)).toBe(true);
    expect(newRing(T0, counterSource(), 32).keys[0]!.material.length).toBe(36);
  });

  it('rotates by promoting next to primary, adding a fresh next and dropping the oldest beyond three', () => {
    const src = counterSource();
    let r = newRing(T0, src);
    r = rotate(r, T0 + 12 * H, src);
    expect([ids(r), r.primaryId, r.generation]).toEqual([[1, 2, 3], 2, 2]);
    r = rotate(r, T0 + 24 * H, src);
    expect([ids(r), r.primaryId, r.generation]).toEqual([[2, 3, 4], 3, 3]);
    r = rotate(r, T0 + 36 * H, src);
    expect([ids(r), r.primaryId]).toEqual([[3, 4, 5], 4]);
    expect(primaryKey(r).material.reveal()[0]).toBe(4);
    expect(r.rotatedAt).toBe(T0 + 36 * H);
  });

  it('keeps every key receivable for a period before it sends and for a period after it stops', () => {
    // Walk many rotations: a key is never primary in the ring where it first
    // appears, and it is still in the ring right after it stops being primary.
    const src = counterSource();
    let r = newRing(T0, src);
    const seen = new Map<number, number>(); // id -> generation it appeared in
    for (const k of r.keys) seen.set(k.id, r.generation);
    for (let i = 1; i <= 10; i++) {
      const prev = r;
      r = rotate(r, T0 + i * 12 * H, src);
      for (const k of r.keys) if (!seen.has(k.id)) seen.set(k.id, r.generation);
      expect(seen.get(r.primaryId)).toBeLessThan(r.generation);
      expect(ids(r)).toContain(prev.primaryId);
      expect(r.keys.length).toBeLessThanOrEqual(3);
    }
  });

  it('is due only once a full period has passed on the leader\'s clock, default 12 h', () => {
    const r = newRing(T0, counterSource());
    expect(DEFAULT_ROTATION_PERIOD_MS).toBe(12 * H);
    expect(rotationDue(r, T0 + 12 * H - 1)).toBe(false);
    expect(rotationDue(r, T0 + 12 * H)).toBe(true);
    expect(rotationDue(r, T0 + 2 * H, 2 * H)).toBe(true);
  });

  it('is never due on a clock that reads earlier than the last rotation (skew, or a clock stepped back)', () => {
    const r = newRing(T0, counterSource());
    expect(rotationDue(r, T0 - 1)).toBe(false);
    expect(rotationDue(r, T0 - 100 * H)).toBe(false);
    // A rotation by a leader whose clock is behind never moves the stamp back.
    expect(rotate(r, T0 - 5 * H, counterSource()).rotatedAt).toBe(T0);
  });

  it('round-trips through its stored form', () => {
    const src = counterSource();
    const r = rotate(newRing(T0, src), T0 + 12 * H, src);
    const back = parseRing(serializeRing(r));
    expect([ids(back), back.primaryId, back.generation, back.rotatedAt]).toEqual([[1, 2, 3], 2, 2, T0 + 12 * H]);
    back.keys.forEach((k, i) => expect(k.material.equals(r.keys[i]!.material)).toBe(true));
  });

  it('refuses a corrupt stored ring with RingCorruptError, without echoing its contents', () => {
    const good = JSON.parse(serializeRing(newRing(T0, counterSource())));
    const bad = [
      'not json {',
      JSON.stringify({ ...good, v: 2 }),
      JSON.stringify({ ...good, keys: [] }),
      JSON.stringify({ ...good, primaryId: 9 }),
      JSON.stringify({ ...good, keys: [good.keys[1], good.keys[0]] }),
      JSON.stringify({ ...good, keys: [{ ...good.keys[0], material: Buffer.alloc(19).toString('base64') }] }),
    ];
    for (const text of bad) {
      let err: unknown;
      try {
        parseRing(text);
      } catch (e) {
        err = e;
      }
      expect(err, text).toBeInstanceOf(RingCorruptError);
      expect((err as Error).message).not.toContain(good.keys[0].material);
    }
  });

  it('validates what rotate is given', () => {
    const r = newRing(T0, counterSource());
    expect(() => validateRing({ ...r, keys: [...r.keys, ...r.keys] })).toThrow(RingCorruptError);
    expect(() => rotate({ ...r, primaryId: 7 }, T0)).toThrow(RingCorruptError);
  });

  it('never shows key material when printed, logged or serialized as JSON', () => {
    const r = newRing(T0, counterSource());
    const hex = r.keys[0]!.material.reveal().toString('hex');
    const b64 = r.keys[0]!.material.reveal().toString('base64');
    for (const text of [inspect(r, { depth: 10 }), JSON.stringify(r), String(r.keys[0]!.material), `${r.keys[0]!.material}`, describeRing(r)]) {
      expect(text).not.toContain(hex);
      expect(text).not.toContain(b64);
    }
    expect(JSON.stringify(r)).toContain('[redacted]');
    expect(describeRing(r)).toBe('generation 1, keys [1*, 2], rotated at 2026-01-01T00:00:00.000Z');
  });

  it('compares secrets by value and keeps its own copy of the bytes', () => {
    const raw = Buffer.alloc(20, 7);
    const s = new Secret(raw);
    raw[0] = 0;
    expect(s.reveal()[0]).toBe(7);
    expect(s.equals(new Secret(Buffer.alloc(20, 7)))).toBe(true);
    expect(s.equals(new Secret(Buffer.alloc(20, 8)))).toBe(false);
  });
});
