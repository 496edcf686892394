/**
 * realNft against the kernel, inside a throwaway network namespace, and
 * FakeNft held to the same behaviour (same listings, same dump text as
 * `nft list table`, same error kinds at the same lines).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NftError } from '../../../shared/nft/errors';
import { FakeNft } from '../../../shared/nft/fake';
import type { Listing, Nft, TableRef } from '../../../shared/nft/nft-interface';
import { ensureTable, networkTag, ownerTag, releaseOwner } from '../../../shared/nft/owned';
import { realNft } from '../../../shared/nft/real';
import { Transaction } from '../../../shared/nft/transaction';

const suffix = randomBytes(4).toString('hex');
const NS = `cnits-nft-${suffix}`;
const nsPath = `/var/run/netns/${NS}`;
let tableSeq = 0;
/** A fresh table name for each use; every one carries this run's suffix. */
const fresh = (family: TableRef['family'] = 'inet'): TableRef => ({ family, table: `cni_ts_${suffix}_${++tableSeq}` });

let real: Nft;

beforeAll(() => {
  execFileSync('ip', ['netns', 'add', NS]);
  real = realNft({ netnsPath: nsPath });
});

afterAll(() => {
  spawnSync('ip', ['netns', 'del', NS]);
});

/** nft inside the namespace, the way a person would look (`ip netns exec`). */
function nsNft(...args: string[]): string {
  return execFileSync('ip', ['netns', 'exec', NS, 'nft', ...args], { encoding: 'utf8' });
}

function tablesIn(rulesetJson: string): string[] {
  const doc = JSON.parse(rulesetJson) as { nftables: Array<{ table?: { family: string; name: string } }> };
  return doc.nftables.flatMap((x) => (x.table ? [`${x.table.family} ${x.table.name}`] : []));
}

const hostTables = (): string[] => tablesIn(execFileSync('nft', ['-j', 'list', 'ruleset'], { encoding: 'utf8' }));
const threadNetns = (): number => fs.statSync('/proc/thread-self/ns/net').ino;

function failure(fn: () => void): NftError {
  try {
    fn();
  } catch (err) {
    if (err instanceof NftError) return err;
    throw err;
  }
  throw new Error('expected an NftError');
}

/** Element order is the kernel's (hash or tree order); compare as sets. */
function sortedElements(l: Listing | undefined): Listing | undefined {
  if (!l) return l;
  return { ...l, sets: l.sets.map((s) => ({ ...s, elements: [...s.elements].sort((a, b) => a.key.localeCompare(b.key)) })) };
}

/** A ruleset using every object kind and the element forms the plugins need, written as nft prints it. */
function canonical(t: TableRef): Transaction {
  return new Transaction()
    .add({ kind: 'table', ...t, comment: 'owned by cni-ts' })
    .add({ kind: 'set', ...t, name: 'subnets', type: 'ipv4_addr', flags: ['interval'], comment: 'bridge subnets' })
    .add({ kind: 'set', ...t, name: 'subnets6', type: 'ipv6_addr', flags: ['interval'] })
    .add({ kind: 'map', ...t, name: 'hostports', type: ['ipv4_addr', 'inet_proto', 'inet_service'], valueType: ['ipv4_addr', 'inet_service'] })
    .add({ kind: 'map', ...t, name: 'bridges', type: 'ifname', valueType: 'verdict' })
    .add({ kind: 'chain', ...t, name: 'prerouting', type: 'nat', hook: 'prerouting', priority: 'dstnat' })
    .add({ kind: 'chain', ...t, name: 'postrouting', type: 'nat', hook: 'postrouting', priority: 'srcnat + 5' })
    .add({ kind: 'chain', ...t, name: 'forward', type: 'filter', hook: 'forward', priority: -100, policy: 'accept', comment: 'isolation' })
    .add({ kind: 'chain', ...t, name: 'net_a', comment: 'network a' })
    .add({ kind: 'element', ...t, set: 'subnets', key: '10.88.0.0/16', comment: 'cni-ts:a' })
    .add({ kind: 'element', ...t, set: 'subnets6', key: 'fd00:88::/64', comment: 'cni-ts:a' })
    .add({ kind: 'element', ...t, set: 'hostports', key: ['192.168.1.5', 'tcp', '8080'], value: ['10.88.0.2', '80'], comment: 'cni-ts:a:c1' })
    .add({ kind: 'element', ...t, set: 'bridges', key: '"cni-a"', value: 'jump net_a', comment: 'cni-ts:a' })
    .add({ kind: 'rule', ...t, chain: 'prerouting', rule: 'fib daddr type local dnat ip to ip daddr . meta l4proto . th dport map @hostports' })
    .add({ kind: 'rule', ...t, chain: 'postrouting', rule: 'ip saddr @subnets ip daddr != @subnets masquerade', comment: 'cni-ts:a' })
    .add({ kind: 'rule', ...t, chain: 'forward', rule: 'ct state established,related accept' })
    .add({ kind: 'rule', ...t, chain: 'forward', rule: 'iifname vmap @bridges' })
    .add({ kind: 'rule', ...t, chain: 'net_a', rule: 'oifname "cni-a" accept', comment: 'cni-ts:a' })
    .add({ kind: 'rule', ...t, chain: 'net_a', rule: 'ip6 saddr @subnets6 drop' });
}

