/**
 * `cni-ts daemon`: the resident half of cni-ts-shim (cmd/shim.c).
 *
 * A plugin call pays Node's start-up (about 25 ms) before any work; the
 * daemon pays it once. It listens on a root-only unix socket, takes each
 * call the shim forwards (plugin name, environment, stdin), runs the very
 * same plugin code through the skel with that environment and stdin, and
 * sends back stdout, stderr and the exit code.
 *
 * Calls run one at a time, in arrival order. Plugins already serialise on
 * per-network and IPAM file locks, and setns(2) moves the one JavaScript
 * thread, so two calls interleaving on it could run each other's work in the
 * wrong namespace. After every call the daemon checks it is back in its own
 * network namespace and returns there if a plugin left it elsewhere.
 *
 * The daemon declines a call (the shim then execs the plugin itself) when
 * the caller sits in another network or mount namespace than the daemon,
 * when the plugin name is unknown, and when its own executable was replaced
 * since it started: an upgrade must never keep running the old code. In that
 * last case it also stops, for its supervisor to start the new one.
 *
 *   cni-ts daemon [--socket PATH] [--log-calls] [--call-timeout SECONDS]
 *     --socket        default /run/cni-ts/daemon.sock, or CNI_TS_DAEMON_SOCKET
 *     --log-calls     a line on stderr per call served
 *     --call-timeout  exit when one call runs longer (default 300, 0: never)
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { defaultInterfaceExists, keepStdoutForJson, runPlugin, type SkelIO } from '../shared/cni/skel';
import { CLONE_NEWNET, native } from '../shared/netlink/native';
import { plugins } from './plugins';

export const DEFAULT_SOCKET = '/run/cni-ts/daemon.sock';

const MAGIC = 'CNT1';
const ANSWERED = 0;
const RUN_IT_YOURSELF = 1;

/** One call as the shim sends it. */
export interface ShimRequest {
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

function nsInode(file: string): bigint {
  return fs.statSync(file, { bigint: true }).ino;
}

export interface DaemonOptions {
  socketPath: string;
  log(line: string): void;
  /** one log line per call served (plugin, command, exit code, milliseconds) */
  logCalls?: boolean;
  /**
   * A call still running after this long means a plugin hangs; the daemon
   * ends itself (Watchdog) so its supervisor starts a fresh one, and every
   * waiting shim runs its call itself. 0 or absent: never.
   */
  callTimeoutMs?: number;
}

export class Daemon {
  private server?: net.Server;
  private queue: Promise<void> = Promise.resolve();
  private readonly identity = codeIdentity();
  private readonly netnsInode = nsInode('/proc/self/ns/net');
  private readonly mntnsInode = nsInode('/proc/self/ns/mnt');
  /** our own namespace, kept open to return to */
  private readonly homeNetns = fs.openSync('/proc/thread-self/ns/net', fs.constants.O_RDONLY | 0o2000000);
  private stopping = false;
  /** calls served so far */
  calls = 0;

  private readonly watchdog?: Watchdog;

  constructor(private readonly opts: DaemonOptions) {
    if (opts.callTimeoutMs) this.watchdog = new Watchdog(opts.callTimeoutMs);
  }

  async listen(): Promise<void> {
    const { socketPath } = this.opts;
    fs.mkdirSync(path.dirname(socketPath), { recursive: true, mode: 0o700 });
    await removeStaleSocket(socketPath);
    const server = net.createServer({ allowHalfOpen: true }, (conn) => this.accept(conn));
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
  }

  /** Stop listening, let the call in progress finish, remove the socket. */
  async close(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    const server = this.server;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
    await this.queue;
    await this.watchdog?.stop();
    fs.closeSync(this.homeNetns);
  }

