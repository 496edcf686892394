/**
 * The key ring in etcd (on FakeKV, which has etcd's revision and lease
 * semantics and fails like an unreachable etcd when `down`), the leader
 * election, the rotator's ticks and their faults, and one host's sync.
 * The same store and election against a real etcd: etcd.test.ts.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CniError } from '../../../shared/cni/errors';
import { LeaderElection } from '../../../shared/ipsec/election';
import { FakeXfrm } from '../../../testkit/fake-xfrm';
import { syncHost } from '../../../shared/ipsec/host';
import { IPSEC_REQID } from '../../../shared/ipsec/desired';
import { KeyRing, newRing, parseRing, rotate, serializeRing } from '../../../shared/ipsec/keyring';
import { FakeKV } from '../../../testkit/fake-kv';
import { CACHE_FILE, RingStore } from '../../../shared/ipsec/ring-store';
import { KeyRotator } from '../../../shared/ipsec/rotator';
import type { Nft } from '../../../shared/nft/nft-interface';
import type { Transaction } from '../../../shared/nft/transaction';

const H = 60 * 60 * 1000;
const T0 = Date.UTC(2026, 0, 1);
const PREFIX = '/cni-ts/ipsec';

/** A clock tests move by hand. */
function manualClock(start = T0) {
  let now = start;
  const clock = () => now;
  return Object.assign(clock, { advance: (ms: number) => (now += ms), set: (t: number) => (now = t) });
}

function source() {
  let n = 0;
  return (aes: 16 | 32) => Buffer.alloc(aes + 4, ++n);
}

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ipsec-keys-'));
});
afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

const ids = (r: KeyRing | undefined) => r?.keys.map((k) => k.id);

describe('RingStore', () => {
  it('writes the ring with compare-and-set: a second writer holding an old revision loses', async () => {
    const kv = new FakeKV(manualClock());
    const store = new RingStore(kv, { prefix: PREFIX });
    const r1 = newRing(T0, source());
    expect(await store.compareAndSet(r1, 0n)).toBe(true);
    expect(await store.compareAndSet(r1, 0n)).toBe(false);
    const loaded = await store.load();
    expect(loaded.state).toBe('ok');
    if (loaded.state !== 'ok') return;
    const r2 = rotate(loaded.ring, T0 + 12 * H, source());
    expect(await store.compareAndSet(r2, loaded.revision)).toBe(true);
    expect(await store.compareAndSet(rotate(loaded.ring, T0 + 12 * H, source()), loaded.revision)).toBe(false);
    expect(store.ringKey).toBe('/cni-ts/ipsec/ring');
  });

  it('keeps a local copy, 0600 in a 0700 directory, replaced atomically, and a host reads it when etcd is down', async () => {
    const kv = new FakeKV(manualClock());
    const cacheDir = path.join(dir, 'ipsec');
    const store = new RingStore(kv, { prefix: PREFIX, cacheDir });
    await store.compareAndSet(newRing(T0, source()), 0n);
    expect((await store.fetch()).source).toBe('etcd');
    const file = path.join(cacheDir, CACHE_FILE);
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    expect(fs.statSync(cacheDir).mode & 0o777).toBe(0o700);
    expect(fs.readdirSync(cacheDir)).toEqual([CACHE_FILE]); // no temporary file left behind
    kv.down = true;
    const f = await store.fetch();
    expect([f.source, ids(f.ring)]).toEqual(['cache', [1, 2]]);
    expect(f.problem).toBeInstanceOf(CniError);
    expect((f.problem as CniError).code).toBe(11);
  });

  it('follows etcd when its ring changes, refreshing the local copy', async () => {
    const kv = new FakeKV(manualClock());
    const store = new RingStore(kv, { prefix: PREFIX, cacheDir: dir });
    const src = source();
    const r = newRing(T0, src);
    await store.compareAndSet(r, 0n);
    await store.fetch();
    const loaded = await store.load();
    await store.compareAndSet(rotate(r, T0 + 1, src), loaded.state === 'ok' ? loaded.revision : 0n);
    expect(ids((await store.fetch()).ring)).toEqual([1, 2, 3]);
    expect(ids(store.readCache())).toEqual([1, 2, 3]);
  });

  it('a host with neither etcd nor a local copy gets no ring and says why', async () => {
    const kv = new FakeKV(manualClock());
    kv.down = true;
    const f = await new RingStore(kv, { prefix: PREFIX, cacheDir: dir }).fetch();
    expect([f.ring, f.source]).toEqual([undefined, 'none']);
    expect(f.problem).toBeInstanceOf(CniError);
  });

  it('a corrupt ring in etcd is reported and the local copy used; a corrupt local copy is replaced from etcd', async () => {
    const kv = new FakeKV(manualClock());
    const store = new RingStore(kv, { prefix: PREFIX, cacheDir: dir });
    await store.compareAndSet(newRing(T0, source()), 0n);
    await store.fetch();
    kv.corrupt(store.ringKey, '{"v":1,"keys":');
    const f = await store.fetch();
    expect([f.source, ids(f.ring), f.problem?.name]).toEqual(['cache', [1, 2], 'RingCorruptError']);
    // And the other way round.
    const kv2 = new FakeKV(manualClock());
    const store2 = new RingStore(kv2, { prefix: PREFIX, cacheDir: dir });
    fs.writeFileSync(path.join(dir, CACHE_FILE), 'garbage');
    await store2.compareAndSet(newRing(T0, source()), 0n);
    expect((await store2.fetch()).source).toBe('etcd');
    expect(ids(store2.readCache())).toEqual([1, 2]);
  });
});

