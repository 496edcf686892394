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
import { FakeNft } from '../../../testkit/fake-nft';
import type { ElementOp, Listing, Nft, TableRef } from '../../../shared/nft/nft-interface';
import { OwnedTable, TableTx, ownerTag, type Skeleton } from '../../../shared/nft/table';
import { realNft, realTable } from '../../../shared/nft/real';
import { nftListTable } from '../../../shared/netlink/nftables';
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

/** What the parity test builds: every kind of object our tables hold, with comments on rules and elements. */
function parityTable(t: TableRef): Transaction {
  const tx = new TableTx(t);
  tx.add({ kind: 'table', comment: 'cni-ts parity' });
  tx.add({ kind: 'set', name: 'bridges', type: 'ifname', comment: 'every bridge' });
  tx.add({ kind: 'set', name: 'members', type: 'ipv4_addr' });
  tx.add({ kind: 'set', name: 'marks', type: 'mark' });
  tx.add({ kind: 'map', name: 'ports', type: ['ipv4_addr', 'inet_proto', 'inet_service'], valueType: 'verdict' });
  tx.add({ kind: 'map', name: 'wild', type: ['nf_proto', 'inet_proto', 'inet_service'], valueType: 'verdict' });
  tx.add({ kind: 'map', name: 'to6', type: ['ipv6_addr', 'inet_service'], valueType: ['ipv4_addr', 'inet_service'] });
  tx.add({ kind: 'chain', name: 'owner-a' });
  tx.add({ kind: 'chain', name: 'owner-b' });
  tx.add({ kind: 'chain', name: 'forward', type: 'filter', hook: 'forward', priority: 'filter', policy: 'drop' });
  tx.add({ kind: 'chain', name: 'prerouting', type: 'nat', hook: 'prerouting', priority: 'dstnat', policy: 'accept' });
  tx.add({ kind: 'chain', name: 'marker', comment: 'cni-ts skeleton v9' });
  tx.add({ kind: 'rule', chain: 'owner-a', rule: 'ip daddr 10.0.0.1 tcp dport 80 dnat ip to 10.1.0.5:8080', comment: 'cni-ts:n1:a:eth0' });
  tx.add({ kind: 'rule', chain: 'owner-b', rule: 'ip saddr 10.1.0.6 accept', comment: 'cni-ts:n1:b' });
  tx.add({ kind: 'rule', chain: 'owner-b', rule: 'counter' });
  tx.add({ kind: 'rule', chain: 'forward', rule: 'iifname @bridges jump owner-b', comment: 'cni-ts:n1' });
  tx.add({ kind: 'rule', chain: 'forward', rule: 'ip saddr @members accept' });
  tx.add({ kind: 'rule', chain: 'prerouting', rule: 'ip daddr . meta l4proto . th dport vmap @ports' });
  tx.add({ kind: 'rule', chain: 'prerouting', rule: 'meta nfproto . meta l4proto . th dport vmap @wild', comment: 'wildcard ports' });
  tx.add({ kind: 'element', set: 'bridges', key: '"br-a"' });
  tx.add({ kind: 'element', set: 'bridges', key: '"br-b"', comment: 'cni-ts:n2' });
  tx.add({ kind: 'element', set: 'members', key: '10.1.0.5', comment: 'cni-ts:n1:a' });
  tx.add({ kind: 'element', set: 'members', key: '10.1.0.6' });
  tx.add({ kind: 'element', set: 'marks', key: '123' });
  tx.add({ kind: 'element', set: 'ports', key: ['127.0.0.1', 'tcp', '8080'], value: 'jump owner-a' });
  tx.add({ kind: 'element', set: 'ports', key: ['10.0.0.1', 'udp', '53'], value: 'jump owner-a', comment: 'cni-ts:n1:a:eth0' });
  tx.add({ kind: 'element', set: 'wild', key: ['ipv6', 'sctp', '9000'], value: 'goto owner-b' });
  tx.add({ kind: 'element', set: 'to6', key: ['fd00::1', '80'], value: ['10.1.0.5', '8080'] });
  return tx;
}

