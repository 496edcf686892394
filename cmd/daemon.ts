/**
 * `cni-ts daemon`: the resident half of cni-ts-shim (cmd/shim.c).
 *
 * A plugin call pays Node's start-up (about 25 ms) before any work; the
 * daemon pays it once. It listens on a root-only unix socket (or the one
 * systemd hands it: socket activation), takes each call the shim forwards
 * (plugin name, environment, stdin), runs the very same plugin code through
 * the skel with that environment and stdin, and sends back stdout, stderr
 * and the exit code.
 *
 * Calls run concurrently, each on a worker thread of a bounded pool
 * (cmd/daemon-pool.ts, cmd/daemon-worker.ts): setns(2) moves only the
 * calling thread, so each worker enters container namespaces on its own.
 * This main thread never runs plugin code; it checks callers, queues calls
 * and keeps time, so it is never the one stuck in flock(2).
 *
 * The daemon declines a call (the shim then execs the plugin itself) when
 * the caller sits in other namespaces than the daemon (worked out from the
 * socket, cmd/daemon-peer.ts: the request's own claim is not read), when the
 * plugin name is unknown, when no worker is free within --wait-budget, and
 * when its own executable was replaced since it started: an upgrade must
 * never keep running the old code. In that last case it also stops, for its
 * supervisor to start the new one. Callers that are not root, or lack
 * CAP_NET_ADMIN, are refused outright.
 *
 *   cni-ts daemon [--socket PATH] [--log-calls] [--call-timeout DURATION]
 *                 [--workers N] [--wait-budget DURATION] [--idle-exit DURATION]
 *     (durations as shared/flags.ts reads them: 500ms, 2s, 5m; a bare number is seconds)
 *     --socket       default /run/cni-ts/daemon.sock, or CNI_TS_DAEMON_SOCKET;
 *                    under systemd socket activation (LISTEN_FDS) fd 3 instead
 *     --log-calls    a line on stderr per call served
 *     --call-timeout exit when one call runs longer (default 300s, 0: never)
 *     --workers      worker threads at most (default 4)
 *     --wait-budget  how long a call may wait for a worker (default 2s)
 *     --idle-exit    exit after this long without calls (default 0: never), unless
 *                    it is keeping an etcd-IPAM host alive right now
 *     --liveness-dir where etcd-IPAM stores record their hosts for the
 *                    liveness keeper (default /var/lib/cni-ts/ipam-etcd)
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { DEFAULT_LIVENESS_DIR, startLivenessKeeper, type KeeperStatus } from '../ipam/etcd/liveness';
import { Worker } from 'node:worker_threads';
import { CniError, ErrorCode } from '../shared/cni/errors';
import { type FlagSpecs, type FlagValues, parseFlags, UsageError } from '../shared/flags';
import { prefixed, stderrLog, type Logger } from '../shared/log';
import { DAEMON_SOCKET } from '../shared/paths';
import { POLLERR, POLLHUP, pollEvents } from '../shared/sys/peer';
import { type Namespaces, checkPeer, ownNamespaces } from './daemon-peer';
import { startFirewallWatch } from './firewall-reload';
import { type Outcome, Pool, type WorkerLike, laneOf, lockKeyOf, lockModeOf } from './daemon-pool';
import { findPlugin } from './plugins';

export const DEFAULT_SOCKET = DAEMON_SOCKET;

const MAGIC = 'CNT1';
const ANSWERED = 0;
const RUN_IT_YOURSELF = 1;
/** the shim hands anything over 64 MB of stdin to the standalone executable */
const MAX_REQUEST = 80 << 20;
/** a caller that connects and never finishes its request */
const REQUEST_READ_MS = 10_000;

/** One call as the shim sends it. */
export interface ShimRequest {
  /** the shim's own claim; never trusted (cmd/daemon-peer.ts works them out) */
  netnsInode: bigint;
  mntnsInode: bigint;
  name: string;
  env: Record<string, string>;
  stdin: Buffer;
}

