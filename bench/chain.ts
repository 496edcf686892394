/**
 * The conflist a runtime really runs for a container with a published port:
 * bridge (ipMasq) + IPAM + portmap, driven the way libcni drives it (each
 * plugin exec'd in turn, the previous result as prevResult, DEL in reverse),
 * ours (bin/bridge + cluster-ipam + bin/portmap) against the reference
 * (/usr/lib/cni/bridge + host-local + portmap). Times are per container, for
 * the whole chain. A resident container keeps each network in use, which is
 * the common case on a node.
 *
 * Both run inside a private namespace standing in for the host (so neither
 * touches the machine's firewall), entered around each exec by this thread.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { withNetns } from '../shared/netns/netns';
import { Mode, Row, Sample, median, runOnce, standalone, startDaemon, summarize } from './lib';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 30);
const root = process.cwd();
process.env.NETLINK_TS_NATIVE ??= path.join(root, 'dist/netlink_native.node');

interface Chain {
  label: string;
  dir: string;
  /** added to every call's environment (how our plugins are reached) */
  env?: Record<string, string>;
  list: { cniVersion: string; name: string; plugins: Array<Record<string, unknown>> };
}

function chain(label: string, dir: string, ipamType: string, bridge: string, subnet: string, dataDir: string): Chain {
  return {
    label,
    dir,
    list: {
      cniVersion: '1.0.0',
      name: `bench-chain-${label}`,
      plugins: [
        { type: 'bridge', bridge, isDefaultGateway: true, ipMasq: true, hairpinMode: true, ipam: { type: ipamType, ranges: [[{ subnet }]], dataDir } },
        { type: 'portmap', capabilities: { portMappings: true }, snat: true },
      ],
    },
  };
}

/** One libcni-style call of the whole list; returns the summed plugin times and the largest peak. */
function runList(host: string, c: Chain, command: 'ADD' | 'DEL', id: string, netns: string, hostPort: number, cached?: unknown): { sample: Sample; result: unknown } {
  const plugins = command === 'ADD' ? c.list.plugins : [...c.list.plugins].reverse();
  let prev = cached;
  let ms = 0;
  let peakKb = 0;
  for (const p of plugins) {
    const conf: Record<string, unknown> = { ...p, cniVersion: c.list.cniVersion, name: c.list.name };
    if (p.capabilities) conf.runtimeConfig = { portMappings: [{ hostPort, containerPort: 80, protocol: 'tcp' }] };
    if (prev) conf.prevResult = prev;
    const env = { CNI_COMMAND: command, CNI_CONTAINERID: id, CNI_NETNS: `/var/run/netns/${netns}`, CNI_IFNAME: 'eth0', CNI_PATH: c.dir, ...c.env };
    const s = withNetns(`/var/run/netns/${host}`, () => runOnce({ binary: path.join(c.dir, String(p.type)), env, stdin: JSON.stringify(conf) }));
    if (s.status !== 0) throw new Error(`${c.label} ${p.type} ${command} failed: ${s.stdout}`);
    ms += s.ms;
    peakKb = Math.max(peakKb, s.peakKb);
    if (command === 'ADD') prev = JSON.parse(s.stdout);
  }
  return { sample: { ms, peakKb, status: 0, stdout: '' }, result: prev };
}

function main(): void {
  const tag = process.pid;
  const host = `bench-chain-${tag}-host`;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `bench-chain-${tag}-`));
  const ours = chain('ours', path.join(root, 'bin'), 'cluster-ipam', `bco${tag}`.slice(0, 15), '10.232.1.0/24', path.join(dir, 'o'));
  const ref = chain('reference', '/usr/lib/cni', 'host-local', `bcr${tag}`.slice(0, 15), '10.232.2.0/24', path.join(dir, 'r'));
  const rows: Record<string, Row> = {};
  const modes: Mode[] = [];
  let daemonPeakKb = 0;
  const made: string[] = [];
  const ns = (name: string) => {
    execFileSync('ip', ['netns', 'add', name]);
    made.push(name);
    return name;
  };
  try {
    ns(host);
    modes.push(standalone, startDaemon(root, host, path.join(dir, 'daemon.sock')));
    ours.env = standalone.env;
    for (const [c, key] of [
      [ours, 'o'],
      [ref, 'r'],
    ] as const) {
      runList(host, c, 'ADD', `resident-${key}`, ns(`bench-chain-${tag}-${key}res`), key === 'o' ? 40999 : 41999);
      ns(`bench-chain-${tag}-${key}`);
    }
    let n = 0;
    for (const mode of modes) {
      ours.env = mode.env;
      const add: Row = (rows[`ADD ${mode.label}`] = { what: `bridge+portmap ADD (${mode.label})`, ours: [], reference: [] });
      const del: Row = (rows[`DEL ${mode.label}`] = { what: `bridge+portmap DEL (${mode.label})`, ours: [], reference: [] });
      for (let i = -1; i < ROUNDS; i++) {
        for (const [c, key, side] of [
          [ours, 'o', 'ours'],
          [ref, 'r', 'reference'],
        ] as const) {
          const netns = `bench-chain-${tag}-${key}`;
          const port = (key === 'o' ? 42000 : 43000) + n;
          const added = runList(host, c, 'ADD', `c${n}`, netns, port);
          const deleted = runList(host, c, 'DEL', `c${n}`, netns, port, added.result);
          if (i < 0) continue; // warm-up
          add[side].push(added.sample);
          del[side].push(deleted.sample);
        }
        n++;
      }
      daemonPeakKb = Math.max(daemonPeakKb, mode.daemonPeakKb());
    }
  } finally {
    for (const mode of modes) mode.stop();
    for (const n of made.reverse()) execFileSync('ip', ['netns', 'del', n]);
    fs.rmSync(dir, { recursive: true, force: true });
  }
  console.log(`bridge + IPAM + portmap through a libcni-style runtime, ours vs reference (${ROUNDS} rounds, a resident container on each network), medians:`);
  console.log(summarize(Object.values(rows)));
  console.log(`daemon peak memory: ${(daemonPeakKb / 1024).toFixed(1)} MB (resident once per node, not per call)`);
  const ratio = (k: string) => median(rows[k].ours.map((s) => s.ms)) / median(rows[k].reference.map((s) => s.ms));
  for (const mode of modes) {
    console.log(`targets (${mode.label}): ADD <= 1.0x (now ${ratio(`ADD ${mode.label}`).toFixed(2)}x), DEL <= 0.6x (now ${ratio(`DEL ${mode.label}`).toFixed(2)}x)`);
  }
}

main();
