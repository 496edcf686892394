/**
 * macvlan + IPAM vs the reference: our bin/macvlan (cluster-ipam on its
 * local store, in-process) against /usr/lib/cni/macvlan +
 * /usr/lib/cni/host-local (exec'd by the macvlan plugin) with the same
 * configuration: master eth0, mode bridge, one /24. Each round ADDs one
 * container and DELs it again. Reports medians, the ratio and peak memory,
 * for both ways our plugin is reached: standalone (each call execs the
 * packaged executable) and through the shim and a resident `cni-ts daemon`.
 *
 * Both run inside a private network namespace standing in for the host,
 * whose `eth0` is one end of a veth made here: the machine's own interfaces
 * are never a parent. The bench thread enters that namespace around each
 * spawn (withNetns), adding nothing to the measured exec.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Mode, Row, Side, interleave, standalone, startDaemon, summarize, sweepStale } from './lib';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 30);
// bench/run.sh runs from the repository root
const root = process.cwd();
// The bundle in dist/bench cannot find the native binding (setns) from its
// own path; it is read when first needed, so setting it here is in time.
process.env.NETLINK_TS_NATIVE ??= path.join(root, 'dist/netlink_native.node');

const ours = path.join(root, 'bin/macvlan');
const reference = '/usr/lib/cni/macvlan';

/** Names carry our pid, so a run that was killed (no finally) is recognised and swept by the next one. */
const PREFIX = 'bench-macvlan-';


function side(binary: string, ipamType: string, tag: string, subnet: string, dataDir: string): Side {
  const conf = {
    cniVersion: '1.0.0',
    name: `bench-macvlan-${tag}`,
    type: 'macvlan',
    master: 'eth0',
    mode: 'bridge',
    ipam: { type: ipamType, ranges: [[{ subnet }]], dataDir },
  };
  return { binary, cniPath: path.dirname(binary), conf: JSON.stringify(conf), netns: `${PREFIX}${process.pid}-${tag}` };
}

function main(): void {
  sweepStale(PREFIX);
  const host = `${PREFIX}${process.pid}-host`;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `${PREFIX}${process.pid}-`));
  const o = side(ours, 'cluster-ipam', 'o', '10.232.1.0/24', path.join(dir, 'ours'));
  const r = side(reference, 'host-local', 'r', '10.232.2.0/24', path.join(dir, 'ref'));
  const rows: Record<string, Row> = {};
  const modes: Mode[] = [];
  let daemonPeakKb = 0;
  const made: string[] = [];
  try {
    for (const ns of [host, o.netns, r.netns]) {
      execFileSync('ip', ['netns', 'add', ns]);
      made.push(ns);
    }
    // the parent: a veth whose other end stays in the host namespace, both up
    execFileSync('ip', ['-n', host, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'peer0']);
    for (const l of ['eth0', 'peer0']) execFileSync('ip', ['-n', host, 'link', 'set', l, 'up']);
    modes.push(standalone, startDaemon(root, host, path.join(dir, 'daemon.sock')));
    for (const mode of modes) {
      for (const what of ['ADD', 'DEL']) rows[mode.label + what] = { what: `macvlan ${what} (${mode.label})`, ours: [], reference: [] };
      interleave(host, { ...o, env: mode.env }, r, ROUNDS, rows[`${mode.label}ADD`], rows[`${mode.label}DEL`]);
      daemonPeakKb = Math.max(daemonPeakKb, mode.daemonPeakKb());
    }
  } finally {
    for (const mode of modes) mode.stop();
    // the host namespace takes the parent veth with it
    for (const ns of made.reverse()) execFileSync('ip', ['netns', 'del', ns]);
    fs.rmSync(dir, { recursive: true, force: true });
  }
  console.log(`macvlan (bin/macvlan, cluster-ipam local) vs reference (${reference} + host-local), ${ROUNDS} rounds, medians:`);
  console.log(summarize(Object.values(rows)));
  console.log(`daemon peak memory: ${(daemonPeakKb / 1024).toFixed(1)} MB (resident once per node, not per call); target <= 1.0x`);
}

main();