export function decodeRequest(data: Buffer): ShimRequest {
  let off = 0;
  const need = (n: number) => {
    if (off + n > data.length) throw new Error(`truncated request (${data.length} bytes)`);
  };
  if (data.toString('latin1', 0, 4) !== MAGIC) throw new Error('not a cni-ts-shim request');
  need(4 + 16);
  off = 4;
  const netnsInode = data.readBigUInt64LE(off);
  const mntnsInode = data.readBigUInt64LE(off + 8);
  off += 16;
  const field = (): Buffer => {
    need(4);
    const len = data.readUInt32LE(off);
    off += 4;
    need(len);
    const out = data.subarray(off, off + len);
    off += len;
    return out;
  };
  const name = field().toString('utf8');
  const env: Record<string, string> = {};
  for (const pair of field().toString('utf8').split('\0')) {
    const eq = pair.indexOf('=');
    if (eq > 0) env[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  const stdin = Buffer.from(field());
  return { netnsInode, mntnsInode, name, env, stdin };
}

export function encodeAnswer(code: number, stdout: string, stderr: string): Buffer {
  const out = Buffer.from(stdout, 'utf8');
  const err = Buffer.from(stderr, 'utf8');
  const head = Buffer.alloc(12);
  head.writeUInt32LE(ANSWERED, 0);
  head.writeUInt32LE(code >>> 0, 4);
  head.writeUInt32LE(out.length, 8);
  const errLen = Buffer.alloc(4);
  errLen.writeUInt32LE(err.length, 0);
  return Buffer.concat([head, out, errLen, err]);
}

export function encodeDecline(): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(RUN_IT_YOURSELF, 0);
  return b;
}

/** What identifies the code this process runs: replaced files change it. */
function codeIdentity(): string {
  const files = [process.execPath];
  // `node dist/cni-ts.js daemon` in a checkout: the bundle is the code
  if (process.argv[1] && /\.c?js$/.test(process.argv[1])) files.push(process.argv[1]);
  return files
    .map((f) => {
      try {
        const st = fs.statSync(f);
        return `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}`;
      } catch {
        return `${f}:gone`;
      }
    })
    .join(' ');
}

export interface DaemonOptions {
  /** where to listen; ignored when listenFd is given */
  socketPath: string;
  /** an already listening socket (systemd socket activation: 3) */
  listenFd?: number;
  log(line: string): void;
  /** one log line per call served (plugin, command, exit code, milliseconds) */
  logCalls?: boolean;
  /**
   * A call still running after this long means a plugin hangs; the daemon
   * stops taking calls, lets the others finish, and ends itself (its
   * supervisor starts a fresh one). 0 or absent: never.
   */
  callTimeoutMs?: number;
  /** worker threads at most (default 4) */
  workers?: number;
  /** how long a call may wait for a free worker before the shim gets it back (default 2000) */
  waitBudgetMs?: number;
  /** exit (resolve done) after this long without a call; 0 or absent: never */
  idleExitMs?: number;
  /**
   * True while this daemon keeps a host's etcd-IPAM liveness: it then never
   * idles out, since that liveness must come from a long-running process.
   */
  keepsHostAlive?: () => boolean;
  /** how to start a worker thread (tests); default: this bundle in a Worker */
  spawnWorker?: () => WorkerLike;
}

export class Daemon {
  private server?: net.Server;
  private pool?: Pool;
  private readonly identity = codeIdentity();
  private readonly own: Namespaces = ownNamespaces();
  private stopping = false;
  /** connections between accept and answer */
  private active = 0;
  private idleTimer?: NodeJS.Timeout;
  private resolveDone!: (why: string) => void;
  /** resolves when the daemon decides to stop by itself (upgrade, idle) */
  readonly done = new Promise<string>((r) => (this.resolveDone = r));
  /** calls served so far */
  calls = 0;

  constructor(private readonly opts: DaemonOptions) {}

  async listen(): Promise<void> {
    const workers = Math.max(1, this.opts.workers ?? 4);
    this.pool = new Pool({
      size: workers,
      etcdShare: Math.max(1, Math.floor(workers / 2)),
      // one network's shared calls never hold every worker: the others keep serving
      keyShare: Math.max(1, workers - 1),
      waitBudgetMs: this.opts.waitBudgetMs ?? 2000,
      callTimeoutMs: this.opts.callTimeoutMs ?? 0,
      spawn: this.opts.spawnWorker ?? spawnBundleWorker,
      log: this.opts.log,
      onTimeout: (label, ms) => this.callTimedOut(label, ms),
    });
    const server = net.createServer({ allowHalfOpen: true }, (conn) => this.accept(conn));
    if (this.opts.listenFd !== undefined) {
      // systemd made the socket (and its mode, SocketMode=0600) and keeps it
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen({ fd: this.opts.listenFd }, () => {
          server.off('error', reject);
          resolve();
        });
      });
      this.server = server;
      this.armIdle();
      return;
    }
    const { socketPath } = this.opts;
    fs.mkdirSync(path.dirname(socketPath), { recursive: true, mode: 0o700 });
    await removeStaleSocket(socketPath);
    // The socket is root's alone: whoever can connect runs plugins as root.
    const oldMask = process.umask(0o077);
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(socketPath, () => {
          server.off('error', reject);
          resolve();
        });
      });
    } finally {
      process.umask(oldMask);
    }
    fs.chmodSync(socketPath, 0o600);
    this.server = server;
    this.armIdle();
  }

  /** Stop listening (the socket file goes), let the calls in progress finish, stop the workers. */
  async close(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    clearTimeout(this.idleTimer);
    this.pool?.drain();
    const server = this.server;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
    while (this.active > 0) await new Promise((r) => setTimeout(r, 20));
    await this.pool?.close();
  }

  private accept(conn: net.Socket): void {
    const fd = (conn as unknown as { _handle?: { fd?: number } })._handle?.fd;
    const verdict = typeof fd === 'number' && fd >= 0 ? checkPeer(fd, this.own) : ({ kind: 'refuse', why: 'no descriptor' } as const);
    if (verdict.kind === 'refuse') {
      this.opts.log(`refused a connection from ${verdict.why}`);
      conn.destroy();
      return;
    }
    this.active++;
    clearTimeout(this.idleTimer);
    const chunks: Buffer[] = [];
    let size = 0;
    let finished = false;
    const finish = () => {
      if (finished) return;
      finished = true;
      this.active--;
      this.armIdle();
    };
    let serving = false;
    conn.on('close', () => {
      if (!serving) finish();
    });
    conn.setTimeout(REQUEST_READ_MS, () => {
      if (!conn.readableEnded) conn.destroy();
    });
    conn.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_REQUEST) conn.destroy();
      else chunks.push(c);
    });
    conn.on('error', () => conn.destroy());
    // The shim half-closes after its request: the request is complete.
    conn.on('end', () => {
      conn.setTimeout(0);
      serving = true;
      void this.serve(conn, fd!, Buffer.concat(chunks), verdict.kind === 'decline' ? verdict.why : undefined).finally(finish);
    });
  }

  private async serve(conn: net.Socket, fd: number, data: Buffer, declineWhy: string | undefined): Promise<void> {
    let req: ShimRequest;
    try {
      req = decodeRequest(data);
    } catch (e) {
      this.opts.log(`bad request: ${(e as Error).message}`);
      conn.end(encodeDecline());
      return;
    }
    const label = `${req.name} ${req.env.CNI_COMMAND ?? ''} ${req.env.CNI_CONTAINERID ?? ''}`.trim();
    const decline = (why: string) => {
      this.opts.log(`declined ${req.name || '(no name)'}: ${why}`);
      conn.end(encodeDecline());
    };
    if (declineWhy) return decline(declineWhy);
    if (!findPlugin(req.name)) return decline('not a plugin of this executable');
    if (codeIdentity() !== this.identity) {
      // An upgrade replaced us: the new executable must take this call.
      setImmediate(() => {
        this.opts.log('executable replaced; stopping');
        this.resolveDone('executable replaced');
      });
      return decline('executable replaced since the daemon started');
    }
    if (this.stopping) return decline('the daemon is stopping');
    if (this.opts.logCalls) this.opts.log(`waiting for a worker: ${label}`);
    const outcome: Outcome = await this.pool!.run({
      lane: laneOf(req.stdin),
      key: lockKeyOf(req.name, req.stdin),
      shared: lockModeOf(req.name, req.env.CNI_COMMAND) === 'shared',
      label,
      call: { name: req.name, env: scrubEnv(req.env), stdin: req.stdin },
      stillWanted: () => callerStillThere(fd, conn),
    });
    switch (outcome.kind) {
      case 'busy':
        return decline(this.stopping ? 'the daemon is stopping' : `no worker free within ${this.opts.waitBudgetMs ?? 2000} ms`);
      case 'gone':
        this.opts.log(`dropped ${label}: its caller went away before it started`);
        conn.destroy();
        return;
      case 'crashed': {
        // The call may have done part of its work: it must not run again
        // (the shim would, on a decline); the caller gets an error instead.
        const err = new CniError(ErrorCode.Internal, 'the plugin daemon lost the call', outcome.why);
        conn.end(encodeAnswer(1, `${JSON.stringify(err.toJSON(cniVersionOf(req.stdin)), null, 4)}\n`, ''));
        return;
      }
      case 'answer':
        this.calls++;
        if (this.opts.logCalls) {
          this.opts.log(`served ${req.name} ${req.env.CNI_COMMAND ?? '(none)'} ${req.env.CNI_CONTAINERID ?? ''} exit ${outcome.code} in ${outcome.ms.toFixed(1)} ms (${outcome.waitedMs.toFixed(1)} ms waiting for a worker)`);
        }
        conn.end(encodeAnswer(outcome.code, outcome.stdout, outcome.stderr));
        return;
    }
  }

  /**
   * A call outlived --call-timeout. Its worker may be blocked in flock(2),
   * out of JavaScript's reach, and terminating it would leave whatever it
   * holds (lock files, namespace descriptors) open in this process. So the
   * daemon stops taking calls, lets the other calls finish, and ends with
   * SIGKILL, which the kernel cleans up after (and which a stuck thread
   * cannot delay, as it would process.exit). The waiting shims then run
   * their calls themselves and the supervisor starts a fresh daemon.
   */
  private callTimedOut(label: string, ms: number): void {
    this.opts.log(`${label} still running after ${ms} ms; exiting`);
    this.stopping = true;
    this.pool!.drain();
    this.server?.close();
    let stuck = 1;
    const check = () => {
      // every call left is a stuck one, or there is none but ours
      if (this.pool!.pending <= stuck) process.kill(process.pid, 'SIGKILL');
      else setTimeout(check, 50);
    };
    // later timeouts count as stuck too
    this.callTimedOut = (l, m) => {
      this.opts.log(`${l} still running after ${m} ms`);
      stuck++;
    };
    check();
  }

  private armIdle(): void {
    const ms = this.opts.idleExitMs ?? 0;
    clearTimeout(this.idleTimer);
    if (!ms || this.stopping || this.active > 0 || (this.pool?.pending ?? 0) > 0) return;
    this.idleTimer = setTimeout(() => {
      if (this.active > 0 || this.stopping) return;
      if (this.opts.keepsHostAlive?.()) return this.armIdle();
      this.resolveDone(`idle for ${ms / 1000} s`);
    }, ms);
  }
}

