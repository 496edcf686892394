/**
 * One worker thread of `cni-ts daemon` (cmd/daemon.ts): it runs plugin
 * calls one at a time, through the same skel as a plugin process, with the
 * call's own environment and stdin, and posts back stdout, stderr and the
 * exit code.
 *
 * Why threads: setns(2) moves only the calling thread, so each worker can
 * enter a container's network namespace without disturbing the others, and
 * a call blocked in flock(2) or waiting for etcd holds one worker, not the
 * daemon. Everything else a call could touch that is shared by the process
 * (the environment, stdout, stderr) is the call's own here: the plugin reads
 * its environment from the skel's context (a copy of the caller's), and
 * logs through the call's logger (ctx.log), which collects its lines for
 * the caller, never the daemon's own streams. Nothing here patches the
 * process's stdout or stderr streams: a module that writes there directly
 * is a bug (only shared/log.ts may), and its text lands in the daemon's log.
 *
 * The worker's calls take flock(2) locks that other workers of this daemon
 * may hold too. A call that needs a lock exclusively after others share it
 * (shared/sys/flock.ts withExclusiveTurn) asks the main thread for its turn
 * rather than blocking this thread in flock(2) behind its siblings
 * (cmd/daemon-pool.ts grants it).
 *
 * After each call the worker checks it is back in its own network namespace
 * (plugins leave the namespaces they enter; this makes sure). If it cannot
 * get back, the call's answer still goes to its caller (the call ran; it must
 * never be run again), and the worker is retired: a thread left in a
 * container's namespace never serves another call.
 */
import * as fs from 'node:fs';
import { parentPort } from 'node:worker_threads';
import { runPlugin, type SkelIO } from '../shared/cni/skel';
import { textLogger } from '../shared/log';
import { setExclusiveArbiter } from '../shared/sys/flock';
import { CLONE_NEWNET, setns } from '../shared/sys/setns';
import { interfaceExists, keepStdoutForJson, netnsStatus } from './plugin-io';
import { type PluginModule, findPlugin, plugins } from './plugins';

/** main thread -> worker */
export interface CallMessage {
  id: number;
  name: string;
  env: Record<string, string>;
  stdin: Uint8Array;
}

/** main thread -> worker: the call `id` may take its exclusive lock now */
export interface TurnMessage {
  type: 'turn';
  id: number;
}

export type ToWorker = CallMessage | TurnMessage;

/** worker -> main thread */
export type WorkerMessage =
  | { type: 'answer'; id: number; code: number; stdout: string; stderr: string; /** the worker cannot serve again */ fatal?: string }
  | { type: 'log'; line: string }
  /** the call `id` asks for its exclusive turn (want), or is done with it */
  | { type: 'turn'; id: number; file: string; want: boolean };

/** The worker thread's network namespace, and the way back to its own. */
export interface ThreadNetns {
  current(): bigint;
  readonly home: bigint;
  returnHome(): void;
}

function realThreadNetns(): ThreadNetns {
  const inode = (f: string) => fs.statSync(f, { bigint: true }).ino;
  const homeFd = fs.openSync('/proc/thread-self/ns/net', fs.constants.O_RDONLY);
  return {
    current: () => inode('/proc/thread-self/ns/net'),
    home: inode('/proc/thread-self/ns/net'),
    returnHome: () => setns(homeFd, CLONE_NEWNET),
  };
}

/** Runs one call; resolves to its answer. Never rejects. */
export async function serveCall(msg: CallMessage, netns: ThreadNetns, find: (name: string) => (() => PluginModule) | undefined = findPlugin): Promise<WorkerMessage & { type: 'answer' }> {
  const stdout: string[] = [];
  const stderr: string[] = [];
  const stdin = Buffer.from(msg.stdin);
  const log = textLogger((s) => stderr.push(s));
  const io: SkelIO = {
    // A plugin this call execs (an IPAM found in CNI_PATH) that is itself
    // a shim must not wait for this daemon, busy with this very call.
    env: { ...msg.env, CNI_TS_NO_DAEMON: '1' },
    readStdin: () => stdin,
    writeStdout: (s) => stdout.push(s),
    log,
    interfaceExists,
    netnsStatus,
  };
  let code = 1;
  let fatal: string | undefined;
  try {
    const load = find(msg.name);
    if (!load) throw new Error(`not a plugin: ${JSON.stringify(msg.name)}`);
    code = await runPlugin(load().plugin, io);
  } catch (e) {
    // runPlugin never rejects; a plugin module that fails to load does
    log(`cni-ts daemon: ${(e as Error).message}`);
  } finally {
    fatal = backHome(netns);
  }
  return { type: 'answer', id: msg.id, code, stdout: stdout.join(''), stderr: stderr.join(''), ...(fatal ? { fatal } : {}) };
}

/** undefined when the thread is in its own network namespace (again); else why not. */
function backHome(netns: ThreadNetns): string | undefined {
  try {
    if (netns.current() === netns.home) return undefined;
    netns.returnHome();
    if (netns.current() === netns.home) return undefined;
    return 'still in another network namespace after setns';
  } catch (e) {
    return `cannot return to its network namespace: ${(e as Error).message}`;
  }
}

/** The worker thread's main: serve calls posted by the daemon's main thread. */
export function workerMain(): void {
  const port = parentPort!;
  const post = (m: WorkerMessage) => port.postMessage(m);
  keepStdoutForJson();
  // A stray rejection from a library's background work (an etcd client
  // after its call) must not take the worker down; it goes to the daemon's log.
  process.on('unhandledRejection', (e) => post({ type: 'log', line: `unhandled rejection: ${(e as Error)?.stack ?? e}` }));
  const netns = realThreadNetns();
  let retired = false;
  // the call running now (one at a time), and its pending turn
  let current: number | undefined;
  let granted: (() => void) | undefined;
  setExclusiveArbiter({
    turn: (file) =>
      new Promise<void>((resolve) => {
        if (current === undefined) return resolve();
        granted = resolve;
        post({ type: 'turn', id: current, file, want: true });
      }),
    done: (file) => {
      if (current !== undefined) post({ type: 'turn', id: current, file, want: false });
    },
  });
  port.on('message', (msg: ToWorker) => {
    if ('type' in msg) {
      if (msg.type === 'turn' && msg.id === current && granted) {
        const go = granted;
        granted = undefined;
        go();
      }
      return;
    }
    if (retired) return;
    current = msg.id;
    void serveCall(msg, netns).then((answer) => {
      current = undefined;
      granted = undefined;
      if (answer.fatal) retired = true;
      post(answer);
    });
  });
  // Load every plugin's code now, while idle: the first call is then as
  // fast as the hundredth.
  setImmediate(() => {
    for (const load of plugins.values()) {
      try {
        load();
      } catch {
        // reported by the call that needs it
      }
    }
  });
}
