/**
 * The one fake (testkit/fake-kv.ts) held to a real etcd: each scenario runs
 * the same sequence of KV calls against both and the transcripts (results,
 * revisions relative to the start, versions, lease references, error codes)
 * must be equal. What the typed stores' unit tests learn from the fake is
 * then what etcd would have told them.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CniError } from '../../../shared/cni/errors';
import { EtcdKV, type KV, type KeyValue, type TxnResult } from '../../../shared/etcd/kv';
import { freePort, startEtcd, type EtcdServer } from '../../../testkit/etcd-server';
import { FakeKV } from '../../../testkit/fake-kv';

let etcd: EtcdServer;
let real: EtcdKV;
beforeAll(async () => {
  etcd = await startEtcd();
  real = new EtcdKV({ endpoints: [etcd.endpoint], requestTimeoutMs: 3000 });
}, 30_000);
afterAll(async () => {
  real?.close();
  await etcd?.stop();
});

const deadline = () => Date.now() + 3000;

/** Records what a backend answers, with revisions made relative to where the scenario began and lease IDs by order of grant. */
class Transcript {
  readonly lines: unknown[] = [];
  private base = 0n;
  private readonly leases: string[] = [];
  constructor(readonly kv: KV) {}

  async begin(): Promise<void> {
    this.base = (await this.kv.txn({}, deadline())).revision;
  }

  lease(id: string): string {
    if (id === '0') return 'none';
    if (!this.leases.includes(id)) this.leases.push(id);
    return `lease#${this.leases.indexOf(id)}`;
  }

  private kvLine(k: KeyValue): unknown {
    return { key: k.key, value: k.value, create: k.createRevision - this.base, mod: k.modRevision - this.base, version: k.version, lease: this.lease(k.lease) };
  }

  async txn(label: string, req: Parameters<KV['txn']>[0]): Promise<TxnResult | undefined> {
    try {
      const r = await this.kv.txn(req, deadline());
      this.lines.push({ label, succeeded: r.succeeded, revision: r.revision - this.base, results: r.results.map((kvs) => kvs.map((k) => this.kvLine(k))) });
      return r;
    } catch (e) {
      this.lines.push({ label, error: codeOf(e) });
      return undefined;
    }
  }

  record(label: string, value: unknown): void {
    this.lines.push({ label, value });
  }
}

function codeOf(e: unknown): number {
  if (e instanceof CniError) return e.code;
  throw e;
}

async function both(scenario: (t: Transcript, prefix: string, fake: FakeKV | undefined) => Promise<void>, fake = new FakeKV()): Promise<void> {
  const prefix = `/parity-${Math.random().toString(16).slice(2, 10)}/`;
  const a = new Transcript(real);
  const b = new Transcript(fake);
  await a.begin();
  await b.begin();
  await scenario(a, prefix, undefined);
  await scenario(b, prefix, fake);
  expect(b.lines).toEqual(a.lines);
}

