/**
 * The xfrm structs that states and policies both embed: xfrm_address_t,
 * xfrm_selector, the lifetimes, xfrm_mark, the mode numbers, and the request
 * shape with its `ip xfrm` text (which never carries a key).
 *
 * Byte order: xfrm structs are host order (little-endian here) except the
 * fields the header marks __be: addresses, SPI and ports.
 */
import { AF_INET, AF_INET6 } from '../consts';
import type { Attr } from '../codec';
import { formatIp, parseIp } from '../ipaddr';
import { IPPROTO_UDP, SIZEOF_XFRM_MARK, SIZEOF_XFRM_SELECTOR, XFRM_INF, XFRM_MODE_TRANSPORT, XFRM_MODE_TUNNEL } from './consts';

export type XfrmMode = 'transport' | 'tunnel';
export type XfrmDir = 'in' | 'out' | 'fwd';

export interface XfrmMark {
  value: number;
  mask: number;
}


/** Traffic selector; addresses without a prefix length mean the host (/32, /128). */
export interface XfrmSelector {
  src: string;
  dst: string;
  srcPrefixLen?: number;
  dstPrefixLen?: number;
  /** IPPROTO_*, 0 = any */
  proto?: number;
  /** 0/undefined = any */
  sport?: number;
  dport?: number;
}

export interface XfrmLifetimeCur {
  bytes: bigint;
  packets: bigint;
  addTime: bigint;
  useTime: bigint;
}


// ---- xfrm_address_t ---------------------------------------------------------------

/*
 * typedef union {
 *     __be32          a4;
 *     __be32          a6[4];
 *     struct in6_addr in6;
 * } xfrm_address_t;                                  // 16 bytes
 */
export function encodeXfrmAddress(ip: string | undefined, out: Buffer = Buffer.alloc(16), off = 0): Buffer {
  if (ip !== undefined && ip !== '') parseIp(ip).bytes.copy(out, off);
  return out;
}

export function decodeXfrmAddress(family: number, b: Buffer, off = 0): string {
  return family === AF_INET6 ? formatIp(AF_INET6, b.subarray(off, off + 16)) : formatIp(AF_INET, b.subarray(off, off + 4));
}

export function familyOf(...ips: Array<string | undefined>): number {
  for (const ip of ips) if (ip) return parseIp(ip).family;
  return AF_INET;
}

// ---- struct xfrm_selector ------------------------------------------------------------

/*
 * struct xfrm_selector {
 *     xfrm_address_t  daddr;          //  0
 *     xfrm_address_t  saddr;          // 16
 *     __be16  dport;                  // 32
 *     __be16  dport_mask;             // 34
 *     __be16  sport;                  // 36
 *     __be16  sport_mask;             // 38
 *     __u16   family;                 // 40
 *     __u8    prefixlen_d;            // 42
 *     __u8    prefixlen_s;            // 43
 *     __u8    proto;                  // 44
 *     int     ifindex;                // 48
 *     __kernel_uid32_t        user;   // 52
 * };                                  // 56 bytes
 */
export function encodeSelector(sel: XfrmSelector | undefined, out: Buffer = Buffer.alloc(SIZEOF_XFRM_SELECTOR), off = 0): Buffer {
  if (!sel) return out; // all zero, family AF_UNSPEC: matches anything
  const family = familyOf(sel.src, sel.dst);
  const hostLen = family === AF_INET ? 32 : 128;
  encodeXfrmAddress(sel.dst, out, off);
  encodeXfrmAddress(sel.src, out, off + 16);
  if (sel.dport) {
    out.writeUInt16BE(sel.dport, off + 32);
    out.writeUInt16BE(0xffff, off + 34);
  }
  if (sel.sport) {
    out.writeUInt16BE(sel.sport, off + 36);
    out.writeUInt16BE(0xffff, off + 38);
  }
  out.writeUInt16LE(family, off + 40);
  out.writeUInt8(sel.dstPrefixLen ?? hostLen, off + 42);
  out.writeUInt8(sel.srcPrefixLen ?? hostLen, off + 43);
  out.writeUInt8(sel.proto ?? 0, off + 44);
  return out;
}

