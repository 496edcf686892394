/**
 * `cni-ts daemon` for tests (and the benches): started from a bin/ directory, on a socket of
 * the test's own, in the test's namespaces or inside a given network
 * namespace (the daemon serves only callers in its own namespace, so tests
 * that play a host with a namespace start the daemon there and call the
 * plugins there with `nsenter --net=`, which keeps the mount namespace).
 * Started with --log-calls: the log says which calls it served and which it
 * declined.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

export interface TestDaemon {
  child: ChildProcess;
  pid: number;
  socket: string;
  log(): string;
  /** calls served so far */
  served(): number;
  /** SIGTERM, then wait until it is gone; never throws */
  stop(): void;
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** Exited (a zombie until Node reaps it) or gone. */
export function processGone(pid: number): boolean {
  try {
    return /^\d+ \(.*\) [ZX]/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return true;
  }
}

/** logCalls (default on) adds a log line per call; benchmarks turn it off. */
export function startDaemon(opts: { binDir: string; socket: string; netns?: string; args?: string[]; logCalls?: boolean }): TestDaemon {
  const logFile = `${opts.socket}.log`;
  const fd = fs.openSync(logFile, 'w');
  // a liveness directory of its own: the host's (/var/lib/cni-ts/ipam-etcd)
  // may hold other tests' records of etcds long gone
  const argv = [path.join(opts.binDir, 'cni-ts'), 'daemon', '--socket', opts.socket, '--liveness-dir', `${opts.socket}.liveness`, ...(opts.logCalls === false ? [] : ['--log-calls']), ...(opts.args ?? [])];
  const env = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' };
  // nsenter execs the daemon: the child's pid is the daemon's
  const child = opts.netns
    ? spawn('nsenter', [`--net=${opts.netns}`, '--', ...argv], { stdio: ['ignore', fd, fd], env })
    : spawn(argv[0], argv.slice(1), { stdio: ['ignore', fd, fd], env });
  fs.closeSync(fd);
  child.unref();
  const pid = child.pid!;
  const log = () => fs.readFileSync(logFile, 'utf8');
  for (let waited = 0; !log().includes('listening on'); waited += 20) {
    if (waited > 30_000 || processGone(pid)) throw new Error(`cni-ts daemon did not start: ${log()}`);
    sleepSync(20);
  }
  return {
    child,
    pid,
    socket: opts.socket,
    log,
    served: () => (log().match(/^cni-ts daemon: served /gm) ?? []).length,
    stop: () => {
      try {
        process.kill(pid, 'SIGTERM');
      } catch {
        return;
      }
      for (let waited = 0; !processGone(pid) && waited < 10_000; waited += 20) sleepSync(20);
    },
  };
}
