/**
 * The daemon's worker threads (cmd/daemon-worker.ts) and the calls waiting
 * for one.
 *
 * - `size` workers, all started with the daemon: a burst of calls must not
 *   wait for threads to start and compile the plugins. A worker lost (its
 *   call crashed it, or it could not get back to its namespace) is replaced
 *   when a call needs it.
 * - A call waits for a free worker at most `waitBudgetMs`; past that it is
 *   handed back (`busy`) and the shim runs the plugin itself.
 * - Calls that reach etcd (see laneOf) may hold at most `etcdShare` workers:
 *   with etcd down each takes its whole request timeout, and calls on local
 *   state must never queue behind them.
 * - Calls with the same lock key (see lockKeyOf: one network's bridge and
 *   IPAM store, the host-wide portmap table) are ordered here, in the main
 *   thread, by the mode of lock they take (lockModeOf): calls that take the
 *   shared lock (a container's bridge ADD or DEL) run side by side, at most
 *   `keyShare` of them, so a burst on one network leaves a worker to the
 *   others; a call that takes it exclusively runs alone. The rest wait here
 *   instead of parking worker threads in a blocking flock(2) while calls on
 *   other keys starve; the flock is still taken, for safety against
 *   standalone processes. A call waiting behind calls of its own key is
 *   never declined for the wait budget: a standalone run would only queue on
 *   the same flock, after paying Node's start, nor while calls of its key
 *   run beside it (one of them hands it its worker soon: with the etcd lane
 *   full, a burst on one network must not spill to standalone processes).
 *   The budget counts only while it could have run. Calls of one key start
 *   in arrival order.
 * - A shared call that finds it needs the exclusive lock after all (a
 *   network's first container creates the bridge, its last one tears the
 *   rules down) lets its shared lock go and asks for a turn (the worker's
 *   ExclusiveArbiter, shared/sys/flock.ts). It gets it once every other
 *   call of its key has finished or is asking too, and no new call of the
 *   key starts meanwhile: it never waits in flock(2) behind a lock this
 *   daemon holds, and a stream of shared calls cannot starve it.
 * - Right before a call starts, its caller is asked again (stillWanted): a
 *   caller that went away (a killed shim) has its call dropped, never run.
 * - A call still running after `callTimeoutMs` is reported (onTimeout): its
 *   worker may sit in flock(2), where no JavaScript can reach it, and a
 *   terminated worker would leave its locks held by open descriptors. The
 *   daemon then ends as a whole, which the kernel cleans up after.
 */
import type { EventEmitter } from 'node:events';
import type { CallMessage, ToWorker, WorkerMessage } from './daemon-worker';

/** What the pool needs of a worker thread (node:worker_threads' Worker, or a test's). */
export interface WorkerLike extends EventEmitter {
  postMessage(msg: ToWorker): void;
  terminate(): Promise<number>;
}

export type Lane = 'etcd' | 'local';

export interface Job {
  lane: Lane;
  /** calls with one key serialise on one lock (lockKeyOf); none: no shared lock known */
  key?: string;
  /** the call takes its key's lock in shared mode (lockModeOf); otherwise exclusively: it runs alone */
  shared?: boolean;
  /** plugin, command, container: for the log */
  label: string;
  call: Omit<CallMessage, 'id'>;
  /** asked right before the call starts */
  stillWanted(): boolean;
}

export type Outcome =
  | { kind: 'answer'; code: number; stdout: string; stderr: string; /** running */ ms: number; /** waiting for a worker */ waitedMs: number }
  | { kind: 'busy' }
  | { kind: 'gone' }
  | { kind: 'crashed'; why: string };

export interface PoolOptions {
  size: number;
  etcdShare: number;
  /** workers the shared calls of one lock key may hold at once (default: etcdShare) */
  keyShare?: number;
  waitBudgetMs: number;
  callTimeoutMs: number;
  spawn(): WorkerLike;
  log(line: string): void;
  onTimeout(label: string, ms: number): void;
}

interface Slot {
  worker: WorkerLike;
  /** calls run: the busiest idle worker is the warmest (its JIT has seen the plugins) */
  served: number;
  job?: Running;
  gone: boolean;
}

interface Waiting {
  job: Job;
  queued: bigint;
  resolve(o: Outcome): void;
  budget: NodeJS.Timeout;
}

interface Running extends Waiting {
  id: number;
  started: bigint;
  deadline?: NodeJS.Timeout;
  /** its exclusive turn: asked for (holding no lock of its key; `asked` orders the askers), or granted */
  turn?: { asked: number; granted: boolean };
}

