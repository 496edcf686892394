/**
 * The owned-table object (shared/nft/table.ts) on FakeNft: a transaction
 * bound to one table, markers, ensureSkeleton, releaseOwner, tags and the
 * table's lock. real.test.ts runs the same object on the kernel.
 */
import { describe, expect, it } from 'vitest';
import { NftError } from '../../../shared/nft/errors';
import type { Nft } from '../../../shared/nft/nft-interface';
import { OwnedTable, TableTx, networkTag, ownerTag, projectTable, tagMatches, type Skeleton } from '../../../shared/nft/table';
import { FakeNft, fakeTable } from '../../../testkit/fake-nft';

const REF = projectTable('inet', 'unit');

const skeleton = (version: string): Skeleton => ({
  marker: { chain: 'skeleton', comment: `cni-ts unit ${version}` },
  queue: (tx) => {
    tx.add({ kind: 'table' });
    tx.add({ kind: 'map', name: 'claims', type: 'inet_service', valueType: 'verdict' });
    tx.syncChain({ name: 'prerouting', type: 'nat', hook: 'prerouting', priority: 'dstnat', policy: 'accept' }, ['tcp dport vmap @claims']);
  },
});

function addOwner(table: OwnedTable, id: string, port: number, skel = skeleton('v1')): boolean {
  const tx = table.tx();
  const wrote = table.ensureSkeleton(tx, skel);
  tx.add({ kind: 'chain', name: `own-${id}` });
  tx.add({ kind: 'rule', chain: `own-${id}`, rule: 'accept', comment: ownerTag({ network: 'n', containerID: id }) });
  tx.add({ kind: 'element', set: 'claims', key: String(port), value: `jump own-${id}` });
  table.run(tx);
  return wrote;
}

describe('TableTx', () => {
  it('puts every object in its table, whatever table a caller names', () => {
    const tx = new TableTx(REF);
    tx.add({ kind: 'table', comment: 'c' }).add({ kind: 'chain', name: 'x' });
    tx.add({ kind: 'rule', chain: 'x', rule: 'accept', family: 'ip', table: 'elsewhere' } as never);
    tx.destroy({ kind: 'chain', name: 'x' });
    expect(tx.render()).toBe(
      [
        'add table inet cni_ts_unit { comment "c" ; }',
        'add chain inet cni_ts_unit x',
        'add rule inet cni_ts_unit x accept',
        'add chain inet cni_ts_unit x',
        'flush chain inet cni_ts_unit x',
        'delete chain inet cni_ts_unit x',
        '',
      ].join('\n'),
    );
  });

  it('syncChain flushes and rewrites; marker re-creates the chain with its comment, last', () => {
    const tx = new TableTx(REF).syncChain({ name: 'c' }, ['accept', { rule: 'drop', comment: 'why' }]).marker({ chain: 'm', comment: 'cni-ts v1' });
    expect(tx.render().split('\n')).toEqual([
      'add chain inet cni_ts_unit c',
      'flush chain inet cni_ts_unit c',
      'add rule inet cni_ts_unit c accept',
      'add rule inet cni_ts_unit c drop comment "why"',
      'add chain inet cni_ts_unit m',
      'delete chain inet cni_ts_unit m',
      'add chain inet cni_ts_unit m { comment "cni-ts v1" ; }',
      '',
    ]);
  });
});

describe('ensureSkeleton', () => {
  it('queues the skeleton while its marker is absent, nothing once it is current, and rewrites it in place for a new version', () => {
    const nft = new FakeNft();
    const table = fakeTable(REF, nft);
    expect(addOwner(table, 'a', 80)).toBe(true);
    expect(addOwner(table, 'b', 81)).toBe(false);
    expect(nft.applied[1]).not.toContain('prerouting');
    expect(addOwner(table, 'c', 82, skeleton('v2'))).toBe(true);
    expect(nft.chainInfo(REF.family, REF.table, 'skeleton')).toEqual({ comment: 'cni-ts unit v2' });
    const l = table.list()!;
    expect(l.chains.map((c) => c.name).filter((n) => n.startsWith('own-'))).toEqual(['own-a', 'own-b', 'own-c']);
    expect(l.sets[0].elements).toHaveLength(3);
  });

  it('always queues the skeleton when the table cannot read markers without nft', () => {
    const nft = new FakeNft();
    const table = new OwnedTable(REF, { nft, lock: (fn) => fn() });
    expect(addOwner(table, 'a', 80)).toBe(true);
    expect(addOwner(table, 'b', 81)).toBe(true);
    expect(table.isCurrent(skeleton('v1').marker)).toBe(false);
  });
});

