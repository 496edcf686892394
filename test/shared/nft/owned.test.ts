import { describe, expect, it } from 'vitest';
import { NftError } from '../../../shared/nft/errors';
import { FakeNft } from '../../../shared/nft/fake';
import type { Listing, Nft, TableRef } from '../../../shared/nft/nft-interface';
import {
  GENERATION_SET,
  TABLE_PREFIX,
  bumpGeneration,
  ensureTable,
  networkTag,
  ownerTag,
  planRemoval,
  projectTable,
  queueRemoval,
  releaseOwner,
  removeTagged,
  syncChain,
  tagMatches,
  type ChainSpec,
  type Owner,
} from '../../../shared/nft/owned';
import { Transaction } from '../../../shared/nft/transaction';

const t: TableRef = projectTable('inet', 'bridge');

const CHAINS: ChainSpec[] = [
  { name: 'postrouting', type: 'nat', hook: 'postrouting', priority: 'srcnat' },
  { name: 'forward', type: 'filter', hook: 'forward', priority: 'filter' },
];

/** What a bridge ADD might write: network rules (once) and the container's own. */
function attach(nft: Nft, owner: Owner, subnet: string, ip: string): void {
  const tx = new Transaction();
  ensureTable(tx, t, [...CHAINS, { name: `net_${owner.network}` }], [{ kind: 'set', name: 'isolated', type: 'ipv4_addr' }]);
  const net = networkTag(owner.network);
  const mine = ownerTag(owner);
  syncChain(tx, t, { name: `net_${owner.network}` }, [{ rule: `ip saddr ${subnet} accept`, comment: net }]);
  tx.add({ kind: 'rule', ...t, chain: 'postrouting', rule: `ip saddr ${ip} ip daddr != ${subnet} masquerade`, comment: mine });
  tx.add({ kind: 'element', ...t, set: 'isolated', key: ip, comment: mine });
  nft.run(tx);
}

function networkRule(nft: Nft, network: string): void {
  nft.run(
    new Transaction().add({ kind: 'rule', ...t, chain: 'forward', rule: `iifname "br-${network}" jump net_${network}`, comment: `${networkTag(network)} dispatch` }),
  );
}

/** Rules and elements by owner, leaving out the write stamp. */
function comments(l: Listing | undefined): string[] {
  if (!l) return [];
  return [
    ...l.chains.flatMap((c) => c.rules.map((r) => `${c.name}: ${r.comment ?? '-'}`)),
    ...l.sets.filter((s) => s.name !== GENERATION_SET).flatMap((s) => s.elements.map((e) => `${s.name}: ${e.key} ${e.comment ?? '-'}`)),
  ];
}

