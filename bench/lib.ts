/**
 * Benchmark helpers: run a CNI binary the way a runtime does (env + stdin),
 * time it from the outside, and read its peak RSS through GNU time.
 * Timings are reported, never asserted.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { withNetns } from '../shared/netns/netns';
import { startDaemon as startTestDaemon } from '../testkit/daemon';

export interface Call {
  binary: string;
  env: Record<string, string>;
  stdin: string;
}

export interface Sample {
  ms: number;
  peakKb: number;
  status: number;
  stdout: string;
}

/** One plugin call; the wall time covers exec to exit, as a runtime sees it. */
export function runOnce(call: Call): Sample {
  const env = { PATH: process.env.PATH ?? '/usr/bin:/bin', ...call.env };
  const start = process.hrtime.bigint();
  const r = spawnSync('/usr/bin/time', ['-f', '%M', call.binary], { env, input: call.stdin, encoding: 'utf8' });
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  const lines = (r.stderr ?? '').trim().split('\n');
  return { ms, peakKb: Number(lines[lines.length - 1]) || 0, status: r.status ?? -1, stdout: r.stdout ?? '' };
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

export interface Row {
  what: string;
  ours: Sample[];
  reference: Sample[];
}

export function summarize(rows: Row[]): string {
  const head = ['operation', 'ours ms', 'ref ms', 'ratio', 'ours peak MB', 'ref peak MB'];
  const lines = rows.map((r) => {
    const o = median(r.ours.map((s) => s.ms));
    const f = median(r.reference.map((s) => s.ms));
    const om = Math.max(...r.ours.map((s) => s.peakKb)) / 1024;
    const fm = Math.max(...r.reference.map((s) => s.peakKb)) / 1024;
    return [r.what, o.toFixed(1), f.toFixed(1), `${(o / f).toFixed(2)}x`, om.toFixed(1), fm.toFixed(1)];
  });
  const widths = head.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)));
  const fmt = (cols: string[]) => cols.map((c, i) => c.padEnd(widths[i])).join('  ');
  return [fmt(head), fmt(widths.map((w) => '-'.repeat(w))), ...lines.map(fmt)].join('\n');
}

export function assertOk(s: Sample, what: string): void {
  if (s.status !== 0) throw new Error(`${what} failed (exit ${s.status}): ${s.stdout}`);
}

/** A plugin side of a benchmark: its binary, CNI_PATH, config and container namespace. */
export interface Side {
  binary: string;
  /** added to the call's environment (the daemon's socket, or CNI_TS_NO_DAEMON) */
  env?: Record<string, string>;
  cniPath: string;
  conf: string;
  netns: string;
}

/**
 * One plugin call as the runtime makes it, from inside `host` (a namespace
 * standing in for the machine's own, entered by this thread around the
 * spawn only, so nothing is added to the measured exec).
 */
export function callIn(host: string, s: Side, command: 'ADD' | 'DEL', i: number): Sample {
  const env = {
    CNI_COMMAND: command,
    CNI_CONTAINERID: `bench${i}`,
    CNI_NETNS: `/var/run/netns/${s.netns}`,
    CNI_IFNAME: 'eth0',
    CNI_PATH: s.cniPath,
    ...s.env,
  };
  const sample = withNetns(`/var/run/netns/${host}`, () => runOnce({ binary: s.binary, env, stdin: s.conf }));
  assertOk(sample, `${s.binary} ${command}`);
  return sample;
}

export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * Namespaces and temp dirs named `${prefix}<pid>-...` whose bench process is
 * gone (it was killed before cleaning up); returns the test for such names.
 */
export function sweepStale(prefix: string): (name: string) => boolean {
  const stale = (name: string) => {
    const m = new RegExp(`^${prefix}(\\d+)-`).exec(name);
    return m !== null && !alive(Number(m[1]));
  };
  for (const line of execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }).split('\n')) {
    const name = line.split(' ')[0];
    if (name && stale(name)) execFileSync('ip', ['netns', 'del', name]);
  }
  for (const name of fs.readdirSync(os.tmpdir())) if (stale(name)) fs.rmSync(path.join(os.tmpdir(), name), { recursive: true, force: true });
  return stale;
}

/**
 * ADD then DEL on each side in turn, `rounds` times after one warm-up round
 * (page cache, the native binding's extracted copy, bridges), interleaved so
 * both sides see the same machine state; samples go into rows[add]/rows[del].
 */
export function interleave(host: string, ours: Side, reference: Side, rounds: number, add: Row, del: Row): void {
  for (const s of [ours, reference]) {
    callIn(host, s, 'ADD', -1);
    callIn(host, s, 'DEL', -1);
  }
  for (let i = 0; i < rounds; i++) {
    for (const [s, key] of [
      [ours, 'ours'],
      [reference, 'reference'],
    ] as const) {
      add[key].push(callIn(host, s, 'ADD', i));
      del[key].push(callIn(host, s, 'DEL', i));
    }
  }
}

/**
 * How our plugins are reached: each call exec'ing the packaged executable
 * (standalone), or the shim handing it to a resident `cni-ts daemon`.
 */
export interface Mode {
  label: string;
  env: Record<string, string>;
  /** the daemon's peak resident memory so far, in kB (0 standalone) */
  daemonPeakKb(): number;
  stop(): void;
}

export const standalone: Mode = { label: 'standalone', env: { CNI_TS_NO_DAEMON: '1' }, daemonPeakKb: () => 0, stop: () => {} };

/**
 * Starts `bin/cni-ts daemon` inside `hostNs` (the namespace the bench calls
 * plugins from: the daemon serves only callers in its own namespace) on a
 * socket of its own, and waits until it listens.
 */
export function startDaemon(root: string, hostNs: string | undefined, socket: string): Mode {
  const daemon = startTestDaemon({ binDir: path.join(root, 'bin'), socket, netns: hostNs && `/var/run/netns/${hostNs}`, logCalls: false });
  return {
    label: 'daemon',
    env: { CNI_TS_DAEMON_SOCKET: socket },
    daemonPeakKb: () => {
      const m = /VmHWM:\s+(\d+)/.exec(fs.readFileSync(`/proc/${daemon.pid}/status`, 'utf8'));
      return m ? Number(m[1]) : 0;
    },
    stop: () => {
      daemon.stop();
      fs.rmSync(`${socket}.log`, { force: true });
    },
  };
}