describe('realNft in a network namespace', () => {
  it('applies a transaction inside the namespace only, and brings the thread back to the host namespace', () => {
    const t = fresh();
    const before = threadNetns();
    real.run(canonical(t));
    expect(threadNetns()).toBe(before);
    expect(tablesIn(nsNft('-j', 'list', 'ruleset'))).toContain(`inet ${t.table}`);
    expect(hostTables()).not.toContain(`inet ${t.table}`);
  });

  it('lists a table exactly as FakeNft does for the same transaction', () => {
    const t = fresh();
    const fake = new FakeNft();
    real.run(canonical(t));
    fake.run(canonical(t));
    const listing = real.list(t.family, t.table);
    expect(sortedElements(listing)).toEqual(sortedElements(fake.list(t.family, t.table)));
    // spot checks that the comparison compared something
    expect(listing?.sets.find((s) => s.name === 'bridges')?.elements).toEqual([{ key: '"cni-a"', value: 'jump net_a', comment: 'cni-ts:a' }]);
    expect(listing?.chains.find((c) => c.name === 'forward')?.rules[1]).toEqual({ handle: expect.any(Number), jumps: [], sets: ['bridges'] });
    expect(listing?.chains.find((c) => c.name === 'postrouting')?.priority).toBe(105);
  });

  it("prints the table as FakeNft's dump does, so golden texts hold against the kernel", () => {
    const t = fresh();
    const fake = new FakeNft();
    real.run(canonical(t));
    fake.run(canonical(t));
    expect(nsNft('list', 'table', t.family, t.table)).toBe(fake.dump(t.family, t.table));
  });

  it('accepts a FakeNft dump as input and lists it back unchanged', () => {
    const t = fresh();
    const fake = new FakeNft();
    fake.run(canonical(t));
    const text = fake.dump(t.family, t.table);
    execFileSync('ip', ['netns', 'exec', NS, 'nft', '-f', '-'], { input: text });
    expect(nsNft('list', 'table', t.family, t.table)).toBe(text);
  });

  it('runs every verb the Transaction renders: positions, index, replace, delete, flush, create, destroy', () => {
    const t = fresh();
    const fake = new FakeNft();
    const both = (tx: Transaction): void => {
      real.run(tx);
      fake.run(tx);
    };
    both(canonical(t));
    const handles = (): number[] => real.list(t.family, t.table)!.chains.find((c) => c.name === 'net_a')!.rules.map((r) => r.handle);
    const [h0, h1] = handles();
    const r = { kind: 'rule' as const, ...t, chain: 'net_a' };
    both(
      new Transaction()
        .add({ ...r, rule: 'meta mark 0x00000001 accept', handle: h0 })
        .insert({ ...r, rule: 'meta mark 0x00000002 accept', handle: h0 })
        .add({ ...r, rule: 'meta mark 0x00000003 accept', handle: h1 })
        .insert({ ...r, rule: 'meta mark 0x00000004 accept', handle: h1 })
        .insert({ ...r, rule: 'meta mark 0x00000005 accept' })
        .replace({ ...r, rule: 'ip6 saddr @subnets6 accept', handle: h1, comment: 'replaced' })
        .delete({ kind: 'element', ...t, set: 'hostports', key: ['192.168.1.5', 'tcp', '8080'] })
        .create({ kind: 'element', ...t, set: 'hostports', key: ['192.168.1.5', 'udp', '53'], value: ['10.88.0.3', '53'] })
        .create({ kind: 'chain', ...t, name: 'net_b' })
        .create({ kind: 'set', ...t, name: 'extra', type: ['ipv4_addr', 'inet_service'] })
        .destroy({ kind: 'chain', ...t, name: 'net_b' })
        .destroy({ kind: 'chain', ...t, name: 'net_c' })
        .destroy({ kind: 'table', family: 'ip', table: t.table })
        .flush({ kind: 'set', ...t, name: 'subnets6' })
        .delete({ kind: 'set', ...t, name: 'extra' }),
    );
    expect(nsNft('list', 'table', t.family, t.table)).toBe(fake.dump(t.family, t.table));
    expect(sortedElements(real.list(t.family, t.table))).toEqual(sortedElements(fake.list(t.family, t.table)));
    both(new Transaction().flush({ kind: 'chain', ...t, name: 'net_a' }).flush({ kind: 'table', ...t }).delete({ kind: 'table', ...t }));
    expect(real.list(t.family, t.table)).toBeUndefined();
  });

  it('changes nothing when one command of the batch fails, and names that command', () => {
    const t = fresh();
    real.run(canonical(t));
    const before = nsNft('-j', 'list', 'ruleset');
    const tx = new Transaction()
      .add({ kind: 'chain', ...t, name: 'net_new' })
      .add({ kind: 'rule', ...t, chain: 'net_a', rule: 'ip saddr 10.9.9.9 drop', comment: 'cni-ts:a:c9' })
      .delete({ kind: 'element', ...t, set: 'subnets', key: '10.88.0.0/16' })
      .add({ kind: 'rule', ...t, chain: 'forward', rule: 'masquerade' })
      .add({ kind: 'chain', ...t, name: 'net_after' });
    const e = failure(() => real.run(tx));
    expect(e.kind).toBe('not-supported');
    expect(e.line).toBe(4);
    expect(e.command).toBe(`add rule inet ${t.table} forward masquerade`);
    expect(e.exitCode).toBe(1);
    expect(e.stderr).toContain('Operation not supported');
    expect(nsNft('-j', 'list', 'ruleset')).toBe(before);
  });

  it('checks a transaction without applying it', () => {
    const t = fresh();
    real.check(canonical(t));
    expect(real.list(t.family, t.table)).toBeUndefined();
    const e = failure(() => real.check(new Transaction().add({ kind: 'table', ...t }).add({ kind: 'rule', ...t, chain: 'none', rule: 'accept' })));
    expect(e.kind).toBe('not-found');
    expect(e.line).toBe(2);
  });

  it('returns undefined when listing a missing table', () => {
    expect(real.list('ip6', `cni_ts_${suffix}_missing`)).toBeUndefined();
  });

  it('fails with kind exec when the nft binary is missing', () => {
    const e = failure(() => realNft({ nftPath: '/nonexistent/nft', netnsPath: nsPath }).run(new Transaction().add({ kind: 'table', ...fresh() })));
    expect(e.kind).toBe('exec');
  });

  it('is refused by nft itself for a keyword used as a chain name, which is why Transaction refuses it first', () => {
    const t = fresh();
    const res = spawnSync('ip', ['netns', 'exec', NS, 'nft', '-c', '-f', '-'], {
      input: `add table inet ${t.table}\nadd chain inet ${t.table} fwd\n`,
      encoding: 'utf8',
    });
    expect(res.status).toBe(1);
    expect(res.stderr).toContain('syntax error');
    expect(new Transaction().add({ kind: 'chain', ...t, name: 'fwd' }).error?.kind).toBe('invalid');
  });
});

