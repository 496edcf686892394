/**
 * Per-pair SA keys and SPIs that both ends of a host pair compute alone.
 *
 * Keys: the ring holds one AES-GCM key (+ salt) per key id, shared by the
 * whole cluster. No SA uses it directly: each SA (traffic from src to dst
 * under ring key `id`) gets its own key and salt,
 *
 *   key || salt = HKDF-SHA256(ikm = ring key || salt, salt = LABEL,
 *                             info = "esp key" | src | dst | id, length = the ring key's)
 *
 * so two host pairs never share a key (nor a GCM nonce space), A->B and
 * B->A differ, and a key leaked from one host's SA opens no other pair's
 * traffic. Both ends hold the ring, so both derive the same SA.
 *
 * SPIs: an inbound SA is found by (destination, SPI, ESP), so SPIs need only
 * be unique among the SAs into one destination: the receiving host's SAs
 * from all its peers, for each key of the ring. IKE lets the receiver pick;
 * here both ends must agree without talking, so the SPI is derived too:
 *
 *   spi = (id mod 4) << 30 | 30 bits of HKDF(..., info = "esp spi" | src | dst | id | n)
 *
 * The top two bits keep the ring's keys apart (a ring holds at most three
 * consecutive ids, so id mod 4 differs between them): a rotation never moves
 * an SPI. Among the sources of one destination under one key, a collision
 * of the 30 hashed bits is settled the same way on both ends: sources in
 * address order, each takes the first n whose SPI is free (and not one of
 * the reserved 0..255). Both ends know the destination's sources (the hosts
 * sharing an encrypted network with it, from etcd), so both compute the
 * same assignment (spisInto). Collisions are rare (about s^2 / 2^31 for s
 * sources), and the case a sender's view of the sources lags is rarer still.
 */
import { hkdfSync } from 'node:crypto';
import { canonicalIp, parseIp } from '../netlink/ipaddr';

const LABEL = Buffer.from('cni-ts ipsec pair v2');
const MIN_SPI = 256; // RFC 4303: 1..255 reserved, 0 means "no SA"

function info(what: string, src: string, dst: string, keyId: number, n?: number): Buffer {
  const id = Buffer.alloc(4);
  id.writeUInt32BE(keyId >>> 0);
  return Buffer.concat([Buffer.from(`${what}\0`), parseIp(src).bytes, parseIp(dst).bytes, id, n === undefined ? Buffer.alloc(0) : Buffer.from([n & 0xff, n >>> 8])]);
}

/** The key and salt of the SA carrying src -> dst under ring key `keyId` (`ringMaterial`: that key + salt). */
export function deriveSaKey(ringMaterial: Buffer, keyId: number, src: string, dst: string): Buffer {
  return Buffer.from(hkdfSync('sha256', ringMaterial, LABEL, info('esp key', src, dst, keyId), ringMaterial.length));
}

/** The n-th SPI candidate of the SA src -> dst under ring key `keyId`. */
export function spiCandidate(ringMaterial: Buffer, keyId: number, src: string, dst: string, n = 0): number {
  const h = Buffer.from(hkdfSync('sha256', ringMaterial, LABEL, info('esp spi', src, dst, keyId, n), 4)).readUInt32BE(0);
  return ((((keyId % 4) << 30) | (h & 0x3fffffff)) >>> 0);
}

/**
 * The SPI of every SA into `dst` under one ring key: one per source, unique
 * among them. `sources` are the destination's peers (order does not matter;
 * the assignment sorts them). Keyed by canonical source address.
 */
export function spisInto(ringMaterial: Buffer, keyId: number, dst: string, sources: readonly string[]): Map<string, number> {
  const sorted = [...new Set(sources.map(canonicalIp))].filter((s) => s !== canonicalIp(dst)).sort((a, b) => Buffer.compare(parseIp(a).bytes, parseIp(b).bytes) || (a < b ? -1 : 1));
  const used = new Set<number>();
  const out = new Map<string, number>();
  for (const src of sorted) {
    for (let n = 0; ; n++) {
      const spi = spiCandidate(ringMaterial, keyId, src, dst, n);
      if (spi < MIN_SPI || used.has(spi)) continue;
      used.add(spi);
      out.set(src, spi);
      break;
    }
  }
  return out;
}

/** The SPI of the SA src -> dst when `dst`'s sources are `sources` (src is added if missing). */
export function deriveSpi(ringMaterial: Buffer, keyId: number, src: string, dst: string, sources: readonly string[] = []): number {
  return spisInto(ringMaterial, keyId, dst, [...sources, src]).get(canonicalIp(src))!;
}
