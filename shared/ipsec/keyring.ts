/**
 * The cluster key ring: a pure state machine, clock injected, no I/O.
 *
 * A ring holds at most three keys, oldest first, each an AES key (16 bytes
 * as Docker, or 32) followed by the 4-byte salt rfc4106 wants:
 *
 *     [ previous,  primary,  next ]
 *       receive    send +    receive
 *       only       receive   only
 *
 * Every host installs inbound SAs for every key and its outbound SA for
 * the primary. A rotation (one atomic update of the ring) makes `next` the
 * primary, appends a fresh `next`, and drops `previous`:
 *
 *     [K1, K2*, K3]  --rotate-->  [K2, K3*, K4]
 *
 * which is, for each key, the safe order "accepted for receive everywhere,
 * then used for send, then removed", pipelined over rotation periods: K4 is
 * receivable everywhere a whole period before anyone sends with it, and K2
 * stays receivable a whole period after the last host stopped sending with
 * it. So hosts may apply a ring update minutes apart (etcd watch lag, a
 * restart) and no packet is dropped, and a rotation is never "half done":
 * a leader dying mid-rotation either committed the new ring or did not.
 *
 * The clock is only the leader's, and only to decide when a rotation is due:
 * hosts never compare their clocks with each other, so skew between hosts
 * cannot break decryption. A leader whose clock is behind the ring's stamp
 * (skew, or a clock stepped back) waits rather than rotating; one far ahead
 * rotates early, which costs nothing but a rotation.
 */
import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import { Secret } from './secret';

export const RING_SIZE = 3;
export const SALT_BYTES = 4;
/** AES-128 as Docker, or AES-256 */
export type AesKeyBytes = 16 | 32;
export const DEFAULT_ROTATION_PERIOD_MS = 12 * 60 * 60 * 1000;
export const AEAD_ALGORITHM = 'rfc4106(gcm(aes))';
export const ICV_BITS = 128;

export interface RingKey {
  /** serial, strictly increasing over the ring's life; names the key in logs */
  readonly id: number;
  /** AES key followed by the 4-byte salt */
  readonly material: Secret;
  /** ms since the epoch, by the creating leader's clock (informational) */
  readonly createdAt: number;
}

export interface KeyRing {
  /** bumped by every rotation: hosts apply a ring only if newer than theirs */
  readonly generation: number;
  /** oldest first, at most RING_SIZE */
  readonly keys: readonly RingKey[];
  readonly primaryId: number;
  /** when the last rotation (or the creation) happened, by the leader's clock */
  readonly rotatedAt: number;
}

export type Clock = () => number;
/** Fresh key material: AES key + salt. Injected so tests are deterministic. */
export type KeyMaterialSource = (aesBytes: AesKeyBytes) => Buffer;

export const randomKeyMaterial: KeyMaterialSource = (aesBytes) => randomBytes(aesBytes + SALT_BYTES);

/** The ring is missing pieces, has an impossible shape, or does not parse. */
export class RingCorruptError extends Error {
  constructor(detail: string) {
    super(`ipsec key ring is corrupt: ${detail}`);
    this.name = 'RingCorruptError';
  }
}

function makeKey(id: number, material: Buffer, now: number): RingKey {
  return { id, material: new Secret(material), createdAt: now };
}

/** A new ring: a primary to send with from the start, and the next key already receivable. */
export function newRing(now: number, source: KeyMaterialSource = randomKeyMaterial, aesBytes: AesKeyBytes = 16): KeyRing {
  return { generation: 1, keys: [makeKey(1, source(aesBytes), now), makeKey(2, source(aesBytes), now)], primaryId: 1, rotatedAt: now };
}

/** Is a rotation due at `now`? Never when the clock reads earlier than the last rotation. */
export function rotationDue(ring: KeyRing, now: number, periodMs = DEFAULT_ROTATION_PERIOD_MS): boolean {
  return now >= ring.rotatedAt && now - ring.rotatedAt >= periodMs;
}

