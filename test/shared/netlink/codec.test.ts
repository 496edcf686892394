import { describe, expect, it } from 'vitest';
import {
  Attr,
  align4,
  attrBytes,
  attrNested,
  attrString,
  attrU16,
  attrU16be,
  attrU32,
  attrU64,
  attrU8,
  decodeAttrList,
  decodeAttrs,
  decodeMessages,
  encodeAttrs,
  encodeMessage,
  readString,
  readU16,
  readU32,
  readU8,
} from '../../../shared/netlink/codec';
import { NLA_F_NESTED, NLMSG_HDRLEN, NLM_F_ACK, NLM_F_REQUEST, RTM_NEWLINK } from '../../../shared/netlink/consts';

describe('align4', () => {
  it('rounds lengths up to the next multiple of four, as NLA_ALIGN and NLMSG_ALIGN do', () => {
    expect([0, 1, 2, 3, 4, 5, 8, 9, 15, 16].map(align4)).toEqual([0, 4, 4, 4, 4, 8, 8, 12, 16, 16]);
  });
});

describe('attribute encoding', () => {
  it('writes a u32 attribute as nla_len 8, the type, then the little-endian value', () => {
    const buf = encodeAttrs([attrU32(4, 0x01020304)]);
    expect([...buf]).toEqual([8, 0, 4, 0, 0x04, 0x03, 0x02, 0x01]);
  });

  it('pads a one-byte attribute to four bytes with zeros while nla_len counts only the real payload', () => {
    const buf = encodeAttrs([attrU8(7, 0xab), attrU8(8, 0xcd)]);
    expect(buf.length).toBe(16);
    expect([...buf]).toEqual([5, 0, 7, 0, 0xab, 0, 0, 0, 5, 0, 8, 0, 0xcd, 0, 0, 0]);
  });

  it('terminates strings with NUL so the kernel can compare names with nla_strcmp', () => {
    const a = attrString(3, 'eth0');
    expect([...(a.value as Buffer)]).toEqual([0x65, 0x74, 0x68, 0x30, 0]);
    const buf = encodeAttrs([a]);
    // 4 header + 5 payload = 9, padded to 12
    expect(buf.readUInt16LE(0)).toBe(9);
    expect(buf.length).toBe(12);
    expect(buf.subarray(9)).toEqual(Buffer.alloc(3));
  });

  it('writes a u16 in network byte order when asked, as IFLA_VXLAN_PORT requires', () => {
    const be = attrU16be(15, 4789);
    const le = attrU16(15, 4789);
    expect([...(be.value as Buffer)]).toEqual([0x12, 0xb5]);
    expect([...(le.value as Buffer)]).toEqual([0xb5, 0x12]);
    expect(decodeAttrs(encodeAttrs([be])).get(15)!.readUInt16BE(0)).toBe(4789);
  });

  it('writes u64 values little-endian', () => {
    const buf = encodeAttrs([attrU64(9, 0x0102030405060708n)]);
    expect(buf.length).toBe(12);
    expect(buf.readBigUInt64LE(4)).toBe(0x0102030405060708n);
  });

  it('writes u32 values above 2^31 without sign trouble', () => {
    const buf = encodeAttrs([attrU32(1, 0xffffffff)]);
    expect(readU32(decodeAttrs(buf).get(1))).toBe(0xffffffff);
  });

  it('gives a nested attribute an nla_len that covers all of its padded children', () => {
    const nested = attrNested(18, [attrString(1, 'veth'), attrU8(2, 1)]);
    const buf = encodeAttrs([nested]);
    // children: "veth\0" -> 4+5=9 -> 12, u8 -> 5 -> 8 ; outer = 4 + 20
    expect(buf.readUInt16LE(0)).toBe(24);
    expect(buf.length).toBe(24);
    const inner = decodeAttrs(decodeAttrs(buf).get(18)!);
    expect(readString(inner.get(1))).toBe('veth');
    expect(readU8(inner.get(2))).toBe(1);
  });

  it('sets NLA_F_NESTED on the wire when asked and the decoder masks it off again', () => {
    const buf = encodeAttrs([attrNested(12, [attrU8(4, 1)], true)]);
    expect(buf.readUInt16LE(2)).toBe(12 | NLA_F_NESTED);
    expect([...decodeAttrs(buf).keys()]).toEqual([12]);
  });

  it('masks off the network-byte-order flag (0x4000) on decode too', () => {
    const raw = Buffer.from([8, 0, 0x05, 0x40, 1, 2, 3, 4]);
    expect([...decodeAttrs(raw).keys()]).toEqual([5]);
  });

  it('encodes an empty nested attribute as a bare four-byte header', () => {
    const buf = encodeAttrs([attrNested(2, [])]);
    expect([...buf]).toEqual([4, 0, 2, 0]);
    expect(decodeAttrs(buf).get(2)!.length).toBe(0);
  });
});

