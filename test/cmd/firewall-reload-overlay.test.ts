/**
 * The overlay's part of firewall recovery, without a kernel: the gateway
 * table's record (written by ADD, read back with its schema), the reload
 * that rebuilds exactly what ADD built in one transaction, the marker that
 * makes a reload of a current table (and a second ADD) write nothing, the
 * user chain a reload never flushes, and the watch naming the tables that
 * saw deletions (so the daemon ignores the agent's IPsec rewrites). The
 * kernel tests with traffic are test/plugins/overlay/reload*.test.ts.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FakeNft } from '../../testkit/fake-nft';
import { FirewallRecords } from '../../shared/nft/records';
import { OwnedTable } from '../../shared/nft/table';
import { deletedTables } from '../../shared/nft/watch';
import { attrString, encodeMessage } from '../../shared/netlink/codec';
import { PORTMAP_TABLE } from '../../plugins/portmap/rules';
import { BRIDGE_TABLE } from '../../plugins/bridge/firewall';
import { GATEWAY_TABLE, applyGatewayRules, recordedGateway } from '../../plugins/overlay/gateway';
import { reloadFirewall, type FirewallTables } from '../../cmd/firewall-reload';

const GW = { bridge: 'cni_gwbridge', subnet: '172.18.0.0/16' };

let dir: string;
let nft: FakeNft;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-ts-reload-ov-'));
  nft = new FakeNft();
});
afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

/** The three tables on FakeNft, markers read from its model, records under dir. */
function tables(): FirewallTables & { overlay: OwnedTable } {
  const mk = (ref: typeof PORTMAP_TABLE) =>
    new OwnedTable(ref, { nft, lock: (fn) => fn(), chain: (r, name) => nft.chainInfo(r.family, r.table, name), records: new FirewallRecords(() => path.join(dir, ref.table)) });
  return { portmap: mk(PORTMAP_TABLE), bridge: mk(BRIDGE_TABLE), overlay: mk(GATEWAY_TABLE), networkLock: (_b, fn) => fn() };
}

describe('the overlay gateway table in firewall-reload', () => {
  it('ADD writes once and records the gateway; a second ADD writes nothing', () => {
    const t = tables();
    expect(applyGatewayRules(t.overlay, GW)).toBe(true);
    expect(applyGatewayRules(t.overlay, GW)).toBe(false);
    expect(nft.applied).toHaveLength(1);
    expect(recordedGateway(t.overlay)).toEqual(GW);
  });

  it('a reload after a flush rebuilds exactly what ADD built, in one transaction', () => {
    applyGatewayRules(tables().overlay, GW);
    const built = nft.dump();
    nft = new FakeNft(); // nft flush ruleset: the records stay
    expect(reloadFirewall(tables())).toEqual({ overlay: 1 });
    expect(nft.dump()).toBe(built);
    expect(nft.applied).toHaveLength(1);
    expect(nft.applied[0]).toContain('ip saddr 172.18.0.0/16 oifname != "cni_gwbridge" masquerade');
  });

  it("the daemon's reload (onlyGone) leaves a current table alone and rebuilds a flushed one", () => {
    applyGatewayRules(tables().overlay, GW);
    expect(reloadFirewall(tables(), { onlyGone: true })).toEqual({});
    expect(nft.applied).toHaveLength(1);
    nft = new FakeNft();
    expect(reloadFirewall(tables(), { onlyGone: true })).toEqual({ overlay: 1 });
  });

  it("keeps the operator's rules in the user chain, which the forward chain jumps to first", () => {
    applyGatewayRules(tables().overlay, GW);
    nft.run(tables().overlay.tx().add({ kind: 'rule', chain: 'user', rule: 'ip daddr 192.0.2.9 drop' }));
    reloadFirewall(tables());
    const listing = nft.list(GATEWAY_TABLE.family, GATEWAY_TABLE.table)!;
    expect(listing.chains.find((c) => c.name === 'user')!.rules).toHaveLength(1);
    expect(nft.dump()).toContain('ip daddr 192.0.2.9 drop');
    expect(listing.chains.find((c) => c.name === 'forward')!.rules[0]!.jumps).toEqual(['user']);
  });

  it('skips a record that is not a gateway (a bridge name that would inject into the rules), and names it', () => {
    const t = tables();
    t.overlay.records!.put('gateway', { bridge: 'x" drop; flush ruleset', subnet: '172.18.0.0/16' });
    t.overlay.records!.put('other', GW);
    const log: string[] = [];
    expect(reloadFirewall(t, { log: (l) => log.push(l) })).toEqual({});
    expect(nft.applied).toEqual([]);
    expect(log).toEqual(['overlay gateway: record "gateway" is not a gateway record; skipped', 'overlay gateway: record "other" is not a gateway record; skipped']);
    t.overlay.records!.put('gateway', { bridge: 'gw0', subnet: 'fd00::/64' });
    expect(reloadFirewall(t)).toEqual({});
  });

  it('without an overlay table, firewall-reload leaves overlay alone', () => {
    applyGatewayRules(tables().overlay, GW);
    nft = new FakeNft();
    const { overlay: _, ...rest } = tables();
    expect(reloadFirewall(rest)).toEqual({});
    expect(nft.applied).toEqual([]);
  });
});

describe("the watch's reading of nf_tables notifications", () => {
  const msg = (type: number, table: string) => encodeMessage({ type: (10 << 8) | type, flags: 0, seq: 0, pid: 0 }, Buffer.alloc(4), [attrString(1, table)]);
  it('names each of our tables that saw a deletion, and no other', () => {
    const datagram = Buffer.concat([msg(8, 'cni_ts_ipsec'), msg(0, 'cni_ts_overlay'), msg(5, 'cni_ts_overlay'), msg(2, 'filter'), msg(8, 'cni_ts_ipsec')]);
    expect([...deletedTables(datagram)].sort()).toEqual(['cni_ts_ipsec', 'cni_ts_overlay']);
    expect(deletedTables(msg(0, 'cni_ts_bridge')).size).toBe(0);
  });
});
