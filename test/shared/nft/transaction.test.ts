import { describe, expect, it } from 'vitest';
import { FakeNft } from '../../../testkit/fake-nft';
import { NftError } from '../../../shared/nft/errors';
import type { TableRef } from '../../../shared/nft/nft-interface';
import { Transaction, nameProblem, priorityValue } from '../../../shared/nft/transaction';
import { everyForm } from './fixtures';

const t: TableRef = { family: 'inet', table: 'cni_ts_test' };

describe('Transaction rendering', () => {
  it('renders every verb and object as one nft command per line', () => {
    expect(everyForm().render()).toBe(
      [
        'add table inet cni_ts_test { comment "owned by cni-ts" ; }',
        'add chain inet cni_ts_test postrouting { type nat hook postrouting priority srcnat ; policy accept ; }',
        'add chain inet cni_ts_test prerouting { type nat hook prerouting priority -100 ; }',
        'add chain inet cni_ts_test forward { type filter hook forward priority filter - 5 ; comment "isolation" ; }',
        'add chain inet cni_ts_test net_a',
        'add set inet cni_ts_test subnets { type ipv4_addr ; flags interval ; comment "all bridge subnets" ; }',
        'add map inet cni_ts_test hostports { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service ; }',
        'add map inet cni_ts_test bridges { type ifname : verdict ; }',
        'add element inet cni_ts_test subnets { 10.88.0.0/16 comment "cni-ts:a" }',
        'add element inet cni_ts_test hostports { 192.168.1.5 . tcp . 8080 comment "cni-ts:a:c1" : 10.88.0.2 . 80 }',
        'add element inet cni_ts_test bridges { "cni0" : jump net_a }',
        'add rule inet cni_ts_test postrouting ip saddr 10.88.0.0/16 ip daddr != 10.88.0.0/16 masquerade comment "cni-ts:a"',
        'add rule inet cni_ts_test prerouting dnat ip to ip daddr . meta l4proto . th dport map @hostports',
        'add rule inet cni_ts_test forward iifname vmap @bridges',
        'insert rule inet cni_ts_test forward ct state established,related accept',
        'add rule inet cni_ts_test net_a position 7 oifname "cni0" accept',
        'insert rule inet cni_ts_test net_a position 8 meta secpath missing accept',
        'replace rule inet cni_ts_test net_a handle 9 drop comment "cni-ts:a"',
        'delete rule inet cni_ts_test net_a handle 9',
        'delete element inet cni_ts_test hostports { 192.168.1.5 . tcp . 8080 }',
        'flush set inet cni_ts_test subnets',
        'flush map inet cni_ts_test hostports',
        'flush chain inet cni_ts_test net_a',
        'create chain inet cni_ts_test net_b',
        'delete chain inet cni_ts_test net_b',
        'delete map inet cni_ts_test hostports',
        'add chain inet cni_ts_test net_c',
        'flush chain inet cni_ts_test net_c',
        'delete chain inet cni_ts_test net_c',
        'add table ip cni_ts_old',
        'delete table ip cni_ts_old',
        'delete table inet cni_ts_test',
        '',
      ].join('\n'),
    );
  });

  it('renders an empty transaction as an empty script', () => {
    const tx = new Transaction();
    expect(tx.render()).toBe('');
    expect(tx.size).toBe(0);
  });

  it('keeps a queued command unchanged when the caller mutates its object afterwards', () => {
    const rule = { kind: 'rule' as const, ...t, chain: 'c', rule: 'accept' };
    const tx = new Transaction().add(rule);
    rule.rule = 'drop';
    expect(tx.render()).toBe('add rule inet cni_ts_test c accept\n');
    expect((tx.commands[0].obj as { rule: string }).rule).toBe('accept');
  });

  it('computes numeric priorities the way nft does', () => {
    expect(priorityValue('srcnat')).toBe(100);
    expect(priorityValue('dstnat + 5')).toBe(-95);
    expect(priorityValue('filter - 10')).toBe(-10);
    expect(priorityValue(-150)).toBe(-150);
    expect(priorityValue('nat' as never)).toBeUndefined();
    expect(priorityValue(1.5)).toBeUndefined();
  });
});