/** The dump without the write stamp's value, which changes on every write. */
const unstamped = (dump: string): string => dump.replace(/(set generation \{[^}]*elements = \{ )\d+/, '$1N');

describe('ownership tags', () => {
  it('name a network and its attachments hierarchically', () => {
    expect(networkTag('mynet')).toBe('cni-ts:mynet');
    expect(ownerTag({ network: 'mynet', containerID: 'abc123' })).toBe('cni-ts:mynet:abc123');
    expect(ownerTag({ network: 'mynet', containerID: 'abc123', ifname: 'eth0' })).toBe('cni-ts:mynet:abc123:eth0');
    expect(projectTable('ip6', 'portmap')).toEqual({ family: 'ip6', table: `${TABLE_PREFIX}portmap` });
  });

  it('match the exact tag, deeper levels and a trailing note, but not a longer name', () => {
    expect(tagMatches('cni-ts:a', 'cni-ts:a')).toBe(true);
    expect(tagMatches('cni-ts:a:c1', 'cni-ts:a')).toBe(true);
    expect(tagMatches('cni-ts:a dispatch', 'cni-ts:a')).toBe(true);
    expect(tagMatches('cni-ts:ab', 'cni-ts:a')).toBe(false);
    expect(tagMatches('cni-ts:a:c1', 'cni-ts:a:c')).toBe(false);
    expect(tagMatches(undefined, 'cni-ts:a')).toBe(false);
  });

  it('stay within nft\'s 128-character comment limit for the longest names, deterministically and distinctly', () => {
    const longNet = 'n'.repeat(200);
    const cid = 'f'.repeat(64);
    const a = ownerTag({ network: longNet, containerID: `${cid}x`, ifname: 'eth0' });
    expect(a.length).toBeLessThanOrEqual(128);
    expect(ownerTag({ network: longNet, containerID: `${cid}x`, ifname: 'eth0' })).toBe(a);
    expect(ownerTag({ network: `${longNet}2`, containerID: `${cid}x`, ifname: 'eth0' })).not.toBe(a);
    expect(tagMatches(a, networkTag(longNet))).toBe(true);
    const tx = new Transaction().add({ kind: 'rule', ...t, chain: 'c', rule: 'accept', comment: a });
    expect(tx.error).toBeUndefined();
  });

  it('refuse parts that would break the hierarchy', () => {
    expect(() => networkTag('a:b')).toThrow(NftError);
    expect(() => ownerTag({ network: 'a', containerID: 'c d' })).toThrow(/cannot be part of a tag/);
    expect(() => ownerTag({ network: 'a', containerID: '' })).toThrow(NftError);
  });
});

describe('ensureTable and syncChain', () => {
  it('can run on every ADD: the second run leaves the same ruleset', () => {
    const nft = new FakeNft();
    const tx = (): Transaction => {
      const x = new Transaction();
      ensureTable(x, t, CHAINS, [{ kind: 'map', name: 'ports', type: 'inet_service', valueType: 'ipv4_addr' }], 'cni-ts');
      syncChain(x, t, { name: 'net_a' }, ['ip saddr 10.0.0.0/24 accept', { rule: 'drop', comment: 'cni-ts:a' }]);
      return x;
    };
    nft.run(tx());
    const first = nft.dump();
    nft.run(tx());
    expect(unstamped(nft.dump())).toBe(unstamped(first));
    expect(nft.dump()).not.toBe(first);
    expect(first).toContain('\tchain net_a {\n\t\tip saddr 10.0.0.0/24 accept\n\t\tdrop comment "cni-ts:a"\n\t}');
  });

  it('replaces a chain\'s rules instead of adding duplicates', () => {
    const nft = new FakeNft();
    const sync = (rules: string[]): void => {
      const x = new Transaction();
      ensureTable(x, t);
      syncChain(x, t, { name: 'net_a' }, rules);
      nft.run(x);
    };
    sync(['accept', 'drop']);
    sync(['meta mark 1 accept']);
    expect(nft.list(t.family, t.table)!.chains[0].rules).toHaveLength(1);
  });
});

describe('releaseOwner', () => {
  const c1: Owner = { network: 'a', containerID: 'c1' };
  const c2: Owner = { network: 'a', containerID: 'c2' };
  const c3: Owner = { network: 'b', containerID: 'c3' };

  function world(): FakeNft {
    const nft = new FakeNft();
    attach(nft, c1, '10.1.0.0/24', '10.1.0.2');
    attach(nft, c2, '10.1.0.0/24', '10.1.0.3');
    attach(nft, c3, '10.2.0.0/24', '10.2.0.2');
    networkRule(nft, 'a');
    networkRule(nft, 'b');
    return nft;
  }

  it('removes exactly one container\'s rules and elements, with one listing and one transaction', () => {
    const nft = world();
    const before = comments(nft.list(t.family, t.table));
    nft.execs = 0;
    const res = releaseOwner(nft, t, c1)!;
    expect(nft.execs).toBe(2);
    expect(res.lastOfNetwork).toBe(false);
    expect(res.rules.map((r) => r.comment)).toEqual(['cni-ts:a:c1']);
    expect(res.elements).toEqual([{ set: 'isolated', key: '10.1.0.2', comment: 'cni-ts:a:c1' }]);
    const after = comments(nft.list(t.family, t.table));
    expect(before.filter((c) => !after.includes(c))).toEqual(['postrouting: cni-ts:a:c1', 'isolated: 10.1.0.2 cni-ts:a:c1']);
  });

  it('removes the network\'s own rules with its last container, and leaves other networks alone', () => {
    const nft = world();
    releaseOwner(nft, t, c1);
    const res = releaseOwner(nft, t, c2, { prune: true })!;
    expect(res.lastOfNetwork).toBe(true);
    expect(res.chains).toEqual(['net_a']);
    expect(comments(nft.list(t.family, t.table))).toEqual([
      'postrouting: cni-ts:b:c3',
      'forward: cni-ts:b dispatch',
      'net_b: cni-ts:b',
      'isolated: 10.2.0.2 cni-ts:b:c3',
    ]);
    expect(nft.dump()).not.toContain('net_a');
  });

  it('drops the table when its last owner leaves, if asked', () => {
    const nft = world();
    for (const o of [c1, c2]) releaseOwner(nft, t, o, { dropEmptyTable: true });
    expect(nft.list(t.family, t.table)).toBeDefined();
    const res = releaseOwner(nft, t, c3, { dropEmptyTable: true })!;
    expect(res.table).toBe(true);
    expect(nft.list(t.family, t.table)).toBeUndefined();
  });

  it('is idempotent: a second release, and a release on a missing table, change nothing', () => {
    const nft = world();
    releaseOwner(nft, t, c1);
    const dump = nft.dump();
    const again = releaseOwner(nft, t, c1)!;
    expect(again.rules.length + again.elements.length).toBe(0);
    expect(nft.dump()).toBe(dump);
    const empty = new FakeNft();
    expect(releaseOwner(empty, t, c1)).toBeUndefined();
    expect(empty.execs).toBe(1);
  });

  it('releases one interface of a container and keeps its other one', () => {
    const nft = new FakeNft();
    attach(nft, { ...c1, ifname: 'eth0' }, '10.1.0.0/24', '10.1.0.2');
    attach(nft, { ...c1, ifname: 'eth1' }, '10.1.0.0/24', '10.1.0.9');
    const res = releaseOwner(nft, t, { ...c1, ifname: 'eth0' })!;
    expect(res.lastOfNetwork).toBe(false);
    expect(comments(nft.list(t.family, t.table))).toEqual(['postrouting: cni-ts:a:c1:eth1', 'net_a: cni-ts:a', 'isolated: 10.1.0.9 cni-ts:a:c1:eth1']);
  });

  it('retries with a fresh listing when a concurrent ADD puts a rule into a chain it was about to delete', () => {
    // Without the stamp this DEL would delete net_a, and c7's rule with it.
    const fake = world();
    releaseOwner(fake, t, c1);
    let raced = false;
    // Another plugin process commits between our listing and our transaction.
    const racing: Nft = {
      list: (f, n) => fake.list(f, n),
      check: (tx) => fake.check(tx),
      run: (tx) => {
        if (!raced) {
          raced = true;
          const add = new Transaction();
          ensureTable(add, t, CHAINS);
          add.add({ kind: 'rule', ...t, chain: 'net_a', rule: 'ip saddr 10.1.0.7 accept', comment: 'cni-ts:a:c7' });
          fake.run(add);
        }
        fake.run(tx);
      },
    };
    const res = releaseOwner(racing, t, c2, { prune: true })!;
    expect(raced).toBe(true);
    expect(res.lastOfNetwork).toBe(false);
    expect(res.chains).toEqual([]);
    expect(comments(fake.list(t.family, t.table))).toContain('net_a: cni-ts:a:c7');
    expect(comments(fake.list(t.family, t.table))).not.toContain('postrouting: cni-ts:a:c2');
  });

  it('gives up after the retries and throws the conflict, and does not retry other errors', () => {
    const fake = world();
    for (const [kind, expected] of [['busy', 3], ['not-supported', 1]] as const) {
      let attempts = 0;
      const conflicting: Nft = {
        list: (f, n) => fake.list(f, n),
        check: (tx) => fake.check(tx),
        run: () => {
          attempts++;
          throw new NftError(kind, 'Device or resource busy', '', 1, 1, 'delete chain inet cni_ts_bridge net_a');
        },
      };
      let caught: unknown;
      try {
        releaseOwner(conflicting, t, c3, { retries: 2 });
      } catch (e) {
        caught = e;
      }
      expect((caught as NftError).kind).toBe(kind);
      expect(attempts).toBe(expected);
    }
  });
});

describe('the write stamp', () => {
  it('holds exactly one fresh value after every bump', () => {
    const nft = new FakeNft();
    const values = new Set<string>();
    for (let i = 0; i < 5; i++) {
      const tx = new Transaction().add({ kind: 'table', ...t });
      bumpGeneration(tx, t);
      nft.run(tx);
      const stamp = nft.list(t.family, t.table)!.sets.find((s) => s.name === GENERATION_SET)!;
      expect(stamp.elements).toHaveLength(1);
      values.add(stamp.elements[0].key);
    }
    expect(values.size).toBe(5);
  });

  it('makes a removal planned on a stale listing fail as a whole', () => {
    const nft = new FakeNft();
    attach(nft, { network: 'a', containerID: 'c1' }, '10.1.0.0/24', '10.1.0.2');
    const stale = nft.list(t.family, t.table)!;
    attach(nft, { network: 'a', containerID: 'c2' }, '10.1.0.0/24', '10.1.0.3');
    const before = nft.dump();
    const tx = new Transaction();
    queueRemoval(tx, stale, planRemoval(stale, () => true, { dropEmptyTable: true }));
    let caught: unknown;
    try {
      nft.run(tx);
    } catch (e) {
      caught = e;
    }
    expect((caught as NftError).kind).toBe('not-found');
    expect((caught as NftError).line).toBe(1);
    expect(nft.dump()).toBe(before);
  });

  it('is not counted when deciding whether a table is empty', () => {
    const nft = new FakeNft();
    attach(nft, { network: 'a', containerID: 'c1' }, '10.1.0.0/24', '10.1.0.2');
    const res = releaseOwner(nft, t, { network: 'a', containerID: 'c1' }, { dropEmptyTable: true })!;
    expect(res.table).toBe(true);
    expect(nft.dump()).toBe('');
  });
});

describe('planRemoval', () => {
  const listing: Listing = {
    family: 'inet',
    table: 'cni_ts_x',
    chains: [
      { name: 'filt', handle: 1, type: 'filter', hook: 'forward', priority: 0, policy: 'drop', rules: [{ handle: 10, comment: 'cni-ts:a', jumps: ['net_a'], sets: [] }] },
      { name: 'net_a', handle: 2, rules: [{ handle: 11, comment: 'cni-ts:a', jumps: [], sets: ['s'] }] },
      { name: 'net_b', handle: 3, rules: [] },
      { name: 'by_map', handle: 4, rules: [] },
    ],
    sets: [
      { kind: 'set', name: 's', handle: 5, type: 'ipv4_addr', flags: [], elements: [{ key: '10.0.0.1', comment: 'cni-ts:a' }] },
      { kind: 'map', name: 'vm', handle: 6, type: 'ifname', valueType: 'verdict', flags: [], elements: [{ key: '"x"', value: 'jump by_map', comment: 'cni-ts:b' }] },
    ],
  };

  it('prunes what is left empty and unreferenced, but never a drop-policy base chain', () => {
    const plan = planRemoval(listing, (c) => tagMatches(c, 'cni-ts:a'), { prune: true });
    expect(plan.rules.map((r) => r.handle)).toEqual([10, 11]);
    expect(plan.chains).toEqual(['net_a', 'net_b']);
    expect(plan.sets).toEqual(['s']);
    expect(plan.table).toBe(false);
  });

  it('does not drop a table whose drop policy still filters traffic', () => {
    const plan = planRemoval(listing, () => true, { dropEmptyTable: true });
    expect(plan.table).toBe(false);
  });

  it('queues deletions in an order nft accepts', () => {
    const nft = new FakeNft();
    const ref: TableRef = { family: 'inet', table: 'cni_ts_x' };
    nft.run(
      new Transaction()
        .add({ kind: 'table', ...ref })
        .add({ kind: 'chain', ...ref, name: 'filt', type: 'filter', hook: 'forward', priority: 0 })
        .add({ kind: 'chain', ...ref, name: 'net_a' })
        .add({ kind: 'chain', ...ref, name: 'by_map' })
        .add({ kind: 'set', ...ref, name: 's', type: 'ipv4_addr' })
        .add({ kind: 'map', ...ref, name: 'vm', type: 'ifname', valueType: 'verdict' })
        .add({ kind: 'element', ...ref, set: 's', key: '10.0.0.1', comment: 'cni-ts:a' })
        .add({ kind: 'element', ...ref, set: 'vm', key: '"x"', value: 'jump by_map', comment: 'cni-ts:a' })
        .add({ kind: 'rule', ...ref, chain: 'filt', rule: 'jump net_a', comment: 'cni-ts:a' })
        .add({ kind: 'rule', ...ref, chain: 'filt', rule: 'iifname vmap @vm', comment: 'cni-ts:a' })
        .add({ kind: 'rule', ...ref, chain: 'net_a', rule: 'ip saddr @s accept', comment: 'cni-ts:a' }),
    );
    const res = removeTagged(nft, ref, 'cni-ts:a', { prune: true })!;
    expect(res.sets.sort()).toEqual(['s', 'vm']);
    expect(res.chains.sort()).toEqual(['by_map', 'filt', 'net_a']);
    expect(nft.dump()).toBe('table inet cni_ts_x {\n}\n');
  });
});
