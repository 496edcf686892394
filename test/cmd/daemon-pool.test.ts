/**
 * The daemon's pool scheduling, in process with stand-in workers that hold
 * each call until the test releases it: calls that share a lock key queue
 * in the main thread (shared-lock calls side by side, never more than
 * keyShare of them on workers, so a burst on one network cannot park every
 * worker in flock(2); exclusive ones alone), are never declined for the
 * wait budget while they wait behind their own key, start in arrival order,
 * get an exclusive turn only once their key's other calls are done or
 * asking too, and a key is released however its call ends.
 */
import { EventEmitter } from 'node:events';
import { describe, expect, it } from 'vitest';
import { type Job, type Outcome, Pool, type WorkerLike, lockKeyOf, lockModeOf } from '../../cmd/daemon-pool';
import type { CallMessage, ToWorker } from '../../cmd/daemon-worker';

/** A worker thread stand-in: keeps each call until answer() or crash(). */
class HeldWorker extends EventEmitter implements WorkerLike {
  call?: CallMessage;
  /** the running call asked for its exclusive turn, and whether it got it */
  turn?: 'asked' | 'granted';
  constructor(private readonly onCall: (w: HeldWorker) => void) {
    super();
  }
  postMessage(msg: ToWorker): void {
    if ('type' in msg) {
      if (msg.type === 'turn' && msg.id === this.call?.id && this.turn === 'asked') this.turn = 'granted';
      return;
    }
    this.call = msg;
    this.turn = undefined;
    this.onCall(this);
  }
  /** what withExclusiveTurn does: ask (its shared lock let go), later say done */
  askTurn(): void {
    this.turn = 'asked';
    this.emit('message', { type: 'turn', id: this.call!.id, file: 'net.lock', want: true });
  }
  doneTurn(): void {
    this.turn = undefined;
    this.emit('message', { type: 'turn', id: this.call!.id, file: 'net.lock', want: false });
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
  const run = (id: string, key?: string, mode: 'shared' | 'exclusive' = 'exclusive'): Promise<Outcome> => {
    const job: Job = { lane: 'local', key, shared: mode === 'shared', label: id, call: { name: 'bridge', env: { ID: id }, stdin: new Uint8Array() }, stillWanted: () => true };
    return pool.run(job);
  };
  const busyWith = (id: string) => workers.find((w) => w.call?.env.ID === id)!;
  const running = () => workers.filter((w) => w.call).map((w) => String(w.call!.env.ID));
  return { pool, workers, started, run, busyWith, running };
}

const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));

