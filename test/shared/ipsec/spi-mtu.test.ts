/**
 * SPI derivation and the encrypted MTU arithmetic: pure functions.
 */
import { createHmac } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { DOCKER_ENCRYPTED_MTU_1500, ESP_MAX_OVERHEAD, VXLAN_OVERHEAD_V4, encryptedMtu, espOverhead } from '../../../shared/ipsec/mtu';
import { deriveSpi } from '../../../shared/ipsec/spi';

const K1 = Buffer.alloc(20, 0x11);
const K2 = Buffer.alloc(20, 0x22);

describe('deriveSpi', () => {
  it('gives both hosts of a pair the same SPI for one direction and key, computed alone', () => {
    // Host A computes its outbound SA, host B its inbound one: same inputs, same SPI.
    const onA = deriveSpi(Buffer.from(K1), '10.0.0.1', '10.0.0.2');
    const onB = deriveSpi(Buffer.from(K1), '10.0.0.1', '10.0.0.2');
    expect(onA).toBe(onB);
  });

  it('differs between directions, keys and pairs', () => {
    const spis = [
      deriveSpi(K1, '10.0.0.1', '10.0.0.2'),
      deriveSpi(K1, '10.0.0.2', '10.0.0.1'),
      deriveSpi(K2, '10.0.0.1', '10.0.0.2'),
      deriveSpi(K1, '10.0.0.1', '10.0.0.3'),
    ];
    expect(new Set(spis).size).toBe(4);
  });

  it('is the first 32 bits of HMAC-SHA256 over the label and the address bytes', () => {
    const want = createHmac('sha256', K1)
      .update(Buffer.from('cni-ts esp spi v1\0'))
      .update(Buffer.from([10, 0, 0, 1]))
      .update(Buffer.from([10, 0, 0, 2]))
      .update(Buffer.from([0]))
      .digest()
      .readUInt32BE(0);
    expect(want).toBeGreaterThanOrEqual(256); // this key needs no second round
    expect(deriveSpi(K1, '10.0.0.1', '10.0.0.2')).toBe(want);
  });

  it('never returns a reserved SPI (below 256) over many keys', () => {
    for (let i = 0; i < 3000; i++) {
      const key = Buffer.alloc(20);
      key.writeUInt32BE(i);
      expect(deriveSpi(key, '192.0.2.1', '192.0.2.2')).toBeGreaterThanOrEqual(256);
    }
  });

  it('reads addresses in any spelling the same way (IPv6 canonical or not)', () => {
    expect(deriveSpi(K1, '2001:db8::1', '2001:db8:0:0::2')).toBe(deriveSpi(K1, '2001:0db8::1', '2001:db8::2'));
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