describe('the fake KV answers as a real etcd does', () => {
  it('transactions: revisions, create/mod revisions and versions, compares on a key and on a prefix, gets sorted by key', async () => {
    await both(async (t, p) => {
      await t.txn('create a', { compare: [{ key: `${p}a`, target: 'create', value: 0n }], success: [{ put: `${p}a`, value: '1' }] });
      await t.txn('create a again fails and runs failure', { compare: [{ key: `${p}a`, target: 'create', value: 0n }], success: [{ put: `${p}a`, value: 'x' }], failure: [{ get: `${p}a` }] });
      await t.txn('two puts in one txn share one revision', { success: [{ put: `${p}c`, value: '3' }, { put: `${p}b`, value: '2' }, { put: `${p}a`, value: '11' }] });
      await t.txn('get prefix, sorted', { success: [{ get: p, prefix: true }] });
      await t.txn('version compare', { compare: [{ key: `${p}a`, target: 'version', value: 2n }], success: [{ get: `${p}a` }] });
      await t.txn('value compare !=', { compare: [{ key: `${p}b`, target: 'value', op: '!=', value: '2' }], success: [{ put: `${p}b`, value: 'no' }], failure: [{ get: `${p}b` }] });
      await t.txn('value compare on a missing key fails even with !=', { compare: [{ key: `${p}zz`, target: 'value', op: '!=', value: 'x' }], success: [{ put: `${p}zz`, value: 'no' }] });
      await t.txn('mod compare != 0 on a missing key', { compare: [{ key: `${p}zz`, target: 'mod', op: '!=', value: 0n }] });
      await t.txn('prefix create == 0 over keys fails', { compare: [{ key: p, prefix: true, target: 'create', value: 0n }] });
      await t.txn('prefix create == 0 over no keys holds', { compare: [{ key: `${p}none/`, prefix: true, target: 'create', value: 0n }] });
      await t.txn('prefix version != 0 holds for every key', { compare: [{ key: p, prefix: true, target: 'version', op: '!=', value: 0n }] });
      await t.txn('delete of nothing changes no revision', { success: [{ delete: `${p}missing` }] });
      await t.txn('delete one', { success: [{ delete: `${p}b` }, { get: p, prefix: true }] });
      await t.txn('delete prefix', { success: [{ delete: p, prefix: true }, { get: p, prefix: true }] });
      await t.txn('recreated key starts again at version 1', { success: [{ put: `${p}a`, value: 'new' }, { get: `${p}a` }] });
    });
  });

  it('leases: grant, keys on them, keep-alive TTL, a put on an unknown lease refused whole, revoke deletes the keys, revoking again is fine', async () => {
    await both(async (t, p) => {
      const lease = await t.kv.leaseGrant(30, deadline());
      await t.txn('put on lease', { success: [{ put: `${p}l`, value: 'v', lease }, { put: `${p}plain`, value: 'p' }] });
      await t.txn('read back', { success: [{ get: p, prefix: true }] });
      t.record('keep-alive', await t.kv.leaseKeepAlive(lease, deadline()));
      await t.txn('put on a lease etcd never granted', { success: [{ put: `${p}x`, value: 'v' }, { put: `${p}y`, value: 'v', lease: '12345' }] });
      await t.txn('nothing of it written', { success: [{ get: p, prefix: true }] });
      await t.kv.leaseRevoke(lease, deadline());
      await t.txn('revoked: its key gone in one revision', { success: [{ get: p, prefix: true }] });
      t.record('keep-alive of a revoked lease', await t.kv.leaseKeepAlive(lease, deadline()));
      try {
        await t.kv.leaseRevoke(lease, deadline());
        t.record('revoke again', 'ok');
      } catch (e) {
        t.record('revoke again', codeOf(e));
      }
      t.record('keep-alive of a lease never granted', await t.kv.leaseKeepAlive('4242', deadline()));
    });
  });

  it('a lease that runs out takes its keys with it (the fake by its clock, etcd by its own)', async () => {
    let now = Date.now();
    const fake = new FakeKV(() => now);
    await both(async (t, p, f) => {
      const lease = await t.kv.leaseGrant(2, deadline());
      await t.txn('put on a short lease', { success: [{ put: `${p}short`, value: 'v', lease }, { put: `${p}kept`, value: 'k' }] });
      if (f) {
        now += 2001;
      } else {
        // etcd expires by its own clock: wait for it, with a generous bound
        const until = Date.now() + 20_000;
        while ((await t.kv.txn({ success: [{ get: `${p}short` }] }, deadline())).results[0]!.length > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 200));
      }
      await t.txn('after expiry', { success: [{ get: p, prefix: true }] });
      t.record('keep-alive after expiry', await t.kv.leaseKeepAlive(lease, deadline()));
      await t.txn('a put on the expired lease is refused', { success: [{ put: `${p}late`, value: 'v', lease }] });
    }, fake);
  }, 30_000);

  it('a prefix watch fires after puts and deletes under its prefix, and not after cancel', async () => {
    await both(async (t, p) => {
      let fired = 0;
      const w = await t.kv.watchPrefix(`${p}w/`, () => fired++);
      const waitFired = async (n: number) => {
        const until = Date.now() + 10_000;
        while (fired < n && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
        return fired >= n;
      };
      await t.txn('put under the prefix', { success: [{ put: `${p}w/a`, value: '1' }] });
      t.record('fired after a put', await waitFired(1));
      const after = fired;
      await t.txn('delete under the prefix', { success: [{ delete: `${p}w/a` }] });
      t.record('fired after a delete', await waitFired(after + 1));
      await w.cancel();
    });
  }, 30_000);

  it('an unreachable etcd fails every call with code 11, as the fake does when down', async () => {
    const port = await freePort();
    const gone = new EtcdKV({ endpoints: [`http://127.0.0.1:${port}`], requestTimeoutMs: 500 });
    const fake = new FakeKV();
    fake.down = true;
    try {
      for (const kv of [gone, fake]) {
        const soon = () => Date.now() + 500;
        const codes = await Promise.all([
          kv.txn({ success: [{ get: '/x' }] }, soon()).then(() => 0, codeOf),
          kv.leaseGrant(5, soon()).then(() => 0, codeOf),
          kv.leaseKeepAlive('1', soon()).then(() => 0, codeOf),
          kv.leaseRevoke('1', soon()).then(() => 0, codeOf),
        ]);
        expect(codes).toEqual([11, 11, 11, 11]);
      }
    } finally {
      gone.close();
    }
  }, 30_000);
});