/** etcd-bound: an overlay, or an IPAM whose store is etcd (the config's own words; unreadable: local). */
export function laneOf(stdin: Uint8Array): Lane {
  try {
    const conf = JSON.parse(Buffer.from(stdin).toString('utf8')) as { type?: unknown; ipam?: { store?: unknown } };
    if (conf?.type === 'overlay' || conf?.ipam?.store === 'etcd') return 'etcd';
  } catch {
    // the skel will say what is wrong with it
  }
  return 'local';
}

/**
 * The lock a call will wait on, from the config's own words: a bridge's
 * network (its flock and its IPAM store's) by bridge name, every portmap
 * call the host's portmap table (ADD and GC under its flock; DEL commits to
 * the same table, which the kernel serialises anyway, and keyed it leaves
 * the other workers to the bridge DELs of a burst), any other plugin its
 * network's name, unless it is etcd-bound (no host lock: the etcd lane
 * bounds it). Only scheduling depends on it: a wrong key costs time,
 * never safety.
 */
export function lockKeyOf(plugin: string, stdin: Uint8Array): string | undefined {
  try {
    const conf = JSON.parse(Buffer.from(stdin).toString('utf8')) as { name?: unknown; bridge?: unknown };
    if (plugin === 'portmap') return 'portmap';
    if (plugin === 'bridge') return `bridge:${typeof conf.bridge === 'string' && conf.bridge ? conf.bridge : 'cni0'}`;
    // an etcd-bound call waits on etcd, not on a lock of this host: queueing
    // it by network would run a network's calls two at a time behind a slow
    // etcd; the etcd lane bounds those instead, and declines past the budget
    if (laneOf(stdin) === 'etcd') return undefined;
    if (typeof conf.name === 'string' && conf.name) return `net:${conf.name}`;
  } catch {
    // the skel will say what is wrong with it
  }
  return undefined;
}

/**
 * Whether a keyed call takes its lock in shared mode: a container's own
 * bridge calls (plugins/bridge/main.ts withNetworkShared); GC decides about
 * the whole network, and every other keyed plugin's lock is exclusive.
 */
export function lockModeOf(plugin: string, command: string | undefined): 'shared' | 'exclusive' {
  return plugin === 'bridge' && (command === 'ADD' || command === 'DEL' || command === 'CHECK' || command === 'STATUS') ? 'shared' : 'exclusive';
}

export class Pool {
  private readonly slots: Slot[] = [];
  private readonly queue: Waiting[] = [];
  private nextId = 1;
  private asked = 0;
  private closed = false;

  constructor(private readonly opts: PoolOptions) {
    for (let i = 0; i < opts.size; i++) this.addWorker();
  }

  /** calls running or waiting */
  get pending(): number {
    return this.queue.length + this.slots.filter((s) => s.job).length;
  }

  get workers(): number {
    return this.slots.length;
  }

  run(job: Job): Promise<Outcome> {
    return new Promise<Outcome>((resolve) => {
      if (this.closed) return resolve({ kind: 'busy' });
      const waiting: Waiting = {
        job,
        queued: process.hrtime.bigint(),
        resolve,
        budget: undefined as unknown as NodeJS.Timeout,
      };
      const expire = () => {
        const i = this.queue.indexOf(waiting);
        if (i < 0) return;
        // behind or beside calls of its own key: it waits for its lock, or
        // for one of them to hand it its worker, not for unrelated calls
        // (a standalone run would pay Node's start for nothing)
        if (job.key !== undefined && this.runningWith(job.key).length > 0) {
          waiting.budget = setTimeout(expire, this.opts.waitBudgetMs);
          return;
        }
        this.queue.splice(i, 1);
        resolve({ kind: 'busy' });
      };
      waiting.budget = setTimeout(expire, this.opts.waitBudgetMs);
      this.queue.push(waiting);
      this.pump();
    });
  }

  /** Hand back every waiting call (the shims run them); no new ones. */
  drain(): void {
    this.closed = true;
    for (const w of this.queue.splice(0)) {
      clearTimeout(w.budget);
      w.resolve({ kind: 'busy' });
    }
  }

  /** Stop the idle workers (after drain, once nothing runs). */
  async close(): Promise<void> {
    this.drain();
    await Promise.all(this.slots.filter((s) => !s.job).map((s) => this.retire(s)));
  }

  private busyIn(lane: Lane): number {
    return this.slots.filter((s) => s.job?.job.lane === lane).length;
  }

  private runningWith(key: string): Running[] {
    const out: Running[] = [];
    for (const s of this.slots) if (s.job && s.job.job.key === key) out.push(s.job);
    return out;
  }

