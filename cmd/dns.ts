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
import { parseFlags, UsageError } from '../shared/flags';
import { stderrLog } from '../shared/log';
import { serveSingleton, takeSingletonLock } from '../shared/sys/singleton';

const FLAGS = {
  dir: { type: 'string', default: DEFAULT_DATA_DIR },
  'lock-fd': { type: 'integer', min: 3, max: 1 << 20 },
  'exit-when-empty': { type: 'boolean' },
  'resolv-conf': { type: 'string' },
} as const;

const USAGE = 'usage: cni-ts dns [--dir DIR] [--lock-fd N] [--exit-when-empty] [--resolv-conf FILE]';

const log = (msg: string) => stderrLog(`${new Date().toISOString()} ${msg}`);

export async function dnsMain(argv: string[]): Promise<number> {
  let dir: string;
  let lockFdArg: number | undefined;
  let exitWhenEmpty: boolean;
  let resolvConf: string | undefined;
  try {
    const { values } = parseFlags(argv, FLAGS);
    dir = values.dir;
    lockFdArg = values['lock-fd'];
    exitWhenEmpty = values['exit-when-empty'] ?? false;
    resolvConf = values['resolv-conf'];
    if (!path.isAbsolute(dir)) throw new UsageError('--dir must be absolute');
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    stderrLog(`cni-ts dns: ${e.message}\n${USAGE}`);
    return 2;
  }
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const lockFd = takeSingletonLock(path.join(dir, LOCK_FILE), lockFdArg);
  if (lockFd === undefined) {
    log(`cni-ts dns: another resolver serves ${dir}`);
    return 1;
  }

  // records the resolver drops itself (a container namespace gone) go through reload: serial, exit when empty
  const resolver = new Resolver({ dir, resolvConf, log, recordsChanged: () => void server.reload() });
  const server = serveSingleton({
    pidFile: path.join(dir, PID_FILE),
    lockFd,
    pass: async ({ stop }) => {
      // the serial first: records changed after it are picked up by the next reload
      const serial = readSerial(dir);
      await resolver.reload();
      writeLoaded(dir, serial);
      log(`cni-ts dns: serving records serial ${serial}: networks [${resolver.networks().join(', ')}]`);
      if (!exitWhenEmpty || resolver.networks().length > 0) return false;
      // decided under the records lock: an ADD writes and signals under it too
      withLock(dir, () => {
        if (loadAll(dir).length === 0) {
          log('cni-ts dns: no DNS network has records left; exiting');
          stop(0);
        }
      });
      return true;
    },
  });
  await server.reload();
  log(`cni-ts dns: serving ${dir} (pid ${process.pid}): networks [${resolver.networks().join(', ')}], listening on [${resolver.listening().join(', ')}]`);
  // the listeners keep the process alive; with none yet, so does this
  setInterval(() => {}, 1 << 30);
  return new Promise<number>(() => {});
}
