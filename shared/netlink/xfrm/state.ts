/**
 * xfrm states (security associations): the structs of XFRM_MSG_NEWSA and
 * friends, the requests that equal `ip xfrm state ...`, and the parser of
 * the kernel's replies. Keys pass through here and are never put into an
 * error message or an op text.
 */
import { NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL } from '../consts';
import { Attr, attrBytes, decodeAttrs } from '../codec';
import {
  XfrmLifetimeCur,
  XfrmMark,
  XfrmMode,
  XfrmRequest,
  XfrmSelector,
  decodeLifetimeCur,
  decodeMark,
  decodeSelector,
  decodeXfrmAddress,
  encodeLifetimeCfgInfinite,
  encodeMark,
  encodeSelector,
  encodeXfrmAddress,
  familyOf,
  hex,
  markText,
  modeName,
  modeNumber,
} from './common';
import {
  IPPROTO_ESP,
  SIZEOF_XFRM_ALGO_AEAD,
  SIZEOF_XFRM_REPLAY_STATE_ESN,
  SIZEOF_XFRM_USERSA_FLUSH,
  SIZEOF_XFRM_USERSA_ID,
  SIZEOF_XFRM_USERSA_INFO,
  XFRMA_ALG_AEAD,
  XFRMA_MARK,
  XFRMA_REPLAY_ESN_VAL,
  XFRMA_SRCADDR,
  XFRM_MSG_DELSA,
  XFRM_MSG_FLUSHSA,
  XFRM_MSG_GETSA,
  XFRM_MSG_NEWSA,
  XFRM_MSG_UPDSA,
  XFRM_REPLAY_ESN_MAX_WINDOW,
  XFRM_STATE_ESN,
} from './consts';

/** An AEAD algorithm and its key; for rfc4106(gcm(aes)) the key is the AES key followed by the 4-byte salt. */
export interface XfrmAead {
  name: string;
  key: Buffer;
  /** ICV length in bits (128 for Docker's and our GCM) */
  icvBits: number;
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
