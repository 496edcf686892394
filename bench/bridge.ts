/**
 * bridge + IPAM vs the reference: our bin/bridge (ipMasq, cluster-ipam on
 * its local store, in-process) against /usr/lib/cni/bridge +
 * /usr/lib/cni/host-local (exec'd by the bridge) with the same
 * configuration. Each round ADDs one container and DELs it again, so every
 * DEL is the network's last and removes its NAT/firewall state (our nft
 * chains; the reference's iptables chains). Reports medians, the ratio and
 * peak memory.
 *
 * Both run inside a private network namespace standing in for the host, so
 * the machine's own bridges, firewall and ip_forward are left alone and
 * neither side pays for the other's rules. The bench thread enters it
 * around each spawn (withNetns), adding nothing to the measured exec.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Mode, Row, Side, alive, callIn, interleave, standalone, startDaemon, summarize, sweepStale } from './lib';
import { LOCK_DIR } from '../shared/paths';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 30);
// bench/run.sh runs from the repository root
const root = process.cwd();
// The bundle in dist/bench cannot find the native binding (setns) from its
// own path; it is read when first needed, so setting it here is in time.
process.env.NETLINK_TS_NATIVE ??= path.join(root, 'dist/netlink_native.node');

const ours = path.join(root, 'bin/bridge');
const reference = '/usr/lib/cni/bridge';

interface BridgeSide extends Side {
  bridge: string;
}

/** our plugin's lock files (plugins/bridge/main.ts) */

/** Names carry our pid, so a run that was killed (no finally) is recognised and swept by the next one. */
const PREFIX = 'bench-bridge-';

function side(binary: string, ipamType: string, tag: string, subnet: string, dataDir: string): BridgeSide {
  const bridge = `bb${tag}${process.pid}`;
  const conf = {
    cniVersion: '1.0.0',
    name: `bench-bridge-${tag}`,
    type: 'bridge',
    bridge,
    isDefaultGateway: true,
    ipMasq: true,
    ipam: { type: ipamType, ranges: [[{ subnet }]], dataDir },
  };
  return { binary, cniPath: path.dirname(binary), conf: JSON.stringify(conf), netns: `${PREFIX}${process.pid}-${tag}`, bridge };
}

/** Namespaces, temp dirs and lock files of earlier runs that were killed before cleaning up. */
function sweep(): void {
  sweepStale(PREFIX);
  for (const name of fs.existsSync(LOCK_DIR) ? fs.readdirSync(LOCK_DIR) : []) {
    const m = /^bridge-bbo(\d+)\.lock$/.exec(name);
    if (m && !alive(Number(m[1]))) fs.rmSync(path.join(LOCK_DIR, name), { force: true });
  }
}

function main(): void {
  sweep();
  const host = `${PREFIX}${process.pid}-host`;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `${PREFIX}${process.pid}-`));
  const o = side(ours, 'cluster-ipam', 'o', '10.231.1.0/24', path.join(dir, 'ours'));
  const r = side(reference, 'host-local', 'r', '10.231.2.0/24', path.join(dir, 'ref'));
  const rows: Record<string, Row> = {};
  const modes: Mode[] = [];
  let daemonPeakKb = 0;
  const made: string[] = [];
  try {
    for (const ns of [host, o.netns, r.netns]) {
      execFileSync('ip', ['netns', 'add', ns]);
      made.push(ns);
    }
    modes.push(standalone, startDaemon(root, host, path.join(dir, 'daemon.sock')));
    const row = (key: string, what: string): Row => (rows[key] = { what, ours: [], reference: [] });
    for (const mode of modes) {
      const ours = { ...o, env: mode.env };
      interleave(host, ours, r, ROUNDS, row(`${mode.label} ADD`, `bridge ADD, last container (${mode.label})`), row(`${mode.label} DEL`, `bridge DEL, last container (${mode.label})`));
    }
    // The common case: other containers stay on the network, so neither
    // side sets up or tears down the network's NAT and firewall state.
    for (const s of [o, r]) {
      execFileSync('ip', ['netns', 'add', `${s.netns}-res`]);
      made.push(`${s.netns}-res`);
      callIn(host, { ...s, env: standalone.env, netns: `${s.netns}-res` }, 'ADD', 1_000_000);
    }
    for (const mode of modes) {
      const ours = { ...o, env: mode.env };
      interleave(host, ours, r, ROUNDS, row(`${mode.label} busy ADD`, `bridge ADD, network in use (${mode.label})`), row(`${mode.label} busy DEL`, `bridge DEL, network in use (${mode.label})`));
      daemonPeakKb = Math.max(daemonPeakKb, mode.daemonPeakKb());
    }
  } finally {
    for (const mode of modes) mode.stop();
    // the host namespace takes the bridges, veths, nft table and iptables chains with it
    for (const ns of made.reverse()) execFileSync('ip', ['netns', 'del', ns]);
    fs.rmSync(dir, { recursive: true, force: true });
    fs.rmSync(path.join(LOCK_DIR, `bridge-${o.bridge}.lock`), { force: true });
  }
  console.log(`bridge (bin/bridge, ipMasq, cluster-ipam local) vs reference (${reference} + host-local, ipMasq), ${ROUNDS} rounds, medians:`);
  console.log(summarize(Object.values(rows)));
  console.log(`daemon peak memory: ${(daemonPeakKb / 1024).toFixed(1)} MB (resident once per node, not per call)`);
}

main();
