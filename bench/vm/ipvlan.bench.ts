/**
 * Guest half of the ipvlan benchmark (bench/ipvlan-vm.ts boots the VM): the
 * packaged bin/ipvlan (cluster-ipam on its local store, in-process), exec'd
 * as a runtime would, standalone and through a `cni-ts daemon`, against /usr/lib/cni/ipvlan + /usr/lib/cni/host-local
 * with the same configuration (master eth0, mode l2, one /24). Each round
 * ADDs one container and DELs it again, interleaving the two sides.
 *
 * Registered as one guest "test" because the harness runs nothing else; it
 * fails only when a plugin call fails. The timings are not judged here:
 * they go to bench-ipvlan.json in the run directory (the VM's writable
 * share), where the host reads them. Under TCG only the ratio means
 * anything; the absolute times are those of an emulated CPU.
 *
 * The host namespace is a namespace made here whose eth0 (the parent) is a
 * dummy link; the bench thread enters it around each spawn (withNetns).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, test } from '../../testkit/vm/guest-api';
import { withNetns } from '../../shared/netns/netns';
import { assertOk, runOnce, standalone, startDaemon, type Mode, type Sample } from '../lib';
import { CONFIG_FILE, SAMPLES_FILE, type BenchConfig, type BenchSamples } from './ipvlan-files';

const namespaces: string[] = [];

let daemon: Mode | undefined;

afterAll(() => {
  daemon?.stop();
  for (const ns of namespaces.reverse()) spawnSync('ip', ['netns', 'del', ns]);
});

/** The run directory: where the guest runner writes results.jsonl (its --run argument). */
function runDir(): string {
  const i = process.argv.indexOf('--run');
  if (i < 0) throw new Error('not running inside the VM (no --run argument)');
  return path.dirname(process.argv[i + 1]);
}

interface Side {
  binary: string;
  conf: string;
  netns: string;
  env?: Record<string, string>;
}

test('ipvlan ADD/DEL of the packaged plugin and of the reference plugin, timed', () => {
  const dir = runDir();
  const { rounds } = JSON.parse(fs.readFileSync(path.join(dir, CONFIG_FILE), 'utf8')) as BenchConfig;
  const tag = randomBytes(2).toString('hex');
  const netns = (name: string): string => {
    execFileSync('ip', ['netns', 'add', name]);
    namespaces.push(name);
    return name;
  };
  const host = netns(`bih${tag}`);
  execFileSync('ip', ['-n', host, 'link', 'add', 'eth0', 'type', 'dummy']);
  execFileSync('ip', ['-n', host, 'link', 'set', 'eth0', 'up']);
  const side = (binary: string, ipamType: string, t: string, subnet: string): Side => ({
    binary,
    conf: JSON.stringify({
      cniVersion: '1.0.0',
      name: `bench-ipvlan-${t}`,
      type: 'ipvlan',
      master: 'eth0',
      mode: 'l2',
      // /var/lib is a fresh tmpfs in the VM
      ipam: { type: ipamType, ranges: [[{ subnet }]], dataDir: `/var/lib/bench-ipvlan-${tag}/${t}` },
    }),
    netns: netns(`bic${tag}${t}`),
  });
  // bin/ is the packaged executable, seen through the VM's read-only root share
  const ours = { ...side(path.resolve('bin/ipvlan'), 'cluster-ipam', 'o', '10.233.1.0/24'), env: standalone.env };
  // one daemon for the whole run: a Node start under TCG takes seconds
  fs.mkdirSync(`/var/lib/bench-ipvlan-${tag}`, { recursive: true });
  daemon = startDaemon(path.resolve('.'), host, `/var/lib/bench-ipvlan-${tag}/daemon.sock`);
  const viaDaemon = { ...side(path.resolve('bin/ipvlan'), 'cluster-ipam', 'd', '10.233.3.0/24'), env: daemon.env };
  const reference = side('/usr/lib/cni/ipvlan', 'host-local', 'r', '10.233.2.0/24');
  const call = (s: Side, command: 'ADD' | 'DEL', i: number): Sample => {
    const env = { CNI_COMMAND: command, CNI_CONTAINERID: `bench${i}`, CNI_NETNS: `/var/run/netns/${s.netns}`, CNI_IFNAME: 'eth0', CNI_PATH: path.dirname(s.binary), ...s.env };
    const sample = withNetns(`/var/run/netns/${host}`, () => runOnce({ binary: s.binary, env, stdin: s.conf }));
    assertOk(sample, `${s.binary} ${command}`);
    return { ...sample, stdout: '' };
  };

  // warm the page cache (125 MB over 9p for ours) and the binding's extracted copy
  for (const s of [ours, viaDaemon, reference]) {
    call(s, 'ADD', -1);
    call(s, 'DEL', -1);
  }
  const out: BenchSamples = { ours: { ADD: [], DEL: [] }, daemon: { ADD: [], DEL: [] }, reference: { ADD: [], DEL: [] }, daemonPeakKb: 0 };
  for (let i = 0; i < rounds; i++) {
    // interleave so both see the same machine state
    for (const [s, key] of [
      [ours, 'ours'],
      [viaDaemon, 'daemon'],
      [reference, 'reference'],
    ] as const) {
      out[key].ADD.push(call(s, 'ADD', i));
      out[key].DEL.push(call(s, 'DEL', i));
    }
  }
  out.daemonPeakKb = daemon.daemonPeakKb();
  fs.writeFileSync(path.join(dir, SAMPLES_FILE), JSON.stringify(out));
}, { timeoutMs: 1_800_000 });