  /** The calls of job's key running now leave room for it (see the header). */
  private keyAllows(job: Job): boolean {
    if (job.key === undefined) return true;
    const running = this.runningWith(job.key);
    if (!job.shared) return running.length === 0;
    if (running.some((r) => !r.job.shared || r.turn)) return false;
    return running.length < (this.opts.keyShare ?? this.opts.etcdShare);
  }

  private pump(): void {
    this.grantTurns();
    // a key whose first waiting call cannot start holds back its later ones (arrival order)
    const held = new Set<string>();
    for (let i = 0; i < this.queue.length; ) {
      const waiting = this.queue[i];
      const key = waiting.job.key;
      if ((key !== undefined && held.has(key)) || (waiting.job.lane === 'etcd' && this.busyIn('etcd') >= this.opts.etcdShare) || !this.keyAllows(waiting.job)) {
        if (key !== undefined) held.add(key);
        i++;
        continue;
      }
      let slot: Slot | undefined;
      for (const s of this.slots) if (!s.job && !s.gone && (!slot || s.served > slot.served)) slot = s;
      if (!slot) {
        if (this.slots.length >= this.opts.size) return;
        slot = this.addWorker();
      }
      this.queue.splice(i, 1);
      clearTimeout(waiting.budget);
      if (!waiting.job.stillWanted()) {
        waiting.resolve({ kind: 'gone' });
        continue;
      }
      this.start(slot, waiting);
    }
  }

  /**
   * Grant an exclusive turn, per key, to the first asker once every other
   * running call of its key is asking too (none of them holds the lock).
   */
  private grantTurns(): void {
    const byKey = new Map<string | undefined, Slot[]>();
    for (const s of this.slots) {
      if (!s.job) continue;
      const k = s.job.job.key;
      byKey.set(k, [...(byKey.get(k) ?? []), s]);
    }
    for (const [key, slots] of byKey) {
      // no key: nothing of this daemon is known to share its lock
      const groups = key === undefined ? slots.map((s) => [s]) : [slots];
      for (const group of groups) {
        const asking = group.filter((s) => s.job!.turn && !s.job!.turn.granted);
        if (asking.length === 0 || asking.length < group.length) continue;
        const next = asking.reduce((a, b) => (b.job!.turn!.asked < a.job!.turn!.asked ? b : a));
        next.job!.turn!.granted = true;
        next.worker.postMessage({ type: 'turn', id: next.job!.id });
      }
    }
  }

  private start(slot: Slot, waiting: Waiting): void {
    const running: Running = { ...waiting, id: this.nextId++, started: process.hrtime.bigint() };
    slot.job = running;
    slot.served++;
    if (this.opts.callTimeoutMs > 0) {
      running.deadline = setTimeout(() => this.opts.onTimeout(running.job.label, this.opts.callTimeoutMs), this.opts.callTimeoutMs);
    }
    slot.worker.postMessage({ id: running.id, ...running.job.call });
  }

  private addWorker(): Slot {
    const worker = this.opts.spawn();
    const slot: Slot = { worker, served: 0, gone: false };
    this.slots.push(slot);
    worker.on('message', (m: WorkerMessage) => {
      if (m.type === 'log') return this.opts.log(m.line);
      const running = slot.job;
      if (!running || running.id !== m.id) return;
      if (m.type === 'turn') {
        running.turn = m.want ? { asked: this.asked++, granted: false } : undefined;
        return this.pump();
      }
      this.finish(slot, { kind: 'answer', code: m.code, stdout: m.stdout, stderr: m.stderr, ms: Number(process.hrtime.bigint() - running.started) / 1e6, waitedMs: Number(running.started - running.queued) / 1e6 });
      if (m.fatal) {
        this.opts.log(`worker retired after ${running.job.label}: ${m.fatal}`);
        void this.retire(slot);
      }
      this.pump();
    });
    const lost = (why: string) => {
      if (slot.gone) return;
      slot.gone = true;
      this.remove(slot);
      if (slot.job) {
        this.opts.log(`worker lost during ${slot.job.job.label}: ${why}`);
        this.finish(slot, { kind: 'crashed', why });
      }
      if (!this.closed) this.pump();
    };
    worker.on('error', (e: Error) => lost(e.stack ?? e.message));
    worker.on('exit', (code: number) => lost(`exited with code ${code}`));
    return slot;
  }

  private finish(slot: Slot, outcome: Outcome): void {
    const running = slot.job!;
    clearTimeout(running.deadline);
    slot.job = undefined;
    running.resolve(outcome);
  }

  private async retire(slot: Slot): Promise<void> {
    slot.gone = true;
    this.remove(slot);
    await slot.worker.terminate();
  }

  private remove(slot: Slot): void {
    const i = this.slots.indexOf(slot);
    if (i >= 0) this.slots.splice(i, 1);
  }
}
