/**
 * The daemon's worker side and its pool, in process: what a worker does
 * when it cannot get back to its own network namespace after a call, where
 * a call's diagnostics go, and what the caller is told when a worker is
 * lost. The kernel cannot be made to refuse setns(2) back home on demand,
 * so the thread's namespace is an injected seam here (cmd/daemon-worker.ts
 * ThreadNetns); the rest (socket, peer checks, wire format) is real.
 */
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { Daemon } from '../../cmd/daemon';
import type { WorkerLike } from '../../cmd/daemon-pool';
import { type CallMessage, type ThreadNetns, serveCall } from '../../cmd/daemon-worker';
import type { PluginModule } from '../../cmd/plugins';
import type { Plugin } from '../../shared/cni/skel';

/** A plugin whose GC logs two diagnostics through the call's logger. */
const noisy: Plugin<unknown> = {
  about: 'noisy',
  schema: z.any(),
  add: async () => ({ cniVersion: '1.1.0' }) as never,
  del: async () => undefined,
  check: async () => undefined,
  gc: async (ctx) => {
    ctx.log('first diagnostic');
    ctx.log('second diagnostic');
  },
};
const find = (name: string) => (name === 'noisy' ? (): PluginModule => ({ plugin: noisy }) : undefined);
const gcCall: CallMessage = { id: 7, name: 'noisy', env: { CNI_COMMAND: 'GC', CNI_PATH: '/nowhere' }, stdin: Buffer.from('{"cniVersion":"1.1.0","name":"n","type":"noisy"}') };

/** A thread that a call left in namespace 2 (home is 1). */
function strandedNetns(canReturn: boolean): ThreadNetns & { returns: number } {
  let now = 2n;
  return {
    home: 1n,
    returns: 0,
    current: () => now,
    returnHome() {
      this.returns++;
      if (!canReturn) throw Object.assign(new Error('setns: Operation not permitted'), { errno: 1 });
      now = 1n;
    },
  };
}

describe('a worker after a call', () => {
  it('returns to its own network namespace when a call left it elsewhere, and serves on', async () => {
    const netns = strandedNetns(true);
    const a = await serveCall(gcCall, netns, find);
    expect(a).toMatchObject({ type: 'answer', id: 7, code: 0 });
    expect(a.fatal).toBeUndefined();
    expect(netns.returns).toBe(1);
  });

  it('that cannot get back still answers the call that ran (it must not run again), and says it cannot serve any more', async () => {
    const a = await serveCall(gcCall, strandedNetns(false), find);
    expect(a.code).toBe(0);
    expect(a.fatal).toMatch(/cannot return to its network namespace: setns: Operation not permitted/);
  });

  it("sends what the call logs to the call's caller, never to the daemon's stderr or the call's stdout", async () => {
    const realWrite = process.stderr.write;
    const seen: string[] = [];
    process.stderr.write = ((c: string) => {
      seen.push(String(c));
      return true;
    }) as typeof process.stderr.write;
    let a;
    try {
      a = await serveCall(gcCall, strandedNetns(true), find);
    } finally {
      process.stderr.write = realWrite;
    }
    expect(a.stderr).toBe('first diagnostic\nsecond diagnostic\n');
    expect(a.stdout).toBe('');
    expect(seen.join('')).not.toContain('diagnostic');
  });

  it('leaves process.stdout and process.stderr as they were: the daemon patches neither', async () => {
    const before = [process.stdout.write, process.stderr.write];
    let during: unknown[] = [];
    const peek: Plugin<unknown> = { ...noisy, gc: async () => void (during = [process.stdout.write, process.stderr.write]) };
    await serveCall(gcCall, strandedNetns(true), () => (): PluginModule => ({ plugin: peek }));
    expect(during).toEqual(before);
    expect([process.stdout.write, process.stderr.write]).toEqual(before);
  });
});

