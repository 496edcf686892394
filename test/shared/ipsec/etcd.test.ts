/**
 * The ring store, the election and the rotator against a real etcd (the
 * Debian etcd-server binary on 127.0.0.1, testkit/etcd-server.ts),
 * through the one EtcdKV (shared/etcd/kv.ts): compare-and-set, leases that really expire, and an
 * unreachable etcd surfacing as CniError 11.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EtcdKV, get } from '../../../shared/etcd/kv';
import { LeaderElection } from '../../../shared/ipsec/election';
import { newRing } from '../../../shared/ipsec/keyring';
import { RingStore } from '../../../shared/ipsec/ring-store';
import { KeyRotator } from '../../../shared/ipsec/rotator';
import { freePort, startEtcd, type EtcdServer } from '../../../testkit/etcd-server';

let etcd: EtcdServer;
const clients: EtcdKV[] = [];
let dir: string;

beforeAll(async () => {
  etcd = await startEtcd();
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ipsec-etcd-'));
});

afterAll(async () => {
  for (const c of clients) c.close();
  await etcd?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

function client(endpoint = etcd.endpoint, timeoutMs = 3000): EtcdKV {
  const c = new EtcdKV({ endpoints: [endpoint], requestTimeoutMs: timeoutMs });
  clients.push(c);
  return c;
}

const prefix = () => `/cni-ts-test/${randomBytes(4).toString('hex')}/ipsec`;

describe('ipsec keys on a real etcd', () => {
  it('stores the ring by compare-and-set on its mod revision', async () => {
    const store = new RingStore(client(), { prefix: prefix(), cacheDir: path.join(dir, 'a') });
    expect(await store.load()).toEqual({ state: 'missing' });
    const ring = newRing(Date.now());
    expect(await store.compareAndSet(ring, 0n)).toBe(true);
    expect(await store.compareAndSet(ring, 0n)).toBe(false);
    const loaded = await store.load();
    expect(loaded.state).toBe('ok');
    if (loaded.state !== 'ok') return;
    expect(loaded.revision).toBeGreaterThan(0n);
    loaded.ring.keys.forEach((k, i) => expect(k.material.equals(ring.keys[i]!.material)).toBe(true));
    expect(await store.compareAndSet(ring, loaded.revision + 1000n)).toBe(false);
    const f = await store.fetch();
    expect(f.source).toBe('etcd');
    expect(fs.statSync(path.join(dir, 'a', 'ring.json')).mode & 0o777).toBe(0o600);
  });

  it('elects one leader on a lease; when it stops refreshing, etcd expires it and another takes over', async () => {
    const p = prefix();
    const a = new LeaderElection(client(), { prefix: p, candidate: 'host-a', ttlSeconds: 2 });
    const b = new LeaderElection(client(), { prefix: p, candidate: 'host-b', ttlSeconds: 2 });
    expect(await a.campaign()).toBe(true);
    expect(await b.campaign()).toBe(false);
    expect(await b.leader()).toBe('host-a');
    // a goes silent; etcd's lease TTL (2 s, rounded up by etcd to its minimum) runs out.
    let took = false;
    for (let i = 0; i < 40 && !took; i++) {
      await new Promise((r) => setTimeout(r, 250));
      took = await b.campaign();
    }
    expect(took).toBe(true);
    expect(await a.leader()).toBe('host-b');
    expect(await a.campaign()).toBe(false);
    await b.resign();
    expect(await a.leader()).toBeUndefined();
  });

  it('the leader creates the ring and rotates it when due, by its injected clock', async () => {
    const kv = client();
    const p = prefix();
    let now = Date.UTC(2026, 0, 1);
    const store = new RingStore(kv, { prefix: p });
    const rotator = new KeyRotator({ store, election: new LeaderElection(kv, { prefix: p, candidate: 'host-a', ttlSeconds: 10 }), clock: () => now, periodMs: 1000 });
    expect((await rotator.tick()).action).toBe('created');
    expect((await rotator.tick()).action).toBe('idle');
    now += 1000;
    expect((await rotator.tick()).action).toBe('rotated');
    const loaded = await store.load();
    expect(loaded.state === 'ok' && loaded.ring.keys.map((k) => k.id)).toEqual([1, 2, 3]);
  });

  it('an unreachable etcd is CniError 11 and a host falls back to its local copy', async () => {
    const p = prefix();
    const cacheDir = path.join(dir, 'b');
    const good = new RingStore(client(), { prefix: p, cacheDir });
    await good.compareAndSet(newRing(Date.now()), 0n);
    await good.fetch();
    const dead = client(`http://127.0.0.1:${await freePort()}`, 1000);
    await expect(get(dead, '/x', Date.now() + 1000)).rejects.toMatchObject({ code: 11 });
    const f = await new RingStore(dead, { prefix: p, cacheDir, timeoutMs: 1000 }).fetch();
    expect(f.source).toBe('cache');
    expect(f.ring?.keys.map((k) => k.id)).toEqual([1, 2]);
  });
});
