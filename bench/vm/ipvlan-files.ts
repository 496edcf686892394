/**
 * What bench/ipvlan-vm.ts (host) and bench/vm/ipvlan.bench.ts (guest) pass
 * each other through the run directory, which the VM sees as a writable
 * share at the same path. Its own module: the guest file registers a test at
 * load time, which only the guest runner may do.
 */
import type { Sample } from '../lib';

/** Written by the host before boot. */
export const CONFIG_FILE = 'bench-config.json';
/** Written by the guest after the last round. */
export const SAMPLES_FILE = 'bench-ipvlan.json';

export interface BenchConfig {
  rounds: number;
}

/** Per side and operation, one sample per round. */
export interface BenchSamples {
  /** ours standalone: each call execs the packaged executable */
  ours: { ADD: Sample[]; DEL: Sample[] };
  /** ours through the shim and a `cni-ts daemon` started once in the guest */
  daemon: { ADD: Sample[]; DEL: Sample[] };
  reference: { ADD: Sample[]; DEL: Sample[] };
  /** the daemon's peak resident memory, kB */
  daemonPeakKb: number;
}