describe('attribute round trip', () => {
  it('decodes an encoded attribute tree three levels deep back into the same values', () => {
    const tree: Attr[] = [
      attrString(3, 'vxlan100'),
      attrU32(4, 1450),
      attrBytes(1, Buffer.from([2, 0, 0, 0, 0, 1])),
      attrNested(18, [
        attrString(1, 'vxlan'),
        attrNested(2, [attrU32(1, 100), attrU16be(15, 4789), attrU8(7, 0), attrBytes(4, Buffer.from([10, 0, 0, 1]))]),
      ]),
      attrU16(99, 0xbeef),
    ];
    const top = decodeAttrs(encodeAttrs(tree));
    expect(readString(top.get(3))).toBe('vxlan100');
    expect(readU32(top.get(4))).toBe(1450);
    expect([...top.get(1)!]).toEqual([2, 0, 0, 0, 0, 1]);
    expect(readU16(top.get(99))).toBe(0xbeef);
    const info = decodeAttrs(top.get(18)!);
    expect(readString(info.get(1))).toBe('vxlan');
    const data = decodeAttrs(info.get(2)!);
    expect(readU32(data.get(1))).toBe(100);
    expect(data.get(15)!.readUInt16BE(0)).toBe(4789);
    expect(readU8(data.get(7))).toBe(0);
    expect([...data.get(4)!]).toEqual([10, 0, 0, 1]);
  });

  it('hands back payloads without their padding', () => {
    const a = decodeAttrs(encodeAttrs([attrBytes(1, Buffer.from([1, 2, 3])), attrBytes(2, Buffer.from([4]))]));
    expect([...a.get(1)!]).toEqual([1, 2, 3]);
    expect([...a.get(2)!]).toEqual([4]);
  });

  it('keeps repeated attributes in order with decodeAttrList while decodeAttrs keeps the last', () => {
    const buf = encodeAttrs([attrU32(1, 10), attrU32(2, 20), attrU32(1, 30)]);
    expect(decodeAttrList(buf).map(([t, v]) => [t, v.readUInt32LE(0)])).toEqual([
      [1, 10],
      [2, 20],
      [1, 30],
    ]);
    expect(readU32(decodeAttrs(buf).get(1))).toBe(30);
  });

  it('starts decoding at the given offset, past a family header', () => {
    const buf = Buffer.concat([Buffer.alloc(16, 0xee), encodeAttrs([attrU32(4, 9000)])]);
    expect(readU32(decodeAttrs(buf, 16).get(4))).toBe(9000);
  });

  it('stops at an attribute whose length is shorter than its own header instead of looping', () => {
    const good = encodeAttrs([attrU32(1, 7)]);
    const bad = Buffer.from([2, 0, 5, 0, 0, 0, 0, 0]);
    const a = decodeAttrList(Buffer.concat([good, bad, encodeAttrs([attrU32(6, 8)])]));
    expect(a.map(([t]) => t)).toEqual([1]);
  });

  it('stops at an attribute that claims to run past the end of the buffer', () => {
    const buf = Buffer.concat([encodeAttrs([attrU32(1, 7)]), Buffer.from([64, 0, 2, 0, 1, 2, 3, 4])]);
    expect(decodeAttrList(buf).map(([t]) => t)).toEqual([1]);
  });

  it('accepts a last attribute whose padding the sender left off', () => {
    // "lo\0" is 4+3 = 7 bytes; a kernel message may end right there
    const buf = Buffer.from([7, 0, 3, 0, 0x6c, 0x6f, 0]);
    expect(readString(decodeAttrs(buf).get(3))).toBe('lo');
  });
});

describe('scalar readers', () => {
  it('read a string up to its NUL and the whole payload when there is none', () => {
    expect(readString(Buffer.from('br0\0junk'))).toBe('br0');
    expect(readString(Buffer.from('br0'))).toBe('br0');
    expect(readString(Buffer.from('\0'))).toBe('');
    expect(readString(undefined)).toBeUndefined();
  });

  it('return undefined for a missing or too short payload rather than reading garbage', () => {
    expect(readU32(Buffer.from([1, 2, 3]))).toBeUndefined();
    expect(readU16(Buffer.from([1]))).toBeUndefined();
    expect(readU8(Buffer.alloc(0))).toBeUndefined();
    expect(readU32(undefined)).toBeUndefined();
    expect(readU16(Buffer.from([0x34, 0x12]))).toBe(0x1234);
    expect(readU8(Buffer.from([0xfe]))).toBe(0xfe);
  });
});

