import { beforeEach, describe, expect, it } from 'vitest';
import { FakeNft, priorityText } from '../../../testkit/fake-nft';
import { NftError, type NftErrorKind } from '../../../shared/nft/errors';
import type { TableRef } from '../../../shared/nft/nft-interface';
import { Transaction } from '../../../shared/nft/transaction';

const t: TableRef = { family: 'inet', table: 'cni_ts_test' };

function failure(fn: () => void): NftError {
  try {
    fn();
  } catch (err) {
    if (err instanceof NftError) return err;
    throw err;
  }
  throw new Error('expected an NftError');
}

/** A table with a nat postrouting chain, a filter forward chain, a regular chain and a set. */
function base(): Transaction {
  return new Transaction()
    .add({ kind: 'table', ...t })
    .add({ kind: 'chain', ...t, name: 'post', type: 'nat', hook: 'postrouting', priority: 'srcnat' })
    .add({ kind: 'chain', ...t, name: 'forward', type: 'filter', hook: 'forward', priority: 0 })
    .add({ kind: 'chain', ...t, name: 'reg' })
    .add({ kind: 'set', ...t, name: 's4', type: 'ipv4_addr', flags: ['interval'] });
}

describe('FakeNft', () => {
  let nft: FakeNft;
  beforeEach(() => {
    nft = new FakeNft();
    nft.run(base());
  });

  it('treats add of an existing table, chain and set as a no-op', () => {
    const before = nft.dump();
    nft.run(base());
    expect(nft.dump()).toBe(before);
  });

  const errors: Array<[string, (tx: Transaction) => Transaction, NftErrorKind, string]> = [
    ['create of an existing table', (tx) => tx.create({ kind: 'table', ...t }), 'exists', 'File exists'],
    ['delete of a missing table', (tx) => tx.delete({ kind: 'table', family: 'ip', table: 'cni_ts_none' }), 'not-found', 'No such file or directory'],
    ['flush of a missing table', (tx) => tx.flush({ kind: 'table', family: 'ip6', table: 'cni_ts_test' }), 'not-found', 'No such file or directory'],
    ['a chain in a missing table', (tx) => tx.add({ kind: 'chain', family: 'ip', table: 'cni_ts_none', name: 'c' }), 'not-found', 'No such file or directory'],
    ['create of an existing chain', (tx) => tx.create({ kind: 'chain', ...t, name: 'reg' }), 'exists', 'File exists'],
    ['turning a regular chain into a base chain', (tx) => tx.add({ kind: 'chain', ...t, name: 'reg', type: 'filter', hook: 'input', priority: 0 }), 'exists', 'File exists'],
    ['changing a base chain priority', (tx) => tx.add({ kind: 'chain', ...t, name: 'post', type: 'nat', hook: 'postrouting', priority: 50 }), 'not-supported', 'Operation not supported'],
    ['a nat chain on the forward hook', (tx) => tx.add({ kind: 'chain', ...t, name: 'natfwd', type: 'nat', hook: 'forward', priority: 0 }), 'not-supported', 'Operation not supported'],
    ['delete of a missing chain', (tx) => tx.delete({ kind: 'chain', ...t, name: 'none' }), 'not-found', 'No such file or directory'],
    ['a rule in a missing chain', (tx) => tx.add({ kind: 'rule', ...t, chain: 'none', rule: 'accept' }), 'not-found', 'No such file or directory'],
    ['a rule jumping to a missing chain', (tx) => tx.add({ kind: 'rule', ...t, chain: 'forward', rule: 'jump none' }), 'not-found', 'No such file or directory'],
    ['a rule jumping to a base chain', (tx) => tx.add({ kind: 'rule', ...t, chain: 'forward', rule: 'goto post' }), 'not-supported', 'Operation not supported'],
    ['a rule using a missing set', (tx) => tx.add({ kind: 'rule', ...t, chain: 'forward', rule: 'ip saddr @none accept' }), 'not-found', 'No such file or directory'],
    ['delete of a missing rule handle', (tx) => tx.delete({ kind: 'rule', ...t, chain: 'reg', handle: 999 }), 'not-found', 'No such file or directory'],
    ['replace of a missing rule handle', (tx) => tx.replace({ kind: 'rule', ...t, chain: 'reg', rule: 'accept', handle: 999 }), 'not-found', 'No such file or directory'],
    ['add after a missing rule handle', (tx) => tx.add({ kind: 'rule', ...t, chain: 'reg', rule: 'accept', handle: 999 }), 'not-found', 'No such file or directory'],
    ['insert before a missing rule handle', (tx) => tx.insert({ kind: 'rule', ...t, chain: 'reg', rule: 'accept', handle: 999 }), 'not-found', 'No such file or directory'],
    ['masquerade in a filter chain', (tx) => tx.add({ kind: 'rule', ...t, chain: 'forward', rule: 'masquerade' }), 'not-supported', 'Operation not supported'],
    [
      'dnat in a postrouting nat chain',
      (tx) => tx.add({ kind: 'rule', ...t, chain: 'post', rule: 'ip daddr 1.2.3.4 dnat ip to 10.0.0.2' }),
      'not-supported',
      'Operation not supported',
    ],
    [
      'masquerade in a regular chain once a filter chain jumps to it',
      (tx) => tx.add({ kind: 'rule', ...t, chain: 'reg', rule: 'masquerade' }).add({ kind: 'rule', ...t, chain: 'forward', rule: 'jump reg' }),
      'not-supported',
      'Operation not supported',
    ],
    [
      'a jump loop reachable from a base chain',
      (tx) =>
        tx
          .add({ kind: 'chain', ...t, name: 'reg2' })
          .add({ kind: 'rule', ...t, chain: 'forward', rule: 'jump reg' })
          .add({ kind: 'rule', ...t, chain: 'reg', rule: 'jump reg2' })
          .add({ kind: 'rule', ...t, chain: 'reg2', rule: 'jump reg' }),
      'invalid',
      'Too many links',
    ],
    ['a set of another type under an existing name', (tx) => tx.add({ kind: 'set', ...t, name: 's4', type: 'ipv6_addr' }), 'exists', 'File exists'],
    ['create of an existing set', (tx) => tx.create({ kind: 'set', ...t, name: 's4', type: 'ipv4_addr', flags: ['interval'] }), 'exists', 'File exists'],
    ['an element in a missing set', (tx) => tx.add({ kind: 'element', ...t, set: 'none', key: '1.2.3.4' }), 'not-found', 'No such file or directory'],
    ['delete of a missing element of an interval set', (tx) => tx.delete({ kind: 'element', ...t, set: 's4', key: '9.9.9.9' }), 'not-found', 'element does not exist'],
    ['delete of a missing map', (tx) => tx.delete({ kind: 'map', ...t, name: 's4' }), 'not-found', 'No such file or directory'],
  ];

  for (const [what, queue, kind, detail] of errors) {
    it(`fails ${what} with '${kind}' at that command's line and changes nothing`, () => {
      const before = nft.dump();
      const execs = nft.execs;
      const tx = queue(new Transaction().add({ kind: 'rule', ...t, chain: 'reg', rule: 'accept', comment: 'first' }));
      const e = failure(() => nft.run(tx));
      expect(e.kind).toBe(kind);
      expect(e.detail).toBe(detail);
      expect(e.exitCode).toBe(1);
      expect(e.line).toBe(tx.size);
      expect(e.command).toBe(tx.commands[tx.size - 1].text);
      expect(e.stderr).toContain(`/dev/stdin:${tx.size}:`);
      expect(nft.dump()).toBe(before);
      expect(nft.execs).toBe(execs + 1);
    });
  }

  it('refuses to delete a chain that a rule jumps to, but deletes one with rules together with its rules', () => {
    nft.run(new Transaction().add({ kind: 'rule', ...t, chain: 'reg', rule: 'accept' }).add({ kind: 'rule', ...t, chain: 'forward', rule: 'jump reg' }));
    expect(failure(() => nft.run(new Transaction().delete({ kind: 'chain', ...t, name: 'reg' }))).kind).toBe('busy');
    nft.run(new Transaction().delete({ kind: 'chain', ...t, name: 'forward' }));
    nft.run(new Transaction().delete({ kind: 'chain', ...t, name: 'reg' }));
    expect(nft.list('inet', 'cni_ts_test')?.chains.map((c) => c.name)).toEqual(['post']);
  });

  it('accepts a jump loop among chains no base chain reaches, as the kernel does', () => {
    nft.run(new Transaction().add({ kind: 'chain', ...t, name: 'reg2' }).add({ kind: 'rule', ...t, chain: 'reg', rule: 'jump reg2' }).add({ kind: 'rule', ...t, chain: 'reg2', rule: 'jump reg' }));
    expect(failure(() => nft.run(new Transaction().add({ kind: 'rule', ...t, chain: 'forward', rule: 'jump reg2' }))).detail).toBe('Too many links');
  });

  it('refuses to delete a chain a verdict map element jumps to', () => {
    nft.run(
      new Transaction()
        .add({ kind: 'map', ...t, name: 'vm', type: 'ifname', valueType: 'verdict' })
        .add({ kind: 'element', ...t, set: 'vm', key: '"eth0"', value: 'jump reg' }),
    );
    expect(failure(() => nft.run(new Transaction().delete({ kind: 'chain', ...t, name: 'reg' }))).kind).toBe('busy');
    nft.run(new Transaction().delete({ kind: 'element', ...t, set: 'vm', key: '"eth0"' }).delete({ kind: 'chain', ...t, name: 'reg' }));
  });

  it('refuses to delete a set that a rule uses', () => {
    nft.run(new Transaction().add({ kind: 'rule', ...t, chain: 'forward', rule: 'ip saddr @s4 accept' }));
    expect(failure(() => nft.run(new Transaction().delete({ kind: 'set', ...t, name: 's4' }))).kind).toBe('busy');
  });

  it('accepts a conntrack status match on dnat in a filter chain, which is not a NAT statement', () => {
    nft.run(new Transaction().add({ kind: 'rule', ...t, chain: 'forward', rule: 'ct status dnat accept' }));
    nft.run(new Transaction().add({ kind: 'rule', ...t, chain: 'forward', rule: 'iifname "masquerade" accept' }));
    expect(nft.list('inet', 'cni_ts_test')?.chains[1].rules).toHaveLength(2);
  });

  it('allows masquerade in a regular chain reached only from the nat postrouting chain', () => {
    nft.run(new Transaction().add({ kind: 'rule', ...t, chain: 'reg', rule: 'masquerade' }).add({ kind: 'rule', ...t, chain: 'post', rule: 'jump reg' }));
    expect(nft.dump()).toContain('\t\tjump reg\n');
  });

  it('updates the policy of an existing base chain', () => {
    nft.run(new Transaction().add({ kind: 'chain', ...t, name: 'forward', type: 'filter', hook: 'forward', priority: 'filter', policy: 'drop' }));
    expect(nft.list('inet', 'cni_ts_test')?.chains[1].policy).toBe('drop');
  });

  it('places rules by handle the way nft does, and keeps a replaced rule\'s handle', () => {
    const add = (rule: string, extra: object = {}, verb: 'add' | 'insert' = 'add'): void =>
      nft.run(new Transaction()[verb]({ kind: 'rule', ...t, chain: 'reg', rule, ...extra }));
    add('meta mark 1 accept');
    add('meta mark 2 accept');
    add('meta mark 0 accept', {}, 'insert');
    const handles = (): number[] => nft.list('inet', 'cni_ts_test')!.chains[2].rules.map((r) => r.handle);
    const [h0, h1, h2] = handles();
    add('meta mark 15 accept', { handle: h1 });
    add('meta mark 05 accept', { handle: h1 }, 'insert');
    add('meta mark 25 accept', { handle: h2 });
    add('meta mark 00 accept', { handle: h0 }, 'insert');
    nft.run(new Transaction().replace({ kind: 'rule', ...t, chain: 'reg', rule: 'meta mark 2 drop', handle: h2 }));
    nft.run(new Transaction().delete({ kind: 'rule', ...t, chain: 'reg', handle: h0 }));
    expect(nft.dump('inet', 'cni_ts_test').split('chain reg {\n')[1]).toBe(
      [
        '\t\tmeta mark 00 accept',
        '\t\tmeta mark 05 accept',
        '\t\tmeta mark 1 accept',
        '\t\tmeta mark 15 accept',
        '\t\tmeta mark 2 drop',
        '\t\tmeta mark 25 accept',
        '\t}',
        '}',
        '',
      ].join('\n'),
    );
    expect(handles()).toContain(h2);
    expect(handles()).not.toContain(h0);
  });

  it('numbers chains, sets and rules from one per-table counter, in command order', () => {
    nft.run(new Transaction().add({ kind: 'rule', ...t, chain: 'reg', rule: 'accept' }).add({ kind: 'chain', ...t, name: 'late' }));
    const l = nft.list('inet', 'cni_ts_test')!;
    expect(l.chains.map((c) => [c.name, c.handle])).toEqual([
      ['post', 1],
      ['forward', 2],
      ['reg', 3],
      ['late', 6],
    ]);
    expect(l.sets[0].handle).toBe(4);
    expect(l.chains[2].rules[0].handle).toBe(5);
  });

  it('keeps set elements when a table is flushed, and empties them on flush set', () => {
    nft.run(
      new Transaction()
        .add({ kind: 'element', ...t, set: 's4', key: '10.0.0.0/24' })
        .add({ kind: 'rule', ...t, chain: 'reg', rule: 'accept' })
        .flush({ kind: 'table', ...t }),
    );
    let l = nft.list('inet', 'cni_ts_test')!;
    expect(l.chains.every((c) => c.rules.length === 0)).toBe(true);
    expect(l.sets[0].elements).toEqual([{ key: '10.0.0.0/24' }]);
    nft.run(new Transaction().flush({ kind: 'set', ...t, name: 's4' }));
    l = nft.list('inet', 'cni_ts_test')!;
    expect(l.sets[0].elements).toEqual([]);
  });

  it('treats a re-added identical element as a no-op but a map key with another value as a conflict', () => {
    nft.run(
      new Transaction()
        .add({ kind: 'map', ...t, name: 'ports', type: ['inet_proto', 'inet_service'], valueType: ['ipv4_addr', 'inet_service'] })
        .add({ kind: 'element', ...t, set: 'ports', key: ['tcp', '8080'], value: ['10.0.0.2', '80'] })
        .add({ kind: 'element', ...t, set: 'ports', key: 'tcp  .  8080', value: '10.0.0.2 . 80' })
        .add({ kind: 'element', ...t, set: 's4', key: '10.0.0.0/24' })
        .add({ kind: 'element', ...t, set: 's4', key: '10.0.0.0/24' }),
    );
    const conflict = failure(() => nft.run(new Transaction().add({ kind: 'element', ...t, set: 'ports', key: ['tcp', '8080'], value: ['10.0.0.3', '80'] })));
    expect(conflict.kind).toBe('exists');
    expect(failure(() => nft.run(new Transaction().create({ kind: 'element', ...t, set: 's4', key: '10.0.0.0/24' }))).kind).toBe('exists');
    expect(failure(() => nft.run(new Transaction().add({ kind: 'element', ...t, set: 'ports', key: 'udp . 53' }))).kind).toBe('invalid');
    expect(nft.list('inet', 'cni_ts_test')!.sets.map((s) => s.elements)).toEqual([[{ key: '10.0.0.0/24' }], [{ key: 'tcp . 8080', value: '10.0.0.2 . 80' }]]);
  });

  it('destroys tables and chains whether or not they exist', () => {
    nft.run(new Transaction().destroy({ kind: 'chain', ...t, name: 'never' }).destroy({ kind: 'table', family: 'ip', table: 'cni_ts_never' }));
    nft.run(new Transaction().destroy({ kind: 'table', ...t }));
    expect(nft.dump()).toBe('');
    expect(nft.list('inet', 'cni_ts_test')).toBeUndefined();
  });

  it('lists rule handles, comments and references, and elements with comments', () => {
    nft.run(
      new Transaction()
        .add({ kind: 'map', ...t, name: 'vm', type: 'ifname', valueType: 'verdict' })
        .add({ kind: 'element', ...t, set: 'vm', key: '"eth0"', value: 'goto reg', comment: 'cni-ts:n:c' })
        .add({ kind: 'element', ...t, set: 's4', key: '10.1.0.0/16', comment: 'cni-ts:n' })
        .add({ kind: 'rule', ...t, chain: 'forward', rule: 'ip saddr @s4 iifname vmap @vm', comment: 'cni-ts:n' })
        .add({ kind: 'rule', ...t, chain: 'forward', rule: 'iifname "jump x" jump reg' }),
    );
    expect(nft.list('inet', 'cni_ts_test')).toEqual({
      family: 'inet',
      table: 'cni_ts_test',
      chains: [
        { name: 'post', handle: 1, type: 'nat', hook: 'postrouting', priority: 100, policy: 'accept', rules: [] },
        {
          name: 'forward',
          handle: 2,
          type: 'filter',
          hook: 'forward',
          priority: 0,
          policy: 'accept',
          rules: [
            { handle: 6, comment: 'cni-ts:n', jumps: [], sets: ['s4', 'vm'] },
            { handle: 7, jumps: ['reg'], sets: [] },
          ],
        },
        { name: 'reg', handle: 3, rules: [] },
      ],
      sets: [
        { kind: 'set', name: 's4', handle: 4, type: 'ipv4_addr', flags: ['interval'], elements: [{ key: '10.1.0.0/16', comment: 'cni-ts:n' }] },
        {
          kind: 'map',
          name: 'vm',
          handle: 5,
          type: 'ifname',
          valueType: 'verdict',
          flags: [],
          elements: [{ key: '"eth0"', value: 'goto reg', comment: 'cni-ts:n:c' }],
        },
      ],
    });
  });

  it('counts one exec per run, check and list, and none for an empty transaction', () => {
    const fresh = new FakeNft();
    fresh.run(new Transaction());
    expect(fresh.execs).toBe(0);
    fresh.run(base());
    fresh.check(new Transaction().add({ kind: 'chain', ...t, name: 'checked' }));
    fresh.list('inet', 'cni_ts_test');
    expect(fresh.execs).toBe(3);
    expect(fresh.list('inet', 'cni_ts_test')!.chains.map((c) => c.name)).not.toContain('checked');
    expect(fresh.applied).toEqual([base().render()]);
  });

  it('reports check failures like run failures', () => {
    const e = failure(() => nft.check(new Transaction().add({ kind: 'rule', ...t, chain: 'none', rule: 'accept' })));
    expect(e.kind).toBe('not-found');
  });
});