describe('Transaction validation', () => {
  const invalid: Array<[string, (tx: Transaction) => void, RegExp]> = [
    ['a chain named after an nft keyword', (tx) => tx.add({ kind: 'chain', ...t, name: 'fwd' }), /keyword/],
    ['a table name with a space', (tx) => tx.add({ kind: 'table', family: 'inet', table: 'a b' }), /invalid name/],
    ['a set name starting with a digit', (tx) => tx.add({ kind: 'set', ...t, name: '1s', type: 'ipv4_addr' }), /invalid name/],
    ['an unknown family', (tx) => tx.add({ kind: 'table', family: 'bridge' as never, table: 'x' }), /unknown family/],
    ['a comment with a double quote', (tx) => tx.add({ kind: 'rule', ...t, chain: 'c', rule: 'accept', comment: 'a"b' }), /double quote/],
    ['a comment of 129 characters', (tx) => tx.add({ kind: 'rule', ...t, chain: 'c', rule: 'accept', comment: 'x'.repeat(129) }), /too long/],
    ['a rule containing a semicolon', (tx) => tx.add({ kind: 'rule', ...t, chain: 'c', rule: 'accept; delete table inet x' }), /end the command/],
    ['a rule containing a newline', (tx) => tx.add({ kind: 'rule', ...t, chain: 'c', rule: 'accept\nflush ruleset' }), /end the command/],
    ['an empty rule', (tx) => tx.add({ kind: 'rule', ...t, chain: 'c', rule: '  ' }), /empty/],
    ['a base chain without a priority', (tx) => tx.add({ kind: 'chain', ...t, name: 'c', type: 'filter', hook: 'input' }), /together/],
    ['a policy on a regular chain', (tx) => tx.add({ kind: 'chain', ...t, name: 'c', policy: 'drop' }), /only to base chains/],
    ['srcnat priority on the prerouting hook', (tx) => tx.add({ kind: 'chain', ...t, name: 'c', type: 'nat', hook: 'prerouting', priority: 'srcnat' }), /invalid priority/],
    ['a malformed priority', (tx) => tx.add({ kind: 'chain', ...t, name: 'c', type: 'nat', hook: 'prerouting', priority: 'dstnat+5' as never }), /invalid priority/],
    ['replace without a handle', (tx) => tx.replace({ kind: 'rule', ...t, chain: 'c', rule: 'accept' }), /needs a handle/],
    ['a negative rule handle', (tx) => tx.delete({ kind: 'rule', ...t, chain: 'c', handle: -1 }), /non-negative/],
    ['an element key with a comma', (tx) => tx.add({ kind: 'element', ...t, set: 's', key: '1.1.1.1, 2.2.2.2' }), /end the command/],
    ['a map value with a brace', (tx) => tx.add({ kind: 'element', ...t, set: 'm', key: 'k', value: '} ; flush ruleset' }), /end the command/],
    ['an unknown set flag', (tx) => tx.add({ kind: 'set', ...t, name: 's', type: 'ipv4_addr', flags: ['sorted' as never] }), /unknown flag/],
    ['a set type with spaces inside a part', (tx) => tx.add({ kind: 'set', ...t, name: 's', type: 'ipv4 addr' }), /invalid type/],
  ];

  for (const [what, queue, message] of invalid) {
    it(`refuses ${what} with NftError 'invalid' at run, naming the command's line`, () => {
      const tx = new Transaction().add({ kind: 'table', ...t });
      queue(tx);
      tx.add({ kind: 'chain', ...t, name: 'after' });
      expect(tx.size).toBe(1);
      const nft = new FakeNft();
      let caught: unknown;
      try {
        nft.run(tx);
      } catch (err) {
        caught = err;
      }
      expect(caught).toBeInstanceOf(NftError);
      const e = caught as NftError;
      expect(e.kind).toBe('invalid');
      expect(e.detail).toMatch(message);
      expect(e.line).toBe(2);
      expect(nft.execs).toBe(0);
      expect(nft.dump()).toBe('');
      expect(tx.toString()).toMatch(/^add table inet cni_ts_test\n# ERROR: /);
    });
  }

  it('accepts names nft can parse, including ones that merely start with a keyword', () => {
    for (const name of ['postrouting', 'forward', 'input', 'cni_ts_br0', 'ip_masq', 'FWD', 'net-a', '_x']) expect(nameProblem(name)).toBeUndefined();
  });

  it('accepts a comment of exactly 128 characters', () => {
    const tx = new Transaction().add({ kind: 'rule', ...t, chain: 'c', rule: 'accept', comment: 'x'.repeat(128) });
    expect(tx.error).toBeUndefined();
  });
});
