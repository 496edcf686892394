/**
 * Benchmark helpers: run a CNI binary the way a runtime does (env + stdin),
 * time it from the outside, and read its peak RSS through GNU time.
 * Timings are reported, never asserted.
 */
import { spawnSync } from 'node:child_process';

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