describe('message encoding', () => {
  it('lays out nlmsghdr with the total length, type, flags, sequence and port id', () => {
    const fam = Buffer.alloc(16, 0);
    const msg = encodeMessage({ type: RTM_NEWLINK, flags: NLM_F_REQUEST | NLM_F_ACK, seq: 0xdeadbeef, pid: 4242 }, fam, [attrString(3, 'br0')]);
    expect(msg.length).toBe(NLMSG_HDRLEN + 16 + 8);
    expect(msg.readUInt32LE(0)).toBe(msg.length);
    expect(msg.readUInt16LE(4)).toBe(RTM_NEWLINK);
    expect(msg.readUInt16LE(6)).toBe(NLM_F_REQUEST | NLM_F_ACK);
    expect(msg.readUInt32LE(8)).toBe(0xdeadbeef);
    expect(msg.readUInt32LE(12)).toBe(4242);
    expect(readString(decodeAttrs(msg, NLMSG_HDRLEN + 16).get(3))).toBe('br0');
  });

  it('pads a family header that is not a multiple of four before the first attribute', () => {
    const fam = Buffer.from([1, 2, 3, 4, 5]);
    const msg = encodeMessage({ type: 1, flags: 0, seq: 1, pid: 0 }, fam, [attrU32(1, 77)]);
    expect(msg.length).toBe(NLMSG_HDRLEN + 8 + 8);
    expect([...msg.subarray(16, 24)]).toEqual([1, 2, 3, 4, 5, 0, 0, 0]);
    expect(readU32(decodeAttrs(msg, 24).get(1))).toBe(77);
  });

  it('decodes a message it encoded, with the payload being the family header and the attributes', () => {
    const fam = Buffer.alloc(12, 0x11);
    const msg = encodeMessage({ type: 24, flags: 0x0605, seq: 7, pid: 99 }, fam, [attrU32(15, 254)]);
    const [m] = decodeMessages(msg);
    expect(m).toMatchObject({ type: 24, flags: 0x0605, seq: 7, pid: 99 });
    expect(m.payload.subarray(0, 12)).toEqual(fam);
    expect(readU32(decodeAttrs(m.payload, 12).get(15))).toBe(254);
  });

  it('splits a datagram holding several messages, as a dump reply arrives', () => {
    const a = encodeMessage({ type: 16, flags: 2, seq: 5, pid: 1 }, Buffer.alloc(16), [attrString(3, 'lo')]);
    const b = encodeMessage({ type: 16, flags: 2, seq: 5, pid: 1 }, Buffer.alloc(16), [attrString(3, 'eth0')]);
    const done = encodeMessage({ type: 3, flags: 2, seq: 5, pid: 1 }, Buffer.alloc(4));
    const msgs = decodeMessages(Buffer.concat([a, b, done]));
    expect(msgs.map((m) => m.type)).toEqual([16, 16, 3]);
    expect(msgs.map((m) => readString(decodeAttrs(m.payload, 16).get(3)))).toEqual(['lo', 'eth0', undefined]);
  });

  it('steps over a message whose nlmsg_len is not a multiple of four to the aligned start of the next', () => {
    const first = Buffer.alloc(20);
    first.writeUInt32LE(17, 0); // 16-byte header + 1 byte payload, then 3 padding bytes
    first.writeUInt16LE(100, 4);
    first[16] = 0x5a;
    const second = encodeMessage({ type: 101, flags: 0, seq: 0, pid: 0 }, Buffer.alloc(4));
    const msgs = decodeMessages(Buffer.concat([first, second]));
    expect(msgs.map((m) => m.type)).toEqual([100, 101]);
    expect([...msgs[0].payload]).toEqual([0x5a]);
  });

  it('throws on a message that claims more bytes than the datagram holds', () => {
    const msg = encodeMessage({ type: 16, flags: 0, seq: 1, pid: 0 }, Buffer.alloc(16));
    msg.writeUInt32LE(msg.length + 4, 0);
    expect(() => decodeMessages(msg)).toThrow(/truncated/);
  });

  it('throws on a message whose length is smaller than its own header', () => {
    const msg = Buffer.alloc(16);
    msg.writeUInt32LE(8, 0);
    expect(() => decodeMessages(msg)).toThrow(/truncated/);
  });

  it('returns no messages for an empty datagram', () => {
    expect(decodeMessages(Buffer.alloc(0))).toEqual([]);
  });
});