/** A worker thread stand-in: answers each call as told. */
class FakeWorker extends EventEmitter implements WorkerLike {
  terminated = false;
  constructor(private readonly reply: (msg: CallMessage, w: FakeWorker) => void) {
    super();
  }
  postMessage(msg: CallMessage): void {
    setImmediate(() => this.reply(msg, this));
  }
  terminate(): Promise<number> {
    this.terminated = true;
    setImmediate(() => this.emit('exit', 1));
    return Promise.resolve(1);
  }
}

function request(name: string, env: Record<string, string>, stdin: string): Buffer {
  const field = (b: Buffer) => Buffer.concat([Buffer.from(Uint32Array.of(b.length).buffer), b]);
  const environ = Object.entries(env).map(([k, v]) => `${k}=${v}\0`).join('');
  return Buffer.concat([Buffer.from('CNT1'), Buffer.alloc(16), field(Buffer.from(name)), field(Buffer.from(environ)), field(Buffer.from(stdin))]);
}

function ask(socket: string, req: Buffer): Promise<{ kind: number; code?: number; stdout?: string }> {
  return new Promise((resolve, reject) => {
    const c = net.connect(socket);
    const chunks: Buffer[] = [];
    c.on('data', (d) => chunks.push(d));
    c.on('error', reject);
    c.on('end', () => {
      const b = Buffer.concat(chunks);
      const kind = b.readUInt32LE(0);
      if (kind !== 0) return resolve({ kind });
      const len = b.readUInt32LE(8);
      resolve({ kind, code: b.readUInt32LE(4), stdout: b.subarray(12, 12 + len).toString('utf8') });
    });
    c.end(req);
  });
}

describe('the pool, when a worker cannot serve again', () => {
  let daemon: Daemon | undefined;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-ts-pool-'));
  afterEach(async () => {
    await daemon?.close();
    daemon = undefined;
  });

  it('sends the answer of the call that ran, retires that worker, and serves the next call on a new one', async () => {
    const workers: FakeWorker[] = [];
    const log: string[] = [];
    daemon = new Daemon({
      socketPath: path.join(dir, 'fatal.sock'),
      workers: 1,
      log: (l) => log.push(l),
      spawnWorker: () => {
        const first = workers.length === 0;
        const w = new FakeWorker((msg, self) =>
          self.emit('message', { type: 'answer', id: msg.id, code: 0, stdout: `from worker ${workers.indexOf(self)}`, stderr: '', ...(first ? { fatal: 'cannot return to its network namespace' } : {}) }),
        );
        workers.push(w);
        return w;
      },
    });
    await daemon.listen();
    const req = request('none', { CNI_COMMAND: 'VERSION' }, '');
    expect(await ask(path.join(dir, 'fatal.sock'), req)).toEqual({ kind: 0, code: 0, stdout: 'from worker 0' });
    expect(workers[0].terminated).toBe(true);
    expect(log.join('\n')).toMatch(/worker retired after none VERSION: cannot return to its network namespace/);
    expect(await ask(path.join(dir, 'fatal.sock'), req)).toEqual({ kind: 0, code: 0, stdout: 'from worker 1' });
    expect(workers).toHaveLength(2);
  });

  it('answers a call whose worker died under it with error 999, never "run it yourself"', async () => {
    daemon = new Daemon({
      socketPath: path.join(dir, 'lost.sock'),
      workers: 1,
      log: () => {},
      spawnWorker: () => new FakeWorker((_msg, self) => self.emit('error', new Error('worker out of memory'))),
    });
    await daemon.listen();
    const r = await ask(path.join(dir, 'lost.sock'), request('bridge', { CNI_COMMAND: 'ADD' }, '{"cniVersion":"1.0.0"}'));
    expect(r.kind).toBe(0);
    expect(r.code).toBe(1);
    expect(JSON.parse(r.stdout!)).toMatchObject({ cniVersion: '1.0.0', code: 999, msg: 'the plugin daemon lost the call' });
  });
});
