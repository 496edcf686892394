/**
 * `cni-ts port-proxy`: the per-namespace ::1 relay (shared/portproxy/relay.ts)
 * as a process.
 *
 *   cni-ts port-proxy [--dir /run/cni-ts/port-proxy/<netns>] [--lock-fd N] [--udp-idle 60s]
 *
 * Started on demand by portmap ADD (shared/portproxy/launch.ts, which hands
 * it the already locked <dir>/relay.lock as --lock-fd 3), in the namespace
 * whose ::1 it serves. It holds that lock for its life, so there is one per
 * directory. SIGHUP, or a change of <dir>/serial: read the records again.
 * SIGTERM/SIGINT: stop. Every --prune-every it forgets the records of
 * containers whose network namespace is gone (they died without DEL). It
 * exits once no record is left (decided under the records lock, which every
 * writer takes).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseFlags, UsageError } from '../shared/flags';
import { stderrLog } from '../shared/log';
import { netnsId } from '../shared/nft/records';
import { RELAY_LOCK, RELAY_PID } from '../shared/portproxy/launch';
import { PORT_PROXY_ROOT, SERIAL_FILE, loadRecords, portProxyDir, pruneGone, readSerial, withRecordsLock, writeStatus } from '../shared/portproxy/records';
import { Relay } from '../shared/portproxy/relay';
import { serveSingleton, takeSingletonLock } from '../shared/sys/singleton';

const FLAGS = {
  dir: { type: 'string' },
  'lock-fd': { type: 'integer', min: 3, max: 1 << 20 },
  'udp-idle': { type: 'duration', default: 60_000, min: 100 },
  'prune-every': { type: 'duration', default: 10_000, min: 100 },
} as const;

const USAGE = 'usage: cni-ts port-proxy [--dir DIR] [--lock-fd N] [--udp-idle 60s] [--prune-every 10s]';

const log = (msg: string) => stderrLog(`${new Date().toISOString()} ${msg}`);

export async function portProxyMain(argv: string[]): Promise<number> {
  let dir: string;
  let lockFdArg: number | undefined;
  let udpIdleMs: number;
  let pruneMs: number;
  try {
    const { values } = parseFlags(argv, FLAGS);
    dir = values.dir ?? portProxyDir();
    lockFdArg = values['lock-fd'];
    udpIdleMs = values['udp-idle'];
    pruneMs = values['prune-every'];
    if (!path.isAbsolute(dir)) throw new UsageError('--dir must be absolute');
    // a namespace's directory is served from inside that namespace only: ::1 is per namespace
    if (path.dirname(dir) === PORT_PROXY_ROOT && path.basename(dir) !== netnsId()) {
      throw new UsageError(`--dir ${dir} belongs to another network namespace than this one (${netnsId()})`);
    }
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    stderrLog(`cni-ts port-proxy: ${e.message}\n${USAGE}`);
    return 2;
  }
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const lockFd = takeSingletonLock(path.join(dir, RELAY_LOCK), lockFdArg);
  if (lockFd === undefined) {
    log(`cni-ts port-proxy: another relay serves ${dir}`);
    return 1;
  }

  const relay = new Relay({ dir, log, udpIdleMs });
  const server = serveSingleton({
    pidFile: path.join(dir, RELAY_PID),
    lockFd,
    pass: async ({ stop }) => {
      // the serial first: records changed after it are picked up by the next reload
      const serial = readSerial(dir);
      const served = await relay.reload();
      writeStatus(dir, { serial, pid: process.pid, ...served });
      log(`cni-ts port-proxy: serial ${serial}: listening on [${served.listening.map((l) => `${l.protocol}/${l.hostPort}`).join(', ')}]${served.failed.length ? `, not bound: [${served.failed.map((f) => `${f.protocol}/${f.hostPort} ${f.error}`).join(', ')}]` : ''}`);
      if (relay.size > 0) return false;
      // decided under the records lock: an ADD writes its record and starts
      // or signals us under it too, so its record is either seen here or
      // brings a SIGHUP that reloads again
      withRecordsLock(dir, () => {
        if (loadRecords(dir).length > 0) return;
        log('cni-ts port-proxy: nothing left to serve; exiting');
        stop(0);
      });
      return false;
    },
  });
  const reload = () => server.reload();
  // a change of the serial (every writer bumps it) reloads too, should a signal be lost
  fs.watch(dir, (_event, name) => {
    if (name === SERIAL_FILE) void reload();
  }).on('error', (e) => log(`cni-ts port-proxy: watching ${dir}: ${e.message}; reloading on SIGHUP only`));
  // containers that died without DEL: their records go, and with the last one the relay
  setInterval(() => {
    pruneGone(dir, log).then(
      (serial) => {
        if (serial !== undefined) void reload();
      },
      (e: Error) => log(`cni-ts port-proxy: pruning: ${e.message}`),
    );
  }, pruneMs);
  await reload();
  log(`cni-ts port-proxy: serving ${dir} (pid ${process.pid}, netns ${netnsId()})`);
  return new Promise<number>(() => {});
}
