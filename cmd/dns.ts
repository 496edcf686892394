/**
 * `cni-ts dns`: the per-host resolver (shared/dns/server.ts) as a process.
 *
 *   cni-ts dns [--dir /run/cni-ts/dns] [--exit-when-empty] [--resolv-conf /etc/resolv.conf]
 *
 * Started on demand by the first ADD on a DNS-enabled network (shared/dns/
 * launch.ts: it inherits the already locked <dir>/resolver.lock as
 * --lock-fd 3), or by systemd (examples/cni-ts-dns.service). Either way it
 * holds that lock for its life, so there is one per records directory.
 * SIGHUP: re-read the records (plugins send it after each change).
 * SIGTERM/SIGINT: stop. With --exit-when-empty (the on-demand start) it
 * exits once no network has records left.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DEFAULT_DATA_DIR } from '../shared/dns/config';
import { LOCK_FILE, PID_FILE } from '../shared/dns/launch';
import { loadAll, readSerial, withLock, writeLoaded } from '../shared/dns/records';
import { Resolver } from '../shared/dns/server';
import { stderrLog } from '../shared/log';
import { LOCK_EX, LOCK_NB, flock } from '../shared/sys';
import { writeFileAtomic } from '../shared/sys/file';

interface Args {
  dir: string;
  lockFd?: number;
  exitWhenEmpty: boolean;
  resolvConf?: string;
}

function parseArgs(argv: string[]): Args {
  const out: Args = { dir: DEFAULT_DATA_DIR, exitWhenEmpty: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === '--dir') out.dir = value();
    else if (a === '--lock-fd') out.lockFd = Number(value());
    else if (a === '--exit-when-empty') out.exitWhenEmpty = true;
    else if (a === '--resolv-conf') out.resolvConf = value();
    else throw new Error(`unknown argument ${a}`);
  }
  if (!path.isAbsolute(out.dir)) throw new Error('--dir must be absolute');
  if (out.lockFd !== undefined && !(Number.isInteger(out.lockFd) && out.lockFd > 2)) throw new Error('--lock-fd must be a descriptor above 2');
  return out;
}

const log = (msg: string) => stderrLog(`${new Date().toISOString()} ${msg}`);

export async function dnsMain(argv: string[]): Promise<number> {
  let args: Args;
  try {
    args = parseArgs(argv);
  } catch (e) {
    stderrLog(`cni-ts dns: ${(e as Error).message}\nusage: cni-ts dns [--dir DIR] [--exit-when-empty] [--resolv-conf FILE]`);
    return 2;
  }
  fs.mkdirSync(args.dir, { recursive: true, mode: 0o700 });
  const lockFd = args.lockFd ?? fs.openSync(path.join(args.dir, LOCK_FILE), fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
  try {
    // for an inherited descriptor this confirms we hold it (a second flock by the holder succeeds)
    flock(lockFd, LOCK_EX | LOCK_NB);
  } catch {
    log(`cni-ts dns: another resolver serves ${args.dir}`);
    return 1;
  }

  // records the resolver drops itself (a container namespace gone) go through reload: serial, exit when empty
  const resolver = new Resolver({ dir: args.dir, resolvConf: args.resolvConf, log, recordsChanged: () => void reload() });
  const pidFile = path.join(args.dir, PID_FILE);
  let reloading = false;
  let again = false;
  const stop = (code: number) => {
    fs.rmSync(pidFile, { force: true });
    process.exit(code);
  };
  const reload = async (): Promise<void> => {
    if (reloading) {
      again = true;
      return;
    }
    reloading = true;
    try {
      do {
        again = false;
        // the serial first: records changed after it are picked up by the next reload
        const serial = readSerial(args.dir);
        await resolver.reload();
        writeLoaded(args.dir, serial);
        log(`cni-ts dns: serving records serial ${serial}: networks [${resolver.networks().join(', ')}]`);
        if (args.exitWhenEmpty && resolver.networks().length === 0) {
          // decided under the records lock: an ADD writes and signals under it too
          withLock(args.dir, () => {
            if (loadAll(args.dir).length === 0) {
              log('cni-ts dns: no DNS network has records left; exiting');
              stop(0);
            }
          });
          again = true;
        }
      } while (again);
    } finally {
      reloading = false;
    }
  };
  // the handler first, then the pid file (launch.ts relies on this order)
  process.on('SIGHUP', () => void reload());
  process.on('SIGTERM', () => stop(0));
  process.on('SIGINT', () => stop(0));
  writeFileAtomic(pidFile, `${process.pid}\n`);
  await reload();
  log(`cni-ts dns: serving ${args.dir} (pid ${process.pid}): networks [${resolver.networks().join(', ')}], listening on [${resolver.listening().join(', ')}]`);
  // the listeners keep the process alive; with none yet, so does this
  setInterval(() => {}, 1 << 30);
  return new Promise<number>(() => {});
}
