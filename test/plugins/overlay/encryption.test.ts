/**
 * The agent's decisions for encrypted networks on THIS host, without a
 * kernel or etcd: which peers get tunnels (encryptedNetworksOf), what the
 * xfrm tables and the nftables table hold after each pass (HostEncryption
 * on FakeXfrm, FakeNft, FakeKV), the leader's ring creation and rotation,
 * the ring over the overlay's own etcd connection (get/putIf over FakeKV),
 * the agent's flags, the encrypted MTU, and the control plane refusing to
 * mix encrypted and clear configs of one network. The data path itself
 * (ESP on the wire, lossless rotation) is test/vm/guest/overlay-encrypted.guest.ts.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CniError } from '../../../shared/cni/errors';
import { FakeXfrm } from '../../../testkit/fake-xfrm';
import { IPSEC_REQID } from '../../../shared/ipsec/desired';
import { IPSEC_TABLE } from '../../../shared/ipsec/firewall';
import { parseRing, serializeRing } from '../../../shared/ipsec/keyring';
import { CACHE_FILE } from '../../../shared/ipsec/ring-store';
import type { Family, Listing, Nft } from '../../../shared/nft/nft-interface';
import type { Transaction } from '../../../shared/nft/transaction';
import { parseArgs, startAgent, type Agent } from '../../../plugins/overlay/agent';
import { parseDuration } from '../../../shared/flags';
import { schema } from '../../../plugins/overlay/config';
import { ControlPlane, type Snapshot } from '../../../plugins/overlay/controlplane';
import { HostEncryption, MemoryAcks, acksOver, encryptedNetworksOf, ipsecPrefix } from '../../../plugins/overlay/encryption';
import { get, putIf } from '../../../shared/etcd/kv';
import { FakeKV } from '../../../testkit/fake-kv';
import { networkMtu } from '../../../plugins/overlay/main';

const H = 60 * 60 * 1000;
const T0 = Date.UTC(2026, 0, 1);
const A = '192.0.2.1';
const B = '192.0.2.2';
const C = '192.0.2.3';

function manualClock(start = T0) {
  let now = start;
  const clock = () => now;
  return Object.assign(clock, { advance: (ms: number) => (now += ms) });
}

/** Deterministic key material, distinct per call; its bytes never appear in a log line. */
function source() {
  let n = 0;
  return (aes: 16 | 32) => Buffer.alloc(aes + 4, 0xa0 + ++n);
}

/**
 * Records each transaction's script and whether the ipsec table exists
 * after it (FakeNft does not parse the firewall's anonymous-set rules; the
 * real nft's acceptance is test/shared/ipsec/firewall.test.ts).
 */
class ScriptNft implements Nft {
  readonly applied: string[] = [];
  execs = 0;
  private present = false;
  run(tx: Transaction): void {
    const script = tx.render();
    if (tx.size === 0) return;
    this.execs++;
    this.applied.push(script);
    this.present = !script.includes(`delete table ${IPSEC_TABLE.family} ${IPSEC_TABLE.table}`);
  }
  check(tx: Transaction): void {
    tx.render();
  }
  list(family: Family, table: string): Listing | undefined {
    this.execs++;
    return this.present && family === IPSEC_TABLE.family && table === IPSEC_TABLE.table ? { family, table, chains: [], sets: [] } : undefined;
  }
}

type Snap = Pick<Snapshot, 'networks' | 'hosts' | 'endpoints'>;

const hosts = [
  { name: 'a', vtep: A },
  { name: 'b', vtep: B },
  { name: 'c', vtep: C },
];
const networks = [
  { name: 'secret', subnet: '10.1.0.0/24', vni: 4096, encrypted: true },
  { name: 'plain', subnet: '10.2.0.0/24', vni: 4097, encrypted: false },
];
const ep = (network: string, host: string, n: number) => ({ network, containerId: `c${n}`, ifname: 'eth0', ip: `10.9.0.${n}`, mac: `02:42:0a:09:00:0${n}`, host });

function snap(endpoints: Snap['endpoints'], hs: Snap['hosts'] = hosts): Snap {
  return { networks, hosts: hs, endpoints };
}

