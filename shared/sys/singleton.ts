/**
 * One long-lived helper process per state directory, started on demand by
 * the first plugin call that needs it (as netavark starts aardvark-dns):
 * the resolver (`cni-ts dns`) and the ::1 relay (`cni-ts port-proxy`).
 *
 * Never two per directory: the helper holds an exclusive flock on
 * <dir>/<name>.lock for its whole life. A caller that can take that lock
 * (LOCK_NB) knows none runs, and hands its locked descriptor to the child it
 * starts (as fd 3): the lock passes to the child without a moment where a
 * second caller could take it too. A caller that cannot take it signals the
 * pid in <dir>/<name>.pid (SIGHUP: reload), which the helper writes after
 * its SIGHUP handler is installed and before it first reads its records:
 * when there is no pid file yet, the starting helper has not read them yet
 * and will see the caller's.
 *
 * The child is detached (its own session), runs with a fixed PATH and
 * nothing of the caller's environment, in the namespaces the caller runs
 * in, and logs to <dir>/<name>.log (0600).
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LOCK_EX, LOCK_NB, flock } from './flock';
import { writeFileAtomic } from './file';

const SAFE_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** The command that runs this executable: the packaged one, or node and the bundle in development. */
export function selfCommand(): string[] {
  const argv = [process.execPath];
  if (process.argv[1] && /\.c?js$/.test(process.argv[1])) argv.push(process.argv[1]);
  return argv;
}

export interface SingletonSpec {
  /** the state directory (created 0700) */
  dir: string;
  /** file stem of <name>.lock, <name>.pid, <name>.log */
  name: string;
  /** the subcommand of this executable the helper runs, e.g. 'dns'; also how its pid is recognised */
  subcommand: string;
  /** extra arguments after `--dir DIR --lock-fd 3` */
  args?: string[];
  /** the command to start it with (default selfCommand()); undefined: this process must not start it */
  command?: () => string[] | undefined;
}

export class Singleton {
  constructor(private readonly spec: SingletonSpec) {}

  get lockFile(): string {
    return path.join(this.spec.dir, `${this.spec.name}.lock`);
  }

  get pidFile(): string {
    return path.join(this.spec.dir, `${this.spec.name}.pid`);
  }

  get logFile(): string {
    return path.join(this.spec.dir, `${this.spec.name}.log`);
  }

  /** The running helper's pid, if the pid file names a live one of this directory. */
  pid(): number | undefined {
    let pid: number;
    try {
      pid = Number(fs.readFileSync(this.pidFile, 'utf8').trim());
    } catch {
      return undefined;
    }
    if (!Number.isInteger(pid) || pid <= 1) return undefined;
    try {
      // never signal a pid that was reused by something else
      const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      if (!argv.includes(this.spec.subcommand) || !argv.includes(this.spec.dir)) return undefined;
    } catch {
      return undefined;
    }
    return pid;
  }

  /** Whether a helper holds the directory's lock (a starting one too). */
  running(): boolean {
    let fd: number;
    try {
      fd = fs.openSync(this.lockFile, fs.constants.O_RDWR);
    } catch {
      return false;
    }
    try {
      flock(fd, LOCK_EX | LOCK_NB);
      return false;
    } catch {
      return true;
    } finally {
      fs.closeSync(fd);
    }
  }

  /** SIGHUP to the running helper; false when none runs (or it has not written its pid yet). */
  signal(): boolean {
    const pid = this.pid();
    if (pid === undefined) return false;
    try {
      process.kill(pid, 'SIGHUP');
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Starts the helper when none runs, otherwise tells it to reload:
   * 'started', 'signalled', 'starting' (it holds the lock but has not
   * written its pid: it will read the records as they are now) or
   * 'unavailable' (this process may not start it).
   */
  ensure(): 'started' | 'signalled' | 'starting' | 'unavailable' {
    const command = (this.spec.command ?? selfCommand)();
    if (!command) return 'unavailable';
    fs.mkdirSync(this.spec.dir, { recursive: true, mode: 0o700 });
    const fd = fs.openSync(this.lockFile, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
    try {
      try {
        flock(fd, LOCK_EX | LOCK_NB);
      } catch {
        return this.signal() ? 'signalled' : 'starting';
      }
      // none runs: a pid file left by a dead one must not be signalled by others
      fs.rmSync(this.pidFile, { force: true });
      const log = fs.openSync(this.logFile, 'a', 0o600);
      try {
        const [cmd, ...pre] = command;
        const child = spawn(cmd!, [...pre, this.spec.subcommand, '--dir', this.spec.dir, '--lock-fd', '3', ...(this.spec.args ?? [])], {
          detached: true,
          cwd: '/',
          stdio: ['ignore', log, log, fd],
          env: { PATH: SAFE_PATH },
        });
        child.unref();
      } finally {
        fs.closeSync(log);
      }
      return 'started';
    } finally {
      // the child holds the lock through its own copy of the descriptor
      fs.closeSync(fd);
    }
  }
}

/**
 * The helper's own side: holds the directory's lock (the descriptor
 * inherited from ensure() as --lock-fd, which a second flock by the holder
 * confirms, or the lock file taken now); undefined when another helper
 * holds it.
 */
export function takeSingletonLock(lockFile: string, inheritedFd?: number): number | undefined {
  const fd = inheritedFd ?? fs.openSync(lockFile, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
  try {
    flock(fd, LOCK_EX | LOCK_NB);
    return fd;
  } catch {
    if (inheritedFd === undefined) fs.closeSync(fd);
    return undefined;
  }
}

export interface SingletonServer {
  /** run a pass now, or once more after the running one (passes never overlap) */
  reload(): Promise<void>;
  /** remove the pid file, let the lock go, exit */
  stop(code: number): never;
}

/**
 * A helper's life around its passes: `pass` reads the records and serves
 * them (true: run again at once); reloads asked for during a pass coalesce
 * into one more. SIGHUP reloads, SIGTERM/SIGINT stop. The pid file is
 * written after the handlers are installed (Singleton.ensure's callers
 * signal it, and rely on that order). stop lets the lock go before the
 * process exits: a caller holding the helper's records lock then sees no
 * helper and starts a new one.
 */
export function serveSingleton(o: { pidFile: string; lockFd: number; pass: (server: SingletonServer) => Promise<boolean> }): SingletonServer {
  let reloading = false;
  let again = false;
  const server: SingletonServer = {
    stop(code: number): never {
      fs.rmSync(o.pidFile, { force: true });
      fs.closeSync(o.lockFd);
      process.exit(code);
    },
    async reload(): Promise<void> {
      if (reloading) {
        again = true;
        return;
      }
      reloading = true;
      try {
        do {
          again = false;
          if (await o.pass(server)) again = true;
        } while (again);
      } finally {
        reloading = false;
      }
    },
  };
  process.on('SIGHUP', () => void server.reload());
  process.on('SIGTERM', () => server.stop(0));
  process.on('SIGINT', () => server.stop(0));
  writeFileAtomic(o.pidFile, `${process.pid}\n`);
  return server;
}