describe('FakeNft fails where nft fails, with the same kind at the same line', () => {
  const cases: Array<[string, (t: TableRef, tx: Transaction) => Transaction]> = [
    ['create of an existing table', (t, tx) => tx.create({ kind: 'table', ...t })],
    ['delete of a missing table', (t, tx) => tx.delete({ kind: 'table', family: 'ip', table: t.table })],
    ['a chain in a missing table', (t, tx) => tx.add({ kind: 'chain', family: 'ip6', table: t.table, name: 'c' })],
    ['create of an existing chain', (t, tx) => tx.create({ kind: 'chain', ...t, name: 'net_a' })],
    ['a hook added to a regular chain', (t, tx) => tx.add({ kind: 'chain', ...t, name: 'net_a', type: 'filter', hook: 'input', priority: 0 })],
    ['a changed base chain priority', (t, tx) => tx.add({ kind: 'chain', ...t, name: 'prerouting', type: 'nat', hook: 'prerouting', priority: -90 })],
    ['a nat chain on the forward hook', (t, tx) => tx.add({ kind: 'chain', ...t, name: 'natfwd', type: 'nat', hook: 'forward', priority: 0 })],
    ['a route chain on the input hook', (t, tx) => tx.add({ kind: 'chain', ...t, name: 'rt', type: 'route', hook: 'input', priority: 0 })],
    [
      'delete of a chain a rule jumps to',
      (t, tx) => tx.add({ kind: 'chain', ...t, name: 'target' }).add({ kind: 'rule', ...t, chain: 'forward', rule: 'jump target' }).delete({ kind: 'chain', ...t, name: 'target' }),
    ],
    ['delete of a chain a verdict map jumps to', (t, tx) => tx.flush({ kind: 'chain', ...t, name: 'net_a' }).delete({ kind: 'chain', ...t, name: 'net_a' })],
    ['delete of a missing chain', (t, tx) => tx.delete({ kind: 'chain', ...t, name: 'none' })],
    ['flush of a missing chain', (t, tx) => tx.flush({ kind: 'chain', ...t, name: 'none' })],
    ['a rule in a missing chain', (t, tx) => tx.add({ kind: 'rule', ...t, chain: 'none', rule: 'accept' })],
    ['a jump to a missing chain', (t, tx) => tx.add({ kind: 'rule', ...t, chain: 'net_a', rule: 'jump none' })],
    ['a jump to a base chain', (t, tx) => tx.add({ kind: 'rule', ...t, chain: 'net_a', rule: 'jump forward' })],
    ['a lookup in a missing set', (t, tx) => tx.add({ kind: 'rule', ...t, chain: 'net_a', rule: 'ip saddr @none drop' })],
    ['delete of a missing rule handle', (t, tx) => tx.delete({ kind: 'rule', ...t, chain: 'net_a', handle: 9999 })],
    ['replace of a missing rule handle', (t, tx) => tx.replace({ kind: 'rule', ...t, chain: 'net_a', rule: 'drop', handle: 9999 })],
    ['insert before a missing handle', (t, tx) => tx.insert({ kind: 'rule', ...t, chain: 'net_a', rule: 'drop', handle: 9999 })],
    ['add after a missing handle', (t, tx) => tx.add({ kind: 'rule', ...t, chain: 'net_a', rule: 'drop', handle: 9999 })],
    ['masquerade in a filter chain', (t, tx) => tx.add({ kind: 'rule', ...t, chain: 'forward', rule: 'masquerade' })],
    ['dnat on the postrouting hook', (t, tx) => tx.add({ kind: 'rule', ...t, chain: 'postrouting', rule: 'dnat ip to 10.0.0.1' })],
    ['masquerade on the prerouting hook', (t, tx) => tx.add({ kind: 'rule', ...t, chain: 'prerouting', rule: 'masquerade' })],
    [
      'masquerade in a chain a filter verdict map reaches',
      (t, tx) => tx.add({ kind: 'rule', ...t, chain: 'net_a', rule: 'meta l4proto udp masquerade' }),
    ],
    [
      'a jump loop reachable from a base chain',
      (t, tx) =>
        tx
          .add({ kind: 'chain', ...t, name: 'loop1' })
          .add({ kind: 'chain', ...t, name: 'loop2' })
          .add({ kind: 'rule', ...t, chain: 'loop1', rule: 'jump loop2' })
          .add({ kind: 'rule', ...t, chain: 'loop2', rule: 'jump loop1' })
          .add({ kind: 'rule', ...t, chain: 'forward', rule: 'jump loop1' }),
    ],
    ['a set redefined with another type', (t, tx) => tx.add({ kind: 'set', ...t, name: 'subnets', type: 'ipv6_addr', flags: ['interval'] })],
    ['create of an existing set', (t, tx) => tx.create({ kind: 'set', ...t, name: 'subnets', type: 'ipv4_addr', flags: ['interval'] })],
    ['delete of a set a rule uses', (t, tx) => tx.delete({ kind: 'set', ...t, name: 'subnets' })],
    ['delete of a missing set', (t, tx) => tx.delete({ kind: 'set', ...t, name: 'none' })],
    ['an element in a missing set', (t, tx) => tx.add({ kind: 'element', ...t, set: 'none', key: '1.2.3.4' })],
    ['delete of a missing element of an interval set', (t, tx) => tx.delete({ kind: 'element', ...t, set: 'subnets', key: '10.99.0.0/16' })],
    ['delete of a missing map element', (t, tx) => tx.delete({ kind: 'element', ...t, set: 'hostports', key: ['1.1.1.1', 'tcp', '1'] })],
    ['create of an existing element', (t, tx) => tx.create({ kind: 'element', ...t, set: 'subnets', key: '10.88.0.0/16' })],
    [
      'a map key added again with another value',
      (t, tx) => tx.add({ kind: 'element', ...t, set: 'hostports', key: ['192.168.1.5', 'tcp', '8080'], value: ['10.88.0.9', '80'] }),
    ],
    ['a verdict map element jumping to a missing chain', (t, tx) => tx.add({ kind: 'element', ...t, set: 'bridges', key: '"x"', value: 'jump none' })],
  ];

  for (const [what, failing] of cases) {
    it(`for ${what}`, () => {
      const t = fresh();
      const fake = new FakeNft();
      real.run(canonical(t));
      fake.run(canonical(t));
      // one good command first, so a wrong line number cannot pass
      const ok = failing(t, new Transaction().add({ kind: 'rule', ...t, chain: 'net_a', rule: 'meta mark 0x00000007 accept' }));
      const fromReal = failure(() => real.run(ok));
      const fromFake = failure(() => fake.run(ok));
      expect({ kind: fromFake.kind, line: fromFake.line, command: fromFake.command }).toEqual({
        kind: fromReal.kind,
        line: fromReal.line,
        command: fromReal.command,
      });
      expect(fromReal.line).toBeGreaterThan(1);
      expect(nsNft('list', 'table', t.family, t.table)).toBe(fake.dump(t.family, t.table));
      real.run(new Transaction().delete({ kind: 'table', ...t }));
    });
  }
});