describe('which peers an encrypted network gives this host', () => {
  it('pairs hosts only when both have endpoints on the encrypted network', () => {
    const s = snap([ep('secret', 'a', 1), ep('secret', 'b', 2), ep('plain', 'c', 3), ep('plain', 'a', 4)]);
    expect(encryptedNetworksOf(s, 'a')).toEqual([{ name: 'secret', vni: 4096, peers: [B] }]);
    expect(encryptedNetworksOf(s, 'b')).toEqual([{ name: 'secret', vni: 4096, peers: [A] }]);
    // c shares only the unencrypted network with a: no tunnel at all
    expect(encryptedNetworksOf(s, 'c')).toEqual([]);
  });

  it('leaves out a network without a local endpoint, and peers whose agent is gone', () => {
    const s = snap([ep('secret', 'b', 2), ep('secret', 'c', 3)], [hosts[0]!, hosts[1]!]);
    expect(encryptedNetworksOf(s, 'a')).toEqual([]);
    // c has no host record (its lease expired): b keeps the network, without c
    expect(encryptedNetworksOf(s, 'b')).toEqual([{ name: 'secret', vni: 4096, peers: [] }]);
  });
});

describe('one host, encrypted networks and the key ring', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-ts-ovenc-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  let acks: MemoryAcks;
  beforeEach(() => {
    acks = new MemoryAcks();
  });

  function host(node: string, vtep: string, kv: FakeKV, clock: ReturnType<typeof manualClock>) {
    const xfrm = new FakeXfrm();
    const nft = new ScriptNft();
    const lines: string[] = [];
    const enc = new HostEncryption(
      { node, vtep, prefix: '/ov', cacheDir: path.join(dir, node), rotateEveryMs: 2000 },
      { ringKv: kv, acks, xfrm, nft, clock, log: (l) => lines.push(l), keySource: source() },
    );
    const ours = () => xfrm.xfrmStateList().filter((s) => s.reqid === IPSEC_REQID);
    return { enc, xfrm, nft, lines, ours };
  }

  it('installs nothing and keys no peer while there is no ring, then keys the peer once the leader made one', async () => {
    const clock = manualClock();
    const kv = new FakeKV(clock);
    const a = host('a', A, kv, clock);
    const s = snap([ep('secret', 'a', 1), ep('secret', 'b', 2)]);
    await a.enc.sync(s);
    expect(a.ours()).toEqual([]);
    expect(a.enc.keyedPeers().size).toBe(0);
    expect(a.lines.at(-1)).toContain('no key ring yet');

    expect((await a.enc.tick(s))?.action).toBe('created');
    await a.enc.sync(s);
    // two keys in a new ring: both receivable from B, the primary to send to B
    expect(a.ours().map((x) => `${x.src}->${x.dst}`).sort()).toEqual([`${A}->${B}`, `${B}->${A}`, `${B}->${A}`]);
    expect(a.xfrm.xfrmPolicyList()).toHaveLength(1);
    expect(a.xfrm.xfrmPolicyList()[0]!.selector).toMatchObject({ src: A, dst: B, dport: 4789 });
    expect([...a.enc.keyedPeers()]).toEqual([B]);
    const rules = a.nft.applied.at(-1)!;
    expect(rules).toContain(`ip saddr { ${B} } udp dport 4789 @th,96,24 4096 meta secpath missing drop`);
    expect(rules).not.toContain('4097');
  });

  it('removes the SAs, policies and nftables table when the pair no longer shares an encrypted network', async () => {
    const clock = manualClock();
    const kv = new FakeKV(clock);
    const a = host('a', A, kv, clock);
    const both = snap([ep('secret', 'a', 1), ep('secret', 'b', 2), ep('plain', 'b', 3), ep('plain', 'a', 4)]);
    await a.enc.tick(both);
    await a.enc.sync(both);
    expect(a.ours()).toHaveLength(3);
    // b's last encrypted endpoint is gone; the unencrypted network between them stays
    await a.enc.sync(snap([ep('secret', 'a', 1), ep('plain', 'b', 3), ep('plain', 'a', 4)]));
    expect(a.ours()).toEqual([]);
    expect(a.xfrm.xfrmPolicyList()).toEqual([]);
    expect(a.nft.list(IPSEC_TABLE.family, IPSEC_TABLE.table)).toBeUndefined();
    expect(a.enc.keyedPeers().size).toBe(0);
    // and nothing more is done on later passes
    const execs = a.nft.execs;
    await a.enc.sync(snap([ep('plain', 'b', 3), ep('plain', 'a', 4)]));
    expect(a.nft.execs).toBe(execs);
  });

  it('keeps tunnels only with the peers that still share a network when one of two leaves', async () => {
    const clock = manualClock();
    const kv = new FakeKV(clock);
    const a = host('a', A, kv, clock);
    const three = snap([ep('secret', 'a', 1), ep('secret', 'b', 2), ep('secret', 'c', 3)]);
    await a.enc.tick(three);
    await a.enc.sync(three);
    expect([...a.enc.keyedPeers()].sort()).toEqual([B, C]);
    await a.enc.sync(snap([ep('secret', 'a', 1), ep('secret', 'c', 3)]));
    expect([...a.enc.keyedPeers()]).toEqual([C]);
    expect(a.ours().every((x) => x.src !== B && x.dst !== B)).toBe(true);
    expect(a.xfrm.xfrmPolicyList().map((p) => p.selector.dst)).toEqual([C]);
  });

  it('rotates only on the leader, when the period is due, and every host then receives with the new key before sending with it', async () => {
    const clock = manualClock();
    const kv = new FakeKV(clock);
    const a = host('a', A, kv, clock);
    const b = host('b', B, kv, clock);
    const s = snap([ep('secret', 'a', 1), ep('secret', 'b', 2)]);
    expect((await a.enc.tick(s))?.action).toBe('created');
    expect((await b.enc.tick(s))?.action).toBe('follower');
    expect((await a.enc.tick(s))?.action).toBe('idle');
    await a.enc.sync(s);
    await b.enc.sync(s);
    expect(acks.map).toEqual(new Map([['a', 1], ['b', 1]]));
    clock.advance(2000);
    expect((await b.enc.tick(s))?.action).toBe('follower');
    expect((await a.enc.tick(s))?.action).toBe('rotated');
    const ring = parseRing((await get(kv, `${ipsecPrefix('/ov')}/ring`, Date.now() + 1000))!.value);
    expect(ring.keys.map((k) => k.id)).toEqual([1, 2, 3]);
    expect(ring.primaryId).toBe(2);
    await a.enc.sync(s);
    await b.enc.sync(s);
    // three inbound SAs (every key in the ring) and one outbound (the primary) on each host
    for (const h of [a, b]) expect(h.ours()).toHaveLength(4);
    const out = a.ours().find((x) => x.src === A)!;
    const inOnB = b.ours().filter((x) => x.dst === B);
    expect(inOnB.map((x) => x.spi)).toContain(out.spi);
  });

  it('does not rotate while a host with an encrypted endpoint has not applied the ring, unless a whole period overdue', async () => {
    const clock = manualClock();
    const kv = new FakeKV(clock);
    const a = host('a', A, kv, clock);
    const b = host('b', B, kv, clock);
    const s = snap([ep('secret', 'a', 1), ep('secret', 'b', 2), ep('plain', 'c', 3)]);
    expect((await a.enc.tick(s))?.action).toBe('created');
    await a.enc.sync(s); // b lags: it has not installed generation 1
    clock.advance(2000);
    expect((await a.enc.tick(s))?.action).toBe('waiting');
    expect(a.lines.at(-1)).toContain('waiting for b to apply generation 1');
    await b.enc.sync(s);
    // c has no encrypted endpoint: nobody waits for it
    expect((await a.enc.tick(s))?.action).toBe('rotated');
    // now b lags again; after one more period the leader stops waiting
    await a.enc.sync(s);
    clock.advance(2000);
    expect((await a.enc.tick(s))?.action).toBe('waiting');
    clock.advance(2000);
    expect((await a.enc.tick(s))?.action).toBe('rotated');
    expect(a.lines.some((l) => l.includes('rotating although b never applied generation 2'))).toBe(true);
  });

  it('keeps the SAs it has and the local copy (0600, no key in any log line) while etcd is unreachable', async () => {
    const clock = manualClock();
    const kv = new FakeKV(clock);
    const a = host('a', A, kv, clock);
    const s = snap([ep('secret', 'a', 1), ep('secret', 'b', 2)]);
    await a.enc.tick(s);
    await a.enc.sync(s);
    const before = a.ours().map((x) => x.spi).sort();
    const file = path.join(dir, 'a', CACHE_FILE);
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    kv.down = true;
    const pass = await a.enc.sync(s);
    expect(pass.result?.source).toBe('cache');
    expect(a.ours().map((x) => x.spi).sort()).toEqual(before);
    expect([...a.enc.keyedPeers()]).toEqual([B]);
    await expect(a.enc.tick(s)).rejects.toBeInstanceOf(CniError);
    const ring = parseRing(fs.readFileSync(file, 'utf8'));
    for (const k of ring.keys) {
      const material = k.material.reveal();
      for (const text of [material.toString('hex'), material.toString('base64')]) {
        expect(a.lines.some((l) => l.includes(text))).toBe(false);
      }
    }
  });

  it('does not key a new peer from etcd-less start, but does from the local copy of an earlier run', async () => {
    const clock = manualClock();
    const kv = new FakeKV(clock);
    const first = host('a', A, kv, clock);
    const s = snap([ep('secret', 'a', 1), ep('secret', 'b', 2)]);
    await first.enc.tick(s);
    await first.enc.sync(s);
    kv.down = true;
    // a restarted agent: same cache directory, empty kernel state in this fake
    const again = host('a', A, kv, clock);
    await again.enc.sync(s);
    expect([...again.enc.keyedPeers()]).toEqual([B]);
    expect(again.ours()).toHaveLength(3);
    // a host that never had the ring stays unkeyed
    const c = host('c', C, kv, clock);
    await c.enc.sync(snap([ep('secret', 'c', 3), ep('secret', 'b', 2)]));
    expect(c.enc.keyedPeers().size).toBe(0);
    expect(c.ours()).toEqual([]);
  });

  it('removes leftovers of an earlier run on its first pass, and never campaigns while no network is encrypted', async () => {
    const clock = manualClock();
    const kv = new FakeKV(clock);
    const old = host('a', A, kv, clock);
    const s = snap([ep('secret', 'a', 1), ep('secret', 'b', 2)]);
    await old.enc.tick(s);
    await old.enc.sync(s);
    // a new agent on the same kernel, after the encrypted endpoint left while it was down
    const fresh = new HostEncryption(
      { node: 'a', vtep: A, prefix: '/ov', rotateEveryMs: 2000 },
      { ringKv: kv, acks, xfrm: old.xfrm, nft: old.nft, clock, log: () => undefined },
    );
    const none: Snap = { networks: [networks[1]!], hosts, endpoints: [ep('plain', 'a', 4)] };
    await fresh.sync(none);
    expect(old.ours()).toEqual([]);
    expect(old.nft.list(IPSEC_TABLE.family, IPSEC_TABLE.table)).toBeUndefined();
    expect(await fresh.tick(none)).toBeUndefined();
    expect(await fresh.election.leader()).toBe('a'); // the old agent's lease still holds it
    await old.enc.stop();
    expect(await fresh.election.leader()).toBeUndefined();
  });
});

