/**
 * Services: long-running processes a network needs on its host while the
 * suite runs (a cluster store such as etcd, a per-host agent such as the
 * overlay's), declared in a descriptor's "services":
 *
 *   "services": [
 *     { "name": "etcd", "argv": ["etcd", "--data-dir", "${STATE_DIR}/etcd"], "readyLog": "ready to serve client requests" },
 *     { "name": "agent", "argv": ["cni-ts", "overlay-agent", "--node", "n1"], "readyLog": "registered host", "readyTimeoutMs": 20000 }
 *   ]
 *
 * Each starts in the host namespace (the suite's private one unless "host"
 * is "current") after hostSetup and before any rule, in the order listed,
 * each waiting for the one before to be ready; they stop in reverse order
 * after the last rule and the cleanup DELs, before the host namespace goes.
 * An argv[0] without a slash is looked up in the plugin directories first
 * (the packaged executable's tools live there), then in PATH. Ready means:
 * the service's output (stdout and stderr, kept in the run's scratch
 * directory) matched "readyLog" (a regular expression, ^ and $ at line
 * ends), or, without one, that it is still running
 * after a moment. A service that exits or is not ready in time is the
 * environment's fault, not a rule's: the run stops with a ConfigError that
 * quotes the end of its output.
 *
 * Everything stays synchronous like the rest of the suite: readiness is
 * polled, and a stopped child is recognised as a zombie in /proc (Node
 * reaps it only when the event loop runs again).
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import { sleepMs } from './clock';
import { inNs, type Ns } from './kernel';
import { ConfigError } from './libcni';

export const ServiceSchema = z
  .object({
    name: z.string().regex(/^[A-Za-z0-9_.-]+$/, 'letters, digits, "_", "." and "-" (it names the log file)'),
    argv: z.array(z.string()).min(1),
    /** a regular expression the service's output matches once it is ready (^ and $ match at line ends) */
    readyLog: z.string().min(1).optional(),
    readyTimeoutMs: z.number().int().min(100).max(300_000).default(20_000),
  })
  .strict();

export type ServiceSpec = z.infer<typeof ServiceSchema>;

export interface RunningService {
  readonly spec: ServiceSpec;
  readonly pid: number;
  readonly logFile: string;
}

/** Without readyLog, a service still running after this long counts as started. */
const SETTLE_MS = 300;

/** argv[0] as given when it has a slash; else the first plugin directory holding it; else left to PATH. */
export function resolveCommand(cmd: string, pluginDirs: readonly string[]): string {
  if (cmd.includes('/')) return cmd;
  for (const d of pluginDirs) {
    const p = path.join(d, cmd);
    if (fs.statSync(p, { throwIfNoEntry: false })?.isFile()) return path.resolve(p);
  }
  return cmd;
}

/** Starts one service inside `ns` and waits until it is ready; throws ConfigError (after stopping it) when it is not. */
export function startService(spec: ServiceSpec, ns: Ns, pluginDirs: readonly string[], logDir: string): RunningService {
  fs.mkdirSync(logDir, { recursive: true });
  const logFile = path.join(logDir, `${spec.name}.log`);
  const fd = fs.openSync(logFile, 'a');
  let child;
  try {
    // fork(2) copies the calling thread's network namespace, so a child
    // spawned while this thread is inside `ns` lives there for good
    child = inNs(ns, () => spawn(resolveCommand(spec.argv[0]!, pluginDirs), spec.argv.slice(1), { stdio: ['ignore', fd, fd] }));
  } finally {
    fs.closeSync(fd);
  }
  // spawn reports a failure to start through an 'error' event, which the
  // synchronous suite would only see later as an uncaught error; a missing
  // pid says the same now, and the checks below catch everything else
  child.on('error', () => undefined);
  if (child.pid === undefined) throw new ConfigError(`service ${spec.name}: cannot start ${spec.argv[0]} (not in the plugin directories or PATH)`);
  const svc: RunningService = { spec, pid: child.pid, logFile };
  const ready = spec.readyLog !== undefined ? new RegExp(spec.readyLog, 'm') : undefined;
  const deadline = Date.now() + (ready ? spec.readyTimeoutMs : SETTLE_MS);
  for (;;) {
    if (!isRunning(svc.pid)) throw new ConfigError(`service ${spec.name} exited before it was ready:\n${logTail(logFile)}`);
    if (ready && ready.test(fs.readFileSync(logFile, 'utf8'))) return svc;
    if (Date.now() >= deadline) {
      if (!ready) return svc;
      stopService(svc);
      throw new ConfigError(`service ${spec.name} did not log /${spec.readyLog}/ within ${spec.readyTimeoutMs} ms:\n${logTail(logFile)}`);
    }
    sleepMs(50);
  }
}

/** SIGTERM, then SIGKILL if it is still running after `graceMs`. Never throws. */
export function stopService(svc: RunningService, graceMs = 5000): void {
  signal(svc.pid, 'SIGTERM');
  const deadline = Date.now() + graceMs;
  while (isRunning(svc.pid) && Date.now() < deadline) sleepMs(50);
  if (isRunning(svc.pid)) {
    signal(svc.pid, 'SIGKILL');
    for (let i = 0; i < 40 && isRunning(svc.pid); i++) sleepMs(50);
  }
}

/** Starts every service in order; if one fails, those already started are stopped before the error goes on. */
export function startServices(specs: readonly ServiceSpec[], ns: Ns, pluginDirs: readonly string[], logDir: string): RunningService[] {
  const running: RunningService[] = [];
  try {
    for (const spec of specs) running.push(startService(spec, ns, pluginDirs, logDir));
    return running;
  } catch (e) {
    stopServices(running);
    throw e;
  }
}

/** Stops services newest first (an agent before the store it talks to). */
export function stopServices(running: readonly RunningService[]): void {
  for (const svc of [...running].reverse()) stopService(svc);
}

/** Alive and not a zombie: our children are reaped only when the event loop next runs. */
function isRunning(pid: number): boolean {
  let stat: string;
  try {
    stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return false;
  }
  // "pid (comm) S ...": comm may hold spaces and parentheses, the state follows the last ")"
  const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  return state !== 'Z' && state !== 'X';
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}

function logTail(file: string, chars = 1500): string {
  try {
    return fs.readFileSync(file, 'utf8').slice(-chars);
  } catch {
    return '(no output)';
  }
}
