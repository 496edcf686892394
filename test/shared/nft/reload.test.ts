/**
 * The pieces firewall-reload is made of, without a kernel table: records on
 * disk, TableTx.append, the watch's reading of nf_tables notifications, and
 * reloads on FakeNft that rebuild exactly what ADD built (the kernel test
 * with traffic is test/cmd/firewall-reload.test.ts).
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FakeNft } from '../../../testkit/fake-nft';
import { FirewallRecords, netnsId, recordsFor } from '../../../shared/nft/records';
import { OwnedTable, TableTx, projectTable } from '../../../shared/nft/table';
import { deletesOurs } from '../../../shared/nft/watch';
import { attrString, encodeMessage } from '../../../shared/netlink/codec';
import { runPlugin } from '../../../shared/cni/skel';
import { makePlugin } from '../../../plugins/portmap/main';
import { PORTMAP_TABLE } from '../../../plugins/portmap/rules';
import { BRIDGE_TABLE, ensureNetworkRules, removeNetworkRules } from '../../../plugins/bridge/firewall';
import { reloadFirewall, type FirewallTables } from '../../../cmd/firewall-reload';

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-ts-reload-'));
});
afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('firewall records', () => {
  it('are written whole (0600, no temporary left), read back by key and removed idempotently', () => {
    const r = new FirewallRecords(() => path.join(dir, 't'));
    r.put('b', { n: 2 });
    r.put('a', { n: 1 });
    r.put('a', { n: 3 });
    expect(r.all()).toEqual([
      { key: 'a', value: { n: 3 } },
      { key: 'b', value: { n: 2 } },
    ]);
    for (const f of fs.readdirSync(r.dir)) {
      expect(f).toMatch(/^[0-9a-f]{32}\.json$/);
      expect(fs.statSync(path.join(r.dir, f)).mode & 0o777).toBe(0o600);
    }
    expect(fs.statSync(r.dir).mode & 0o777).toBe(0o700);
    r.remove('a');
    r.remove('a');
    expect(r.all().map((x) => x.key)).toEqual(['b']);
  });

  it('skip files that are not records: junk, torn temporaries, a record copied under another key', () => {
    const r = new FirewallRecords(() => path.join(dir, 't'));
    r.put('real', 1);
    const [file] = fs.readdirSync(r.dir);
    fs.copyFileSync(path.join(r.dir, file), path.join(r.dir, `${'0'.repeat(32)}.json`));
    fs.writeFileSync(path.join(r.dir, `${'1'.repeat(32)}.json`), '{not json');
    fs.writeFileSync(path.join(r.dir, `${file}.abc.tmp`), '{}');
    expect(r.all()).toEqual([{ key: 'real', value: 1 }]);
    expect(new FirewallRecords(() => path.join(dir, 'missing')).all()).toEqual([]);
  });

  it('are read again exactly when their file changed (a worker keeps what it read)', async () => {
    const r = new FirewallRecords(() => path.join(dir, 't'));
    r.put('a', { n: 1 });
    r.put('b', { n: 2 });
    // just written: read anew every time (a change in the same time tick would keep its stamp)
    expect(r.all()[0].value).not.toBe(r.all()[0].value);
    await new Promise((res) => setTimeout(res, 150));
    const first = r.all();
    expect(r.all()[0].value).toBe(first[0].value);
    r.put('a', { n: 3 });
    expect(r.all()).toEqual([
      { key: 'a', value: { n: 3 } },
      { key: 'b', value: { n: 2 } },
    ]);
    // changed in place, same size, by someone else
    const [fileB] = fs.readdirSync(r.dir).filter((f) => JSON.parse(fs.readFileSync(path.join(r.dir, f), 'utf8')).key === 'b');
    await new Promise((res) => setTimeout(res, 150));
    expect(r.all()[1].value).toEqual({ n: 2 });
    fs.writeFileSync(path.join(r.dir, fileB), JSON.stringify({ key: 'b', value: { n: 5 } }));
    expect(r.all()[1].value).toEqual({ n: 5 });
    r.remove('b');
    expect(r.all().map((x) => x.key)).toEqual(['a']);
  });

  it('live in a directory per network namespace and table', () => {
    const here = recordsFor(projectTable('inet', 'x'), { root: dir });
    expect(here.dir).toBe(path.join(dir, netnsId('/proc/self/ns/net'), 'inet-cni_ts_x'));
    const ns = `rec-${process.pid}`;
    execFileSync('ip', ['netns', 'add', ns]);
    try {
      const other = recordsFor(projectTable('inet', 'x'), { root: dir, netnsPath: `/var/run/netns/${ns}` });
      expect(other.dir).not.toBe(here.dir);
      expect(other.dir).toBe(path.join(dir, netnsId(`/var/run/netns/${ns}`), 'inet-cni_ts_x'));
    } finally {
      execFileSync('ip', ['netns', 'del', ns]);
    }
  });
});

describe('firewall records of a namespace that is gone', () => {
  // The kernel hands a freed namespace's nsfs inode to the next namespace
  // (lowest free number), so records keyed by the inode alone would be read
  // back into a stranger's table: the key carries the namespace's cookie,
  // which is never reused. Namespaces are freed asynchronously, hence the
  // tries until an inode repeats.
  it('are never read back in a later namespace that gets the same inode', async () => {
    const ns = `recreuse-${process.pid}`;
    const first = `/var/run/netns/${ns}`;
    const del = () => {
      try {
        execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
      } catch {
        // already gone
      }
    };
    const inode = (p: string) => fs.statSync(p).ino;
    execFileSync('ip', ['netns', 'add', ns]);
    const oldIno = inode(first);
    const old = recordsFor(projectTable('inet', 'x'), { root: dir, netnsPath: first });
    old.put('owner', { port: 30000 });
    const oldDir = old.dir;
    const oldCookie = path.basename(path.dirname(oldDir)).split('-')[2];
    del();
    try {
      let reused = false;
      for (let i = 0; i < 200 && !reused; i++) {
        execFileSync('ip', ['netns', 'add', ns]);
        reused = inode(first) === oldIno;
        if (!reused) {
          del();
          await new Promise((r) => setTimeout(r, 20));
        }
      }
      if (!reused) execFileSync('ip', ['netns', 'add', ns]);
      const later = recordsFor(projectTable('inet', 'x'), { root: dir, netnsPath: first });
      if (!reused) {
        // The kernel frees a namespace's inode only once the namespace is
        // torn down, which a busy machine defers: make the reuse's outcome
        // directly. The gone namespace, had it had this one's device and
        // inode, would have kept its records under this one's key with its
        // own cookie in place of this one's (the same key, were there no cookie).
        const [dev, ino, cookie] = path.basename(path.dirname(later.dir)).split('-');
        const goneKey = cookie === undefined ? `${dev}-${ino}` : `${dev}-${ino}-${oldCookie}`;
        new FirewallRecords(() => path.join(dir, goneKey, 'inet-cni_ts_x')).put('owner', { port: 30000 });
      }
      expect(later.dir).not.toBe(oldDir);
      expect(later.all()).toEqual([]);
    } finally {
      del();
    }
  });
});

describe('TableTx.append', () => {
  it("queues another transaction's commands of the same table, and refuses another table's", () => {
    const a = new TableTx(projectTable('inet', 'a')).add({ kind: 'chain', name: 'one' });
    a.append(new TableTx(projectTable('inet', 'a')).add({ kind: 'chain', name: 'two' }));
    expect(a.render()).toBe('add chain inet cni_ts_a one\nadd chain inet cni_ts_a two\n');
    expect(() => a.append(new TableTx(projectTable('inet', 'b')))).toThrow(/cannot append/);
  });
});

describe("the watch's reading of nf_tables notifications", () => {
  const msg = (type: number, table: string) => encodeMessage({ type: (10 << 8) | type, flags: 0, seq: 0, pid: 0 }, Buffer.alloc(4), [attrString(1, table)]);
  it('reports deletions in our tables only', () => {
    expect(deletesOurs(msg(2, 'cni_ts_bridge'))).toBe(true); // DELTABLE
    expect(deletesOurs(msg(5, 'cni_ts_portmap'))).toBe(true); // DELCHAIN
    expect(deletesOurs(msg(14, 'cni_ts_portmap'))).toBe(true); // DELSETELEM
    expect(deletesOurs(msg(0, 'cni_ts_bridge'))).toBe(false); // NEWTABLE
    expect(deletesOurs(msg(2, 'filter'))).toBe(false);
    expect(deletesOurs(Buffer.concat([msg(0, 'x'), msg(8, 'cni_ts_bridge')]))).toBe(true);
  });
});

describe('reload on FakeNft', () => {
  let nft: FakeNft;
  const tables = (records: string): FirewallTables => {
    const mk = (ref: typeof PORTMAP_TABLE) =>
      new OwnedTable(ref, { nft, lock: (fn) => fn(), chain: (r, name) => nft.chainInfo(r.family, r.table, name), records: new FirewallRecords(() => path.join(records, ref.table)) });
    return { portmap: mk(PORTMAP_TABLE), bridge: mk(BRIDGE_TABLE), networkLock: (_b, fn) => fn() };
  };
  const portmapAdd = async (t: FirewallTables, containerId: string, hostPort: number, command: 'ADD' | 'DEL' = 'ADD', ip = `10.1.0.${hostPort / 1000}`) => {
    const conf = {
      cniVersion: '1.1.0',
      name: 'net1',
      type: 'portmap',
      runtimeConfig: { portMappings: [{ hostPort, containerPort: 80, protocol: 'tcp', range: 3 }] },
      prevResult: { cniVersion: '1.1.0', interfaces: [{ name: 'eth0', sandbox: '/var/run/netns/x' }], ips: [{ address: `${ip}/24`, interface: 0 }] },
    };
    let out = '';
    const code = await runPlugin(makePlugin({ table: () => t.portmap, enableLocalnet: () => {} }), {
      env: { CNI_COMMAND: command, CNI_CONTAINERID: containerId, CNI_NETNS: '/var/run/netns/x', CNI_IFNAME: 'eth0', CNI_PATH: '/opt/cni/bin' },
      readStdin: () => Buffer.from(JSON.stringify(conf)),
      writeStdout: (s) => {
        out += s;
      },
      interfaceExists: () => false,
      netnsStatus: () => 'netns',
    });
    expect(code, out).toBe(0);
  };

  beforeEach(() => {
    nft = new FakeNft();
  });

  it('rebuilds after a flush exactly what ADD built, without what DEL removed', async () => {
    const t = tables(dir);
    await portmapAdd(t, 'c1', 8000);
    await portmapAdd(t, 'c2', 9000);
    await portmapAdd(t, 'gone', 7000);
    await portmapAdd(t, 'gone', 7000, 'DEL');
    ensureNetworkRules(t.bridge, { bridge: 'br-a', subnets: ['10.1.0.0/24'], masquerade: true, internal: false });
    ensureNetworkRules(t.bridge, { bridge: 'br-b', subnets: ['10.2.0.0/24'], masquerade: false, internal: true });
    ensureNetworkRules(t.bridge, { bridge: 'br-c', subnets: ['10.3.0.0/24'], masquerade: false, internal: false });
    removeNetworkRules(t.bridge, 'br-c');
    const portmap = nft.list('inet', PORTMAP_TABLE.table);
    const bridge = nft.list('inet', BRIDGE_TABLE.table);

    nft = new FakeNft(); // nft flush ruleset
    const t2 = tables(dir);
    expect(reloadFirewall(t2)).toEqual({ portmap: 2, bridge: 2 });
    const names = (l: typeof portmap) => ({ chains: l!.chains.map((c) => [c.name, c.rules.length]).sort(), sets: l!.sets.map((s) => [s.name, s.elements.map((e) => `${e.key}=${e.value}`).sort()]).sort() });
    expect(names(nft.list('inet', PORTMAP_TABLE.table))).toEqual(names(portmap));
    expect(names(nft.list('inet', BRIDGE_TABLE.table))).toEqual(names(bridge));
    // one transaction per table
    expect(nft.applied).toHaveLength(2);
    expect(nft.applied[0]).toContain('ip daddr 127.0.0.0/8 drop');
  });

  it('a stale record holding the same keys as another does not make the reload fail', async () => {
    const t = tables(dir);
    await portmapAdd(t, 'c1', 8000, 'ADD', '10.1.0.9');
    // a second container with the same address: its masquerade keys take c1's over (ADD's rule)
    await portmapAdd(t, 'c2', 9000, 'ADD', '10.1.0.9');
    nft = new FakeNft();
    expect(reloadFirewall(tables(dir))).toEqual({ portmap: 2 });
  });

  it("onlyGone takes no lock while every table is current (the daemon's main thread runs it; calls hold those locks), and takes them when something is gone", async () => {
    const locked: string[] = [];
    const recording = (): FirewallTables => {
      const mk = (ref: typeof PORTMAP_TABLE) =>
        new OwnedTable(ref, { nft, lock: (fn) => (locked.push(ref.table), fn()), chain: (r, name) => nft.chainInfo(r.family, r.table, name), records: new FirewallRecords(() => path.join(dir, ref.table)) });
      return { portmap: mk(PORTMAP_TABLE), bridge: mk(BRIDGE_TABLE), networkLock: (b, fn) => (locked.push(b), fn()) };
    };
    await portmapAdd(tables(dir), 'c1', 8000);
    const t = recording();
    ensureNetworkRules(t.bridge, { bridge: 'br-a', subnets: ['10.1.0.0/24'], masquerade: true, internal: false });
    ensureNetworkRules(t.bridge, { bridge: 'br-b', subnets: ['10.2.0.0/24'], masquerade: false, internal: false });
    expect(reloadFirewall(t, { onlyGone: true })).toEqual({});
    expect(locked).toEqual([]);
    nft = new FakeNft(); // nft flush ruleset
    expect(reloadFirewall(recording(), { onlyGone: true })).toEqual({ portmap: 1, bridge: 2 });
    expect(locked).toEqual([PORTMAP_TABLE.table, 'br-a', 'br-b']);
  });

  it('onlyGone leaves current tables alone; a plain reload keeps the user chain and its rules', async () => {
    const t = tables(dir);
    await portmapAdd(t, 'c1', 8000);
    ensureNetworkRules(t.bridge, { bridge: 'br-a', subnets: ['10.1.0.0/24'], masquerade: true, internal: false });
    const applied = nft.applied.length;
    expect(reloadFirewall(t, { onlyGone: true })).toEqual({});
    expect(nft.applied).toHaveLength(applied);
    nft.run(new TableTx(BRIDGE_TABLE).add({ kind: 'rule', chain: 'user', rule: 'ip saddr 192.0.2.1 drop' }));
    expect(reloadFirewall(t)).toEqual({ portmap: 1, bridge: 1 });
    expect(nft.list('inet', BRIDGE_TABLE.table)!.chains.find((c) => c.name === 'user')!.rules).toHaveLength(1);
    expect(nft.dump()).toContain('ip saddr 192.0.2.1 drop');
  });
});