describe('LeaderElection', () => {
  it('elects one candidate; the other takes over once the leader\'s lease runs out', async () => {
    const clock = manualClock();
    const kv = new FakeKV(clock);
    const a = new LeaderElection(kv, { prefix: PREFIX, candidate: 'host-a', ttlSeconds: 10 });
    const b = new LeaderElection(kv, { prefix: PREFIX, candidate: 'host-b', ttlSeconds: 10 });
    expect(await a.campaign()).toBe(true);
    expect(await b.campaign()).toBe(false);
    clock.advance(8000);
    expect(await a.campaign()).toBe(true); // refreshed
    clock.advance(8000);
    expect(await b.campaign()).toBe(false); // a's lease still alive (refreshed 8 s ago)
    // a dies: it stops campaigning.
    clock.advance(11_000);
    expect(await b.campaign()).toBe(true);
    expect(await b.leader()).toBe('host-b');
    // a comes back: its lease is gone, and so is its office.
    expect(await a.campaign()).toBe(false);
  });

  it('resigning hands the office over at once', async () => {
    const kv = new FakeKV(manualClock());
    const a = new LeaderElection(kv, { prefix: PREFIX, candidate: 'host-a' });
    const b = new LeaderElection(kv, { prefix: PREFIX, candidate: 'host-b' });
    expect(await a.campaign()).toBe(true);
    await a.resign();
    expect(await a.leader()).toBeUndefined();
    expect(await b.campaign()).toBe(true);
  });

  it('fails with CniError 11 when etcd is unreachable', async () => {
    const kv = new FakeKV(manualClock());
    kv.down = true;
    await expect(new LeaderElection(kv, { prefix: PREFIX, candidate: 'a' }).campaign()).rejects.toMatchObject({ code: 11 });
  });
});

function leaderSetup(clock = manualClock(), kv = new FakeKV(clock), candidate = 'host-a', cacheDir?: string) {
  const store = new RingStore(kv, { prefix: PREFIX, ...(cacheDir && { cacheDir }) });
  const election = new LeaderElection(kv, { prefix: PREFIX, candidate, ttlSeconds: 10 });
  const rotator = new KeyRotator({ store, election, clock, keySource: source() });
  return { clock, kv, store, election, rotator };
}

