/**
 * Set and map elements over netlink (shared/netlink/nft-elements.ts): the
 * wire encoding held to the bytes nft 1.0.6 itself sends (`nft --debug=mnl
 * add element ...`, copied below), then, on a kernel in a scratch
 * namespace, what a batch writes reads back (netlink listing and `nft -j`)
 * exactly as what `nft add element` writes, atomically.
 */
import { spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeAttrs } from '../../../shared/netlink/codec';
import { commentUdata, elementAttr, elementBatch, encodeConcat, nftElementBatch, type SetLayout } from '../../../shared/netlink/nft-elements';
import { nftListTable } from '../../../shared/netlink/nftables';
import { NetlinkError } from '../../../shared/netlink/errors';
import { realNft } from '../../../shared/nft/real';
import { NftError } from '../../../shared/nft/errors';
import { parseListing } from '../../../shared/nft/real';

const hex = (s: string): string => s.replace(/\s+/g, '');

const LAYOUTS: Record<string, SetLayout> = {
  wild4: { key: ['inet_proto', 'inet_service'], value: ['ipv4_addr', 'inet_service'] },
  host6: { key: ['ipv6_addr', 'inet_proto', 'inet_service'], value: ['ipv6_addr', 'inet_service'] },
  masq4: { key: ['ipv4_addr', 'ipv4_addr', 'inet_proto', 'inet_service'], interval: true },
  masq6: { key: ['ipv6_addr', 'ipv6_addr', 'inet_proto', 'inet_service'], interval: true },
};

describe('element wire encoding', () => {
  it('lays a map element out as nft does: padded fields, key and data nested, the comment as libnftnl user data', () => {
    // nft --debug=mnl add element inet t wild4 '{ tcp . 8080 comment "o" : 10.88.0.5 . 80 }': the NFTA_LIST_ELEM
    const nft = hex(`2c000180
      10000180 0c000100 06000000 1f900000
      10000280 0c000100 0a580005 00500000
      08000600 00026f00`);
    const ours = encodeAttrs([elementAttr(LAYOUTS.wild4, { verb: 'add', set: 'wild4', key: ['tcp', '8080'], value: ['10.88.0.5', '80'], comment: 'o' })]);
    expect(ours.toString('hex')).toBe(nft);
  });

  it('gives a concatenated range its first and last value (KEY and KEY_END, inclusive), as nft does', () => {
    // nft --debug=mnl add element inet t masq4 '{ 10.1.0.0/24 . 10.1.0.5 . tcp . 80-90 }'
    const nft = hex(`34000180
      18000180 14000100 0a010000 0a010005 06000000 00500000
      18000a80 14000100 0a0100ff 0a010005 06000000 005a0000`);
    const ours = encodeAttrs([elementAttr(LAYOUTS.masq4, { verb: 'add', set: 'masq4', key: ['10.1.0.0/24', '10.1.0.5', 'tcp', '80-90'] })]);
    expect(ours.toString('hex')).toBe(nft);
  });

  it('keeps a single field at its own width and an IPv6 prefix to its bits', () => {
    expect(encodeConcat(['inet_service'], ['8080']).start.toString('hex')).toBe('1f90');
    const p = encodeConcat(['ipv6_addr', 'ipv6_addr', 'inet_proto', 'inet_service'], ['fd00:1::/64', 'fd00:1::5', 'udp', '53']);
    expect(p.start.subarray(0, 16).toString('hex')).toBe('fd000001000000000000000000000000');
    expect(p.end.subarray(0, 16).toString('hex')).toBe('fd00000100000000ffffffffffffffff');
    expect(p.start.length).toBe(40);
    expect(commentUdata('ab').toString('hex')).toBe('0003616200');
  });

  it('refuses what nft would: host bits in a prefix, a range on a set without intervals, a reversed range, a bad protocol, a long comment', () => {
    expect(() => encodeConcat(['ipv4_addr'], ['10.1.0.5/24'])).toThrow(/host bits/);
    expect(() => elementAttr(LAYOUTS.wild4, { verb: 'add', set: 'wild4', key: ['tcp', '80-90'], value: ['10.0.0.1', '80'] })).toThrow(/no intervals/);
    expect(() => encodeConcat(['inet_service'], ['90-80'])).toThrow(/range/);
    expect(() => encodeConcat(['inet_proto'], ['tcpx'])).toThrow(/inet_proto/);
    expect(() => encodeConcat(['inet_service'], ['65536'])).toThrow(/inet_service/);
    expect(() => commentUdata('x'.repeat(129))).toThrow(/128/);
    expect(() => elementAttr(LAYOUTS.wild4, { verb: 'add', set: 'wild4', key: ['tcp', '80'] })).toThrow(/needs a value/);
  });

  it('frames one batch: BEGIN for nf_tables, a message per set and verb, one ACK on the last, END; large lists split below 64 KiB', () => {
    const ops = [
      ...Array.from({ length: 3000 }, (_, i) => ({ verb: 'add' as const, set: 'wild4', key: ['tcp', String(i + 1)], value: ['10.0.0.1', '80'], comment: 'cni-ts:n:c:eth0' })),
      { verb: 'delete' as const, set: 'wild4', key: ['udp', '1'] },
    ];
    const msgs = elementBatch('inet', 't', LAYOUTS, ops);
    expect(msgs[0]).toMatchObject({ type: 0x10, familyHeader: Buffer.from([0, 0, 0, 10]) });
    expect(msgs[msgs.length - 1]).toMatchObject({ type: 0x11 });
    const body = msgs.slice(1, -1);
    expect(body.length).toBeGreaterThan(2);
    expect(body.slice(0, -1).every((m) => m.type === ((10 << 8) | 12) && (m.flags & 0x4) === 0 && (m.flags & 0x400) !== 0)).toBe(true);
    expect(body[body.length - 1]).toMatchObject({ type: (10 << 8) | 14, flags: 0x4 });
    for (const m of body) expect(encodeAttrs(m.attrs).length).toBeLessThan(65536);
    expect(body[0].op).toMatch(/^add element inet t wild4 \{ tcp \. 1 : 10\.0\.0\.1 \. 80 \} \(and \d+ more\)$/);
  });
});

