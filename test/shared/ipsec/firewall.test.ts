/**
 * The nftables side of encrypted overlays: the transaction's text, and the
 * same transaction applied by the real nft in a throwaway namespace (FakeNft
 * reads the raw payload expression @th,96,24 as a set named "th", so the real
 * nft is the judge here; the project's table name is safe in our own namespace).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FakeNft } from '../../../testkit/fake-nft';
import { realNft } from '../../../shared/nft/real';
import { DOCKER_ENCRYPTION_MARK, type EncryptedNetwork } from '../../../shared/ipsec/desired';
import { IPSEC_TABLE, ipsecFirewall } from '../../../shared/ipsec/firewall';

const NS = `cnits-ipsec-${randomBytes(4).toString('hex')}`;

beforeAll(() => {
  execFileSync('ip', ['netns', 'add', NS]);
});

afterAll(() => {
  spawnSync('ip', ['netns', 'del', NS]);
});

const NETS: EncryptedNetwork[] = [
  { name: 'blue', vni: 4097, peers: ['192.0.2.3', '192.0.2.2'] },
  { name: 'red', vni: 42, peers: ['192.0.2.2', '2001:db8::2'] },
  { name: 'empty', vni: 7, peers: [] },
];

/** The rules of the transaction, one line each. */
function rules(text: string): string[] {
  return text.split('\n').filter((l) => l.startsWith('add rule'));
}

describe('ipsecFirewall', () => {
  it('drops cleartext VXLAN from the peers for each encrypted VNI, by network, in one transaction', () => {
    expect(rules(ipsecFirewall(NETS).render())).toEqual([
      'add rule inet cni_ts_ipsec cleartext_in ip saddr { 192.0.2.2 } udp dport 4789 @th,96,24 42 meta secpath missing drop comment "cni-ts:red"',
      'add rule inet cni_ts_ipsec cleartext_in ip6 saddr { 2001:db8::2 } udp dport 4789 @th,96,24 42 meta secpath missing drop comment "cni-ts:red"',
      'add rule inet cni_ts_ipsec cleartext_in ip saddr { 192.0.2.2, 192.0.2.3 } udp dport 4789 @th,96,24 4097 meta secpath missing drop comment "cni-ts:blue"',
    ]);
    // Reconcile by flush: the chain is flushed and rewritten each time.
    expect(ipsecFirewall(NETS).render()).toContain('flush chain inet cni_ts_ipsec cleartext_in\n');
  });

  it('with a mark, also marks the encrypted VNIs\' VXLAN in a route chain so the marked policies select them', () => {
    const text = ipsecFirewall(NETS.slice(1, 2), { mark: DOCKER_ENCRYPTION_MARK }).render();
    expect(text).toContain('add chain inet cni_ts_ipsec encrypt_mark { type route hook output priority mangle ; policy accept ; }');
    expect(rules(text).filter((r) => r.includes('encrypt_mark'))).toEqual([
      'add rule inet cni_ts_ipsec encrypt_mark ip daddr { 192.0.2.2 } udp dport 4789 @th,96,24 42 meta mark set 0xd0c4e3 comment "cni-ts:red"',
      'add rule inet cni_ts_ipsec encrypt_mark ip6 daddr { 2001:db8::2 } udp dport 4789 @th,96,24 42 meta mark set 0xd0c4e3 comment "cni-ts:red"',
    ]);
  });

  it('without encrypted networks deletes the table, and that is fine when there is none', () => {
    expect(ipsecFirewall([]).render()).toBe('add table inet cni_ts_ipsec\ndelete table inet cni_ts_ipsec\n');
    const nft = new FakeNft();
    nft.run(ipsecFirewall([]));
    expect(nft.list(IPSEC_TABLE.family, IPSEC_TABLE.table)).toBeUndefined();
    realNft({ netnsPath: `/var/run/netns/${NS}` }).run(ipsecFirewall([]));
  });

  it('refuses a VNI outside 24 bits', () => {
    expect(() => ipsecFirewall([{ name: 'x', vni: 1 << 24, peers: ['192.0.2.2'] }])).toThrow(RangeError);
  });

  it('is accepted by the real nft, applied again it changes nothing, and removing the last network removes the table', () => {
    const nft = realNft({ netnsPath: `/var/run/netns/${NS}` });
    nft.run(ipsecFirewall(NETS, { mark: DOCKER_ENCRYPTION_MARK }));
    const list = () => execFileSync('ip', ['netns', 'exec', NS, 'nft', 'list', 'table', 'inet', IPSEC_TABLE.table], { encoding: 'utf8' });
    const first = list();
    expect(first.match(/meta ipsec missing drop/g)).toHaveLength(3); // nft 1.0.6 prints secpath as "ipsec"
    expect(first).toContain('@th,96,24 0x1001 meta ipsec missing drop comment "cni-ts:blue"');
    expect(first).toContain('meta mark set 0x00d0c4e3');
    nft.run(ipsecFirewall(NETS, { mark: DOCKER_ENCRYPTION_MARK }));
    const strip = (t: string) => t.replace(/elements = \{ \S+ \}/, '');
    expect(strip(list())).toBe(strip(first));
    nft.run(ipsecFirewall(NETS)); // mark dropped
    expect(list()).not.toContain('encrypt_mark');
    nft.run(ipsecFirewall([]));
    expect(nft.list(IPSEC_TABLE.family, IPSEC_TABLE.table)).toBeUndefined();
  });
});