describe('the ring over the overlay etcd connection', () => {
  it('writes only if absent at revision 0, then only at the revision read', async () => {
    const kv = new FakeKV();
    const dl = () => Date.now() + 1000;
    expect(await putIf(kv, '/ov/ipsec/ring', 'one', 0n, dl())).toBe(true);
    expect(await putIf(kv, '/ov/ipsec/ring', 'two', 0n, dl())).toBe(false);
    const v = (await get(kv, '/ov/ipsec/ring', dl()))!;
    expect(v.value).toBe('one');
    expect(await putIf(kv, '/ov/ipsec/ring', 'three', v.modRevision, dl())).toBe(true);
    expect(await putIf(kv, '/ov/ipsec/ring', 'four', v.modRevision, dl())).toBe(false);
    expect((await get(kv, '/ov/ipsec/ring', dl()))!.value).toBe('three');
  });

  it('puts a leader key on a lease that revoking removes', async () => {
    const kv = new FakeKV();
    const dl = () => Date.now() + 1000;
    const lease = await kv.leaseGrant(5, dl());
    expect(await putIf(kv, '/ov/ipsec/leader', 'a', 0n, dl(), lease)).toBe(true);
    expect(await kv.leaseKeepAlive(lease, dl())).toBeGreaterThan(0);
    await kv.leaseRevoke(lease, dl());
    expect(await get(kv, '/ov/ipsec/leader', dl())).toBeUndefined();
    expect(await kv.leaseKeepAlive(lease, dl())).toBe(0);
  });
});

