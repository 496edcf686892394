/**
 * ipvlan vs the reference, inside the VM: this host's kernel has no ipvlan,
 * so the VM harness (testkit/vm/harness.ts) boots Debian's kernel under qemu
 * and runs bench/vm/ipvlan.bench.ts there, which execs the packaged
 * bin/ipvlan (seen through the VM's root share) and /usr/lib/cni/ipvlan +
 * host-local with the same configuration. Reports medians, the ratio and
 * peak memory.
 *
 * Under TCG every instruction is emulated, and unevenly so (node's JIT and
 * a Go binary do not slow down alike): only the ratio means anything, and
 * even it is a rough guide to the ratio on real hardware.
 *
 *   BENCHES=ipvlan-vm bash bench/run.sh      (BENCH_ROUNDS, default 7)
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { bootVm, formatTimings, prepareRun } from '../testkit/vm/harness';
import { summarize, type Row } from './lib';
import { CONFIG_FILE, SAMPLES_FILE, type BenchConfig, type BenchSamples } from './vm/ipvlan-files';

async function main(): Promise<number> {
  // every exec of ours is a Node start under TCG (seconds): fewer rounds than on the host
  const rounds = Number(process.env.BENCH_ROUNDS ?? 7);
  const run = prepareRun(['bench/vm/ipvlan.bench.ts']);
  fs.writeFileSync(path.join(run.runDir, CONFIG_FILE), JSON.stringify({ rounds } satisfies BenchConfig));
  const result = await bootVm(run, { timeoutMs: 1_800_000, keepRunDir: true });
  const failed = result.outcomes.filter((o) => o.status !== 'pass');
  if (failed.length || result.problems.length) {
    for (const o of failed) console.error(`FAIL ${o.name}\n${o.error ?? ''}`);
    for (const p of result.problems) console.error(`PROBLEM ${p}`);
    console.error(`run dir kept: ${run.runDir}`);
    return 1;
  }
  const samples = JSON.parse(fs.readFileSync(path.join(run.runDir, SAMPLES_FILE), 'utf8')) as BenchSamples;
  fs.rmSync(run.runDir, { recursive: true, force: true });
  const rows: Row[] = (['ours', 'daemon'] as const).flatMap((side) =>
    (['ADD', 'DEL'] as const).map((op) => ({ what: `ipvlan ${op} (${side === 'ours' ? 'standalone' : 'daemon'})`, ours: samples[side][op], reference: samples.reference[op] })),
  );
  console.log(`ipvlan in the VM (TCG, kernel ${result.guestKernel ?? '?'}): bin/ipvlan (cluster-ipam local) vs /usr/lib/cni/ipvlan + host-local, l2, ${rounds} rounds, medians:`);
  console.log(summarize(rows));
  console.log(`daemon peak memory: ${(samples.daemonPeakKb / 1024).toFixed(1)} MB (once per node); target <= 1.0x`);
  console.log(`only the ratio means anything under TCG; vm: ${formatTimings(result.timings)}`);
  return 0;
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    console.error(e instanceof Error ? e.stack : e);
    process.exit(2);
  },
);
