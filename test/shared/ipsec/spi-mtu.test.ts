/**
 * Per-pair SA keys and SPIs, and the encrypted MTU arithmetic: pure functions.
 */
import { hkdfSync } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { DOCKER_ENCRYPTED_MTU_1500, ESP_MAX_OVERHEAD, VXLAN_OVERHEAD_V4, encryptedMtu, espOverhead } from '../../../shared/ipsec/mtu';
import { deriveSaKey, deriveSpi, spiCandidate, spisInto } from '../../../shared/ipsec/spi';

const K1 = Buffer.alloc(20, 0x11);
const K2 = Buffer.alloc(20, 0x22);

describe('per-pair SA keys and SPIs', () => {
  it('give both hosts of a pair the same key and SPI for one direction and key id, computed alone', () => {
    // Host A computes its outbound SA, host B its inbound one: same inputs, same SA.
    expect(deriveSpi(Buffer.from(K1), 1, '10.0.0.1', '10.0.0.2')).toBe(deriveSpi(Buffer.from(K1), 1, '10.0.0.1', '10.0.0.2'));
    expect(deriveSaKey(Buffer.from(K1), 1, '10.0.0.1', '10.0.0.2').equals(deriveSaKey(K1, 1, '10.0.0.1', '10.0.0.2'))).toBe(true);
  });

  it('differ between directions, ring keys, key ids and pairs, and are never the ring key itself', () => {
    const cases: Array<[Buffer, number, string, string]> = [
      [K1, 1, '10.0.0.1', '10.0.0.2'],
      [K1, 1, '10.0.0.2', '10.0.0.1'],
      [K2, 1, '10.0.0.1', '10.0.0.2'],
      [K1, 2, '10.0.0.1', '10.0.0.2'],
      [K1, 1, '10.0.0.1', '10.0.0.3'],
    ];
    expect(new Set(cases.map((c) => deriveSpi(...c))).size).toBe(cases.length);
    const keys = cases.map((c) => deriveSaKey(...c).toString('hex'));
    expect(new Set(keys).size).toBe(cases.length);
    expect(keys).not.toContain(K1.toString('hex'));
    expect(deriveSaKey(K1, 1, '10.0.0.1', '10.0.0.2')).toHaveLength(20);
    expect(deriveSaKey(Buffer.alloc(36, 3), 1, '10.0.0.1', '10.0.0.2')).toHaveLength(36);
  });

  it('are HKDF-SHA256 of the ring key over (label, source, destination, key id)', () => {
    const info = Buffer.concat([Buffer.from('esp key\0'), Buffer.from([10, 0, 0, 1, 10, 0, 0, 2]), Buffer.from([0, 0, 0, 7])]);
    const want = Buffer.from(hkdfSync('sha256', K1, Buffer.from('cni-ts ipsec pair v2'), info, 20));
    expect(deriveSaKey(K1, 7, '10.0.0.1', '10.0.0.2').equals(want)).toBe(true);
    // the SPI's top two bits are the key id mod 4: the ring's (consecutive) keys never collide
    for (const id of [1, 2, 3, 4, 5]) expect(spiCandidate(K1, id, '10.0.0.1', '10.0.0.2') >>> 30).toBe(id % 4);
  });

  it('never give a reserved SPI (below 256) over many keys', () => {
    for (let i = 0; i < 3000; i++) {
      const key = Buffer.alloc(20);
      key.writeUInt32BE(i);
      expect(deriveSpi(key, 4, '192.0.2.1', '192.0.2.2')).toBeGreaterThanOrEqual(256);
    }
  });

  it('read addresses in any spelling the same way (IPv6 canonical or not)', () => {
    expect(deriveSpi(K1, 1, '2001:db8::1', '2001:db8:0:0::2')).toBe(deriveSpi(K1, 1, '2001:0db8::1', '2001:db8::2'));
  });

  it('settle a collision among the sources of one destination the same way on both ends', () => {
    // Enough sources into one destination that some 30-bit candidates collide (birthday bound ~ 41000).
    const dst = '10.255.255.254';
    const sources: string[] = [];
    for (let i = 0; i < 60_000; i++) sources.push(`10.${(i >> 16) & 0xff}.${(i >> 8) & 0xff}.${i & 0xff}`);
    const byReceiver = spisInto(K1, 1, dst, sources);
    expect(byReceiver.size).toBe(sources.length);
    expect(new Set(byReceiver.values()).size).toBe(sources.length); // unique per destination
    const bumped = sources.filter((s) => byReceiver.get(s) !== spiCandidate(K1, 1, s, dst, 0));
    expect(bumped.length).toBeGreaterThan(0); // collisions did happen, and were settled
    // each sender, knowing the destination's sources (in any order), computes the receiver's choice
    const shuffled = [...sources].reverse();
    for (const s of bumped.slice(0, 5)) expect(deriveSpi(K1, 1, s, dst, shuffled)).toBe(byReceiver.get(s));
  });
});

describe('encryptedMtu', () => {
  it('is 1416 on a 1500 IPv4 underlay: floor4(1500 - 20 - 8 - 8 - 16) - 2 - 30', () => {
    expect(encryptedMtu(1500)).toEqual({ mtu: 1416, unencrypted: 1450, espCost: 34 });
    expect(VXLAN_OVERHEAD_V4).toBe(50);
  });

  it('makes a full-size inner packet fit the underlay exactly, where Docker\'s 1424 is 8 bytes over', () => {
    const onWire = (inner: number) => {
      const payload = inner + 14 + 8 + 8; // Ethernet, VXLAN, UDP: inside ESP
      return 20 + payload + espOverhead(payload);
    };
    expect(DOCKER_ENCRYPTED_MTU_1500).toBe(1424);
    expect(onWire(encryptedMtu(1500).mtu)).toBeLessThanOrEqual(1500);
    expect(onWire(encryptedMtu(1500).mtu + 1)).toBeGreaterThan(1500);
    expect(onWire(DOCKER_ENCRYPTED_MTU_1500)).toBe(1508);
  });

  it('counts ESP padding to 4 bytes: 34 to 37 bytes depending on the payload length', () => {
    expect([0, 1, 2, 3].map((n) => espOverhead(1446 + n))).toEqual([34, 37, 36, 35]);
    expect(ESP_MAX_OVERHEAD).toBe(37);
  });

  it('fits every underlay MTU from 1280 to 9000 without fragmenting', () => {
    for (let u = 1280; u <= 9000; u += 7) {
      const onWire = (inner: number) => 20 + inner + 30 + espOverhead(inner + 30);
      const { mtu } = encryptedMtu(u);
      expect(onWire(mtu)).toBeLessThanOrEqual(u);
      expect(onWire(mtu + 1)).toBeGreaterThan(u); // and it is the largest that fits
    }
  });

  it('subtracts the 40-byte IPv6 header on an IPv6 underlay', () => {
    expect(encryptedMtu(1500, 6).mtu).toBe(1396);
  });

  it('refuses an underlay too small to carry IPv4 over the overlay', () => {
    expect(() => encryptedMtu(150)).toThrow(RangeError);
  });
});
