/**
 * Set and map elements written over NETLINK_NETFILTER, without nft: one
 * nfnetlink batch per call, which the kernel applies atomically (all of it
 * or none of it), as `nft -f -` would apply the same `add element` /
 * `delete element` lines, but with no process and no ruleset cache.
 *
 *   NFNL_MSG_BATCH_BEGIN   nfgenmsg { AF_UNSPEC, 0, htons(NFNL_SUBSYS_NFTABLES) }
 *   NFT_MSG_NEWSETELEM / NFT_MSG_DELSETELEM, one per set and chunk:
 *     NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET,
 *     NFTA_SET_ELEM_LIST_ELEMENTS { NFTA_LIST_ELEM { NFTA_SET_ELEM_KEY { NFTA_DATA_VALUE },
 *       [NFTA_SET_ELEM_KEY_END { NFTA_DATA_VALUE }], [NFTA_SET_ELEM_DATA { NFTA_DATA_VALUE }],
 *       [NFTA_SET_ELEM_USERDATA: libnftnl TLV, type 0 = comment] } ... }
 *   NFNL_MSG_BATCH_END
 *
 * Keys and values arrive as nft text, one string per concatenated field
 * ("10.1.0.0/24", "tcp", "8000-8010"), with the set's field types, and are
 * laid out as nft lays them out: each field of a concatenation padded to 4
 * bytes, a single field at its own width. A field written as a prefix or a
 * range makes the element an interval: KEY holds every field's first value
 * and KEY_END every field's last (inclusive, as the kernel's pipapo
 * concatenated-range sets take them), so interval sets of this kind
 * (`flags interval` on a concatenation) are supported; the rbtree kind (a
 * single-field interval set) is not, and is refused.
 *
 * Adding an element whose key exists with other data fails with EEXIST
 * (NLM_F_CREATE without NLM_F_EXCL, as `nft add element`): the same key
 * with the same data is a no-op.
 */
import { attrBytes, attrNested, attrString, type Attr } from './codec';
import { AF_INET, AF_INET6 } from './consts';
import { parseIp } from './ipaddr';
import { NFPROTO, openNetfilterSocket, type NftFamily } from './nftables';
import type { ElementOp, FieldType, SetLayout } from '../nft/types';
import {
  NFNL_SUBSYS_NFTABLES, NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS, NFTA_LIST_ELEM,
  NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_DATA, NFTA_DATA_VALUE, NFTA_SET_ELEM_USERDATA, NFTA_SET_ELEM_KEY_END,
  NFTNL_UDATA_SET_ELEM_COMMENT, NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END, NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM,
  NLM_F_ACK, NLM_F_CREATE,
} from './nft-consts';

export type { ElementOp, FieldType, SetLayout };

/** nla_len is 16 bits: a message's element list must stay below 64 KiB. */
const CHUNK_BYTES = 48 * 1024;


const WIDTH: Record<FieldType, number> = { nf_proto: 1, inet_proto: 1, inet_service: 2, ipv4_addr: 4, ipv6_addr: 16 };
const NFPROTOS: Record<string, number> = { ipv4: AF_INET, ipv6: AF_INET6 };
const PROTOS: Record<string, number> = { icmp: 1, tcp: 6, udp: 17, 'ipv6-icmp': 58, sctp: 132 };


function fail(what: string): never {
  throw new Error(`nft element: ${what}`);
}

/** One field's first and last value as bytes of the type's width. */
export function encodeField(type: FieldType, text: string): { start: Buffer; end: Buffer } {
  // the common case first: a single port (a range publishes one element per port)
  if (type === 'inet_proto' && PROTOS[text] !== undefined) {
    const b = Buffer.from([PROTOS[text]]);
    return { start: b, end: b };
  }
  if (type === 'inet_service' && /^\d{1,5}$/.test(text)) {
    const v = Number(text);
    if (v > 65535) fail(`bad ${type} "${text}"`);
    const b = Buffer.from([v >> 8, v & 0xff]);
    return { start: b, end: b };
  }
  const width = WIDTH[type];
  if (type === 'ipv4_addr' || type === 'ipv6_addr') {
    const [addr, lenText, ...rest] = text.split('/');
    const dash = lenText === undefined ? addr.split('-') : [addr];
    if (rest.length || dash.length > 2) fail(`bad ${type} "${text}"`);
    const first = parseIp(dash[0]).bytes;
    if (first.length !== width) fail(`"${text}" is not an ${type}`);
    if (dash.length === 2) {
      const last = parseIp(dash[1]).bytes;
      if (last.length !== width || Buffer.compare(first, last) > 0) fail(`bad ${type} range "${text}"`);
      return { start: Buffer.from(first), end: Buffer.from(last) };
    }
    if (lenText === undefined) return { start: Buffer.from(first), end: Buffer.from(first) };
    const len = Number(lenText);
    if (!/^\d+$/.test(lenText) || len > width * 8) fail(`bad prefix length in "${text}"`);
    const start = Buffer.from(first);
    const end = Buffer.from(first);
    for (let bit = len; bit < width * 8; bit++) {
      const byte = bit >> 3;
      const mask = 0x80 >> (bit & 7);
      if (start[byte] & mask) fail(`"${text}" has host bits set`);
      end[byte] |= mask;
    }
    return { start, end };
  }
  const parts = type === 'inet_service' ? text.split('-') : [text];
  if (parts.length > 2) fail(`bad ${type} "${text}"`);
  const values = parts.map((p) => {
    const v = type === 'nf_proto' ? NFPROTOS[p] : type === 'inet_proto' ? (PROTOS[p] ?? (/^\d+$/.test(p) ? Number(p) : undefined)) : /^\d+$/.test(p) ? Number(p) : undefined;
    if (v === undefined || v >= 2 ** (8 * width)) fail(`bad ${type} "${text}"`);
    return v;
  });
  const bytes = values.map((v) => {
    const b = Buffer.alloc(width);
    if (width === 1) b[0] = v;
    else b.writeUInt16BE(v);
    return b;
  });
  if (values.length === 2 && values[0] > values[1]) fail(`bad ${type} range "${text}"`);
  return { start: bytes[0], end: bytes[bytes.length - 1] };
}

