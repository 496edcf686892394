/**
 * none vs the reference loopback plugin: VERSION and an ADD/DEL cycle in a
 * fresh namespace, from the packaged executable (bin/none) and from
 * /usr/lib/cni/loopback. Reports medians, the ratio and peak memory.
 */
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { Row, Sample, assertOk, runOnce, summarize } from './lib';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 30);
// bench/run.sh runs from the repository root
const root = process.cwd();
const ours = path.join(root, 'bin/none');
const reference = '/usr/lib/cni/loopback';

function cycle(binary: string, type: string, ns: string, i: number): { add: Sample; del: Sample; version: Sample } {
  const conf = JSON.stringify({ cniVersion: '1.0.0', name: 'bench-none', type });
  const env = { CNI_CONTAINERID: `bench${i}`, CNI_NETNS: `/var/run/netns/${ns}`, CNI_IFNAME: 'lo', CNI_PATH: path.dirname(binary) };
  const version = runOnce({ binary, env: { CNI_COMMAND: 'VERSION' }, stdin: conf });
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
  for (const what of ['VERSION', 'ADD', 'DEL']) rows[what] = { what: `none ${what}`, ours: [], reference: [] };
  try {
    // warm the page cache and the native binding's extracted copy
    cycle(ours, 'none', ns, -1);
    cycle(reference, 'loopback', ns, -1);
    for (let i = 0; i < ROUNDS; i++) {
      // interleave so both see the same machine state
      const o = cycle(ours, 'none', ns, i);
      const r = cycle(reference, 'loopback', ns, i);
      rows.VERSION.ours.push(o.version);
      rows.VERSION.reference.push(r.version);
      rows.ADD.ours.push(o.add);
      rows.ADD.reference.push(r.add);
      rows.DEL.ours.push(o.del);
      rows.DEL.reference.push(r.del);
    }
  } finally {
    execFileSync('ip', ['netns', 'del', ns]);
  }
  console.log(`none (bin/none, packaged) vs reference loopback (${reference}), ${ROUNDS} rounds, medians:`);
  console.log(summarize(Object.values(rows)));
}

main();
