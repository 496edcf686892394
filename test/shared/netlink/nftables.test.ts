import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nftGetChain, udataString } from '../../../shared/netlink/nftables';

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
