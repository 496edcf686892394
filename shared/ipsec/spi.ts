/**
 * SPIs that both ends of a host pair compute alone. An inbound SA on host B
 * and the outbound SA on host A for the same traffic must carry the same
 * SPI; rather than negotiate it (IKE) or store it in etcd, both derive it
 * from what they already share: the key, and the pair's addresses in the
 * direction of the traffic.
 *
 *   spi = first 32 bits of HMAC-SHA256(key || salt, label | src | dst | n)
 *
 * n starts at 0 and is bumped while the result is below 256 (RFC 4303: SPIs
 * 1..255 are reserved, 0 means "no SA"). Direction matters on purpose: A->B
 * and B->A get different SPIs, so each host's inbound SAs never collide
 * with its outbound ones. A new key gives new SPIs, which is what lets the
 * old and the new SA of one pair coexist during a rotation.
 */
import { createHmac } from 'node:crypto';
import { parseIp } from '../netlink/ipaddr';

const LABEL = Buffer.from('cni-ts esp spi v1\0');

/** The SPI of the SA carrying traffic from src to dst under `key` (key + salt bytes). */
export function deriveSpi(key: Buffer, src: string, dst: string): number {
  const s = parseIp(src).bytes;
  const d = parseIp(dst).bytes;
  for (let n = 0; ; n++) {
    const spi = createHmac('sha256', key).update(LABEL).update(s).update(d).update(Buffer.from([n])).digest().readUInt32BE(0);
    if (spi >= 256) return spi;
  }
}