  private accept(conn: net.Socket): void {
    // The socket file is root's (0600), and the peer is checked as well: a
    // mode loosened by mistake must not let anyone run plugins as root.
    const uid = peerUid(conn);
    if (uid !== 0 && uid !== process.getuid?.()) {
      this.opts.log(`refused a connection from uid ${uid}`);
      conn.destroy();
      return;
    }
    const chunks: Buffer[] = [];
    conn.on('data', (c: Buffer) => chunks.push(c));
    conn.on('error', () => conn.destroy());
    // The shim half-closes after its request: the request is complete.
    conn.on('end', () => {
      this.queue = this.queue.then(() => this.serve(conn, Buffer.concat(chunks)));
    });
  }

  private async serve(conn: net.Socket, data: Buffer): Promise<void> {
    let answer: Buffer;
    try {
      answer = await this.answer(decodeRequest(data));
    } catch (e) {
      this.opts.log(`bad request: ${(e as Error).message}`);
      answer = encodeDecline();
    }
    conn.end(answer);
  }

  private async answer(req: ShimRequest): Promise<Buffer> {
    const load = plugins[req.name];
    const decline = (why: string) => {
      this.opts.log(`declined ${req.name || '(no name)'}: ${why}`);
      return encodeDecline();
    };
    if (!load) return decline('not a plugin of this executable');
    if (req.netnsInode !== this.netnsInode || req.mntnsInode !== this.mntnsInode) {
      return decline('the caller is in another network or mount namespace');
    }
    if (codeIdentity() !== this.identity) {
      // An upgrade replaced us: the new executable must take this call.
      setImmediate(() => {
        this.opts.log('executable replaced; stopping');
        void this.close().then(() => process.exit(0));
      });
      return decline('executable replaced since the daemon started');
    }

    const stdout: string[] = [];
    const stderr: string[] = [];
    const io: SkelIO = {
      // A plugin this call execs (an IPAM found in CNI_PATH) that is itself
      // a shim must not wait for this daemon, busy with this very call.
      env: { ...req.env, CNI_TS_NO_DAEMON: '1' },
      readStdin: () => req.stdin,
      writeStdout: (s) => stdout.push(s),
      writeStderr: (s) => stderr.push(s),
      interfaceExists: defaultInterfaceExists,
    };
    // Diagnostics the plugin code writes straight to process.stderr belong
    // to this call's caller, as they would if the plugin ran as its process.
    const realWrite = process.stderr.write;
    process.stderr.write = ((chunk: string | Uint8Array) => {
      stderr.push(typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8'));
      return true;
    }) as typeof process.stderr.write;
    const started = process.hrtime.bigint();
    this.watchdog?.callStarted(`${req.name} ${req.env.CNI_COMMAND ?? ''} ${req.env.CNI_CONTAINERID ?? ''}`);
    let code: number;
    try {
      code = await runPlugin(load().plugin, io);
    } finally {
      this.watchdog?.callEnded();
      process.stderr.write = realWrite;
      this.returnHome();
    }
    this.calls++;
    if (this.opts.logCalls) {
      const ms = Number(process.hrtime.bigint() - started) / 1e6;
      this.opts.log(`served ${req.name} ${req.env.CNI_COMMAND ?? '(none)'} ${req.env.CNI_CONTAINERID ?? ''} exit ${code} in ${ms.toFixed(1)} ms`);
    }
    return encodeAnswer(code, stdout.join(''), stderr.join(''));
  }

  /** Plugins leave namespaces they enter; if one did not, do it for them. */
  private returnHome(): void {
    if (nsInode('/proc/thread-self/ns/net') === this.netnsInode) return;
    this.opts.log('a call left the daemon in another network namespace; returning');
    native().setns(this.homeNetns, CLONE_NEWNET);
  }
}

/**
 * Ends the daemon when one call runs too long. It must work while the
 * JavaScript thread is blocked, and it may be: plugins take their file
 * locks with a blocking flock(2), so a timer on that thread would never
 * fire. A worker thread watches the call's start time in shared memory and
 * kills the whole process; the waiting shims then run their calls
 * themselves, and the supervisor starts a fresh daemon. The call that was
 * cut short is in the state a plugin killed by SIGKILL leaves, which a DEL
 * (and GC) clears.
 */
class Watchdog {
  /** [0]: 1 while a call runs; [1]: its start, in seconds of the daemon's clock */
  private readonly state = new Int32Array(new SharedArrayBuffer(8));
  private readonly label = new SharedArrayBuffer(512);
  private readonly worker: Worker;
  private readonly epoch = Date.now();