describe('KeyRotator', () => {
  it('creates the ring, idles until the period has passed, then rotates', async () => {
    const { clock, rotator, store } = leaderSetup();
    expect((await rotator.tick()).action).toBe('created');
    clock.advance(6 * H);
    expect((await rotator.tick()).action).toBe('idle');
    clock.advance(6 * H);
    const t = await rotator.tick();
    expect(t.action).toBe('rotated');
    const loaded = await store.load();
    expect(loaded.state === 'ok' && ids(loaded.ring)).toEqual([1, 2, 3]);
  });

  it('does nothing as a follower', async () => {
    const clock = manualClock();
    const kv = new FakeKV(clock);
    const a = leaderSetup(clock, kv, 'host-a');
    const b = leaderSetup(clock, kv, 'host-b');
    await a.rotator.tick();
    clock.advance(13 * H);
    await a.election.campaign();
    expect(await b.rotator.tick()).toEqual({ action: 'follower' });
  });

  it('keeps the current keys and retries when etcd is unreachable at rotation time', async () => {
    const { clock, kv, rotator, store } = leaderSetup();
    await rotator.tick();
    clock.advance(12 * H);
    kv.down = true;
    await expect(rotator.tick()).rejects.toMatchObject({ code: 11 });
    kv.down = false;
    let loaded = await store.load();
    expect(loaded.state === 'ok' && ids(loaded.ring)).toEqual([1, 2]); // unchanged
    expect((await rotator.tick()).action).toBe('rotated');
    loaded = await store.load();
    expect(loaded.state === 'ok' && ids(loaded.ring)).toEqual([1, 2, 3]);
  });

  it('a leader that dies mid-rotation leaves either the old ring or the new one, and the next leader finishes', async () => {
    const clock = manualClock();
    const kv = new FakeKV(clock);
    const a = leaderSetup(clock, kv, 'host-a');
    const b = leaderSetup(clock, kv, 'host-b');
    await a.rotator.tick();
    clock.advance(12 * H);
    // a dies between reading the ring and writing the rotated one: the
    // write never reaches etcd (etcd "goes down" for a exactly then).
    const realTxn = kv.txn.bind(kv);
    kv.txn = async (req, deadline) => {
      if ((req.success ?? []).some((o) => 'put' in o && o.put.endsWith('/ring'))) throw new CniError(11, 'etcd unavailable: host-a died');
      return realTxn(req, deadline);
    };
    await expect(a.rotator.tick()).rejects.toMatchObject({ code: 11 });
    kv.txn = realTxn;
    let loaded = await a.store.load();
    expect(loaded.state === 'ok' && [ids(loaded.ring), loaded.ring.generation]).toEqual([[1, 2], 1]);
    // a never campaigns again; once its lease expires b leads and rotates.
    expect((await b.rotator.tick()).action).toBe('follower');
    clock.advance(11_000);
    expect((await b.rotator.tick()).action).toBe('rotated');
    loaded = await b.store.load();
    expect(loaded.state === 'ok' && [ids(loaded.ring), loaded.ring.generation]).toEqual([[1, 2, 3], 2]);
  });

  it('two leaders racing (a stale one that missed its lease expiry) cannot both rotate', async () => {
    const clock = manualClock();
    const kv = new FakeKV(clock);
    const { store } = leaderSetup(clock, kv);
    await store.compareAndSet(newRing(T0, source()), 0n);
    clock.advance(12 * H);
    const loadedByA = await store.load();
    const loadedByB = await store.load();
    if (loadedByA.state !== 'ok' || loadedByB.state !== 'ok') throw new Error('no ring');
    expect(await store.compareAndSet(rotate(loadedByB.ring, clock(), source()), loadedByB.revision)).toBe(true);
    expect(await store.compareAndSet(rotate(loadedByA.ring, clock(), source()), loadedByA.revision)).toBe(false);
    const now = await store.load();
    expect(now.state === 'ok' && now.ring.generation).toBe(2);
  });

  it('a new leader whose clock is behind the ring\'s stamp waits instead of rotating', async () => {
    const clock = manualClock();
    const kv = new FakeKV(clock);
    const a = leaderSetup(clock, kv, 'host-a');
    await a.rotator.tick(); // ring stamped T0 by a
    await a.election.resign();
    clock.set(T0 - 3 * H); // b's clock is 3 h behind
    const b = leaderSetup(clock, kv, 'host-b');
    expect((await b.rotator.tick()).action).toBe('idle');
    clock.set(T0 + 12 * H - 1);
    expect((await b.rotator.tick()).action).toBe('idle');
    clock.set(T0 + 12 * H);
    expect((await b.rotator.tick()).action).toBe('rotated');
  });

  it('restores a corrupt ring from the leader\'s local copy, with a higher generation and the same keys', async () => {
    const { kv, rotator, store } = leaderSetup(undefined, undefined, 'host-a', dir);
    await rotator.tick();
    const before = (await store.fetch()).ring!;
    kv.corrupt(store.ringKey, 'not a ring');
    const t = await rotator.tick();
    expect(t.action === 'restored' && t.from).toBe('cache');
    const loaded = await store.load();
    if (loaded.state !== 'ok') throw new Error(loaded.state);
    expect(loaded.ring.generation).toBe(before.generation + 1);
    loaded.ring.keys.forEach((k, i) => expect(k.material.equals(before.keys[i]!.material)).toBe(true));
  });

  it('replaces a corrupt ring with a new one when no good local copy exists', async () => {
    const { kv, rotator, store } = leaderSetup();
    kv.corrupt(store.ringKey, serializeRing(newRing(T0, source())).replace('"primaryId":1', '"primaryId":5'));
    const t = await rotator.tick();
    expect(t.action === 'restored' && t.from).toBe('new');
    expect((await store.load()).state).toBe('ok');
  });

  it('refuses a period that is not positive', () => {
    const { store, election, clock } = leaderSetup();
    expect(() => new KeyRotator({ store, election, clock, periodMs: 0 })).toThrow(CniError);
  });
});

