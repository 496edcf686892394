/**
 * Netlink wire format, pure and kernel-free (round-trip tested).
 *
 *   struct nlmsghdr { __u32 nlmsg_len; __u16 nlmsg_type; __u16 nlmsg_flags;
 *                     __u32 nlmsg_seq; __u32 nlmsg_pid; };
 *   struct nlattr   { __u16 nla_len; __u16 nla_type; };   // then payload, padded to 4
 *
 * Messages are built as a fixed family header (ifinfomsg, rtmsg, ...) plus a
 * tree of attributes; nested attributes are just attributes whose payload is
 * more attributes, as with vishvananda/netlink's AddRtAttr.
 */
import { NLA_F_NESTED, NLA_TYPE_MASK, NLMSG_HDRLEN } from './consts';

export type AttrValue = Buffer | Attr[];
export interface Attr {
  type: number;
  value: AttrValue;
}

export function align4(n: number): number {
  return (n + 3) & ~3;
}

// ---- attribute builders ---------------------------------------------------

export function attrBytes(type: number, value: Buffer): Attr {
  return { type, value };
}

export function attrU8(type: number, v: number): Attr {
  return { type, value: Buffer.from([v & 0xff]) };
}

export function attrU16(type: number, v: number): Attr {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(v);
  return { type, value: b };
}

/** network byte order, e.g. IFLA_VXLAN_PORT */
export function attrU16be(type: number, v: number): Attr {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(v);
  return { type, value: b };
}

export function attrU32(type: number, v: number): Attr {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0);
  return { type, value: b };
}

export function attrU64(type: number, v: bigint): Attr {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(v);
  return { type, value: b };
}

/** NUL-terminated string, as the kernel's nla_strcmp expects */
export function attrString(type: number, s: string): Attr {
  return { type, value: Buffer.from(`${s}\0`, 'utf8') };
}

export function attrNested(type: number, children: Attr[], flagNested = false): Attr {
  return { type: flagNested ? type | NLA_F_NESTED : type, value: children };
}

// ---- encoding ---------------------------------------------------------------

function attrSize(a: Attr): number {
  const payload = Buffer.isBuffer(a.value) ? a.value.length : attrsSize(a.value);
  return align4(4 + payload);
}

function attrsSize(attrs: Attr[]): number {
  let n = 0;
  for (const a of attrs) n += attrSize(a);
  return n;
}

function writeAttrs(buf: Buffer, off: number, attrs: Attr[]): number {
  for (const a of attrs) {
    const start = off;
    off += 4;
    if (Buffer.isBuffer(a.value)) {
      a.value.copy(buf, off);
      off += a.value.length;
    } else {
      off = writeAttrs(buf, off, a.value);
    }
    buf.writeUInt16LE(off - start, start);
    buf.writeUInt16LE(a.type, start + 2);
    off = align4(off);
  }
  return off;
}

export function encodeAttrs(attrs: Attr[]): Buffer {
  const buf = Buffer.alloc(attrsSize(attrs));
  writeAttrs(buf, 0, attrs);
  return buf;
}

export interface MessageHeader {
  type: number;
  flags: number;
  seq: number;
  pid: number;
}

/** nlmsghdr + family header (already laid out by the caller) + attributes */
export function encodeMessage(hdr: MessageHeader, familyHeader: Buffer, attrs: Attr[] = []): Buffer {
  const bodyLen = align4(familyHeader.length);
  const len = NLMSG_HDRLEN + bodyLen + attrsSize(attrs);
  const buf = Buffer.alloc(len);
  buf.writeUInt32LE(len, 0);
  buf.writeUInt16LE(hdr.type, 4);
  buf.writeUInt16LE(hdr.flags, 6);
  buf.writeUInt32LE(hdr.seq >>> 0, 8);
  buf.writeUInt32LE(hdr.pid >>> 0, 12);
  familyHeader.copy(buf, NLMSG_HDRLEN);
  writeAttrs(buf, NLMSG_HDRLEN + bodyLen, attrs);
  return buf;
}

// ---- decoding ---------------------------------------------------------------

export interface Message extends MessageHeader {
  /** everything after nlmsghdr: family header then attributes */
  payload: Buffer;
}

export function decodeMessages(buf: Buffer): Message[] {
  const out: Message[] = [];
  let off = 0;
  while (off + NLMSG_HDRLEN <= buf.length) {
    const len = buf.readUInt32LE(off);
    if (len < NLMSG_HDRLEN || off + len > buf.length) throw new Error(`netlink: truncated message (len ${len} at ${off})`);
    out.push({
      type: buf.readUInt16LE(off + 4),
      flags: buf.readUInt16LE(off + 6),
      seq: buf.readUInt32LE(off + 8),
      pid: buf.readUInt32LE(off + 12),
      payload: buf.subarray(off + NLMSG_HDRLEN, off + len),
    });
    off += align4(len);
  }
  return out;
}

/**
 * Attributes of one level as a map type -> payload (the NLA_F_NESTED and
 * byte-order flags are masked off; for repeated types the last one wins,
 * use decodeAttrList when order or repeats matter).
 */
export function decodeAttrs(buf: Buffer, start = 0): Map<number, Buffer> {
  const map = new Map<number, Buffer>();
  for (const [type, value] of iterAttrs(buf, start)) map.set(type, value);
  return map;
}

export function decodeAttrList(buf: Buffer, start = 0): Array<[number, Buffer]> {
  return [...iterAttrs(buf, start)];
}

function* iterAttrs(buf: Buffer, start: number): Generator<[number, Buffer]> {
  let off = start;
  while (off + 4 <= buf.length) {
    const len = buf.readUInt16LE(off);
    const type = buf.readUInt16LE(off + 2) & NLA_TYPE_MASK;
    if (len < 4 || off + len > buf.length) break;
    yield [type, buf.subarray(off + 4, off + len)];
    off += align4(len);
  }
}

export function readString(b: Buffer | undefined): string | undefined {
  if (!b) return undefined;
  const nul = b.indexOf(0);
  return b.toString('utf8', 0, nul === -1 ? b.length : nul);
}

export function readU32(b: Buffer | undefined): number | undefined {
  return b && b.length >= 4 ? b.readUInt32LE(0) : undefined;
}

export function readU16(b: Buffer | undefined): number | undefined {
  return b && b.length >= 2 ? b.readUInt16LE(0) : undefined;
}

export function readU8(b: Buffer | undefined): number | undefined {
  return b && b.length >= 1 ? b.readUInt8(0) : undefined;
}