describe('releaseOwner', () => {
  it("removes the owner's chains, the elements that jump to them and its tagged rules elsewhere, in one transaction", () => {
    const nft = new FakeNft();
    const table = fakeTable(REF, nft);
    addOwner(table, 'a', 80);
    addOwner(table, 'b', 81);
    table.run(table.tx().add({ kind: 'rule', chain: 'prerouting', rule: 'tcp dport 99 accept', comment: ownerTag({ network: 'n', containerID: 'b' }) }));
    const runs = nft.applied.length;
    expect(table.releaseOwner(ownerTag({ network: 'n', containerID: 'b' }), { chains: ['own-b'] })).toEqual({ rules: 2, elements: 1, chains: ['own-b'] });
    expect(nft.applied.length).toBe(runs + 1);
    const dump = nft.dump();
    expect(dump).not.toMatch(/own-b|dport 99/);
    expect(dump).toContain('chain own-a');
  });

  it('finds the chains in the listing when given a function, does nothing when nothing matches, and nothing without a table', () => {
    const nft = new FakeNft();
    const table = fakeTable(REF, nft);
    expect(table.releaseOwner('cni-ts:n:a', { chains: ['own-a'] })).toBeUndefined();
    addOwner(table, 'a', 80);
    const runs = nft.applied.length;
    expect(table.releaseOwner('cni-ts:n:zz', { chains: () => [] })).toEqual({ rules: 0, elements: 0, chains: [] });
    expect(nft.applied.length).toBe(runs);
    expect(table.releaseOwner(undefined, { chains: (l) => l.chains.filter((c) => c.name.startsWith('own-')).map((c) => c.name) })?.chains).toEqual(['own-a']);
    expect(nft.dump()).not.toContain('own-a');
  });

  it('lists again after a concurrent writer made its transaction conflict, and gives up after its retries', () => {
    const fake = new FakeNft();
    const table = fakeTable(REF, fake);
    addOwner(table, 'a', 80);
    let sneak = 0;
    const racing = (limit: number): OwnedTable =>
      new OwnedTable(REF, {
        nft: {
          list: (f, t) => fake.list(f, t),
          check: (tx) => fake.check(tx),
          run: (tx) => {
            // before each of the first `limit` runs, another element starts jumping to own-a
            if (sneak < limit) fake.run(new TableTx(REF).add({ kind: 'element', set: 'claims', key: String(1000 + sneak++), value: 'jump own-a' }));
            fake.run(tx);
          },
        } satisfies Nft,
        lock: (fn) => fn(),
      });
    expect(racing(1).releaseOwner(undefined, { chains: ['own-a'] })?.elements).toBe(2);
    expect(fake.dump()).not.toContain('own-a');
    addOwner(table, 'b', 81);
    sneak = 0;
    expect(() => racing(10).releaseOwner(undefined, { chains: ['own-b'], retries: 2 })).toThrow(NftError);
    expect(sneak).toBe(3);
  });
});

describe('withLock', () => {
  it('runs the function under the injected lock and returns its value', () => {
    let held = 0;
    const table = new OwnedTable(REF, { nft: new FakeNft(), lock: (fn) => (held++, fn()) });
    expect(table.withLock(() => 42)).toBe(42);
    expect(held).toBe(1);
  });
});

describe('tags', () => {
  it('nest network and owner, and match only whole levels or a note', () => {
    const owner = ownerTag({ network: 'net1', containerID: 'abc', ifname: 'eth0' });
    expect(owner).toBe('cni-ts:net1:abc:eth0');
    expect(tagMatches(owner, networkTag('net1'))).toBe(true);
    expect(tagMatches(owner, networkTag('net'))).toBe(false);
    expect(tagMatches('cni-ts:net1 isolation', 'cni-ts:net1')).toBe(true);
    expect(tagMatches(undefined, 'cni-ts:net1')).toBe(false);
    expect(ownerTag({ network: 'n', containerID: 'x'.repeat(100) }).length).toBeLessThanOrEqual(128);
    expect(() => ownerTag({ network: 'a:b', containerID: 'c' })).toThrow(NftError);
  });
});