describe('one listing three ways', () => {
  it('the kernel over netlink, nft -j and FakeNft list the same table identically: chains, rules and their comments, sets, maps and elements', () => {
    const t = fresh();
    const fake = new FakeNft();
    real.run(parityTable(t));
    fake.run(parityTable(t));
    const viaNetlink = sortedElements(nftListTable(t.family, t.table, nsPath));
    const viaNft = sortedElements(real.list(t.family, t.table));
    const viaFake = sortedElements(fake.list(t.family, t.table));
    expect(viaNetlink).toEqual(viaNft);
    // handles are the kernel's to give; everything else must match the fake
    const noHandles = (l: Listing | undefined) =>
      l && { ...l, chains: l.chains.map((c) => ({ ...c, handle: 0, rules: c.rules.map((r) => ({ ...r, handle: 0 })) })), sets: l.sets.map((x) => ({ ...x, handle: 0 })) };
    expect(noHandles(viaNetlink)).toEqual(noHandles(viaFake));
    expect(viaNetlink!.chains.find((c) => c.name === 'owner-a')!.rules[0].comment).toBe('cni-ts:n1:a:eth0');
    expect(nftListTable(t.family, `${t.table}_none`, nsPath)).toBeUndefined();
    real.run(new Transaction().delete({ kind: 'table', ...t }));
  });

  it('netlink lists the canonical ruleset (interval sets, prefixes, ranges, anonymous sets) as nft -j does', () => {
    const t = fresh();
    real.run(canonical(t));
    expect(sortedElements(nftListTable(t.family, t.table, nsPath))).toEqual(sortedElements(real.list(t.family, t.table)));
    real.run(new Transaction().delete({ kind: 'table', ...t }));
  });
});

describe('an owned table on the kernel', () => {
  const skeleton = (version: string): Skeleton => ({
    marker: { chain: 'skeleton', comment: `cni-ts test skeleton ${version}` },
    queue: (tx) => {
      tx.add({ kind: 'table' });
      tx.add({ kind: 'map', name: 'claims', type: 'inet_service', valueType: 'verdict' });
      tx.syncChain({ name: 'prerouting', type: 'nat', hook: 'prerouting', priority: 'dstnat', policy: 'accept' }, [
        { rule: 'tcp dport vmap @claims', comment: `lookup ${version}` },
      ]);
    },
  });
  const addOwner = (table: OwnedTable, id: string, port: number, skel: Skeleton): boolean => {
    const tx = table.tx();
    const wrote = table.ensureSkeleton(tx, skel);
    tx.add({ kind: 'chain', name: `own-${id}` });
    tx.add({ kind: 'rule', chain: `own-${id}`, rule: `dnat ip to 10.1.0.${port % 250}`, comment: ownerTag({ network: 'n', containerID: id }) });
    tx.add({ kind: 'element', set: 'claims', key: String(port), value: `jump own-${id}` });
    table.run(tx);
    return wrote;
  };

  it('writes its skeleton once, upgrades it in place on a new version, and releases one owner by its tag and chains', () => {
    const t = fresh();
    const table = realTable(t, { netnsPath: nsPath, lockFile: `/run/cni-ts/test-${t.table}.lock` });
    expect(addOwner(table, 'a', 80, skeleton('v1'))).toBe(true);
    expect(addOwner(table, 'b', 81, skeleton('v1'))).toBe(false);
    expect(addOwner(table, 'c', 82, skeleton('v2'))).toBe(true);
    const l = table.list()!;
    expect(l.chains.find((c) => c.name === 'prerouting')!.rules.map((r) => r.comment)).toEqual(['lookup v2']);
    expect(l.chains.map((c) => c.name).filter((n) => n.startsWith('own-'))).toEqual(['own-a', 'own-b', 'own-c']);
    expect(nsNft('list', 'chain', t.family, t.table, 'skeleton')).toContain('comment "cni-ts test skeleton v2"');

    const res = table.withLock(() => table.releaseOwner(ownerTag({ network: 'n', containerID: 'b' }), { chains: ['own-b'] }))!;
    expect(res).toEqual({ rules: 1, elements: 1, chains: ['own-b'] });
    const after = table.list()!;
    expect(after.chains.map((c) => c.name)).not.toContain('own-b');
    expect(after.sets[0].elements.map((e) => e.value).sort()).toEqual(['jump own-a', 'jump own-c']);
    expect(table.releaseOwner('cni-ts:n:b', { chains: ['own-b'] })).toEqual({ rules: 0, elements: 0, chains: [] });
    real.run(new Transaction().delete({ kind: 'table', ...t }));
    expect(table.releaseOwner('cni-ts:n:a')).toBeUndefined();
  });

  it('retries a release that a concurrent writer made conflict, and keeps what that writer added', () => {
    const t = fresh();
    const base = realTable(t, { netnsPath: nsPath });
    addOwner(base, 'a', 80, skeleton('v1'));
    let raced = false;
    let conflicts = 0;
    const racing = new OwnedTable(t, {
      nft: {
        list: (f, n) => real.list(f, n),
        check: (x) => real.check(x),
        run: (x) => {
          if (!raced) {
            raced = true;
            // between the listing and the release: another element now jumps to the chain being deleted
            real.run(new TableTx(t).add({ kind: 'element', set: 'claims', key: '90', value: 'jump own-a' }));
            addOwner(base, 'z', 91, skeleton('v1'));
          }
          try {
            real.run(x);
          } catch (err) {
            if (err instanceof NftError) conflicts++;
            throw err;
          }
        },
      },
      list: (r) => nftListTable(r.family, r.table, nsPath),
      lock: (fn) => fn(),
    });
    const res = racing.releaseOwner('cni-ts:n:a', { chains: ['own-a'] })!;
    expect(conflicts).toBe(1);
    expect(res.elements).toBe(2);
    const l = base.list()!;
    expect(l.chains.map((c) => c.name)).toEqual(expect.arrayContaining(['own-z']));
    expect(l.chains.map((c) => c.name)).not.toContain('own-a');
    expect(l.sets[0].elements.map((e) => e.key)).toEqual(['91']);
    real.run(new Transaction().delete({ kind: 'table', ...t }));
  });
});