describe('FakeNft dump', () => {
  it('renders a bridge-style ruleset in nft list format', () => {
    const nft = new FakeNft();
    nft.run(
      new Transaction()
        .add({ kind: 'table', ...t, comment: 'cni-ts bridge' })
        .add({ kind: 'set', ...t, name: 'subnets', type: 'ipv4_addr', flags: ['interval'] })
        .add({ kind: 'map', ...t, name: 'hostports', type: ['inet_proto', 'inet_service'], valueType: ['ipv4_addr', 'inet_service'] })
        .add({ kind: 'chain', ...t, name: 'prerouting', type: 'nat', hook: 'prerouting', priority: 'dstnat' })
        .add({ kind: 'chain', ...t, name: 'postrouting', type: 'nat', hook: 'postrouting', priority: 'srcnat' })
        .add({ kind: 'chain', ...t, name: 'forward', type: 'filter', hook: 'forward', priority: 'filter', policy: 'drop', comment: 'isolation' })
        .add({ kind: 'chain', ...t, name: 'empty' })
        .add({ kind: 'element', ...t, set: 'subnets', key: '10.88.0.0/16', comment: 'cni-ts:a' })
        .add({ kind: 'element', ...t, set: 'subnets', key: '10.89.0.0/16' })
        .add({ kind: 'element', ...t, set: 'hostports', key: ['tcp', '8080'], value: ['10.88.0.2', '80'], comment: 'cni-ts:a:c1' })
        .add({ kind: 'rule', ...t, chain: 'prerouting', rule: 'fib daddr type local dnat ip to meta l4proto . th dport map @hostports' })
        .add({ kind: 'rule', ...t, chain: 'postrouting', rule: 'ip saddr 10.88.0.0/16 ip daddr != 10.88.0.0/16 masquerade', comment: 'cni-ts:a' })
        .add({ kind: 'rule', ...t, chain: 'forward', rule: 'ct state established,related accept' })
        .add({ kind: 'rule', ...t, chain: 'forward', rule: 'iifname "cni-a" oifname != "cni-a" accept', comment: 'cni-ts:a' }),
    );
    expect(nft.dump()).toBe(`table inet cni_ts_test {
\tcomment "cni-ts bridge"
\tset subnets {
\t\ttype ipv4_addr
\t\tflags interval
\t\telements = { 10.88.0.0/16 comment "cni-ts:a", 10.89.0.0/16 }
\t}

\tmap hostports {
\t\ttype inet_proto . inet_service : ipv4_addr . inet_service
\t\telements = { tcp . 8080 comment "cni-ts:a:c1" : 10.88.0.2 . 80 }
\t}

\tchain prerouting {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tfib daddr type local dnat ip to meta l4proto . th dport map @hostports
\t}

\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip saddr 10.88.0.0/16 ip daddr != 10.88.0.0/16 masquerade comment "cni-ts:a"
\t}

\tchain forward {
\t\tcomment "isolation"
\t\ttype filter hook forward priority filter; policy drop;
\t\tct state established,related accept
\t\tiifname "cni-a" oifname != "cni-a" accept comment "cni-ts:a"
\t}

\tchain empty {
\t}
}
`);
  });

  it('renders an empty table and several tables, optionally just one', () => {
    const nft = new FakeNft();
    nft.run(new Transaction().add({ kind: 'table', family: 'ip', table: 'cni_ts_a' }).add({ kind: 'table', family: 'ip6', table: 'cni_ts_a' }));
    expect(nft.dump()).toBe('table ip cni_ts_a {\n}\ntable ip6 cni_ts_a {\n}\n');
    expect(nft.dump('ip6')).toBe('table ip6 cni_ts_a {\n}\n');
  });

  it('prints priorities as nft does: standard names within 10, valid for the hook', () => {
    expect(priorityText(100, 'postrouting')).toBe('srcnat');
    expect(priorityText(105, 'postrouting')).toBe('srcnat + 5');
    expect(priorityText(-100, 'prerouting')).toBe('dstnat');
    expect(priorityText(-100, 'forward')).toBe('-100');
    expect(priorityText(100, 'input')).toBe('100');
    expect(priorityText(-3, 'forward')).toBe('filter - 3');
    expect(priorityText(-300, 'prerouting')).toBe('raw');
    expect(priorityText(200, 'input')).toBe('200');
  });
});