describe('the agent with an encrypted network', () => {
  let agent: Agent | undefined;
  afterEach(async () => {
    await agent?.stop();
    agent = undefined;
  });

  it('creates the ring in etcd under the overlay prefix and keys the peer that shares the network', async () => {
    const kv = new FakeKV();
    const cp = new ControlPlane(kv, { prefix: '/p' });
    await cp.ensureNetwork({ name: 'secret', subnet: '10.1.0.0/24', encrypted: true });
    const lease = await kv.leaseGrant(60, Date.now() + 1000);
    await cp.registerHost({ name: 'b', vtep: B }, lease);
    await cp.putEndpoint(ep('secret', 'a', 1));
    await cp.putEndpoint(ep('secret', 'b', 2));
    const xfrm = new FakeXfrm();
    const nft = new ScriptNft();
    const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-ts-ovenc-'));
    try {
      agent = await startAgent(
        { node: 'a', hostId: 'a'.repeat(32), vtep: A, endpoints: [], prefix: '/p', stateDir, ttlSeconds: 10, resyncMs: 60_000, requestTimeoutMs: 1000, rotateEveryMs: 60_000 },
        { kv, log: () => undefined, ipsec: { xfrm, nft } },
      );
      // startAgent's first rotation tick made the ring; a pass keys b
      expect(await agent.sync()).toBe(true);
      const { results } = await kv.txn({ success: [{ get: '/p/ipsec/ring' }] }, Date.now() + 1000);
      expect(parseRing(results[0]![0]!.value).generation).toBe(1);
      expect(xfrm.xfrmStateList().filter((s) => s.reqid === IPSEC_REQID)).toHaveLength(3);
      expect(fs.statSync(path.join(stateDir, 'ipsec', CACHE_FILE)).mode & 0o777).toBe(0o600);
      expect(serializeRing(parseRing(fs.readFileSync(path.join(stateDir, 'ipsec', CACHE_FILE), 'utf8')))).toBe(results[0]![0]!.value);
    } finally {
      await agent?.stop();
      agent = undefined;
      fs.rmSync(stateDir, { recursive: true, force: true });
    }
  });
});