const ns = `pmel-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
const nsPath = `/var/run/netns/${ns}`;
const sh = (args: string[], input?: string): string => {
  const r = spawnSync(args[0], args.slice(1), { input, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
};
const nftIn = (args: string[], input?: string) => sh(['ip', 'netns', 'exec', ns, 'nft', ...args], input);

describe('elements written over netlink, on a kernel', () => {
  beforeAll(() => {
    sh(['ip', 'netns', 'add', ns]);
    const defs = ['a', 'b']
      .map(
        (x) => `
  map wild4_${x} { type inet_proto . inet_service : ipv4_addr . inet_service; }
  map host6_${x} { type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service; }
  set masq4_${x} { type ipv4_addr . ipv4_addr . inet_proto . inet_service; flags interval; }
  set masq6_${x} { type ipv6_addr . ipv6_addr . inet_proto . inet_service; flags interval; }`,
      )
      .join('');
    nftIn(['-f', '-'], `table inet t {${defs}\n}\n`);
  });

  afterAll(() => {
    spawnSync('ip', ['netns', 'del', ns]);
  });

  const elements = [
    { set: 'wild4', key: ['tcp', '8080'], value: ['10.88.0.5', '80'], comment: 'cni-ts:net1:c1:eth0' },
    { set: 'wild4', key: ['sctp', '9'], value: ['10.88.0.6', '65535'] },
    { set: 'host6', key: ['fd00::1', 'udp', '53'], value: ['fd00:1::5', '5353'], comment: 'x' },
    { set: 'masq4', key: ['127.0.0.0/8', '10.88.0.5', 'tcp', '80-90'], comment: 'cni-ts:net1:c1:eth0' },
    { set: 'masq4', key: ['0.0.0.0/0', '10.88.0.6', 'udp', '53'] },
    { set: 'masq4', key: ['10.88.0.7', '10.88.0.7', 'sctp', '1-65535'] },
    { set: 'masq6', key: ['fd00:1::/64', 'fd00:1::5', 'tcp', '80'], comment: 'y' },
    { set: 'masq6', key: ['::/0', 'fd00:1::6', 'tcp', '80-81'] },
  ];
  const suffixed = (x: string): Record<string, SetLayout> => Object.fromEntries(Object.entries(LAYOUTS).map(([k, v]) => [`${k}_${x}`, v]));
  /** A listing's sets with their suffix dropped, so a's and b's compare. */
  const bySet = (sets: Array<{ name: string; elements: unknown[] }>, x: string) =>
    Object.fromEntries(
      sets.filter((s) => s.name.endsWith(`_${x}`)).map((s) => [s.name.slice(0, -2), [...s.elements].sort((p, q) => JSON.stringify(p).localeCompare(JSON.stringify(q)))]),
    );

  it('reads back, over netlink and through nft -j, exactly as what nft add element wrote', () => {
    nftElementBatch('inet', 't', suffixed('a'), elements.map((e) => ({ verb: 'add' as const, ...e, set: `${e.set}_a` })), nsPath);
    for (const e of elements) {
      const text = `${e.key.join(' . ')}${e.comment !== undefined ? ` comment "${e.comment}"` : ''}${e.value ? ` : ${e.value.join(' . ')}` : ''}`;
      nftIn(['add', 'element', 'inet', 't', `${e.set}_b`, `{ ${text} }`]);
    }
    const viaNetlink = nftListTable('inet', 't', nsPath)!;
    const viaNft = parseListing(nftIn(['-j', 'list', 'table', 'inet', 't']), 'inet', 't');
    expect(bySet(viaNetlink.sets, 'a')).toEqual(bySet(viaNetlink.sets, 'b'));
    expect(bySet(viaNft.sets, 'a')).toEqual(bySet(viaNft.sets, 'b'));
    expect(bySet(viaNetlink.sets, 'a')).toEqual(bySet(viaNft.sets, 'a'));
    expect(bySet(viaNft.sets, 'a').masq4).toContainEqual({ key: '127.0.0.0/8 . 10.88.0.5 . tcp . 80-90', comment: 'cni-ts:net1:c1:eth0' });
  });

  it('is one atomic batch: a key held with other data fails it (EEXIST) and nothing of it is applied', () => {
    const before = nftIn(['list', 'table', 'inet', 't']);
    const ops = [
      { verb: 'add' as const, set: 'wild4_a', key: ['tcp', '9999'], value: ['10.88.0.9', '80'] },
      { verb: 'delete' as const, set: 'masq4_a', key: ['0.0.0.0/0', '10.88.0.6', 'udp', '53'] },
      { verb: 'add' as const, set: 'wild4_a', key: ['tcp', '8080'], value: ['10.88.0.99', '80'] },
      { verb: 'add' as const, set: 'host6_a', key: ['fd00::2', 'udp', '53'], value: ['fd00:1::5', '5353'] },
    ];
    let err: unknown;
    try {
      nftElementBatch('inet', 't', suffixed('a'), ops, nsPath);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(NetlinkError);
    expect((err as NetlinkError).code).toBe('EEXIST');
    // named by the message that failed: the third (its own set and verb)
    expect((err as NetlinkError).op).toBe('add element inet t wild4_a { tcp . 8080 : 10.88.0.99 . 80 }');
    expect(nftIn(['list', 'table', 'inet', 't'])).toBe(before);
    // the same data again is a no-op, as with nft add element
    nftElementBatch('inet', 't', suffixed('a'), [{ verb: 'add', set: 'wild4_a', key: ['tcp', '8080'], value: ['10.88.0.5', '80'] }], nsPath);
    expect(nftIn(['list', 'table', 'inet', 't'])).toBe(before);
  });

  it('reaches the owned tables as NftErrors of the kinds nft gives (realNft.elements)', () => {
    const nft = realNft({ netnsPath: nsPath });
    const run = (ops: Parameters<NonNullable<typeof nft.elements>>[3]) => {
      try {
        nft.elements!('inet', 't', suffixed('a'), ops);
        return undefined;
      } catch (e) {
        return e as NftError;
      }
    };
    expect(run([{ verb: 'add', set: 'wild4_a', key: ['tcp', '8080'], value: ['10.0.0.1', '1'] }])).toMatchObject({ kind: 'exists', command: expect.stringMatching(/^add element inet t wild4_a \{/) });
    expect(run([{ verb: 'delete', set: 'wild4_a', key: ['tcp', '1'] }])).toMatchObject({ kind: 'not-found' });
    expect(run([{ verb: 'add', set: 'wild4_a', key: ['tcp', '1'], value: ['nope', '1'] }])).toMatchObject({ kind: 'invalid' });
    expect(() => realNft({ netnsPath: nsPath }).elements!('inet', 'gone', suffixed('a'), [{ verb: 'delete', set: 'wild4_a', key: ['tcp', '1'] }])).toThrow(NftError);
  });
});
