/**
 * xfrm over NETLINK_XFRM: IPsec security associations (states) and security
 * policies, the kernel half of encrypted overlays.
 *
 * Two layers, as vishvananda/netlink's nl/xfrm_*.go and xfrm_*_linux.go:
 *   - pure encoders/decoders, one per kernel struct, each with the C struct
 *     from /usr/include/linux/xfrm.h quoted above it and its x86-64 size
 *     (the kernel rejects a message whose header is a byte short);
 *   - XfrmHandle, the typed verbs on one network namespace, each saying
 *     which `ip xfrm` command it equals.
 *
 * Byte order: xfrm structs are host order (little-endian here) except the
 * fields the header marks __be: addresses, SPI and ports.
 *
 * Only what encrypted overlays need is offered: ESP with an AEAD
 * (rfc4106(gcm(aes))), transport or tunnel mode, extended sequence numbers,
 * marks, and policies with templates. Keys pass through here and are never
 * put into an error message.
 */
import { AF_INET, AF_INET6, NETLINK_XFRM, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL } from './consts';
import { Attr, attrBytes, decodeAttrList, decodeAttrs } from './codec';
import { NetlinkError, ESRCH } from './errors';
import { formatIp, parseIp } from './ipaddr';
import { NetlinkSocket } from './socket';
import { NetNs } from '../netns/netns';

// ---- constants (xfrm.h, in.h) ------------------------------------------------

export const XFRM_MSG_NEWSA = 0x10;
export const XFRM_MSG_DELSA = 0x11;
export const XFRM_MSG_GETSA = 0x12;
export const XFRM_MSG_NEWPOLICY = 0x13;
export const XFRM_MSG_DELPOLICY = 0x14;
export const XFRM_MSG_GETPOLICY = 0x15;
export const XFRM_MSG_UPDPOLICY = 0x19;
export const XFRM_MSG_UPDSA = 0x1a;
export const XFRM_MSG_FLUSHSA = 0x1c;
export const XFRM_MSG_FLUSHPOLICY = 0x1d;

export const XFRMA_TMPL = 5;
export const XFRMA_SRCADDR = 13;
export const XFRMA_POLICY_TYPE = 16;
export const XFRMA_ALG_AEAD = 18;
export const XFRMA_MARK = 21;
export const XFRMA_REPLAY_ESN_VAL = 23;

export const XFRM_MODE_TRANSPORT = 0;
export const XFRM_MODE_TUNNEL = 1;

export const XFRM_POLICY_IN = 0;
export const XFRM_POLICY_OUT = 1;
export const XFRM_POLICY_FWD = 2;
export const XFRM_POLICY_ALLOW = 0;
export const XFRM_POLICY_BLOCK = 1;

export const XFRM_STATE_ESN = 128;
export const XFRM_SHARE_ANY = 0;
/** XFRM_INF: no limit, for every field of xfrm_lifetime_cfg */
export const XFRM_INF = 0xffff_ffff_ffff_ffffn;

export const IPPROTO_UDP = 17;
export const IPPROTO_ESP = 50;

/** XFRMA_REPLAY_ESN_MAX is in bytes of bitmap: at most 4096*8 packets of window */
export const XFRM_REPLAY_ESN_MAX_WINDOW = 4096 * 8;

export const SIZEOF_XFRM_ADDRESS = 16;
export const SIZEOF_XFRM_ID = 24;
export const SIZEOF_XFRM_SELECTOR = 56;
export const SIZEOF_XFRM_LIFETIME_CFG = 64;
export const SIZEOF_XFRM_LIFETIME_CUR = 32;
export const SIZEOF_XFRM_STATS = 12;
export const SIZEOF_XFRM_USERSA_INFO = 224;
export const SIZEOF_XFRM_USERSA_ID = 24;
export const SIZEOF_XFRM_ALGO_AEAD = 72;
export const SIZEOF_XFRM_REPLAY_STATE_ESN = 24;
export const SIZEOF_XFRM_MARK = 8;
export const SIZEOF_XFRM_USERPOLICY_INFO = 168;
export const SIZEOF_XFRM_USERPOLICY_ID = 64;
export const SIZEOF_XFRM_USER_TMPL = 64;
export const SIZEOF_XFRM_USERSA_FLUSH = 4; // 1 byte, padded by netlink alignment

// ---- public types ---------------------------------------------------------------

export type XfrmMode = 'transport' | 'tunnel';
export type XfrmDir = 'in' | 'out' | 'fwd';

export interface XfrmMark {
  value: number;
  mask: number;
}