/**
 * A key or value as the kernel holds it: a single field at its width, a
 * concatenation with every field padded to 4 bytes. `end` differs from
 * `start` when a field is a prefix or a range.
 */
export function encodeConcat(
  types: readonly FieldType[],
  parts: readonly string[],
  cache?: Map<string, { start: Buffer; end: Buffer }>,
): { start: Buffer; end: Buffer; interval: boolean } {
  if (types.length !== parts.length) fail(`${parts.length} fields for a ${types.join(' . ')} key`);
  // A batch repeats its addresses, protocols and comments element after element: each is parsed once.
  const field = (t: FieldType, text: string): { start: Buffer; end: Buffer } => {
    if (!cache || (t !== 'ipv4_addr' && t !== 'ipv6_addr')) return encodeField(t, text);
    const k = `${t} ${text}`;
    let f = cache.get(k);
    if (!f) cache.set(k, (f = encodeField(t, text)));
    return f;
  };
  if (types.length === 1) {
    const f = field(types[0], parts[0]);
    return { ...f, interval: !f.start.equals(f.end) };
  }
  const starts: Buffer[] = [];
  const ends: Buffer[] = [];
  types.forEach((t, i) => {
    const f = field(t, parts[i]);
    const pad = Buffer.alloc((4 - (f.start.length % 4)) % 4);
    starts.push(f.start, pad);
    ends.push(f.end, pad);
  });
  const start = Buffer.concat(starts);
  const end = Buffer.concat(ends);
  return { start, end, interval: !start.equals(end) };
}

/** libnftnl's comment TLV: { u8 type; u8 len; value[len] }, the text NUL-terminated. */
export function commentUdata(comment: string): Buffer {
  const text = Buffer.from(`${comment}\0`, 'utf8');
  if (text.length > 129) fail(`comment longer than 128 bytes: "${comment}"`);
  return Buffer.concat([Buffer.from([NFTNL_UDATA_SET_ELEM_COMMENT, text.length]), text]);
}

const NLA_F_NESTED = 0x8000;

/** { nla(type|NESTED) { nla(NFTA_DATA_VALUE) bytes } } laid out directly: a batch holds thousands. */
function nestedValue(type: number, b: Buffer): Buffer {
  const inner = 4 + b.length;
  const out = Buffer.alloc(4 + ((inner + 3) & ~3));
  out.writeUInt16LE(4 + inner, 0);
  out.writeUInt16LE(type | NLA_F_NESTED, 2);
  out.writeUInt16LE(inner, 4);
  out.writeUInt16LE(NFTA_DATA_VALUE, 6);
  b.copy(out, 8);
  return out;
}

function plainAttr(type: number, b: Buffer): Buffer {
  const out = Buffer.alloc(4 + ((b.length + 3) & ~3));
  out.writeUInt16LE(4 + b.length, 0);
  out.writeUInt16LE(type, 2);
  b.copy(out, 4);
  return out;
}