/** Records each transaction's script: the firewall's real-nft behaviour is tested in firewall.test.ts. */
class RecordingNft implements Nft {
  readonly scripts: string[] = [];
  run(tx: Transaction): void {
    this.scripts.push(tx.render());
  }
  check(tx: Transaction): void {
    tx.render();
  }
  list(): undefined {
    return undefined;
  }
}

describe('syncHost', () => {
  it('fetches the ring, installs SAs and policies, then the cleartext drop; with nothing encrypted left it removes all', async () => {
    const kv = new FakeKV(manualClock());
    const store = new RingStore(kv, { prefix: PREFIX, cacheDir: dir });
    await store.compareAndSet(newRing(T0, source()), 0n);
    const xfrm = new FakeXfrm();
    const nft = new RecordingNft();
    const res = await syncHost({ store, xfrm, nft }, { localVtep: '10.0.0.1' }, [{ name: 'enc', vni: 42, peers: ['10.0.0.2'] }]);
    expect(res.source).toBe('etcd');
    expect(res.ring).toBe('generation 1, keys [1*, 2], rotated at 2026-01-01T00:00:00.000Z');
    expect(res.report?.statesAdded).toHaveLength(3);
    expect(nft.scripts[0]).toContain('ip saddr { 10.0.0.2 } udp dport 4789 @th,96,24 42 meta secpath missing drop');
    const gone = await syncHost({ store, xfrm, nft }, { localVtep: '10.0.0.1' }, [{ name: 'enc', vni: 42, peers: [] }]);
    expect(gone.report?.statesDeleted).toHaveLength(3);
    expect(xfrm.xfrmStateList().filter((s) => s.reqid === IPSEC_REQID)).toEqual([]);
    expect(nft.scripts[1]).toBe('add table inet cni_ts_ipsec\ndelete table inet cni_ts_ipsec\n');
  });

  it('without any ring leaves what is installed in place and reports the problem', async () => {
    const kv = new FakeKV(manualClock());
    const store = new RingStore(kv, { prefix: PREFIX, cacheDir: dir });
    const xfrm = new FakeXfrm();
    const nft = new RecordingNft();
    await store.compareAndSet(newRing(T0, source()), 0n);
    await syncHost({ store, xfrm, nft }, { localVtep: '10.0.0.1' }, [{ name: 'enc', vni: 42, peers: ['10.0.0.2'] }]);
    fs.rmSync(path.join(dir, CACHE_FILE));
    kv.down = true;
    const res = await syncHost({ store, xfrm, nft }, { localVtep: '10.0.0.1' }, [{ name: 'enc', vni: 42, peers: ['10.0.0.2'] }]);
    expect([res.source, res.report, (res.problem as CniError).code]).toEqual(['none', undefined, 11]);
    expect(xfrm.xfrmStateList()).toHaveLength(3);
    expect(nft.scripts).toHaveLength(1);
  });

  it('never writes key material into what it returns', async () => {
    const kv = new FakeKV(manualClock());
    const store = new RingStore(kv, { prefix: PREFIX });
    const ring = newRing(T0, source());
    await store.compareAndSet(ring, 0n);
    const res = await syncHost({ store, xfrm: new FakeXfrm(), nft: new RecordingNft() }, { localVtep: '10.0.0.1' }, [{ name: 'e', vni: 1, peers: ['10.0.0.2'] }]);
    const text = JSON.stringify(res);
    for (const k of ring.keys) {
      expect(text).not.toContain(k.material.reveal().toString('hex'));
      expect(text).not.toContain(k.material.reveal().toString('base64'));
    }
    expect(parseRing(kv.peek(store.ringKey)!).generation).toBe(1);
  });
});