/** The bundle this process runs, in a worker thread (cmd/main.ts dispatches on workerData). */
function spawnBundleWorker(): WorkerLike {
  const workerData = { role: 'cni-ts-daemon-worker' };
  // Diagnostics a worker writes outside a call go to the daemon's log, not to a caller.
  const streams = { stdout: true, stderr: true };
  let worker: Worker;
  const sea = seaModule();
  if (sea?.isSea()) {
    // The executable's main script cannot be named as a file: the build
    // packs the same bundle as an asset for the workers to run.
    worker = new Worker(sea.getAsset(BUNDLE_ASSET, 'utf8'), { eval: true, workerData, ...streams });
  } else {
    worker = new Worker(process.argv[1], { workerData, ...streams });
  }
  const log = prefixed(stderrLog, 'cni-ts daemon: ');
  const relay = (stream: NodeJS.ReadableStream) => stream.on('data', (c: Buffer) => log(`worker ${worker.threadId}: ${String(c).replace(/\n$/, '')}`));
  relay(worker.stdout);
  relay(worker.stderr);
  return worker;
}

/** The SEA asset scripts/pack-sea.cjs packs dist/cni-ts.js under. */
export const BUNDLE_ASSET = 'cni-ts.js';

function seaModule(): { isSea(): boolean; getAsset(key: string, enc: string): string } | undefined {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return require('node:sea');
  } catch {
    return undefined;
  }
}

