/**
 * The real SkelIO of a plugin process: stdin, stdout, the stderr logger,
 * and the kernel probes the skel's CNI_NETNS and CNI_IFNAME checks use.
 * The CNI core (shared/cni/skel.ts) stays free of kernel code; this is where
 * the process supplies it. The daemon's workers use the same probes.
 */
import type { NetnsStatus, Plugin, SkelIO } from '../shared/cni/skel';
import { runPlugin } from '../shared/cni/skel';
import { stderrLog } from '../shared/log';
import { isNetnsPath, netnsInode } from '../shared/netns/netns';
import { readAllSync, writeAllSync } from '../shared/sys/stdio';

/**
 * Is CNI_NETNS a network namespace, and is it ours? shared/netns asks the
 * kernel (NS_GET_NSTYPE), so a UTS or mount namespace file is refused too.
 * "Ours" is the calling thread's: a daemon worker's, as a plugin process's.
 */
export function netnsStatus(netnsPath: string): NetnsStatus {
  if (!isNetnsPath(netnsPath)) return 'not-netns';
  return netnsInode(netnsPath) === netnsInode('/proc/thread-self/ns/net') ? 'own' : 'netns';
}

/** Does ifname exist in the namespace at netnsPath? */
export function interfaceExists(netnsPath: string, ifname: string): boolean {
  // Loaded on demand: only ADD of an interface-creating plugin needs netlink.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const netlink = require('../shared/netlink') as { linkExistsInNetns(netnsPath: string, ifname: string): boolean };
  return netlink.linkExistsInNetns(netnsPath, ifname);
}

/** The SkelIO of this process: its environment, fds 0 and 1, the stderr logger, the real probes. */
export function processIO(): SkelIO {
  return {
    env: process.env,
    readStdin: () => readAllSync(0),
    writeStdout: (s) => writeAllSync(1, s),
    log: stderrLog,
    interfaceExists,
    netnsStatus,
  };
}

/**
 * A plugin executable's whole main: `pluginMain(plugin)`.
 * Exits right after the synchronous writes of the answer.
 */
export function pluginMain<C>(plugin: Plugin<C>): void {
  keepStdoutForJson();
  // Exit as soon as the answer is written. Everything we print is written
  // synchronously by then, and a plugin holds nothing worth an orderly
  // teardown: letting Node free its whole heap and environment first costs
  // about 10 ms per call, and an idle etcd connection would otherwise keep
  // the process alive until it times out.
  runPlugin(plugin, processIO()).then(
    (code) => process.exit(code),
    () => process.exit(1),
  );
}

/**
 * stdout belongs to the result JSON alone; a stray console.log in a plugin
 * or a library would make the runtime fail to parse it, so console output
 * goes to stderr.
 */
export function keepStdoutForJson(): void {
  const toStderr = (...args: unknown[]) => console.error(...args);
  console.log = toStderr;
  console.info = toStderr;
  console.debug = toStderr;
  console.dir = (obj: unknown) => console.error(obj);
}