describe('key-ring rollbacks and clocks far ahead', () => {
  const peers = [{ name: 'enc', vni: 42, peers: ['10.0.0.2'] }];
  const keysOf = (x: FakeXfrm) => x.xfrmStateList().filter((s) => s.reqid === IPSEC_REQID).map((s) => s.aead!.key.toString('hex')).sort();

  it('a host refuses an older ring written to etcd and keeps the SAs of the newest it applied', async () => {
    const clock = manualClock();
    const kv = new FakeKV(clock);
    const store = new RingStore(kv, { prefix: PREFIX, cacheDir: dir });
    const src = source();
    const g1 = newRing(T0, src);
    const g2 = rotate(g1, T0 + 12 * H, src);
    await store.compareAndSet(g2, 0n);
    const xfrm = new FakeXfrm();
    const nft = new RecordingNft();
    await syncHost({ store, xfrm, nft }, { localVtep: '10.0.0.1' }, peers);
    const applied = keysOf(xfrm);
    kv.corrupt(store.ringKey, serializeRing(g1)); // someone writes the old ring (old, maybe leaked keys)
    const res = await syncHost({ store, xfrm, nft }, { localVtep: '10.0.0.1' }, peers);
    expect(res.generation).toBe(2);
    expect(res.problem?.message).toMatch(/generation 1, older than generation 2 already applied here/);
    expect(keysOf(xfrm)).toEqual(applied);
    // a new process (no memory) refuses it too: the local copy remembers
    const fresh = new RingStore(kv, { prefix: PREFIX, cacheDir: dir });
    expect((await fresh.fetch()).ring?.generation).toBe(2);
  });

  it('refuses the same generation with other keys, also with no local copy', async () => {
    const kv = new FakeKV(manualClock());
    const store = new RingStore(kv, { prefix: PREFIX });
    const ring = newRing(T0, source());
    await store.compareAndSet(ring, 0n);
    expect((await store.fetch()).ring?.generation).toBe(1);
    kv.corrupt(store.ringKey, serializeRing(newRing(T0, () => Buffer.alloc(20, 0x77))));
    const r = await store.fetch();
    expect(r.problem?.message).toMatch(/with other keys than generation 1/);
    expect(r.ring!.keys[0]!.material.equals(ring.keys[0]!.material)).toBe(true);
  });

  it('the leader restores the newest ring it holds over an older one in etcd, above both generations', async () => {
    const { kv, rotator, store, clock } = leaderSetup(undefined, undefined, 'host-a', dir);
    await rotator.tick(); // created, generation 1
    clock.advance(12 * H);
    await rotator.tick(); // rotated, generation 2
    const g2 = (await store.fetch()).ring!;
    kv.corrupt(store.ringKey, serializeRing(newRing(T0, source())));
    const t = await rotator.tick();
    expect(t.action === 'restored' && t.from).toBe('cache');
    const loaded = await store.load();
    if (loaded.state !== 'ok') throw new Error(loaded.state);
    expect(loaded.ring.generation).toBe(3);
    loaded.ring.keys.forEach((k, i) => expect(k.material.equals(g2.keys[i]!.material)).toBe(true));
  });

  it('clamps a rotatedAt stamped by a clock far ahead, so rotation goes on a period after, not when that clock is reached', async () => {
    const clock = manualClock();
    const kv = new FakeKV(clock);
    const ahead = leaderSetup(clock, kv, 'host-ahead');
    clock.set(T0 + 30 * 24 * H); // a leader whose clock is a month ahead creates the ring
    await ahead.rotator.tick();
    await ahead.election.resign();
    clock.set(T0);
    const b = leaderSetup(clock, kv, 'host-b');
    const t = await b.rotator.tick();
    expect(t.action).toBe('clamped');
    const loaded = await b.store.load();
    if (loaded.state !== 'ok') throw new Error(loaded.state);
    expect([loaded.ring.rotatedAt, loaded.ring.generation]).toEqual([T0, 2]);
    clock.advance(12 * H);
    expect((await b.rotator.tick()).action).toBe('rotated');
  });

  it('leaves a stamp less than a period ahead alone (the leader waits, as with ordinary skew)', async () => {
    const clock = manualClock();
    const kv = new FakeKV(clock);
    const a = leaderSetup(clock, kv, 'host-a');
    clock.set(T0 + 11 * H);
    await a.rotator.tick();
    await a.election.resign();
    clock.set(T0);
    const b = leaderSetup(clock, kv, 'host-b');
    expect((await b.rotator.tick()).action).toBe('idle');
  });
});
