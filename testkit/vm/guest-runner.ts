/**
 * The one node process inside the VM: loads every selected guest file, runs
 * their tests in sequence and appends a record per result to results.jsonl.
 *
 * The host bundles this file with the guest files into one script (see
 * harness.ts, buildGuestBundle); the bundle's entry calls main() with a loader
 * per file. One process for all files because starting node under TCG costs
 * about ten seconds.
 *
 * Two modes:
 *   --plan              on the host: load the files, print the test list as
 *                       JSON, run nothing.
 *   --run <results>     in the VM: run everything, append records to <results>.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { registry, type RegisteredTest } from './guest-api';
import { encodeRecord, type GuestRecord, type PlannedTest } from './protocol';

export interface GuestFile {
  /** path relative to the repository root, as reported to the host */
  file: string;
  load: () => unknown;
}

/** Name of the synthetic test that fails when a file cannot be loaded. */
export const LOAD_TEST_NAME = '(loading the file)';
/** Name under which a failing afterAll hook is reported. */
export const AFTER_ALL_TEST_NAME = '(afterAll)';

// Taken before anything else runs, to measure node's start-up in the VM.
const startUptime = readUptime();

export async function main(files: GuestFile[]): Promise<void> {
  const args = process.argv.slice(2);
  const repo = valueOf(args, '--repo');
  if (repo) process.chdir(repo);
  // A bundle's __dirname is .vm/, not shared/netlink/: point netlink-ts at its
  // binding the way it documents (NETLINK_TS_NATIVE) so guest tests can use it.
  const binding = path.resolve('shared/netlink/native/build/Release/netlink_native.node');
  if (!process.env.NETLINK_TS_NATIVE && fs.existsSync(binding)) process.env.NETLINK_TS_NATIVE = binding;

  if (args.includes('--plan')) {
    const { planned } = loadAll(files);
    process.stdout.write(JSON.stringify(planned) + '\n');
    return;
  }
  const resultsPath = valueOf(args, '--run');
  if (!resultsPath) throw new Error('usage: guest.js --plan | --run <results.jsonl> [--repo <dir>]');

  const emit = (r: GuestRecord): void => {
    // appendFileSync: each record reaches the host share before the next step,
    // so a crash later still leaves every earlier result readable.
    fs.appendFileSync(resultsPath, encodeRecord(r));
  };
  emit({ t: 'runner-start', uptime: startUptime, kernel: os.release(), node: process.version });
  console.log(`@@vm runner-start uptime=${startUptime.toFixed(2)} kernel=${os.release()}`);

  const { planned, loadErrors } = loadAll(files);
  emit({ t: 'plan', tests: planned });
  for (const [file, error] of loadErrors) {
    report(emit, { file, name: LOAD_TEST_NAME, status: 'fail', error, ms: 0 });
  }

  for (const f of files) {
    for (const t of registry.tests.filter((x) => x.file === f.file)) {
      const started = Date.now();
      const error = await runOne(t);
      report(emit, { file: t.file, name: t.name, status: error === undefined ? 'pass' : 'fail', error, ms: Date.now() - started });
    }
    for (const hook of registry.afterAll.filter((h) => h.file === f.file)) {
      const started = Date.now();
      const error = await runOne({ file: hook.file, name: AFTER_ALL_TEST_NAME, fn: hook.fn, timeoutMs: 60_000 });
      // A clean hook is not a test; only a failing one is worth a line.
      if (error !== undefined) report(emit, { file: hook.file, name: AFTER_ALL_TEST_NAME, status: 'fail', error, ms: Date.now() - started });
    }
  }
  const end = readUptime();
  emit({ t: 'runner-end', uptime: end });
  console.log(`@@vm runner-end uptime=${end.toFixed(2)}`);
}

function loadAll(files: GuestFile[]): { planned: PlannedTest[]; loadErrors: Map<string, string> } {
  const planned: PlannedTest[] = [];
  const loadErrors = new Map<string, string>();
  for (const f of files) {
    registry.currentFile = f.file;
    try {
      f.load();
    } catch (e) {
      loadErrors.set(f.file, explain(e));
      planned.push({ file: f.file, name: LOAD_TEST_NAME });
    }
    registry.currentFile = '';
  }
  const seen = new Set<string>();
  for (const t of registry.tests) {
    const key = `${t.file}\u0000${t.name}`;
    // Duplicates are listed once; the protocol fails a name reported twice.
    if (!seen.has(key)) planned.push({ file: t.file, name: t.name });
    seen.add(key);
  }
  return { planned, loadErrors };
}

/**
 * Runs one test with its time limit. An exception escaping the test's own
 * promise chain (a throwing timer, an unhandled rejection) is charged to the
 * test that is running, rather than killing the runner.
 */
async function runOne(t: RegisteredTest): Promise<string | undefined> {
  let timer: NodeJS.Timeout | undefined;
  let onStray: ((e: unknown) => void) | undefined;
  const stray = new Promise<never>((_, reject) => {
    onStray = reject;
    process.on('uncaughtException', onStray);
    process.on('unhandledRejection', onStray);
  });
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${t.timeoutMs} ms`)), t.timeoutMs);
  });
  try {
    await Promise.race([Promise.resolve().then(() => t.fn()), stray, timeout]);
    return undefined;
  } catch (e) {
    return explain(e);
  } finally {
    clearTimeout(timer);
    process.off('uncaughtException', onStray!);
    process.off('unhandledRejection', onStray!);
  }
}

function report(emit: (r: GuestRecord) => void, r: Omit<Extract<GuestRecord, { t: 'result' }>, 't'>): void {
  emit({ t: 'result', ...r });
  console.log(`@@vm ${r.status.toUpperCase()} ${r.file} > ${r.name} (${r.ms} ms)`);
  if (r.error) console.log(r.error.replace(/^/gm, '    '));
}

function explain(e: unknown): string {
  if (e instanceof Error) {
    // The stack points into the bundle; the message is what the reader needs,
    // the first frames help find the line.
    const frames = (e.stack ?? '').split('\n').filter((l) => l.trimStart().startsWith('at ')).slice(0, 4);
    return [`${e.name}: ${e.message}`, ...frames].join('\n');
  }
  return `non-Error thrown: ${String(e)}`;
}

function valueOf(args: string[], flag: string): string | undefined {
  const i = args.indexOf(flag);
  return i >= 0 ? args[i + 1] : undefined;
}

function readUptime(): number {
  try {
    return Number(fs.readFileSync('/proc/uptime', 'utf8').split(' ')[0]);
  } catch {
    return -1;
  }
}