describe('the host', () => {
  it('has none of the tables these tests created', () => {
    expect(tableSeq).toBeGreaterThan(10);
    expect(hostTables().filter((name) => name.includes(suffix))).toEqual([]);
  });
});

describe('element batches (Nft.elements): FakeNft as realNft over netlink', () => {
  const layouts = {
    ports: { key: ['ipv4_addr', 'inet_proto', 'inet_service'], value: ['ipv4_addr', 'inet_service'] },
    srcs: { key: ['ipv4_addr', 'ipv4_addr', 'inet_proto', 'inet_service'], interval: true },
  } as const;
  const setup = (t: TableRef): Transaction =>
    new Transaction()
      .add({ kind: 'table', ...t })
      .add({ kind: 'map', ...t, name: 'ports', type: ['ipv4_addr', 'inet_proto', 'inet_service'], valueType: ['ipv4_addr', 'inet_service'] })
      .add({ kind: 'set', ...t, name: 'srcs', type: ['ipv4_addr', 'ipv4_addr', 'inet_proto', 'inet_service'], flags: ['interval'] });
  const elementsOf = (l: Listing | undefined) => Object.fromEntries((sortedElements(l)?.sets ?? []).map((s) => [s.name, s.elements]));
  const ops: ElementOp[] = [
    { verb: 'add' as const, set: 'ports', key: ['192.168.1.5', 'tcp', '8080'], value: ['10.88.0.2', '80'], comment: 'cni-ts:n:a' },
    { verb: 'add' as const, set: 'ports', key: ['192.168.1.5', 'udp', '53'], value: ['10.88.0.3', '5353'] },
    { verb: 'add' as const, set: 'srcs', key: ['10.88.0.0/16', '10.88.0.2', 'tcp', '80-90'], comment: 'cni-ts:n:a' },
    { verb: 'add' as const, set: 'srcs', key: ['127.0.0.0/8', '10.88.0.2', 'tcp', '80'] },
  ];

  it('apply the same batch to the same listing, and fail it with the same kinds, applying nothing', () => {
    const t = fresh();
    const fake = new FakeNft();
    real.run(setup(t));
    fake.run(setup(t));
    for (const nft of [real, fake]) nft.elements!(t.family, t.table, layouts, ops);
    expect(elementsOf(nftListTable(t.family, t.table, nsPath))).toEqual(elementsOf(fake.list(t.family, t.table)));
    expect(elementsOf(real.list(t.family, t.table))).toEqual(elementsOf(fake.list(t.family, t.table)));
    const bad: ElementOp[][] = [
      [{ verb: 'add', set: 'ports', key: ['192.168.1.5', 'tcp', '8080'], value: ['10.88.0.9', '80'] }],
      [ops[1], { verb: 'delete', set: 'ports', key: ['192.168.1.5', 'tcp', '1'] }],
    ];
    for (const [i, batch] of bad.entries()) {
      const kinds = [real, fake].map((nft) => failure(() => nft.elements!(t.family, t.table, layouts, [{ ...ops[3], verb: 'delete' }, ...batch])).kind);
      expect(kinds).toEqual([i === 0 ? 'exists' : 'not-found', i === 0 ? 'exists' : 'not-found']);
    }
    expect(elementsOf(nftListTable(t.family, t.table, nsPath))).toEqual(elementsOf(fake.list(t.family, t.table)));
    expect(fake.batches).toBe(1);
    real.run(new Transaction().delete({ kind: 'table', ...t }));
  });
});
