import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { concatTypes, fieldsText, nftGetChain, nftListTable, udataString } from '../../../shared/netlink/nftables';

const ns = `nftq-${randomBytes(3).toString('hex')}`;
const nsPath = `/var/run/netns/${ns}`;

beforeAll(() => {
  execFileSync('ip', ['netns', 'add', ns]);
  execFileSync('ip', ['netns', 'exec', ns, 'nft', 'add table inet qt; add chain inet qt marked { comment "cni-ts network 0123abcd" ; }; add chain inet qt plain']);
});
afterAll(() => {
  execFileSync('ip', ['netns', 'del', ns]);
});

describe('nftGetChain (NETLINK_NETFILTER, read-only)', () => {
  it('returns a chain with the comment nft wrote', () => {
    expect(nftGetChain('inet', 'qt', 'marked', nsPath)).toEqual({ name: 'marked', comment: 'cni-ts network 0123abcd' });
  });

  it('returns a chain without a comment as such', () => {
    expect(nftGetChain('inet', 'qt', 'plain', nsPath)).toEqual({ name: 'plain', comment: undefined });
  });

  it('returns undefined for a missing chain, a missing table and another family', () => {
    expect(nftGetChain('inet', 'qt', 'nope', nsPath)).toBeUndefined();
    expect(nftGetChain('inet', 'no_such_table', 'marked', nsPath)).toBeUndefined();
    expect(nftGetChain('ip', 'qt', 'marked', nsPath)).toBeUndefined();
  });

  it('looks only in the namespace it is given', () => {
    expect(nftGetChain('inet', 'qt', 'marked')).toBeUndefined();
  });
});

describe('udataString', () => {
  it('finds a TLV by type and ignores truncated data', () => {
    const udata = Buffer.from([1, 2, 0x61, 0x62, 0, 4, 0x68, 0x69, 0x21, 0]);
    expect(udataString(udata, 0)).toBe('hi!');
    expect(udataString(udata, 1)).toBe('ab');
    expect(udataString(Buffer.from([0, 9, 0x61]), 0)).toBeUndefined();
  });
});

describe('nftListTable (NETLINK_NETFILTER, read-only)', () => {
  it('lists chains with their rules\' comments and jumps, and sets with elements as nft prints them', () => {
    execFileSync('ip', ['netns', 'exec', ns, 'nft', '-f', '-'], { input: [
      'add table inet lstq',
      'add map inet lstq ports { type ipv4_addr . inet_proto . inet_service : verdict ; }',
      'add chain inet lstq owner',
      'add rule inet lstq owner accept comment "cni-ts:n:c1:eth0"',
      'add chain inet lstq pre { type nat hook prerouting priority dstnat ; policy accept ; }',
      'add rule inet lstq pre ip daddr . meta l4proto . th dport vmap @ports',
      'add element inet lstq ports { 127.0.0.1 . tcp . 8080 : jump owner }',
    ].join('\n') });
    const l = nftListTable('inet', 'lstq', nsPath)!;
    expect(l.chains.map((c) => [c.name, c.hook, c.priority, c.rules.map((r) => [r.comment, r.jumps, r.sets])])).toEqual([
      ['owner', undefined, undefined, [['cni-ts:n:c1:eth0', [], []]]],
      ['pre', 'prerouting', -100, [[undefined, [], ['ports']]]],
    ]);
    expect(l.sets).toMatchObject([{ kind: 'map', name: 'ports', type: 'ipv4_addr . inet_proto . inet_service', valueType: 'verdict', elements: [{ key: '127.0.0.1 . tcp . 8080', value: 'jump owner' }] }]);
    expect(nftListTable('inet', 'lstq')).toBeUndefined();
    expect(nftListTable('ip', 'lstq', nsPath)).toBeUndefined();
  });
});

describe('concatTypes and fieldsText', () => {
  it('split a concatenated type id (6 bits a field, first field highest) and print each 4-byte-padded field', () => {
    // ipv4_addr (7) . inet_proto (12) . inet_service (13)
    expect(concatTypes((7 << 12) | (12 << 6) | 13)).toEqual([7, 12, 13]);
    expect(concatTypes(41)).toEqual([41]);
    const key = Buffer.from([10, 0, 0, 1, 17, 0, 0, 0, 0x1f, 0x90, 0, 0]);
    expect(fieldsText([7, 12, 13], key)).toBe('10.0.0.1 . udp . 8080');
    expect(fieldsText([41], Buffer.from('eth0\0\0\0\0\0\0\0\0\0\0\0\0'))).toBe('"eth0"');
  });
});
