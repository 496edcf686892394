/**
 * Hand-built kernel-format bytes for the parser tests. Written apart from
 * shared/netlink/codec.ts on purpose: a parser test that built its input with
 * the encoder under test would pass even if both had the same mistake.
 */

/** struct nlattr + payload + zero padding to a multiple of four */
export function nla(type: number, payload: Buffer | number[]): Buffer {
  const body = Buffer.isBuffer(payload) ? payload : Buffer.from(payload);
  const len = 4 + body.length;
  const out = Buffer.alloc((len + 3) & ~3);
  out.writeUInt16LE(len, 0);
  out.writeUInt16LE(type, 2);
  body.copy(out, 4);
  return out;
}

export function nlaNested(type: number, ...children: Buffer[]): Buffer {
  return nla(type, Buffer.concat(children));
}

export function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0);
  return b;
}

export function i32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32LE(v);
  return b;
}

export function u16(v: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(v);
  return b;
}

export function u16be(v: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(v);
  return b;
}

export function str(s: string): Buffer {
  return Buffer.from(`${s}\0`);
}

/** Every attribute of one level, in order, as [type, payload] (a tiny reader independent of codec.ts). */
export function attrsOf(buf: Buffer, start = 0): Array<[number, Buffer]> {
  const out: Array<[number, Buffer]> = [];
  let off = start;
  while (off + 4 <= buf.length) {
    const len = buf.readUInt16LE(off);
    if (len < 4 || off + len > buf.length) throw new Error(`bad nla_len ${len} at ${off}`);
    out.push([buf.readUInt16LE(off + 2), buf.subarray(off + 4, off + len)]);
    off += (len + 3) & ~3;
  }
  if (off < buf.length) throw new Error(`${buf.length - off} stray bytes after the attributes`);
  return out;
}

/** The one attribute of the given type (raw type including flags); throws if absent or repeated. */
export function one(attrs: Array<[number, Buffer]>, type: number): Buffer {
  const hits = attrs.filter(([t]) => t === type);
  if (hits.length !== 1) throw new Error(`expected one attribute of type ${type}, found ${hits.length}`);
  return hits[0][1];
}

export function types(attrs: Array<[number, Buffer]>): number[] {
  return attrs.map(([t]) => t);
}
