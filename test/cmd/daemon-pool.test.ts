/**
 * The daemon's pool scheduling, in process with stand-in workers that hold
 * each call until the test releases it: calls that share a lock key queue
 * in the main thread (never more than keyShare of them on workers, so a
 * burst on one network cannot park every worker in flock(2)), are never
 * declined for the wait budget while they wait behind their own key, start
 * in arrival order, and a key is released however its call ends.
 */
import { EventEmitter } from 'node:events';
import { describe, expect, it } from 'vitest';
import { type Job, type Outcome, Pool, type WorkerLike, lockKeyOf } from '../../cmd/daemon-pool';
import type { CallMessage } from '../../cmd/daemon-worker';

/** A worker thread stand-in: keeps each call until answer() or crash(). */
class HeldWorker extends EventEmitter implements WorkerLike {
  call?: CallMessage;
  constructor(private readonly onCall: (w: HeldWorker) => void) {
    super();
  }
  postMessage(msg: CallMessage): void {
    this.call = msg;
    this.onCall(this);
  }
  answer(stdout: string): void {
    const id = this.call!.id;
    this.call = undefined;
    this.emit('message', { type: 'answer', id, code: 0, stdout, stderr: '' });
  }
  crash(): void {
    this.call = undefined;
    this.emit('error', new Error('plugin threw out of the skel'));
  }
  terminate(): Promise<number> {
    return Promise.resolve(0);
  }
}

function harness(size: number, keyShare: number, waitBudgetMs = 10) {
  const workers: HeldWorker[] = [];
  const started: string[] = [];
  const pool = new Pool({
    size,
    etcdShare: size,
    keyShare,
    waitBudgetMs,
    callTimeoutMs: 0,
    spawn: () => {
      const w = new HeldWorker((self) => started.push(String(self.call!.env.ID)));
      workers.push(w);
      return w;
    },
    log: () => {},
    onTimeout: () => {},
  });
  const run = (id: string, key?: string): Promise<Outcome> => {
    const job: Job = { lane: 'local', key, label: id, call: { name: 'bridge', env: { ID: id }, stdin: new Uint8Array() }, stillWanted: () => true };
    return pool.run(job);
  };
  const busyWith = (id: string) => workers.find((w) => w.call?.env.ID === id)!;
  const running = () => workers.filter((w) => w.call).map((w) => String(w.call!.env.ID));
  return { pool, workers, started, run, busyWith, running };
}

const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));

describe('the pool, calls that share a lock key', () => {
  it('run at most keyShare at once, leave the other workers to other keys, and start in arrival order', async () => {
    const h = harness(4, 2);
    const net = Array.from({ length: 6 }, (_, i) => h.run(`n${i}`, 'bridge:br0'));
    const other = h.run('p0', 'portmap');
    await tick();
    expect(h.running().sort()).toEqual(['n0', 'n1', 'p0']);
    h.busyWith('p0').answer('p0');
    expect(await other).toMatchObject({ kind: 'answer', stdout: 'p0' });
    for (let i = 0; i < 6; i++) {
      h.busyWith(`n${i}`).answer(`n${i}`);
      await tick();
      expect(h.running().filter((id) => id.startsWith('n')).length).toBeLessThanOrEqual(2);
    }
    const outcomes = await Promise.all(net);
    expect(outcomes.map((o) => (o.kind === 'answer' ? o.stdout : o.kind))).toEqual(['n0', 'n1', 'n2', 'n3', 'n4', 'n5']);
    expect(h.started.filter((id) => id.startsWith('n'))).toEqual(['n0', 'n1', 'n2', 'n3', 'n4', 'n5']);
  });

  it('are not declined while they wait behind their own key past the wait budget', async () => {
    const h = harness(4, 1, 5);
    const first = h.run('a0', 'bridge:br0');
    const second = h.run('a1', 'bridge:br0');
    // many budgets long: a1 waits for its network's lock, not for a worker
    await tick(60);
    expect(h.running()).toEqual(['a0']);
    h.busyWith('a0').answer('a0');
    await tick();
    expect(h.running()).toEqual(['a1']);
    h.busyWith('a1').answer('a1');
    expect(await first).toMatchObject({ kind: 'answer', stdout: 'a0' });
    expect(await second).toMatchObject({ kind: 'answer', stdout: 'a1' });
  });

  it('are still declined when every worker is busy with other keys past the budget (the shim runs them)', async () => {
    const h = harness(2, 1, 5);
    const a = h.run('a', 'bridge:br0');
    const b = h.run('b', 'bridge:br1');
    const c = h.run('c', 'bridge:br2');
    expect(await c).toEqual({ kind: 'busy' });
    h.busyWith('a').answer('a');
    h.busyWith('b').answer('b');
    await Promise.all([a, b]);
  });

  it('release the key when a call crashes its worker: the next call of that key runs', async () => {
    const h = harness(2, 1);
    const first = h.run('x0', 'portmap');
    const second = h.run('x1', 'portmap');
    await tick();
    expect(h.running()).toEqual(['x0']);
    h.busyWith('x0').crash();
    expect(await first).toMatchObject({ kind: 'crashed' });
    await tick();
    expect(h.running()).toEqual(['x1']);
    h.busyWith('x1').answer('x1');
    expect(await second).toMatchObject({ kind: 'answer', stdout: 'x1' });
  });

  it('calls without a key are not held back by a full key', async () => {
    const h = harness(3, 1);
    const keyed = [h.run('k0', 'net:a'), h.run('k1', 'net:a')];
    const free = h.run('v', undefined);
    await tick();
    expect(h.running().sort()).toEqual(['k0', 'v']);
    h.busyWith('v').answer('v');
    h.busyWith('k0').answer('k0');
    await tick();
    h.busyWith('k1').answer('k1');
    expect((await Promise.all([...keyed, free])).map((o) => o.kind)).toEqual(['answer', 'answer', 'answer']);
  });
});

describe('lockKeyOf', () => {
  const conf = (o: object) => Buffer.from(JSON.stringify({ cniVersion: '1.1.0', ...o }));
  it('keys bridge calls by bridge, every portmap call host-wide, others by network name', () => {
    expect(lockKeyOf('bridge', conf({ name: 'a', type: 'bridge', bridge: 'br7' }))).toBe('bridge:br7');
    expect(lockKeyOf('bridge', conf({ name: 'a', type: 'bridge' }))).toBe('bridge:cni0');
    expect(lockKeyOf('portmap', conf({ name: 'a', type: 'portmap' }))).toBe('portmap');
    expect(lockKeyOf('macvlan', conf({ name: 'm', type: 'macvlan' }))).toBe('net:m');
    expect(lockKeyOf('none', Buffer.from('not json'))).toBeUndefined();
  });

  it('gives etcd-bound calls no key: they wait on etcd, not on a host lock, and the etcd lane bounds them', () => {
    const etcdIpam = { type: 'cluster-ipam', store: 'etcd', ranges: [[{ subnet: '10.0.0.0/24' }]] };
    expect(lockKeyOf('cluster-ipam', conf({ name: 'e', type: 'bridge', ipam: etcdIpam }))).toBeUndefined();
    expect(lockKeyOf('macvlan', conf({ name: 'e', type: 'macvlan', ipam: etcdIpam }))).toBeUndefined();
    expect(lockKeyOf('overlay', conf({ name: 'o', type: 'overlay' }))).toBeUndefined();
    // a bridge holds its own lock around its IPAM, etcd or not
    expect(lockKeyOf('bridge', conf({ name: 'e', type: 'bridge', bridge: 'br8', ipam: etcdIpam }))).toBe('bridge:br8');
  });
});