/** An AEAD algorithm and its key; for rfc4106(gcm(aes)) the key is the AES key followed by the 4-byte salt. */
export interface XfrmAead {
  name: string;
  key: Buffer;
  /** ICV length in bits (128 for Docker's and our GCM) */
  icvBits: number;
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

export interface XfrmStateSpec {
  src: string;
  dst: string;
  /** the SPI as a number (written big-endian) */
  spi: number;
  reqid: number;
  mode: XfrmMode;
  aead: XfrmAead;
  /**
   * Anti-replay window in packets. With esn it goes in xfrm_replay_state_esn
   * (up to 32768); without, in the u8 of xfrm_usersa_info, whose bitmap
   * is one u32, so the kernel uses at most 32 of it.
   */
  replayWindow: number;
  /**
   * Extended (64-bit) sequence numbers: a 32-bit ESP counter wraps after
   * 2^32 packets, which a busy pair reaches in hours (moby/moby#52005);
   * with ESN the SA never needs rekeying for that reason.
   */
  esn: boolean;
  mark?: XfrmMark;
  /** omitted: the all-zero selector (any traffic), as `ip xfrm state add` without `sel` */
  selector?: XfrmSelector;
}

/** What identifies a state to the kernel: (daddr, spi, proto) and, when marked, the mark. */
export interface XfrmStateId {
  dst: string;
  spi: number;
  /** optional; narrows the lookup as `ip xfrm state del src ...` does */
  src?: string;
  mark?: XfrmMark;
}

export interface XfrmLifetimeCur {
  bytes: bigint;
  packets: bigint;
  addTime: bigint;
  useTime: bigint;
}

export interface XfrmReplayEsn {
  bmpLen: number;
  oseq: number;
  seq: number;
  oseqHi: number;
  seqHi: number;
  replayWindow: number;
}

/** A state as the kernel lists it. */
export interface XfrmState {
  src: string;
  dst: string;
  spi: number;
  proto: number;
  reqid: number;
  mode: XfrmMode | number;
  family: number;
  flags: number;
  /** the u8 window of xfrm_usersa_info (0 when esn carries the window) */
  replayWindow: number;
  esn: boolean;
  replayEsn?: XfrmReplayEsn;
  aead?: XfrmAead;
  mark?: XfrmMark;
  selector: XfrmSelector & { family: number };
  curlft: XfrmLifetimeCur;
  stats: { replayWindow: number; replay: number; integrityFailed: number };
}

export interface XfrmTmpl {
  src: string;
  dst: string;
  /** IPPROTO_ESP by default */
  proto?: number;
  /** 0 = any SPI (the kernel finds the SA by reqid) */
  spi?: number;
  reqid: number;
  mode: XfrmMode;
}

export interface XfrmPolicySpec {
  dir: XfrmDir;
  selector: XfrmSelector;
  priority?: number;
  action?: 'allow' | 'block';
  mark?: XfrmMark;
  tmpls: XfrmTmpl[];
}

export interface XfrmPolicyId {
  dir: XfrmDir;
  selector: XfrmSelector;
  mark?: XfrmMark;
}

export interface XfrmPolicy extends XfrmPolicySpec {
  index: number;
  priority: number;
  action: 'allow' | 'block';
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

function familyOf(...ips: Array<string | undefined>): number {
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

// ---- struct xfrm_usersa_info ----------------------------------------------------------

function modeNumber(m: XfrmMode): number {
  return m === 'tunnel' ? XFRM_MODE_TUNNEL : XFRM_MODE_TRANSPORT;
}

function modeName(n: number): XfrmMode | number {
  return n === XFRM_MODE_TRANSPORT ? 'transport' : n === XFRM_MODE_TUNNEL ? 'tunnel' : n;
}

/*
 * struct xfrm_id {
 *     xfrm_address_t  daddr;      //  0
 *     __be32          spi;        // 16
 *     __u8            proto;      // 20
 * };                              // 24 bytes
 *
 * struct xfrm_usersa_info {
 *     struct xfrm_selector        sel;            //   0
 *     struct xfrm_id              id;             //  56
 *     xfrm_address_t              saddr;          //  80
 *     struct xfrm_lifetime_cfg    lft;            //  96
 *     struct xfrm_lifetime_cur    curlft;         // 160
 *     struct xfrm_stats           stats;          // 192 (replay_window, replay, integrity_failed)
 *     __u32                       seq;            // 204
 *     __u32                       reqid;          // 208
 *     __u16                       family;         // 212
 *     __u8                        mode;           // 214
 *     __u8                        replay_window;  // 215
 *     __u8                        flags;          // 216
 * };                                              // 224 bytes (u64 alignment)
 */
export function encodeUsersaInfo(s: XfrmStateSpec): Buffer {
  const b = Buffer.alloc(SIZEOF_XFRM_USERSA_INFO);
  const family = familyOf(s.dst, s.src);
  encodeSelector(s.selector, b, 0);
  encodeXfrmAddress(s.dst, b, 56);
  b.writeUInt32BE(s.spi >>> 0, 72);
  b.writeUInt8(IPPROTO_ESP, 76);
  encodeXfrmAddress(s.src, b, 80);
  encodeLifetimeCfgInfinite(b, 96);
  b.writeUInt32LE(s.reqid >>> 0, 208);
  b.writeUInt16LE(family, 212);
  b.writeUInt8(modeNumber(s.mode), 214);
  // With ESN the window lives in xfrm_replay_state_esn and the kernel
  // refuses a non-zero u8 window beside it (verify_replay: EINVAL).
  b.writeUInt8(s.esn ? 0 : Math.min(s.replayWindow, 255), 215);
  b.writeUInt8(s.esn ? XFRM_STATE_ESN : 0, 216);
  return b;
}

export interface DecodedUsersaInfo {
  selector: XfrmSelector & { family: number };
  dst: string;
  spi: number;
  proto: number;
  src: string;
  curlft: XfrmLifetimeCur;
  stats: { replayWindow: number; replay: number; integrityFailed: number };
  seq: number;
  reqid: number;
  family: number;
  mode: number;
  replayWindow: number;
  flags: number;
}

export function decodeUsersaInfo(b: Buffer): DecodedUsersaInfo {
  if (b.length < SIZEOF_XFRM_USERSA_INFO) throw new Error(`xfrm_usersa_info: ${b.length} bytes, want ${SIZEOF_XFRM_USERSA_INFO}`);
  const family = b.readUInt16LE(212);
  return {
    selector: decodeSelector(b, 0),
    dst: decodeXfrmAddress(family, b, 56),
    spi: b.readUInt32BE(72),
    proto: b.readUInt8(76),
    src: decodeXfrmAddress(family, b, 80),
    curlft: decodeLifetimeCur(b, 160),
    stats: { replayWindow: b.readUInt32LE(192), replay: b.readUInt32LE(196), integrityFailed: b.readUInt32LE(200) },
    seq: b.readUInt32LE(204),
    reqid: b.readUInt32LE(208),
    family,
    mode: b.readUInt8(214),
    replayWindow: b.readUInt8(215),
    flags: b.readUInt8(216),
  };
}

// ---- struct xfrm_usersa_id -----------------------------------------------------------------

/*
 * struct xfrm_usersa_id {
 *     xfrm_address_t  daddr;      //  0
 *     __be32          spi;        // 16
 *     __u16           family;     // 20
 *     __u8            proto;      // 22
 * };                              // 24 bytes
 */
export function encodeUsersaId(id: XfrmStateId): Buffer {
  const b = Buffer.alloc(SIZEOF_XFRM_USERSA_ID);
  encodeXfrmAddress(id.dst, b, 0);
  b.writeUInt32BE(id.spi >>> 0, 16);
  b.writeUInt16LE(familyOf(id.dst), 20);
  b.writeUInt8(IPPROTO_ESP, 22);
  return b;
}

export function decodeUsersaId(b: Buffer): { dst: string; spi: number; family: number; proto: number } {
  const family = b.readUInt16LE(20);
  return { dst: decodeXfrmAddress(family, b, 0), spi: b.readUInt32BE(16), family, proto: b.readUInt8(22) };
}

// ---- struct xfrm_algo_aead -------------------------------------------------------------------

/*
 * struct xfrm_algo_aead {
 *     char            alg_name[64];   //  0, NUL-terminated
 *     unsigned int    alg_key_len;    // 64, in bits
 *     unsigned int    alg_icv_len;    // 68, in bits
 *     char            alg_key[];      // 72
 * };
 */
export function encodeAlgoAead(a: XfrmAead): Buffer {
  const name = Buffer.from(a.name, 'utf8');
  if (name.length > 63) throw new Error(`xfrm: algorithm name "${a.name}" longer than 63 bytes`);
  const b = Buffer.alloc(SIZEOF_XFRM_ALGO_AEAD + a.key.length);
  name.copy(b, 0);
  b.writeUInt32LE(a.key.length * 8, 64);
  b.writeUInt32LE(a.icvBits, 68);
  a.key.copy(b, 72);
  return b;
}

export function decodeAlgoAead(b: Buffer): XfrmAead {
  const nul = b.indexOf(0);
  const keyBits = b.readUInt32LE(64);
  return {
    name: b.toString('utf8', 0, nul === -1 || nul > 64 ? 64 : nul),
    icvBits: b.readUInt32LE(68),
    key: Buffer.from(b.subarray(72, 72 + Math.ceil(keyBits / 8))),
  };
}

// ---- struct xfrm_replay_state_esn ----------------------------------------------------------

/*
 * struct xfrm_replay_state_esn {
 *     unsigned int    bmp_len;        //  0, in 32-bit words
 *     __u32           oseq;           //  4
 *     __u32           seq;            //  8
 *     __u32           oseq_hi;        // 12
 *     __u32           seq_hi;         // 16
 *     __u32           replay_window;  // 20, in packets
 *     __u32           bmp[];          // 24
 * };
 *
 * bmp_len is the window rounded up to 32-bit words, as iproute2 computes it;
 * the kernel wants the bitmap itself to follow (zeros for a new SA).
 */
export function encodeReplayEsn(replayWindow: number, counters: Partial<Omit<XfrmReplayEsn, 'bmpLen' | 'replayWindow'>> = {}): Buffer {
  if (!Number.isInteger(replayWindow) || replayWindow < 0 || replayWindow > XFRM_REPLAY_ESN_MAX_WINDOW) {
    throw new Error(`xfrm: replay window ${replayWindow} outside 0..${XFRM_REPLAY_ESN_MAX_WINDOW}`);
  }
  const bmpLen = Math.ceil(replayWindow / 32);
  const b = Buffer.alloc(SIZEOF_XFRM_REPLAY_STATE_ESN + bmpLen * 4);
  b.writeUInt32LE(bmpLen, 0);
  b.writeUInt32LE(counters.oseq ?? 0, 4);
  b.writeUInt32LE(counters.seq ?? 0, 8);
  b.writeUInt32LE(counters.oseqHi ?? 0, 12);
  b.writeUInt32LE(counters.seqHi ?? 0, 16);
  b.writeUInt32LE(replayWindow, 20);
  return b;
}

export function decodeReplayEsn(b: Buffer): XfrmReplayEsn {
  return {
    bmpLen: b.readUInt32LE(0),
    oseq: b.readUInt32LE(4),
    seq: b.readUInt32LE(8),
    oseqHi: b.readUInt32LE(12),
    seqHi: b.readUInt32LE(16),
    replayWindow: b.readUInt32LE(20),
  };
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

// ---- struct xfrm_user_tmpl ----------------------------------------------------------------------

/*
 * struct xfrm_user_tmpl {
 *     struct xfrm_id  id;         //  0 (daddr, spi, proto)
 *     __u16           family;     // 24
 *     xfrm_address_t  saddr;      // 28
 *     __u32           reqid;      // 44
 *     __u8            mode;       // 48
 *     __u8            share;      // 49
 *     __u8            optional;   // 50
 *     __u32           aalgos;     // 52
 *     __u32           ealgos;     // 56
 *     __u32           calgos;     // 60
 * };                              // 64 bytes
 *
 * The algorithm masks are all ones, as iproute2 and vishvananda/netlink set
 * them: any algorithm the SA has is acceptable.
 */
export function encodeUserTmpl(t: XfrmTmpl, out: Buffer = Buffer.alloc(SIZEOF_XFRM_USER_TMPL), off = 0): Buffer {
  encodeXfrmAddress(t.dst, out, off);
  out.writeUInt32BE((t.spi ?? 0) >>> 0, off + 16);
  out.writeUInt8(t.proto ?? IPPROTO_ESP, off + 20);
  out.writeUInt16LE(familyOf(t.dst, t.src), off + 24);
  encodeXfrmAddress(t.src, out, off + 28);
  out.writeUInt32LE(t.reqid >>> 0, off + 44);
  out.writeUInt8(modeNumber(t.mode), off + 48);
  out.writeUInt8(XFRM_SHARE_ANY, off + 49);
  out.writeUInt8(0, off + 50);
  out.writeUInt32LE(0xffffffff, off + 52);
  out.writeUInt32LE(0xffffffff, off + 56);
  out.writeUInt32LE(0xffffffff, off + 60);
  return out;
}

export function decodeUserTmpl(b: Buffer, off = 0): XfrmTmpl & { family: number } {
  const family = b.readUInt16LE(off + 24);
  const mode = b.readUInt8(off + 48);
  return {
    family,
    dst: decodeXfrmAddress(family, b, off),
    spi: b.readUInt32BE(off + 16),
    proto: b.readUInt8(off + 20),
    src: decodeXfrmAddress(family, b, off + 28),
    reqid: b.readUInt32LE(off + 44),
    mode: mode === XFRM_MODE_TUNNEL ? 'tunnel' : 'transport',
  };
}

// ---- struct xfrm_userpolicy_info -----------------------------------------------------------------

function dirNumber(d: XfrmDir): number {
  return d === 'in' ? XFRM_POLICY_IN : d === 'out' ? XFRM_POLICY_OUT : XFRM_POLICY_FWD;
}

function dirName(n: number): XfrmDir {
  return n === XFRM_POLICY_IN ? 'in' : n === XFRM_POLICY_OUT ? 'out' : 'fwd';
}

/*
 * struct xfrm_userpolicy_info {
 *     struct xfrm_selector        sel;        //   0
 *     struct xfrm_lifetime_cfg    lft;        //  56
 *     struct xfrm_lifetime_cur    curlft;     // 120
 *     __u32                       priority;   // 152
 *     __u32                       index;      // 156
 *     __u8                        dir;        // 160
 *     __u8                        action;     // 161 (XFRM_POLICY_ALLOW / BLOCK)
 *     __u8                        flags;      // 162
 *     __u8                        share;      // 163
 * };                                          // 168 bytes (u64 alignment)
 */
export function encodeUserpolicyInfo(p: XfrmPolicySpec): Buffer {
  const b = Buffer.alloc(SIZEOF_XFRM_USERPOLICY_INFO);
  encodeSelector(p.selector, b, 0);
  encodeLifetimeCfgInfinite(b, 56);
  b.writeUInt32LE((p.priority ?? 0) >>> 0, 152);
  b.writeUInt8(dirNumber(p.dir), 160);
  b.writeUInt8(p.action === 'block' ? XFRM_POLICY_BLOCK : XFRM_POLICY_ALLOW, 161);
  b.writeUInt8(XFRM_SHARE_ANY, 163);
  return b;
}

export function decodeUserpolicyInfo(b: Buffer): { selector: XfrmSelector & { family: number }; priority: number; index: number; dir: XfrmDir; action: 'allow' | 'block'; flags: number } {
  if (b.length < SIZEOF_XFRM_USERPOLICY_INFO) throw new Error(`xfrm_userpolicy_info: ${b.length} bytes, want ${SIZEOF_XFRM_USERPOLICY_INFO}`);
  return {
    selector: decodeSelector(b, 0),
    priority: b.readUInt32LE(152),
    index: b.readUInt32LE(156),
    dir: dirName(b.readUInt8(160)),
    action: b.readUInt8(161) === XFRM_POLICY_BLOCK ? 'block' : 'allow',
    flags: b.readUInt8(162),
  };
}

// ---- struct xfrm_userpolicy_id ----------------------------------------------------------------------

/*
 * struct xfrm_userpolicy_id {
 *     struct xfrm_selector    sel;    //  0
 *     __u32                   index;  // 56
 *     __u8                    dir;    // 60
 * };                                  // 64 bytes
 */
export function encodeUserpolicyId(id: XfrmPolicyId): Buffer {
  const b = Buffer.alloc(SIZEOF_XFRM_USERPOLICY_ID);
  encodeSelector(id.selector, b, 0);
  b.writeUInt8(dirNumber(id.dir), 60);
  return b;
}

// ---- messages: header + attributes ---------------------------------------------------------------------

export interface XfrmRequest {
  type: number;
  flags: number;
  header: Buffer;
  attrs: Attr[];
  /** the `ip xfrm` command this request equals, for errors (never with keys) */
  op: string;
}

function hex(n: number): string {
  return `0x${(n >>> 0).toString(16).padStart(8, '0')}`;
}

function markText(m: XfrmMark | undefined): string {
  return m ? ` mark ${hex(m.value)} mask ${hex(m.mask)}` : '';
}

function validateState(s: XfrmStateSpec): void {
  if (!Number.isInteger(s.spi) || s.spi < 256 || s.spi > 0xffffffff) {
    // RFC 4303: SPIs 1..255 are reserved by IANA, 0 is "no SA".
    throw new Error(`xfrm: SPI ${s.spi} outside 256..0xffffffff`);
  }
  if (s.replayWindow < 0 || s.replayWindow > (s.esn ? XFRM_REPLAY_ESN_MAX_WINDOW : 255)) throw new Error(`xfrm: replay window ${s.replayWindow} out of range`);
}

function stateAttrs(s: XfrmStateSpec): Attr[] {
  const attrs: Attr[] = [attrBytes(XFRMA_ALG_AEAD, encodeAlgoAead(s.aead))];
  if (s.esn) attrs.push(attrBytes(XFRMA_REPLAY_ESN_VAL, encodeReplayEsn(s.replayWindow)));
  if (s.mark) attrs.push(attrBytes(XFRMA_MARK, encodeMark(s.mark)));
  return attrs;
}

function stateText(verb: string, s: XfrmStateSpec): string {
  return (
    `ip xfrm state ${verb} src ${s.src} dst ${s.dst} proto esp spi ${hex(s.spi)} reqid ${s.reqid} mode ${s.mode}` +
    `${s.esn ? ' flag esn' : ''} replay-window ${s.replayWindow} aead '${s.aead.name}' <key> ${s.aead.icvBits}${markText(s.mark)}`
  );
}

/** XFRM_MSG_NEWSA: `ip xfrm state add ...`; EEXIST when (dst, spi, esp) exists */
export function stateAddRequest(s: XfrmStateSpec): XfrmRequest {
  validateState(s);
  return { type: XFRM_MSG_NEWSA, flags: NLM_F_CREATE | NLM_F_EXCL, header: encodeUsersaInfo(s), attrs: stateAttrs(s), op: stateText('add', s) };
}

/** XFRM_MSG_UPDSA: `ip xfrm state update ...`; ESRCH when the state is absent */
export function stateUpdateRequest(s: XfrmStateSpec): XfrmRequest {
  validateState(s);
  return { type: XFRM_MSG_UPDSA, flags: 0, header: encodeUsersaInfo(s), attrs: stateAttrs(s), op: stateText('update', s) };
}

function stateIdAttrs(id: XfrmStateId): Attr[] {
  const attrs: Attr[] = [];
  if (id.src) attrs.push(attrBytes(XFRMA_SRCADDR, encodeXfrmAddress(id.src)));
  if (id.mark) attrs.push(attrBytes(XFRMA_MARK, encodeMark(id.mark)));
  return attrs;
}

function stateIdText(verb: string, id: XfrmStateId): string {
  return `ip xfrm state ${verb}${id.src ? ` src ${id.src}` : ''} dst ${id.dst} proto esp spi ${hex(id.spi)}${markText(id.mark)}`;
}

/** XFRM_MSG_DELSA: `ip xfrm state delete ...`; ESRCH when absent */
export function stateDelRequest(id: XfrmStateId): XfrmRequest {
  return { type: XFRM_MSG_DELSA, flags: 0, header: encodeUsersaId(id), attrs: stateIdAttrs(id), op: stateIdText('delete', id) };
}

/** XFRM_MSG_GETSA: `ip xfrm state get ...` */
export function stateGetRequest(id: XfrmStateId): XfrmRequest {
  return { type: XFRM_MSG_GETSA, flags: 0, header: encodeUsersaId(id), attrs: stateIdAttrs(id), op: stateIdText('get', id) };
}

/** XFRM_MSG_GETSA dump: `ip xfrm state list`. The kernel parses dump filters from right after nlmsghdr, so no family header. */
export function stateListRequest(): XfrmRequest {
  return { type: XFRM_MSG_GETSA, flags: NLM_F_DUMP, header: Buffer.alloc(0), attrs: [], op: 'ip xfrm state list' };
}

/*
 * struct xfrm_usersa_flush {
 *     __u8    proto;
 * };
 */
/** XFRM_MSG_FLUSHSA: `ip xfrm state flush proto esp` */
export function stateFlushRequest(): XfrmRequest {
  const b = Buffer.alloc(SIZEOF_XFRM_USERSA_FLUSH);
  b.writeUInt8(IPPROTO_ESP, 0);
  return { type: XFRM_MSG_FLUSHSA, flags: 0, header: b, attrs: [], op: 'ip xfrm state flush proto esp' };
}

function selectorText(s: XfrmSelector): string {
  const fam = familyOf(s.src, s.dst);
  const host = fam === AF_INET ? 32 : 128;
  const proto = s.proto === IPPROTO_UDP ? 'udp' : s.proto ? String(s.proto) : '';
  return (
    `src ${s.src}/${s.srcPrefixLen ?? host} dst ${s.dst}/${s.dstPrefixLen ?? host}` +
    `${proto ? ` proto ${proto}` : ''}${s.sport ? ` sport ${s.sport}` : ''}${s.dport ? ` dport ${s.dport}` : ''}`
  );
}

function policyText(verb: string, p: XfrmPolicySpec): string {
  const tmpls = p.tmpls.map((t) => ` tmpl src ${t.src} dst ${t.dst} proto esp reqid ${t.reqid} mode ${t.mode}`).join('');
  return `ip xfrm policy ${verb} ${selectorText(p.selector)} dir ${p.dir}${p.priority ? ` priority ${p.priority}` : ''}${markText(p.mark)}${tmpls}`;
}

function policyAttrs(p: XfrmPolicySpec): Attr[] {
  const attrs: Attr[] = [];
  if (p.tmpls.length) {
    const t = Buffer.alloc(SIZEOF_XFRM_USER_TMPL * p.tmpls.length);
    p.tmpls.forEach((tmpl, i) => encodeUserTmpl(tmpl, t, i * SIZEOF_XFRM_USER_TMPL));
    attrs.push(attrBytes(XFRMA_TMPL, t));
  }
  if (p.mark) attrs.push(attrBytes(XFRMA_MARK, encodeMark(p.mark)));
  return attrs;
}

/** XFRM_MSG_NEWPOLICY: `ip xfrm policy add ...`; EEXIST when one with this selector, dir and mark exists */
export function policyAddRequest(p: XfrmPolicySpec): XfrmRequest {
  return { type: XFRM_MSG_NEWPOLICY, flags: NLM_F_CREATE | NLM_F_EXCL, header: encodeUserpolicyInfo(p), attrs: policyAttrs(p), op: policyText('add', p) };
}

/** XFRM_MSG_UPDPOLICY: `ip xfrm policy update ...` (creates it when absent) */
export function policyUpdateRequest(p: XfrmPolicySpec): XfrmRequest {
  return { type: XFRM_MSG_UPDPOLICY, flags: NLM_F_CREATE, header: encodeUserpolicyInfo(p), attrs: policyAttrs(p), op: policyText('update', p) };
}

/** XFRM_MSG_DELPOLICY: `ip xfrm policy delete SELECTOR dir DIR [mark M]`; ENOENT when absent */
export function policyDelRequest(id: XfrmPolicyId): XfrmRequest {
  const attrs = id.mark ? [attrBytes(XFRMA_MARK, encodeMark(id.mark))] : [];
  return {
    type: XFRM_MSG_DELPOLICY,
    flags: 0,
    header: encodeUserpolicyId(id),
    attrs,
    op: `ip xfrm policy delete ${selectorText(id.selector)} dir ${id.dir}${markText(id.mark)}`,
  };
}

/** XFRM_MSG_GETPOLICY dump: `ip xfrm policy list` */
export function policyListRequest(): XfrmRequest {
  return { type: XFRM_MSG_GETPOLICY, flags: NLM_F_DUMP, header: Buffer.alloc(0), attrs: [], op: 'ip xfrm policy list' };
}

/**
 * XFRM_MSG_FLUSHPOLICY: `ip xfrm policy flush`. No XFRMA_POLICY_TYPE, as
 * iproute2 sends it: the kernel then flushes the main type (6.18 refuses a
 * zeroed struct xfrm_userpolicy_type with ERANGE).
 */
export function policyFlushRequest(): XfrmRequest {
  return { type: XFRM_MSG_FLUSHPOLICY, flags: 0, header: Buffer.alloc(0), attrs: [], op: 'ip xfrm policy flush' };
}

// ---- parsing replies -----------------------------------------------------------------------------------------

/** An XFRM_MSG_NEWSA payload (list and get replies). */
export function parseState(payload: Buffer): XfrmState {
  const info = decodeUsersaInfo(payload);
  const attrs = decodeAttrs(payload, SIZEOF_XFRM_USERSA_INFO);
  const aead = attrs.get(XFRMA_ALG_AEAD);
  const esn = attrs.get(XFRMA_REPLAY_ESN_VAL);
  const mark = attrs.get(XFRMA_MARK);
  const replayEsn = esn ? decodeReplayEsn(esn) : undefined;
  const state: XfrmState = {
    src: info.src,
    dst: info.dst,
    spi: info.spi,
    proto: info.proto,
    reqid: info.reqid,
    mode: modeName(info.mode),
    family: info.family,
    flags: info.flags,
    replayWindow: info.replayWindow,
    esn: (info.flags & XFRM_STATE_ESN) !== 0,
    selector: info.selector,
    curlft: info.curlft,
    stats: info.stats,
  };
  if (replayEsn) state.replayEsn = replayEsn;
  if (aead) state.aead = decodeAlgoAead(aead);
  if (mark) state.mark = decodeMark(mark);
  return state;
}

/** An XFRM_MSG_NEWPOLICY payload (list replies). */
export function parsePolicy(payload: Buffer): XfrmPolicy & { family: number } {
  const info = decodeUserpolicyInfo(payload);
  const tmpls: XfrmTmpl[] = [];
  let mark: XfrmMark | undefined;
  for (const [type, value] of decodeAttrList(payload, SIZEOF_XFRM_USERPOLICY_INFO)) {
    if (type === XFRMA_TMPL) {
      for (let off = 0; off + SIZEOF_XFRM_USER_TMPL <= value.length; off += SIZEOF_XFRM_USER_TMPL) {
        const { family: _family, ...t } = decodeUserTmpl(value, off);
        void _family;
        tmpls.push(t);
      }
    } else if (type === XFRMA_MARK) {
      mark = decodeMark(value);
    }
  }
  const { family, ...selector } = info.selector;
  const p: XfrmPolicy & { family: number } = {
    family,
    dir: info.dir,
    selector,
    priority: info.priority,
    index: info.index,
    action: info.action,
    tmpls,
  };
  if (mark) p.mark = mark;
  return p;
}

// ---- the handle ---------------------------------------------------------------------------------------------------

/**
 * The xfrm verbs on one network namespace (NETLINK_XFRM socket opened in it),
 * as NetlinkHandle is for rtnetlink. Errors are NetlinkError with the errno:
 * EEXIST (add of a present state/policy), ESRCH (state absent), ENOENT
 * (policy absent), EPROTONOSUPPORT/ENOENT-with-message when the kernel
 * lacks ESP or the algorithm.
 */
export class XfrmHandle {
  private constructor(
    private readonly sock: NetlinkSocket,
    readonly netnsPath: string | undefined,
  ) {}

  static open(netnsPath?: string): XfrmHandle {
    if (netnsPath === undefined) return new XfrmHandle(NetlinkSocket.open(NETLINK_XFRM), undefined);
    const ns = NetNs.open(netnsPath);
    try {
      return new XfrmHandle(NetlinkSocket.open(NETLINK_XFRM, ns.fd), netnsPath);
    } finally {
      ns.close();
    }
  }

  close(): void {
    this.sock.close();
  }

  private send(r: XfrmRequest) {
    return this.sock.request(r.type, r.flags, r.header, r.attrs, r.op);
  }

  /** ip xfrm state add src S dst D proto esp spi SPI reqid R mode transport [flag esn] replay-window W aead 'rfc4106(gcm(aes))' KEY 128 [mark M mask K] */
  xfrmStateAdd(s: XfrmStateSpec): void {
    this.send(stateAddRequest(s));
  }

  /** ip xfrm state update ... (same arguments as add; ESRCH when absent) */
  xfrmStateUpdate(s: XfrmStateSpec): void {
    this.send(stateUpdateRequest(s));
  }

  /** ip xfrm state delete [src S] dst D proto esp spi SPI [mark M mask K]; ESRCH when absent */
  xfrmStateDel(id: XfrmStateId): void {
    this.send(stateDelRequest(id));
  }

  /** ip xfrm state get dst D proto esp spi SPI; undefined when absent */
  xfrmStateGet(id: XfrmStateId): XfrmState | undefined {
    try {
      const [m] = this.send(stateGetRequest(id)).filter((x) => x.type === XFRM_MSG_NEWSA);
      return m ? parseState(m.payload) : undefined;
    } catch (e) {
      if (e instanceof NetlinkError && e.errno === ESRCH) return undefined;
      throw e;
    }
  }

  /** ip -s xfrm state list (every protocol; keys included, as ip prints them) */
  xfrmStateList(): XfrmState[] {
    return this.send(stateListRequest())
      .filter((m) => m.type === XFRM_MSG_NEWSA)
      .map((m) => parseState(m.payload));
  }

  /** ip xfrm state flush proto esp */
  xfrmStateFlush(): void {
    this.send(stateFlushRequest());
  }

  /** ip xfrm policy add src S/32 dst D/32 proto udp dport 4789 dir out [mark M mask K] tmpl src S dst D proto esp reqid R mode transport */
  xfrmPolicyAdd(p: XfrmPolicySpec): void {
    this.send(policyAddRequest(p));
  }

  /** ip xfrm policy update ... (creates or replaces) */
  xfrmPolicyUpdate(p: XfrmPolicySpec): void {
    this.send(policyUpdateRequest(p));
  }

  /** ip xfrm policy delete SELECTOR dir DIR [mark M mask K]; ENOENT when absent */
  xfrmPolicyDel(id: XfrmPolicyId): void {
    this.send(policyDelRequest(id));
  }

  /** ip xfrm policy list (main policies; socket policies are not listed by the kernel) */
  xfrmPolicyList(): XfrmPolicy[] {
    return this.send(policyListRequest())
      .filter((m) => m.type === XFRM_MSG_NEWPOLICY)
      .map((m) => {
        const { family: _family, ...p } = parsePolicy(m.payload);
        void _family;
        return p;
      });
  }

  /** ip xfrm policy flush */
  xfrmPolicyFlush(): void {
    this.send(policyFlushRequest());
  }
}

/** Run fn with an xfrm handle on netnsPath and always close it. */
export function withXfrmHandle<T>(netnsPath: string | undefined, fn: (h: XfrmHandle) => T): T {
  const h = XfrmHandle.open(netnsPath);
  try {
    return fn(h);
  } finally {
    h.close();
  }
}