  constructor(timeoutMs: number) {
    const code = `
      const { workerData } = require('node:worker_threads');
      const fs = require('node:fs');
      const state = new Int32Array(workerData.state);
      const label = new Uint8Array(workerData.label);
      setInterval(() => {
        if (Atomics.load(state, 0) !== 1) return;
        const now = Math.floor((Date.now() - workerData.epoch) / 1000);
        if ((now - Atomics.load(state, 1)) * 1000 < workerData.timeoutMs) return;
        const end = label.indexOf(0);
        const what = Buffer.from(label.subarray(0, end < 0 ? label.length : end)).toString('utf8');
        // straight to fd 2: the main thread, which relays a worker's stderr, is stuck
        fs.writeSync(2, 'cni-ts daemon: ' + what + ' still running after ' + workerData.timeoutMs + ' ms; exiting' + String.fromCharCode(10));
        process.kill(process.pid, 'SIGKILL');
      }, Math.min(1000, Math.max(100, workerData.timeoutMs / 4)));
    `;
    this.worker = new Worker(code, { eval: true, workerData: { state: this.state.buffer, label: this.label, epoch: this.epoch, timeoutMs } });
    this.worker.unref();
  }

  callStarted(what: string): void {
    const bytes = new Uint8Array(this.label);
    bytes.fill(0);
    bytes.set(Buffer.from(what, 'utf8').subarray(0, bytes.length - 1));
    Atomics.store(this.state, 1, Math.floor((Date.now() - this.epoch) / 1000));
    Atomics.store(this.state, 0, 1);
  }

  callEnded(): void {
    Atomics.store(this.state, 0, 0);
  }

  async stop(): Promise<void> {
    await this.worker.terminate();
  }
}

/** The connecting process's uid; -1 when it cannot be told (then refused). */
function peerUid(conn: net.Socket): number {
  const fd = (conn as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) return -1;
  try {
    return native().peerUid(fd);
  } catch {
    return -1;
  }
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

const USAGE = 'usage: cni-ts daemon [--socket PATH] [--log-calls] [--call-timeout SECONDS]';

export async function daemonMain(args: string[]): Promise<number> {
  const log = (line: string) => process.stderr.write(`cni-ts daemon: ${line}\n`);
  let socketPath = process.env.CNI_TS_DAEMON_SOCKET || DEFAULT_SOCKET;
  let logCalls = false;
  let callTimeoutMs = 300_000;
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--socket' && args[i + 1]) socketPath = args[++i];
    else if (args[i] === '--log-calls') logCalls = true;
    else if (args[i] === '--call-timeout' && /^\d+$/.test(args[i + 1] ?? '')) callTimeoutMs = Number(args[++i]) * 1000;
    else {
      log(`unknown argument ${JSON.stringify(args[i])}\n${USAGE}`);
      return 2;
    }
  }
  keepStdoutForJson();
  const daemon = new Daemon({ socketPath, log, logCalls, callTimeoutMs });
  try {
    await daemon.listen();
  } catch (e) {
    log((e as Error).message);
    return 1;
  }
  // A stray rejection from a library's background work must not take every
  // later call down with it; it is logged where an operator looks.
  process.on('unhandledRejection', (e) => log(`unhandled rejection: ${(e as Error)?.stack ?? e}`));
  log(`listening on ${socketPath}`);
  return new Promise<number>((resolve) => {
    const stop = () => {
      void daemon.close().then(() => {
        log(`stopped after ${daemon.calls} calls`);
        resolve(0);
      });
    };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
}
