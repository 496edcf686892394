/**
 * xfrm policies: the structs of XFRM_MSG_NEWPOLICY and friends (with their
 * templates), the requests that equal `ip xfrm policy ...`, and the parser
 * of the kernel's replies.
 */
import { NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL } from '../consts';
import { Attr, attrBytes, decodeAttrList } from '../codec';
import {
  XfrmDir,
  XfrmMark,
  XfrmMode,
  XfrmRequest,
  XfrmSelector,
  decodeMark,
  decodeSelector,
  decodeXfrmAddress,
  encodeLifetimeCfgInfinite,
  encodeMark,
  encodeSelector,
  encodeXfrmAddress,
  familyOf,
  markText,
  modeNumber,
  selectorText,
} from './common';
import {
  IPPROTO_ESP,
  SIZEOF_XFRM_USERPOLICY_ID,
  SIZEOF_XFRM_USERPOLICY_INFO,
  SIZEOF_XFRM_USER_TMPL,
  XFRMA_MARK,
  XFRMA_TMPL,
  XFRM_MODE_TUNNEL,
  XFRM_MSG_DELPOLICY,
  XFRM_MSG_FLUSHPOLICY,
  XFRM_MSG_GETPOLICY,
  XFRM_MSG_NEWPOLICY,
  XFRM_MSG_UPDPOLICY,
  XFRM_POLICY_BLOCK,
  XFRM_POLICY_ALLOW,
  XFRM_POLICY_FWD,
  XFRM_POLICY_IN,
  XFRM_POLICY_OUT,
  XFRM_SHARE_ANY,
} from './consts';

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