describe('the pool, calls that share a lock key', () => {
  it('run at most keyShare shared calls at once, leave the other workers to other keys, and start in arrival order', async () => {
    const h = harness(4, 2);
    const net = Array.from({ length: 6 }, (_, i) => h.run(`n${i}`, 'bridge:br0', 'shared'));
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

describe('the pool, shared and exclusive calls of one key', () => {
  it('an exclusive call waits for the shared ones before it, runs alone, and holds back the shared ones after it', async () => {
    const h = harness(4, 3);
    const s = [h.run('s0', 'bridge:br0', 'shared'), h.run('s1', 'bridge:br0', 'shared')];
    const x = h.run('x', 'bridge:br0', 'exclusive');
    const later = h.run('s2', 'bridge:br0', 'shared');
    await tick();
    // workers are free, yet x waits for s0 and s1, and s2 (behind x) waits too
    expect(h.running().sort()).toEqual(['s0', 's1']);
    h.busyWith('s0').answer('s0');
    await tick();
    expect(h.running()).toEqual(['s1']);
    h.busyWith('s1').answer('s1');
    await tick();
    expect(h.running()).toEqual(['x']);
    h.busyWith('x').answer('x');
    await tick();
    expect(h.running()).toEqual(['s2']);
    h.busyWith('s2').answer('s2');
    expect((await Promise.all([...s, x, later])).map((o) => o.kind)).toEqual(['answer', 'answer', 'answer', 'answer']);
    expect(h.started).toEqual(['s0', 's1', 'x', 's2']);
  });

  it('a shared call asking for its exclusive turn gets it once the others of its key are done, and no new one starts meanwhile', async () => {
    const h = harness(4, 3);
    const first = [h.run('a', 'bridge:br0', 'shared'), h.run('b', 'bridge:br0', 'shared')];
    await tick();
    h.busyWith('a').askTurn();
    const c = h.run('c', 'bridge:br0', 'shared');
    const other = h.run('o', 'bridge:br1', 'shared');
    await tick();
    // b may still hold the shared lock: no turn yet; c waits; another key is not held back
    expect(h.busyWith('a').turn).toBe('asked');
    expect(h.running().sort()).toEqual(['a', 'b', 'o']);
    h.busyWith('b').answer('b');
    await tick();
    expect(h.busyWith('a').turn).toBe('granted');
    expect(h.running().sort()).toEqual(['a', 'o']);
    h.busyWith('a').doneTurn();
    await tick();
    // the turn is over: shared calls of the key run beside it again
    expect(h.running().sort()).toEqual(['a', 'c', 'o']);
    for (const id of ['a', 'c', 'o']) h.busyWith(id).answer(id);
    expect((await Promise.all([...first, c, other])).map((o) => o.kind)).toEqual(['answer', 'answer', 'answer', 'answer']);
  });

  it('two calls asking for their turn at once get it one after the other, first asked first, never both', async () => {
    const h = harness(4, 3);
    const calls = [h.run('a', 'bridge:br0', 'shared'), h.run('b', 'bridge:br0', 'shared')];
    await tick();
    h.busyWith('b').askTurn();
    h.busyWith('a').askTurn();
    await tick();
    expect([h.busyWith('a').turn, h.busyWith('b').turn]).toEqual(['asked', 'granted']);
    h.busyWith('b').doneTurn();
    await tick();
    // b may take the shared lock again after its turn (an ADD goes on): a waits until b ends
    expect(h.busyWith('a').turn).toBe('asked');
    h.busyWith('b').answer('b');
    await tick();
    expect(h.busyWith('a').turn).toBe('granted');
    h.busyWith('a').doneTurn();
    h.busyWith('a').answer('a');
    expect((await Promise.all(calls)).map((o) => o.kind)).toEqual(['answer', 'answer']);
  });

  it('release the key when a call ends during its turn, answered (the plugin threw) or crashed: the next call of the key gets its turn', async () => {
    const h = harness(4, 3);
    const calls = [h.run('a', 'bridge:br0', 'shared'), h.run('b', 'bridge:br0', 'shared'), h.run('c', 'bridge:br0', 'shared')];
    await tick();
    h.busyWith('a').askTurn();
    h.busyWith('b').askTurn();
    h.busyWith('c').askTurn();
    await tick();
    expect(h.busyWith('a').turn).toBe('granted');
    // a's plugin threw out of its exclusive section: an error answer, no "done"
    h.busyWith('a').answer('a failed');
    await tick();
    expect(h.busyWith('b').turn).toBe('granted');
    h.busyWith('b').crash();
    await tick();
    expect(h.busyWith('c').turn).toBe('granted');
    const x = h.run('x', 'bridge:br0', 'exclusive');
    await tick();
    expect(h.running()).toEqual(['c']);
    h.busyWith('c').doneTurn();
    h.busyWith('c').answer('c');
    await tick();
    expect(h.running()).toEqual(['x']);
    h.busyWith('x').answer('x');
    expect((await Promise.all([...calls, x])).map((o) => o.kind)).toEqual(['answer', 'crashed', 'answer', 'answer']);
  });

  it('a shared call is not declined while calls of its key run beside it and unrelated calls hold the other workers (etcd stuck)', async () => {
    const h = harness(2, 3, 5);
    const stuck = h.run('etcd', undefined);
    const s0 = h.run('s0', 'bridge:br0', 'shared');
    const s1 = h.run('s1', 'bridge:br0', 'shared');
    // many budgets long: s1 waits for s0's worker, not declined to a standalone run
    await tick(60);
    expect(h.running().sort()).toEqual(['etcd', 's0']);
    h.busyWith('s0').answer('s0');
    await tick();
    expect(h.running().sort()).toEqual(['etcd', 's1']);
    h.busyWith('s1').answer('s1');
    h.busyWith('etcd').answer('etcd');
    expect((await Promise.all([stuck, s0, s1])).map((o) => o.kind)).toEqual(['answer', 'answer', 'answer']);
  });

  it('a shared call behind an exclusive one is not declined past the wait budget', async () => {
    const h = harness(4, 3, 5);
    const x = h.run('x', 'bridge:br0', 'exclusive');
    const s = h.run('s', 'bridge:br0', 'shared');
    await tick(60);
    expect(h.running()).toEqual(['x']);
    h.busyWith('x').answer('x');
    await tick();
    h.busyWith('s').answer('s');
    expect((await Promise.all([x, s])).map((o) => o.kind)).toEqual(['answer', 'answer']);
  });
});

describe('lockModeOf', () => {
  it('is shared for a container\'s bridge calls, exclusive for bridge GC and every other keyed plugin', () => {
    expect(['ADD', 'DEL', 'CHECK'].map((c) => lockModeOf('bridge', c))).toEqual(['shared', 'shared', 'shared']);
    expect(lockModeOf('bridge', 'GC')).toBe('exclusive');
    expect(lockModeOf('portmap', 'ADD')).toBe('exclusive');
    expect(lockModeOf('macvlan', 'DEL')).toBe('exclusive');
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
