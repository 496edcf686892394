/**
 * 50 containers starting at once on one bridge network (bridge + IPAM,
 * ipMasq): the wall time from the first exec to the last answer, for 50
 * parallel ADDs and then 50 parallel DELs. Ours standalone (50 Node
 * processes at once), ours through the daemon (which runs the calls one at
 * a time), and the reference (/usr/lib/cni/bridge + host-local). Every call
 * must succeed; the ADDs must hand out 50 distinct addresses.
 *
 * Runs inside a private namespace standing in for the host, like the other
 * benches; the plugins are spawned from there (nsenter --net keeps the
 * mount namespace, so the daemon serves them).
 */
import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { type Mode, median, standalone, startDaemon, sweepStale } from './lib';
import { LOCK_DIR } from '../shared/paths';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 30) >= 10 ? 3 : 1;
const N = 50;
const root = process.cwd();
process.env.NETLINK_TS_NATIVE ??= path.join(root, 'dist/netlink_native.node');
const PREFIX = 'bench-par-';

interface Side {
  label: string;
  binary: string;
  conf: object;
  env: Record<string, string>;
}

function call(host: string, s: Side, command: 'ADD' | 'DEL', id: string, netns: string): Promise<{ status: number | null; stdout: string }> {
  return new Promise((resolve) => {
    const child = spawn('nsenter', [`--net=/var/run/netns/${host}`, '--', s.binary], {
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', CNI_COMMAND: command, CNI_CONTAINERID: id, CNI_NETNS: `/var/run/netns/${netns}`, CNI_IFNAME: 'eth0', CNI_PATH: path.dirname(s.binary), ...s.env },
      stdio: ['pipe', 'pipe', 'ignore'],
    });
    let stdout = '';
    child.stdout!.on('data', (d) => (stdout += d));
    child.stdin!.end(JSON.stringify(s.conf));
    child.on('close', (status) => resolve({ status, stdout }));
  });
}

async function burst(host: string, s: Side, containers: string[], round: number): Promise<{ add: number; del: number }> {
  const t0 = process.hrtime.bigint();
  const adds = await Promise.all(containers.map((ns, i) => call(host, s, 'ADD', `p${round}-${i}`, ns)));
  const t1 = process.hrtime.bigint();
  const bad = adds.find((r) => r.status !== 0);
  if (bad) throw new Error(`${s.label} ADD failed: ${bad.stdout}`);
  const ips = new Set(adds.map((r) => JSON.parse(r.stdout).ips[0].address));
  if (ips.size !== N) throw new Error(`${s.label}: ${ips.size} distinct addresses for ${N} containers`);
  const dels = await Promise.all(containers.map((ns, i) => call(host, s, 'DEL', `p${round}-${i}`, ns)));
  const t2 = process.hrtime.bigint();
  if (dels.some((r) => r.status !== 0)) throw new Error(`${s.label} DEL failed`);
  return { add: Number(t1 - t0) / 1e6, del: Number(t2 - t1) / 1e6 };
}

async function main(): Promise<void> {
  sweepStale(PREFIX);
  const tag = `${PREFIX}${process.pid}`;
  const host = `${tag}-host`;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `${tag}-`));
  const made: string[] = [];
  const modes: Mode[] = [];
  const results: Record<string, { add: number[]; del: number[] }> = {};
  try {
    for (const ns of [host, ...Array.from({ length: N }, (_, i) => `${tag}-c${i}`)]) {
      execFileSync('ip', ['netns', 'add', ns]);
      made.push(ns);
    }
    const containers = made.slice(1);
    const daemon = startDaemon(root, host, path.join(dir, 'daemon.sock'));
    modes.push(standalone, daemon);
    const conf = (type: string, bridge: string, subnet: string, ipamType: string, data: string) => ({
      cniVersion: '1.0.0',
      name: `${tag}-${bridge}`,
      type,
      bridge,
      isDefaultGateway: true,
      ipMasq: true,
      ipam: { type: ipamType, ranges: [[{ subnet }]], dataDir: path.join(dir, data) },
    });
    const sides: Side[] = [
      { label: 'ours standalone', binary: path.join(root, 'bin/bridge'), conf: conf('bridge', `bpo${process.pid}`.slice(0, 15), '10.234.0.0/24', 'cluster-ipam', 'o'), env: standalone.env },
      { label: 'ours daemon', binary: path.join(root, 'bin/bridge'), conf: conf('bridge', `bpd${process.pid}`.slice(0, 15), '10.234.1.0/24', 'cluster-ipam', 'd'), env: daemon.env },
      { label: 'reference', binary: '/usr/lib/cni/bridge', conf: conf('bridge', `bpr${process.pid}`.slice(0, 15), '10.234.2.0/24', 'host-local', 'r'), env: {} },
    ];
    for (const s of sides) results[s.label] = { add: [], del: [] };
    for (let round = -1; round < ROUNDS; round++) {
      for (const s of sides) {
        const r = await burst(host, s, containers, round + 1);
        if (round < 0) continue; // warm-up
        results[s.label].add.push(r.add);
        results[s.label].del.push(r.del);
      }
    }
  } finally {
    for (const m of modes) m.stop();
    for (const ns of made.reverse()) execFileSync('ip', ['netns', 'del', ns]);
    fs.rmSync(dir, { recursive: true, force: true });
    for (const b of ['bpo', 'bpd']) fs.rmSync(path.join(LOCK_DIR, `bridge-${`${b}${process.pid}`.slice(0, 15)}.lock`), { force: true });
  }
  const ref = results.reference;
  console.log(`${N} parallel ADDs, then ${N} parallel DELs, on one bridge network (ipMasq), wall time, median of ${ROUNDS} bursts:`);
  for (const [label, r] of Object.entries(results)) {
    const add = median(r.add);
    const del = median(r.del);
    console.log(`${label.padEnd(16)} ADD ${add.toFixed(0).padStart(5)} ms (${(add / median(ref.add)).toFixed(2)}x)   DEL ${del.toFixed(0).padStart(5)} ms (${(del / median(ref.del)).toFixed(2)}x)`);
  }
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.stack : e);
  process.exit(1);
});
