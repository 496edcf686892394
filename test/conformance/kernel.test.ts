import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createNetns,
  deleteNetns,
  describeDiff,
  diffSnapshots,
  inNs,
  ip,
  listTree,
  run,
  snapshot,
  stableJson,
  stripVolatile,
  type Ns,
  type Snapshot,
} from '../../conformance/kernel';

const empty = (): Snapshot => ({ links: [], addresses: [], routes: [], nft: [], stateFiles: [] });

describe('snapshot diffs', () => {
  it('compare as multisets and report what was added and what went missing', () => {
    const before = { ...empty(), links: ['lo (device)', 'br0 (bridge)'], nft: ['a', 'a'] };
    const after = { ...empty(), links: ['lo (device)', 'veth1 (veth) master br0'], nft: ['a', 'a', 'a'] };
    expect(diffSnapshots(before, after)).toEqual([
      { category: 'links', added: ['veth1 (veth) master br0'], removed: ['br0 (bridge)'] },
      { category: 'nft', added: ['a'], removed: [] },
    ]);
    expect(describeDiff(diffSnapshots(before, after))).toBe(
      'links: left behind [veth1 (veth) master br0]; missing [br0 (bridge)] | nft: left behind [a]',
    );
    expect(diffSnapshots(before, before)).toEqual([]);
  });

  it('ignore nft handles and counters, and print keys in a stable order', () => {
    const a = { rule: { handle: 4, expr: [{ counter: { packets: 3, bytes: 120 } }], chain: 'c' } };
    const b = { rule: { chain: 'c', expr: [{ counter: { bytes: 0, packets: 0 } }], handle: 9 } };
    expect(stableJson(stripVolatile(a))).toBe(stableJson(stripVolatile(b)));
    expect(stableJson(stripVolatile(a))).toBe('{"rule":{"chain":"c","expr":[{"counter":{}}]}}');
  });

  it('list state directories recursively, and an absent one as empty', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cf-tree-'));
    try {
      fs.mkdirSync(path.join(dir, 'net1'));
      fs.writeFileSync(path.join(dir, 'net1', '10.0.0.2'), 'c1');
      fs.writeFileSync(path.join(dir, 'lock'), '');
      expect(listTree(dir)).toEqual([path.join(dir, 'lock'), `${path.join(dir, 'net1')}/`, path.join(dir, 'net1', '10.0.0.2')]);
      expect(listTree(path.join(dir, 'absent'))).toEqual([]);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('snapshots of a real namespace', () => {
  let ns: Ns;
  beforeAll(() => {
    ns = createNetns(`cfk${randomBytes(3).toString('hex')}`);
  });
  afterAll(() => deleteNetns(ns));

  it('see a link, its address, its routes and an nft table appear, but not link-local IPv6', () => {
    const before = snapshot(ns, []);
    ip(ns, 'link', 'add', 'cfk0', 'type', 'veth', 'peer', 'name', 'cfk1');
    ip(ns, 'addr', 'add', '10.250.0.1/24', 'dev', 'cfk0');
    ip(ns, 'link', 'set', 'cfk0', 'up');
    ip(ns, 'link', 'set', 'cfk1', 'up');
    inNs(ns, () => run(['nft', '-f', '-'], 'table inet cfk {\n chain c {\n counter\n }\n}\n'));
    const diff = diffSnapshots(before, snapshot(ns, []));
    const byCat = Object.fromEntries(diff.map((d) => [d.category, d.added]));
    expect(byCat.links?.sort()).toEqual(['cfk0 (veth)', 'cfk1 (veth)']);
    expect(byCat.addresses).toEqual(['10.250.0.1/24 dev cfk0']);
    expect(byCat.routes).toContain('10.250.0.0/24 dev cfk0');
    expect(byCat.nft?.some((o) => o.includes('"table"') && o.includes('"cfk"'))).toBe(true);
    expect(JSON.stringify(diff)).not.toContain('fe80');
    expect(diff.every((d) => d.removed.length === 0)).toBe(true);
  });

  it('runs a function inside the namespace and comes back', () => {
    const inside = inNs(ns, () => fs.readlinkSync('/proc/thread-self/ns/net'));
    expect(inside).not.toBe(fs.readlinkSync('/proc/thread-self/ns/net'));
    expect(inside).toBe(`net:[${fs.statSync(ns.path).ino}]`);
  });
});