/** One NFTA_LIST_ELEM of `op` in a set of `layout` (`cache`: field encodings shared across a batch). */
export function elementAttr(layout: SetLayout, op: ElementOp, cache?: Map<string, { start: Buffer; end: Buffer }>): Attr {
  const key = encodeConcat(layout.key, op.key, cache);
  if (key.interval && !layout.interval) fail(`set ${op.set} has no intervals: ${op.key.join(' . ')}`);
  if (layout.interval && layout.key.length < 2) fail(`set ${op.set}: single-field interval sets are not supported`);
  const parts: Buffer[] = [nestedValue(NFTA_SET_ELEM_KEY, key.start)];
  if (layout.interval) parts.push(nestedValue(NFTA_SET_ELEM_KEY_END, key.end));
  if (op.verb === 'add' && layout.value) {
    if (!op.value) fail(`map ${op.set} needs a value for ${op.key.join(' . ')}`);
    const v = encodeConcat(layout.value, op.value, cache);
    if (v.interval) fail(`map ${op.set}: a value cannot be an interval`);
    parts.push(nestedValue(NFTA_SET_ELEM_DATA, v.start));
  }
  if (op.verb === 'add' && op.comment !== undefined) {
    let udata = cache?.get(`comment ${op.comment}`)?.start;
    if (!udata) {
      udata = plainAttr(NFTA_SET_ELEM_USERDATA, commentUdata(op.comment));
      cache?.set(`comment ${op.comment}`, { start: udata, end: udata });
    }
    parts.push(udata);
  }
  // the element's attributes already laid out: the codec copies them as the nested attribute's payload
  return attrBytes(NFTA_LIST_ELEM | NLA_F_NESTED, Buffer.concat(parts));
}

export interface BatchMessage {
  type: number;
  flags: number;
  familyHeader: Buffer;
  attrs: Attr[];
  /** The nft command this message stands for, for error messages. */
  op: string;
}

function attrLen(a: Attr): number {
  if (Buffer.isBuffer(a.value)) return (4 + a.value.length + 3) & ~3;
  const payload = Buffer.isBuffer(a.value) ? a.value.length : a.value.reduce((n, c) => n + attrLen(c), 0);
  return (4 + payload + 3) & ~3;
}

function describe(op: ElementOp): string {
  const key = op.key.join(' . ');
  return op.verb === 'add' && op.value ? `${key} : ${op.value.join(' . ')}` : key;
}

/**
 * The batch's messages, BATCH_BEGIN and BATCH_END included: consecutive
 * ops of one verb and set share a message (up to CHUNK_BYTES of elements),
 * and the last one asks for an ACK (see below).
 */
export function elementBatch(family: NftFamily, table: string, layouts: Readonly<Record<string, SetLayout>>, ops: readonly ElementOp[]): BatchMessage[] {
  const gen = Buffer.from([NFPROTO[family], 0, 0, 0]);
  const frame = (type: number, op: string): BatchMessage => ({ type, flags: 0, familyHeader: Buffer.from([0, 0, 0, NFNL_SUBSYS_NFTABLES]), attrs: [], op });
  const out: BatchMessage[] = [frame(NFNL_MSG_BATCH_BEGIN, `nft commit of ${ops.length} element(s) in ${family} ${table}`)];
  let cur: { verb: string; set: string; elems: Attr[]; bytes: number; first: ElementOp; count: number } | undefined;
  const flush = (): void => {
    if (!cur) return;
    const more = cur.count > 1 ? ` (and ${cur.count - 1} more)` : '';
    out.push({
      type: (NFNL_SUBSYS_NFTABLES << 8) | (cur.verb === 'add' ? NFT_MSG_NEWSETELEM : NFT_MSG_DELSETELEM),
      flags: cur.verb === 'add' ? NLM_F_CREATE : 0,
      familyHeader: gen,
      attrs: [attrString(NFTA_SET_ELEM_LIST_TABLE, table), attrString(NFTA_SET_ELEM_LIST_SET, cur.set), attrNested(NFTA_SET_ELEM_LIST_ELEMENTS, cur.elems, true)],
      op: `${cur.verb} element ${family} ${table} ${cur.set} { ${describe(cur.first)} }${more}`,
    });
    cur = undefined;
  };
  const cache = new Map<string, { start: Buffer; end: Buffer }>();
  for (const op of ops) {
    const layout = layouts[op.set] ?? fail(`unknown set ${op.set}`);
    const a = elementAttr(layout, op, cache);
    const len = attrLen(a);
    if (cur && (cur.verb !== op.verb || cur.set !== op.set || cur.bytes + len > CHUNK_BYTES)) flush();
    cur ??= { verb: op.verb, set: op.set, elems: [], bytes: 0, first: op, count: 0 };
    cur.elems.push(a);
    cur.bytes += len;
    cur.count++;
  }
  flush();
  // Failures are answered whatever the flags; one ACK, on the last
  // message, says the batch is done (thousands would overflow the socket).
  out[out.length - 1].flags |= NLM_F_ACK;
  out.push(frame(NFNL_MSG_BATCH_END, 'nft commit'));
  return out;
}

/**
 * `nft -f -` of `add element` / `delete element` lines, over netlink: one
 * atomic batch. Throws NetlinkError (errno kept, `op` naming the element
 * command that failed). Nothing is sent when `ops` is empty.
 */
export function nftElementBatch(family: NftFamily, table: string, layouts: Readonly<Record<string, SetLayout>>, ops: readonly ElementOp[], netnsPath?: string): void {
  if (ops.length === 0) return;
  const msgs = elementBatch(family, table, layouts, ops);
  const sock = openNetfilterSocket(netnsPath);
  try {
    sock.sendBatch(msgs, (i) => msgs[i].op);
  } finally {
    sock.close();
  }
}