/**
 * Is the caller still waiting for this call? The shim half-closed its end
 * after the request; a shim that is gone (killed, timed out) has closed it
 * whole, which poll(2) reports as POLLHUP.
 */
function callerStillThere(fd: number, conn: net.Socket): boolean {
  if (conn.destroyed) return false;
  try {
    return (pollEvents(fd, 0) & (POLLHUP | POLLERR)) === 0;
  } catch {
    return false;
  }
}

/** The caller's NODE_* variables (NODE_OPTIONS, NODE_PATH, ...) reach nothing that runs as root. */
function scrubEnv(env: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) if (!k.startsWith('NODE_')) out[k] = v;
  return out;
}

function cniVersionOf(stdin: Buffer): string {
  try {
    const v = (JSON.parse(stdin.toString('utf8')) as { cniVersion?: unknown }).cniVersion;
    if (typeof v === 'string' && /^\d+\.\d+\.\d+$/.test(v)) return v;
  } catch {
    // fall through
  }
  return '1.1.0';
}

/** A socket file nobody listens on (a killed daemon's) is removed; a live one is an error. */
async function removeStaleSocket(socketPath: string): Promise<void> {
  if (!fs.existsSync(socketPath)) return;
  const alive = await new Promise<boolean>((resolve) => {
    const c = net.connect(socketPath);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
  if (alive) throw new Error(`another daemon already listens on ${socketPath}`);
  fs.unlinkSync(socketPath);
}

const USAGE = 'usage: cni-ts daemon [--socket PATH] [--log-calls] [--call-timeout 300s] [--workers 4] [--wait-budget 2s] [--idle-exit 0] [--liveness-dir DIR]\n  durations: 500ms, 2s, 5m, 1h; a bare number is seconds; 0: never';

/** systemd socket activation: the listening socket is fd 3 when LISTEN_PID names us. */
function activatedFd(): number | undefined {
  const { LISTEN_PID, LISTEN_FDS } = process.env;
  // not for our children, nor our workers
  delete process.env.LISTEN_PID;
  delete process.env.LISTEN_FDS;
  delete process.env.LISTEN_FDNAMES;
  if (LISTEN_PID !== String(process.pid) || !LISTEN_FDS || Number(LISTEN_FDS) < 1) return undefined;
  return 3;
}

/** The daemon's flags (shared/flags.ts: durations like 2s, 500ms; a bare number is seconds). */
const FLAGS = {
  socket: { type: 'string' },
  'log-calls': { type: 'boolean' },
  'call-timeout': { type: 'duration', default: 300_000 },
  workers: { type: 'integer', default: 4, min: 1, max: 64 },
  'wait-budget': { type: 'duration', default: 2000 },
  'idle-exit': { type: 'duration', default: 0 },
  'liveness-dir': { type: 'string', default: DEFAULT_LIVENESS_DIR },
} as const satisfies FlagSpecs;

export async function daemonMain(args: string[], sink: Logger = stderrLog): Promise<number> {
  const log = prefixed(sink, 'cni-ts daemon: ');
  let flags: FlagValues<typeof FLAGS>;
  try {
    flags = parseFlags(args, FLAGS).values;
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    log(`${e.message}\n${USAGE}`);
    return 2;
  }
  const livenessDir = flags['liveness-dir'];
  const liveness: KeeperStatus = { kept: new Set() };
  const opts = {
    socketPath: flags.socket ?? (process.env.CNI_TS_DAEMON_SOCKET || DEFAULT_SOCKET),
    listenFd: activatedFd(),
    log,
    logCalls: flags['log-calls'],
    callTimeoutMs: flags['call-timeout'],
    workers: flags.workers,
    waitBudgetMs: flags['wait-budget'],
    idleExitMs: flags['idle-exit'],
    keepsHostAlive: () => liveness.kept.size > 0,
  };
  const daemon = new Daemon(opts);
  try {
    await daemon.listen();
  } catch (e) {
    log((e as Error).message);
    return 1;
  }
  // A stray rejection from a library's background work must not take every
  // later call down with it; it is logged where an operator looks.
  process.on('unhandledRejection', (e) => log(`unhandled rejection: ${(e as Error)?.stack ?? e}`));
  log(`listening on ${opts.listenFd !== undefined ? `fd ${opts.listenFd} (socket activation)` : opts.socketPath}`);
  // The etcd IPAM's host liveness (ipam/etcd/liveness.ts), on the main
  // thread: workers setns into containers, the keeper must stay home.
  const stopLiveness = new AbortController();
  const keeper = startLivenessKeeper({ dir: livenessDir, signal: stopLiveness.signal, log, status: liveness });
  // nft flush ruleset: our tables rebuilt from their records (cmd/firewall-reload.ts)
  const stopFirewallWatch = startFirewallWatch(log);
  return new Promise<number>((resolve) => {
    const stop = (why: string) => {
      log(`stopping: ${why}`);
      stopLiveness.abort();
      stopFirewallWatch();
      void Promise.all([daemon.close(), keeper]).then(() => {
        log(`stopped after ${daemon.calls} calls`);
        resolve(0);
      });
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
    void daemon.done.then(stop);
  });
}