describe('agent flags for rotation', () => {
  it('read --rotate-every as a duration, 12 h by default', () => {
    const base = ['--node', 'n', '--vtep', '10.0.0.1'];
    expect(parseArgs(base).opts.rotateEveryMs).toBe(12 * H);
    expect(parseArgs([...base, '--rotate-every', '2s']).opts.rotateEveryMs).toBe(2000);
    expect(parseArgs([...base, '--rotate-every=30m']).opts.rotateEveryMs).toBe(30 * 60_000);
    expect(() => parseArgs([...base, '--rotate-every', '500ms'])).toThrow(/at least 1s/);
    expect(() => parseDuration('soon')).toThrow(/not a duration/);
  });
});

describe('the encrypted overlay MTU', () => {
  it('is 1416 on a 1500 underlay, 34 bytes of ESP below the clear overlay 1450', () => {
    expect(networkMtu({ encrypted: false }, undefined, 1500)).toBe(1450);
    expect(networkMtu({ encrypted: true }, undefined, 1500)).toBe(1416);
    expect(networkMtu({ encrypted: true }, undefined, 9000)).toBe(8916);
    expect(networkMtu({ encrypted: true }, 1400, 1500)).toBe(1400);
  });

  it('refuses an explicit MTU that ESP cannot fit, with code 7', () => {
    expect(() => networkMtu({ encrypted: true, mtu: 1450 }, undefined, 1500)).toThrow(expect.objectContaining({ code: 7 }));
  });
});

describe('the network record', () => {
  it('refuses a config that disagrees with the network on encryption', async () => {
    const cp = new ControlPlane(new FakeKV(), { prefix: '/p' });
    await cp.ensureNetwork({ name: 'secret', subnet: '10.1.0.0/24', encrypted: true });
    await expect(cp.ensureNetwork({ name: 'secret', subnet: '10.1.0.0/24', encrypted: false })).rejects.toMatchObject({ code: 7 });
    expect((await cp.ensureNetwork({ name: 'secret', subnet: '10.1.0.0/24', encrypted: true })).encrypted).toBe(true);
  });
});

describe('examples/overlay-encrypted.conflist', () => {
  it('is a valid overlay config with encryption on, over TLS etcd', () => {
    const list = JSON.parse(fs.readFileSync(path.join(__dirname, '../../../examples/overlay-encrypted.conflist'), 'utf8'));
    const conf = schema.parse({ cniVersion: list.cniVersion, name: list.name, ...list.plugins[0] });
    expect(conf.encrypted).toBe(true);
    expect(conf.mtu).toBeUndefined(); // derived: 1416 on a 1500 underlay
    expect(conf.etcd?.caFile).toBeDefined();
  });
});

describe('ring acknowledgements in etcd', () => {
  it('record the generation each host applied, under the overlay prefix', async () => {
    const kv = new FakeKV();
    const acks = acksOver(kv, '/ov', 1000);
    await acks.put('a', 3);
    await acks.put('b', 2);
    await acks.put('a', 4);
    expect(await acks.list()).toEqual(new Map([['a', 4], ['b', 2]]));
    const { results } = await kv.txn({ success: [{ get: '/ov/ipsec/applied/a' }] }, Date.now() + 1000);
    expect(results[0]![0]!.value).toBe('4');
  });
});