/** The ring after one rotation: next becomes primary, a fresh next is added, the oldest beyond three goes. */
export function rotate(ring: KeyRing, now: number, source: KeyMaterialSource = randomKeyMaterial): KeyRing {
  validateRing(ring);
  const newest = ring.keys[ring.keys.length - 1]!;
  const aesBytes = (newest.material.length - SALT_BYTES) as AesKeyBytes;
  const fresh = makeKey(newest.id + 1, source(aesBytes), now);
  const keys = [...ring.keys, fresh].slice(-RING_SIZE);
  return { generation: ring.generation + 1, keys, primaryId: newest.id, rotatedAt: Math.max(now, ring.rotatedAt) };
}

export function primaryKey(ring: KeyRing): RingKey {
  const k = ring.keys.find((x) => x.id === ring.primaryId);
  if (!k) throw new RingCorruptError(`primary key ${ring.primaryId} is not in the ring`);
  return k;
}

/** Throws RingCorruptError unless the ring has a shape rotation can produce. */
export function validateRing(ring: KeyRing): void {
  if (!Number.isInteger(ring.generation) || ring.generation < 1) throw new RingCorruptError(`bad generation ${ring.generation}`);
  if (ring.keys.length < 1 || ring.keys.length > RING_SIZE) throw new RingCorruptError(`${ring.keys.length} keys (want 1..${RING_SIZE})`);
  for (let i = 1; i < ring.keys.length; i++) {
    if (ring.keys[i]!.id <= ring.keys[i - 1]!.id) throw new RingCorruptError('key ids are not increasing');
  }
  for (const k of ring.keys) {
    const aes = k.material.length - SALT_BYTES;
    if (aes !== 16 && aes !== 32) throw new RingCorruptError(`key ${k.id} has ${k.material.length} bytes (want 20 or 36: AES-128/256 key + salt)`);
  }
  primaryKey(ring);
}

/** What is safe to log about a ring: ids and times, never material. */
export function describeRing(ring: KeyRing): string {
  return `generation ${ring.generation}, keys [${ring.keys.map((k) => (k.id === ring.primaryId ? `${k.id}*` : String(k.id))).join(', ')}], rotated at ${new Date(ring.rotatedAt).toISOString()}`;
}

// ---- serialization (etcd value and local cache file) ---------------------------------------------

const ringSchema = z.object({
  v: z.literal(1),
  generation: z.number().int().positive(),
  primaryId: z.number().int().positive(),
  rotatedAt: z.number().int().nonnegative(),
  keys: z
    .array(z.object({ id: z.number().int().positive(), material: z.string().regex(/^[A-Za-z0-9+/]+={0,2}$/), createdAt: z.number().int().nonnegative() }))
    .min(1)
    .max(RING_SIZE),
});

/** The ring as stored: JSON with the key material in base64. Contains secrets: never log it. */
export function serializeRing(ring: KeyRing): string {
  validateRing(ring);
  return JSON.stringify({
    v: 1,
    generation: ring.generation,
    primaryId: ring.primaryId,
    rotatedAt: ring.rotatedAt,
    keys: ring.keys.map((k) => ({ id: k.id, material: k.material.reveal().toString('base64'), createdAt: k.createdAt })),
  });
}

/** Parses and validates a stored ring; RingCorruptError (without the text, which holds keys) when it is not one. */
export function parseRing(text: string): KeyRing {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new RingCorruptError('not JSON');
  }
  const r = ringSchema.safeParse(raw);
  if (!r.success) throw new RingCorruptError(r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; '));
  const ring: KeyRing = {
    generation: r.data.generation,
    primaryId: r.data.primaryId,
    rotatedAt: r.data.rotatedAt,
    keys: r.data.keys.map((k) => ({ id: k.id, material: new Secret(Buffer.from(k.material, 'base64')), createdAt: k.createdAt })),
  };
  validateRing(ring);
  return ring;
}