describe('FakeNft succeeds where nft succeeds', () => {
  const cases: Array<[string, (t: TableRef, tx: Transaction) => Transaction]> = [
    ['delete of a chain together with its rules', (t, tx) => tx.delete({ kind: 'chain', ...t, name: 'postrouting' })],
    [
      'a jump loop among chains no base chain reaches',
      (t, tx) =>
        tx
          .add({ kind: 'chain', ...t, name: 'loop1' })
          .add({ kind: 'chain', ...t, name: 'loop2' })
          .add({ kind: 'rule', ...t, chain: 'loop1', rule: 'jump loop2' })
          .add({ kind: 'rule', ...t, chain: 'loop2', rule: 'jump loop1' }),
    ],
    ['a map element added again with the same value', (t, tx) => tx.add({ kind: 'element', ...t, set: 'hostports', key: ['192.168.1.5', 'tcp', '8080'], value: ['10.88.0.2', '80'] })],
    ['an existing base chain added again with another policy', (t, tx) => tx.add({ kind: 'chain', ...t, name: 'forward', type: 'filter', hook: 'forward', priority: -100, policy: 'drop' })],
    ['an existing base chain added again without its definition', (t, tx) => tx.add({ kind: 'chain', ...t, name: 'forward' })],
    ['a flushed table, whose sets keep their elements', (t, tx) => tx.flush({ kind: 'table', ...t })],
    [
      'masquerade in a regular chain only the nat postrouting chain reaches',
      (t, tx) =>
        tx
          .delete({ kind: 'element', ...t, set: 'bridges', key: '"cni-a"' })
          .add({ kind: 'rule', ...t, chain: 'net_a', rule: 'masquerade' })
          .add({ kind: 'rule', ...t, chain: 'postrouting', rule: 'jump net_a' }),
    ],
  ];

  for (const [what, change] of cases) {
    it(`for ${what}`, () => {
      const t = fresh();
      const fake = new FakeNft();
      real.run(canonical(t));
      fake.run(canonical(t));
      const tx = change(t, new Transaction());
      real.run(tx);
      fake.run(tx);
      expect(nsNft('list', 'table', t.family, t.table)).toBe(fake.dump(t.family, t.table));
      real.run(new Transaction().delete({ kind: 'table', ...t }));
    });
  }
});