export function decodeSelector(b: Buffer, off = 0): XfrmSelector & { family: number } {
  const family = b.readUInt16LE(off + 40);
  const sel: XfrmSelector & { family: number } = {
    family,
    dst: decodeXfrmAddress(family, b, off),
    src: decodeXfrmAddress(family, b, off + 16),
    dstPrefixLen: b.readUInt8(off + 42),
    srcPrefixLen: b.readUInt8(off + 43),
    proto: b.readUInt8(off + 44),
  };
  if (b.readUInt16BE(off + 34)) sel.dport = b.readUInt16BE(off + 32);
  if (b.readUInt16BE(off + 38)) sel.sport = b.readUInt16BE(off + 36);
  return sel;
}

// ---- struct xfrm_lifetime_cfg / xfrm_lifetime_cur / xfrm_stats --------------------------

/*
 * struct xfrm_lifetime_cfg {
 *     __u64   soft_byte_limit;            hard_byte_limit;
 *     __u64   soft_packet_limit;          hard_packet_limit;
 *     __u64   soft_add_expires_seconds;   hard_add_expires_seconds;
 *     __u64   soft_use_expires_seconds;   hard_use_expires_seconds;
 * };                                                // 64 bytes
 *
 * The byte and packet limits are XFRM_INF and the expiry times 0 ("never"),
 * as `ip xfrm` sets them: the SAs live until removed; rekeying is the key
 * ring's business, and ESN removes the sequence-number reason for a hard
 * packet limit. XFRM_INF in an *_expires_seconds field would not mean
 * "never": the kernel's timer reads it as a signed -1 and expires the SA
 * at once.
 */
export function encodeLifetimeCfgInfinite(out: Buffer, off: number): void {
  for (let i = 0; i < 4; i++) out.writeBigUInt64LE(XFRM_INF, off + i * 8);
  out.fill(0, off + 32, off + 64);
}

/*
 * struct xfrm_lifetime_cur {
 *     __u64   bytes;      //  0
 *     __u64   packets;    //  8
 *     __u64   add_time;   // 16
 *     __u64   use_time;   // 24
 * };                      // 32 bytes
 */
export function decodeLifetimeCur(b: Buffer, off: number): XfrmLifetimeCur {
  return {
    bytes: b.readBigUInt64LE(off),
    packets: b.readBigUInt64LE(off + 8),
    addTime: b.readBigUInt64LE(off + 16),
    useTime: b.readBigUInt64LE(off + 24),
  };
}

export function modeNumber(m: XfrmMode): number {
  return m === 'tunnel' ? XFRM_MODE_TUNNEL : XFRM_MODE_TRANSPORT;
}

export function modeName(n: number): XfrmMode | number {
  return n === XFRM_MODE_TRANSPORT ? 'transport' : n === XFRM_MODE_TUNNEL ? 'tunnel' : n;
}


// ---- struct xfrm_mark ---------------------------------------------------------------------------

/*
 * struct xfrm_mark {
 *     __u32   v;  // value
 *     __u32   m;  // mask
 * };              // 8 bytes
 */
export function encodeMark(m: XfrmMark): Buffer {
  const b = Buffer.alloc(SIZEOF_XFRM_MARK);
  b.writeUInt32LE(m.value >>> 0, 0);
  b.writeUInt32LE(m.mask >>> 0, 4);
  return b;
}

export function decodeMark(b: Buffer): XfrmMark {
  return { value: b.readUInt32LE(0), mask: b.readUInt32LE(4) };
}

export interface XfrmRequest {
  type: number;
  flags: number;
  header: Buffer;
  attrs: Attr[];
  /** the `ip xfrm` command this request equals, for errors (never with keys) */
  op: string;
}

export function hex(n: number): string {
  return `0x${(n >>> 0).toString(16).padStart(8, '0')}`;
}

export function markText(m: XfrmMark | undefined): string {
  return m ? ` mark ${hex(m.value)} mask ${hex(m.mask)}` : '';
}

export function selectorText(s: XfrmSelector): string {
  const fam = familyOf(s.src, s.dst);
  const host = fam === AF_INET ? 32 : 128;
  const proto = s.proto === IPPROTO_UDP ? 'udp' : s.proto ? String(s.proto) : '';
  return (
    `src ${s.src}/${s.srcPrefixLen ?? host} dst ${s.dst}/${s.dstPrefixLen ?? host}` +
    `${proto ? ` proto ${proto}` : ''}${s.sport ? ` sport ${s.sport}` : ''}${s.dport ? ` dport ${s.dport}` : ''}`
  );
}
