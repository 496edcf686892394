/**
 * Overlay benchmarks on the simulated cluster of test/plugins/overlay/lab.ts
 * (namespaces on one underlay bridge, one etcd, an agent per host):
 *
 *  1. iperf3 TCP between containers on two hosts over the overlay, and
 *     between the same hosts over the plain underlay: the ratio, and the
 *     underlay's IP fragment counter (zero when the overlay MTU is right);
 *  2. time from ADD returning on host B to the first reply from a container
 *     on host A (host A's agent must learn of it): median and max over N;
 *  3. overlay ADD and DEL median wall time, beside our bridge plugin's.
 *
 *   npx esbuild bench/overlay.ts --bundle --platform=node --format=cjs --outfile=dist/bench/overlay.js \
 *     && node dist/bench/overlay.js          (N=50 by default: OVERLAY_BENCH_N=10 for a quick run)
 *
 * Timings are reported, never asserted.
 */
import { spawn, spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { ROOT } from '../test/helpers/exec';
import { Lab, sleep } from '../test/plugins/overlay/lab';
import { median } from './lib';

function iperf(serverNs: string, clientNs: string, addr: string): number {
  const server = spawn('ip', ['netns', 'exec', serverNs, 'iperf3', '-s', '-1'], { stdio: 'ignore' });
  spawnSync('sleep', ['0.5']);
  const r = spawnSync('ip', ['netns', 'exec', clientNs, 'iperf3', '-c', addr, '-t', '5', '-J'], { encoding: 'utf8' });
  server.kill();
  if (r.status !== 0) throw new Error(`iperf3 ${clientNs} -> ${addr} failed: ${r.stdout.slice(0, 500)}`);
  return JSON.parse(r.stdout).end.sum_received.bits_per_second as number;
}

function fragCreates(lab: Lab, ns: string): number {
  const snmp = lab.in(ns, 'cat', '/proc/net/snmp').split('\n').filter((l) => l.startsWith('Ip:'));
  const [names, values] = snmp.map((l) => l.split(/\s+/));
  return Number(values[names.indexOf('FragCreates')]);
}

async function main(): Promise<void> {
  const n = Number(process.env.OVERLAY_BENCH_N ?? 50);
  const lab = new Lab(2);
  try {
    await lab.setUp();
    lab.startAgent(0);
    lab.startAgent(1);
    for (let i = 0; i < 100 && lab.snapshot().hosts.length < 2; i++) await sleep(100);
    const conf = (h: number) => lab.conf(h, 'bench', '10.64.0.0/16');
    const a = lab.addContainer();
    const b = lab.addContainer();
    const addA = lab.plugin(0, 'ADD', a, conf(0));
    const addB = lab.plugin(1, 'ADD', b, conf(1));
    if (addA.status || addB.status) throw new Error(`ADD failed: ${addA.stdout}${addB.stdout}`);
    const ipB = addB.json.ips[0].address.split('/')[0];
    for (let i = 0; i < 50 && !lab.ping(a, ipB); i++) await sleep(100);

    // 1. throughput
    const fragBefore = fragCreates(lab, lab.hosts[0]);
    const overlay = iperf(b, a, ipB);
    const fragAfter = fragCreates(lab, lab.hosts[0]);
    const underlay = iperf(lab.hosts[1], lab.hosts[0], lab.vtep(1));
    console.log('iperf3 TCP, 5 s each');
    console.log(`  overlay  container h0 -> container h1: ${(overlay / 1e9).toFixed(2)} Gbit/s`);
    console.log(`  underlay host h0 -> host h1:           ${(underlay / 1e9).toFixed(2)} Gbit/s`);
    console.log(`  ratio overlay/underlay: ${(overlay / underlay).toFixed(2)} (target >= 0.8)`);
    console.log(`  IP fragments created on h0 during the overlay run: ${fragAfter - fragBefore}`);

    // 2. ADD on host B -> first reply from host A, and 3. ADD/DEL times
    const vni = lab.snapshot().networks.find((x) => x.name === 'bench')!.vni;
    const learn: number[] = [];
    const addMs: number[] = [];
    const delMs: number[] = [];
    for (let i = 0; i < n; i++) {
      const c = lab.addContainer();
      let t = Date.now();
      const r = lab.plugin(1, 'ADD', c, conf(1));
      addMs.push(Date.now() - t);
      if (r.status) throw new Error(`ADD ${c}: ${r.stdout}`);
      const ip = r.json.ips[0].address.split('/')[0];
      const macC = r.json.interfaces[0].mac as string;
      t = Date.now();
      // host A's entry, then a reply from the new container to a container on A
      while (!lab.fdbMacs(0, vni).includes(macC)) {
        if (Date.now() - t > 10_000) throw new Error(`host A never learned ${c}`);
        await sleep(5);
      }
      if (!lab.ping(a, ip)) throw new Error(`no reply from ${c}`);
      learn.push(Date.now() - t);
      t = Date.now();
      const d = lab.plugin(1, 'DEL', c, conf(1));
      delMs.push(Date.now() - t);
      if (d.status) throw new Error(`DEL ${c}: ${d.stdout}`);
    }
    console.log(`\nADD on h1 -> first reply to h0's container, over ${n} endpoints: median ${median(learn).toFixed(0)} ms, max ${Math.max(...learn)} ms (target < 1000 ms)`);

    // our bridge plugin, the packaged executable, in host h0's namespace
    const bridgeAdd: number[] = [];
    const bridgeDel: number[] = [];
    const bin = path.join(ROOT, 'bin/bridge');
    const bconf = JSON.stringify({ cniVersion: '1.1.0', name: 'bb', type: 'bridge', bridge: 'bb0', ipam: { type: 'cluster-ipam', dataDir: path.join(lab.dir, 'bb'), ranges: [[{ subnet: '10.65.0.0/16' }]] } });
    for (let i = 0; i < Math.min(n, 20); i++) {
      const c = lab.addContainer();
      const env = { CNI_CONTAINERID: c, CNI_NETNS: lab.nsPath(c), CNI_IFNAME: 'eth0', CNI_PATH: path.join(ROOT, 'bin') };
      let t = Date.now();
      let r = spawnSync('ip', ['netns', 'exec', lab.hosts[0], bin], { env: { PATH: process.env.PATH, ...env, CNI_COMMAND: 'ADD' }, input: bconf });
      bridgeAdd.push(Date.now() - t);
      if (r.status) throw new Error(`bridge ADD: ${r.stdout}`);
      t = Date.now();
      r = spawnSync('ip', ['netns', 'exec', lab.hosts[0], bin], { env: { PATH: process.env.PATH, ...env, CNI_COMMAND: 'DEL' }, input: bconf });
      bridgeDel.push(Date.now() - t);
    }
    console.log('\nplugin wall time (median)   ADD ms   DEL ms');
    console.log(`  overlay (node + bundle)   ${median(addMs).toFixed(0).padStart(6)}   ${median(delMs).toFixed(0).padStart(6)}`);
    console.log(`  bridge (bin/bridge)       ${median(bridgeAdd).toFixed(0).padStart(6)}   ${median(bridgeDel).toFixed(0).padStart(6)}`);
    console.log('  (overlay runs from a node bundle of the test runner until etcd3 is packaged into bin/; both under ip netns exec / setns)');
  } finally {
    await lab.tearDown();
  }
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