describe('ownership helpers on the kernel', () => {
  it("removes one owner's share by handle, then the network's, then the table", () => {
    const t = fresh();
    const add = (containerID: string, ip: string): void => {
      const tx = new Transaction();
      ensureTable(tx, t, [{ name: 'postrouting', type: 'nat', hook: 'postrouting', priority: 'srcnat' }], [{ kind: 'set', name: 'members', type: 'ipv4_addr' }]);
      tx.add({ kind: 'rule', ...t, chain: 'postrouting', rule: `ip saddr ${ip} masquerade`, comment: ownerTag({ network: 'n1', containerID }) });
      tx.add({ kind: 'element', ...t, set: 'members', key: ip, comment: ownerTag({ network: 'n1', containerID }) });
      real.run(tx);
    };
    add('c1', '10.5.0.2');
    add('c2', '10.5.0.3');
    real.run(new Transaction().add({ kind: 'rule', ...t, chain: 'postrouting', rule: 'ip saddr @members counter', comment: networkTag('n1') }));
    const first = releaseOwner(real, t, { network: 'n1', containerID: 'c1' }, { dropEmptyTable: true })!;
    expect(first.lastOfNetwork).toBe(false);
    const l = real.list(t.family, t.table)!;
    expect(l.chains[0].rules.map((r) => r.comment)).toEqual(['cni-ts:n1:c2', 'cni-ts:n1']);
    expect(l.sets.find((x) => x.name === 'members')?.elements).toEqual([{ key: '10.5.0.3', comment: 'cni-ts:n1:c2' }]);
    const last = releaseOwner(real, t, { network: 'n1', containerID: 'c2' }, { dropEmptyTable: true })!;
    expect(last.lastOfNetwork).toBe(true);
    expect(last.table).toBe(true);
    expect(real.list(t.family, t.table)).toBeUndefined();
    expect(releaseOwner(real, t, { network: 'n1', containerID: 'c2' })).toBeUndefined();
  });

  it('has the kernel refuse a removal planned before a concurrent ADD, and retries without losing that ADD', () => {
    const t = fresh();
    const tx = new Transaction();
    ensureTable(tx, t, [{ name: 'net_n2' }]);
    tx.add({ kind: 'rule', ...t, chain: 'net_n2', rule: 'ip saddr 10.6.0.2 accept', comment: 'cni-ts:n2:c1' });
    real.run(tx);
    let raced = false;
    let conflicts = 0;
    const racing: Nft = {
      list: (f, n) => real.list(f, n),
      check: (x) => real.check(x),
      run: (x) => {
        if (!raced) {
          raced = true;
          const add = new Transaction();
          ensureTable(add, t, [{ name: 'net_n2' }]);
          add.add({ kind: 'rule', ...t, chain: 'net_n2', rule: 'ip saddr 10.6.0.3 accept', comment: 'cni-ts:n2:c2' });
          real.run(add);
        }
        try {
          real.run(x);
        } catch (err) {
          if (err instanceof NftError && err.kind === 'not-found') conflicts++;
          throw err;
        }
      },
    };
    const res = releaseOwner(racing, t, { network: 'n2', containerID: 'c1' }, { dropEmptyTable: true })!;
    expect(conflicts).toBe(1);
    expect(res.table).toBe(false);
    expect(res.chains).toEqual([]);
    expect(real.list(t.family, t.table)!.chains[0].rules.map((r) => r.comment)).toEqual(['cni-ts:n2:c2']);
  });
});

describe('the host', () => {
  it('has none of the tables these tests created', () => {
    expect(tableSeq).toBeGreaterThan(10);
    expect(hostTables().filter((name) => name.includes(suffix))).toEqual([]);
  });
});
