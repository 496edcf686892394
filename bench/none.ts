/**
 * none vs the reference loopback plugin: VERSION and an ADD/DEL cycle in a
 * fresh namespace, from the packaged executable (bin/none) and from
 * /usr/lib/cni/loopback. Reports medians, the ratio and peak memory.
 */
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { Mode, Row, Sample, assertOk, runOnce, standalone, startDaemon, summarize } from './lib';
import { RUN_ROOT } from '../shared/paths';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 30);
// bench/run.sh runs from the repository root
const root = process.cwd();
const ours = path.join(root, 'bin/none');
const reference = '/usr/lib/cni/loopback';

function cycle(binary: string, type: string, ns: string, i: number, extra: Record<string, string> = {}): { add: Sample; del: Sample; version: Sample } {
  const conf = JSON.stringify({ cniVersion: '1.0.0', name: 'bench-none', type });
  const env = { CNI_CONTAINERID: `bench${i}`, CNI_NETNS: `/var/run/netns/${ns}`, CNI_IFNAME: 'lo', CNI_PATH: path.dirname(binary), ...extra };
  const version = runOnce({ binary, env: { CNI_COMMAND: 'VERSION', ...extra }, stdin: conf });
  const add = runOnce({ binary, env: { ...env, CNI_COMMAND: 'ADD' }, stdin: conf });
  assertOk(add, `${binary} ADD`);
  const del = runOnce({ binary, env: { ...env, CNI_COMMAND: 'DEL' }, stdin: conf });
  assertOk(del, `${binary} DEL`);
  return { add, del, version };
}

function main(): void {
  const ns = `bench-none-${process.pid}`;
  execFileSync('ip', ['netns', 'add', ns]);
  const rows: Record<string, Row> = {};
  const modes: Mode[] = [];
  let daemonPeakKb = 0;
  try {
    // VERSION with no daemon to ask: the shim answers from the table the
    // build wrote into it (no Node start), against the Go reference
    const version: Row = { what: 'none VERSION (the shim alone, no daemon)', ours: [], reference: [] };
    const conf = JSON.stringify({ cniVersion: '1.0.0', name: 'bench-none', type: 'none' });
    const noDaemon = { CNI_COMMAND: 'VERSION', CNI_TS_DAEMON_SOCKET: path.join(RUN_ROOT, `bench-none-absent-${process.pid}.sock`) };
    for (let i = -1; i < ROUNDS; i++) {
      const o = runOnce({ binary: ours, env: noDaemon, stdin: conf });
      const r = runOnce({ binary: reference, env: { CNI_COMMAND: 'VERSION' }, stdin: conf });
      assertOk(o, `${ours} VERSION`);
      if (i < 0) continue; // warm-up
      version.ours.push(o);
      version.reference.push(r);
    }
    rows.shimVersion = version;
    // this process's own namespace is the host here: so is the daemon's
    modes.push(standalone, startDaemon(root, undefined, path.join(RUN_ROOT, `bench-none-${process.pid}.sock`)));
    for (const mode of modes) {
      for (const what of ['VERSION', 'ADD', 'DEL']) rows[mode.label + what] = { what: `none ${what} (${mode.label})`, ours: [], reference: [] };
      // warm the page cache and the native binding's extracted copy
      cycle(ours, 'none', ns, -1, mode.env);
      cycle(reference, 'loopback', ns, -1);
      for (let i = 0; i < ROUNDS; i++) {
        // interleave so both see the same machine state
        const o = cycle(ours, 'none', ns, i, mode.env);
        const r = cycle(reference, 'loopback', ns, i);
        for (const [what, key] of [
          ['VERSION', 'version'],
          ['ADD', 'add'],
          ['DEL', 'del'],
        ] as const) {
          rows[mode.label + what].ours.push(o[key]);
          rows[mode.label + what].reference.push(r[key]);
        }
      }
      daemonPeakKb = Math.max(daemonPeakKb, mode.daemonPeakKb());
    }
  } finally {
    for (const mode of modes) mode.stop();
    execFileSync('ip', ['netns', 'del', ns]);
  }
  console.log(`none (bin/none, packaged) vs reference loopback (${reference}), ${ROUNDS} rounds, medians:`);
  console.log(summarize(Object.values(rows)));
  console.log(`daemon peak memory: ${(daemonPeakKb / 1024).toFixed(1)} MB (resident once per node, not per call)`);
}

main();
