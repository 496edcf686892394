/**
 * Encrypted vs clear overlay, inside the VM (the host kernel has no ESP):
 *   - iperf3 TCP between two containers on two simulated hosts, over the
 *     encrypted overlay and over the clear one (same hosts, same underlay):
 *     the ratio of the two;
 *   - key rotation: from the leader's ring write (the ring's rotatedAt, the
 *     VM's one clock) until both hosts send with the new primary key, and
 *     the pings lost meanwhile (a 20 Hz ping running across the rotations;
 *     target zero).
 * Same lab as the tests (testkit/overlay/lab.ts): etcd on the
 * underlay, the real agents (--rotate-every 12s) and plugin.
 *
 * One file, two halves: loaded by the VM's guest runner it registers the
 * guest "test" that measures (and writes bench-overlay-encrypted.json to
 * the run directory, the VM's writable share); run on the host it boots
 * the VM and prints the numbers. Under TCG only the ratio means anything.
 *
 *   BENCHES=overlay-encrypted bash bench/run.sh
 */
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { registry, test, afterAll } from '../testkit/vm/guest-api';
import { IPSEC_REQID, deriveSpi, parseRing, primaryKey } from '../shared/ipsec';
import { XfrmHandle } from '../shared/netlink/xfrm';
import { Lab, eventually, sleep } from '../testkit/overlay/lab';

const SAMPLES_FILE = 'bench-overlay-encrypted.json';
const ROTATIONS = 3;
const IPERF_SECONDS = 5;

interface Samples {
  /** bits per second received, per run */
  encrypted: number[];
  clear: number[];
  /** ms from the ring write to both hosts sending with the new key, per rotation */
  rotationMs: number[];
  /** rotations whose ring had already been rotated again when read */
  unmatched: number;
  pingsSent: number;
  pingsLost: number;
}

// ---- guest half ---------------------------------------------------------------------------------

function runDir(): string {
  const i = process.argv.indexOf('--run');
  if (i < 0) throw new Error('not running inside the VM (no --run argument)');
  return path.dirname(process.argv[i + 1]!);
}

function registerGuest(): void {
  let lab: Lab | undefined;
  const handles: XfrmHandle[] = [];
  afterAll(async () => {
    for (const h of handles) h.close();
    await lab?.tearDown();
  });

  test(
    'iperf3 over the encrypted and the clear overlay, and key rotations under a continuous ping, measured',
    async () => {
      lab = new Lab(2, process.cwd());
      const L = lab;
      await L.setUp();
      for (let i = 0; i < 2; i++) L.startAgent(i, ['--rotate-every', '12s', '--leader-ttl', '5', '--ttl', '15', '--timeout-ms', '5000']);
      for (let i = 0; i < 2; i++) handles.push(XfrmHandle.open(L.nsPath(L.hosts[i]!)));
      if (!(await eventually(() => { try { return L.snapshot().hosts.length === 2; } catch { return false; } }, 60_000))) throw new Error('agents did not register');
      const ips = new Map<string, string>();
      const cs: string[] = [];
      for (const [host, network] of [[0, 'ove'], [1, 'ove'], [0, 'ovp'], [1, 'ovp']] as const) {
        const c = L.addContainer();
        cs.push(c);
        const cf = L.conf(host, network, network === 'ove' ? '10.61.0.0/24' : '10.62.0.0/24', { encrypted: network === 'ove', gateway: { enabled: false } }) as {
          etcd: { requestTimeoutMs: number };
          ipam: { etcd: { keyPrefix: string; requestTimeoutMs: number } };
        };
        cf.ipam.etcd.keyPrefix += `-${network}`;
        cf.etcd.requestTimeoutMs = 10_000;
        cf.ipam.etcd.requestTimeoutMs = 10_000;
        const r = L.plugin(host, 'ADD', c, cf);
        if (r.status !== 0) throw new Error(`ADD ${network} on h${host}: ${r.stdout} ${r.stderr}`);
        ips.set(c, r.json.ips[0].address.split('/')[0]);
      }
      const outbound = (i: number) => handles[i]!.xfrmStateList().filter((s) => s.reqid === IPSEC_REQID && s.src === L.vtep(i)).map((s) => s.spi).sort().join(',');
      const pingOk = (from: string, to: string) => spawnSync('ip', ['netns', 'exec', from, 'busybox', 'ping', '-c', '1', '-W', '1', to]).status === 0;
      if (!(await eventually(() => outbound(0) !== '' && outbound(1) !== '' && pingOk(cs[0]!, ips.get(cs[1]!)!), 60_000))) throw new Error('the encrypted pair was never keyed');
      if (!(await eventually(() => pingOk(cs[2]!, ips.get(cs[3]!)!), 30_000))) throw new Error('the clear overlay never worked');

      const iperf = (client: string, server: string, serverIp: string): number => {
        const srv = spawn('ip', ['netns', 'exec', server, 'iperf3', '-s', '-1'], { stdio: 'ignore' });
        try {
          for (let i = 0; i < 50; i++) {
            const r = spawnSync('ip', ['netns', 'exec', client, 'iperf3', '-c', serverIp, '-t', String(IPERF_SECONDS), '-J'], { encoding: 'utf8' });
            // a client that met the previous server still exiting reports an error, sometimes with status 0
            const bps = r.status === 0 ? (JSON.parse(r.stdout) as { end?: { sum_received?: { bits_per_second?: number } } }).end?.sum_received?.bits_per_second : undefined;
            if (bps !== undefined) return bps;
            spawnSync('sleep', ['0.2']);
          }
          throw new Error('iperf3 never connected');
        } finally {
          srv.kill('SIGKILL');
        }
      };
      const samples: Samples = { encrypted: [], clear: [], rotationMs: [], unmatched: 0, pingsSent: 0, pingsLost: 0 };
      for (let round = 0; round < 2; round++) {
        samples.encrypted.push(iperf(cs[0]!, cs[1]!, ips.get(cs[1]!)!));
        samples.clear.push(iperf(cs[2]!, cs[3]!, ips.get(cs[3]!)!));
      }

      // Rotations under a 20 Hz ping: wait for each outbound SA change on both hosts.
      const pingOut: string[] = [];
      const pinger = spawn('ip', ['netns', 'exec', cs[0]!, 'busybox', 'ping', '-i', '0.05', '-W', '2', ips.get(cs[1]!)!], { stdio: ['ignore', 'pipe', 'ignore'] });
      pinger.stdout.on('data', (d: Buffer) => pingOut.push(d.toString()));
      try {
        for (let n = 0; n < ROTATIONS; n++) {
          const before = [outbound(0), outbound(1)];
          const changed = [0, 0];
          const limit = Date.now() + 60_000;
          while ((changed[0] === 0 || changed[1] === 0) && Date.now() < limit) {
            for (let i = 0; i < 2; i++) if (changed[i] === 0 && outbound(i) !== before[i] && outbound(i) !== '') changed[i] = Date.now();
            await sleep(10);
          }
          if (changed[0] === 0 || changed[1] === 0) throw new Error('no rotation within 60 s');
          // The ring's rotatedAt is this rotation's only if the ring has not moved on since (reading it is a node start)
          const ring = parseRing(L.kvGet(`${L.prefix}/ipsec/ring`)!);
          const spi = deriveSpi(primaryKey(ring).material.reveal(), primaryKey(ring).id, L.vtep(0), L.vtep(1));
          if (outbound(0).split(',').includes(String(spi))) samples.rotationMs.push(Math.max(changed[0]!, changed[1]!) - ring.rotatedAt);
          else samples.unmatched++;
        }
        await sleep(2500); // replies in flight
      } finally {
        const gone = new Promise((r) => pinger.once('exit', r));
        pinger.kill('SIGINT');
        await gone;
      }
      // Count by sequence number up to the last reply: the echo sent just
      // before SIGINT has no reply yet, and is not a rotation's loss.
      const seqs = new Set([...pingOut.join('').matchAll(/seq=(\d+)/g)].map((x) => Number(x[1])));
      if (seqs.size === 0) throw new Error(`no ping replies: ${pingOut.join('').slice(-300)}`);
      samples.pingsSent = Math.max(...seqs) + 1;
      samples.pingsLost = samples.pingsSent - seqs.size;
      fs.writeFileSync(path.join(runDir(), SAMPLES_FILE), JSON.stringify(samples));
    },
    { timeoutMs: 900_000 },
  );
}

// ---- host half ----------------------------------------------------------------------------------

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function main(): Promise<number> {
  // Imported here, not at the top: the guest bundle holds this file too, and
  // the harness (esbuild, qemu) is only the host's business.
  const { bootVm, formatTimings, prepareRun } = await import('../testkit/vm/harness');
  const run = prepareRun(['bench/overlay-encrypted.ts']);
  const result = await bootVm(run, { timeoutMs: 1_800_000, keepRunDir: true });
  const failed = result.outcomes.filter((o) => o.status !== 'pass');
  if (failed.length || result.problems.length) {
    for (const o of failed) console.error(`FAIL ${o.name}\n${o.error ?? ''}`);
    for (const p of result.problems) console.error(`PROBLEM ${p}`);
    console.error(`run dir kept: ${run.runDir}`);
    return 1;
  }
  const s = JSON.parse(fs.readFileSync(path.join(run.runDir, SAMPLES_FILE), 'utf8')) as Samples;
  fs.rmSync(run.runDir, { recursive: true, force: true });
  const mbit = (b: number) => (b / 1e6).toFixed(1);
  console.log(`encrypted overlay in the VM (TCG, kernel ${result.guestKernel ?? '?'}), iperf3 TCP ${IPERF_SECONDS} s x ${s.encrypted.length}, medians:`);
  console.log(`  encrypted (ESP rfc4106(gcm(aes)))  ${mbit(median(s.encrypted))} Mbit/s   [${s.encrypted.map(mbit).join(', ')}]`);
  console.log(`  clear                              ${mbit(median(s.clear))} Mbit/s   [${s.clear.map(mbit).join(', ')}]`);
  console.log(`  ratio encrypted/clear              ${(median(s.encrypted) / median(s.clear)).toFixed(2)}`);
  console.log(
    `key rotation (ring write -> both hosts sending with the new key): ${s.rotationMs.length ? `median ${median(s.rotationMs)} ms [${s.rotationMs.join(', ')}]` : 'no sample'}${s.unmatched ? ` (${s.unmatched} not timed: the ring had moved on when read)` : ''}`,
  );
  console.log(`pings lost across ${s.rotationMs.length + s.unmatched} rotations: ${s.pingsLost} of ${s.pingsSent}`);
  console.log(`only the ratio means anything under TCG; vm: ${formatTimings(result.timings)}`);
  return 0;
}

if (registry.currentFile) {
  registerGuest();
} else if (require.main === module) {
  main().then(
    (code) => process.exit(code),
    (e: unknown) => {
      console.error(e instanceof Error ? e.stack : e);
      process.exit(2);
    },
  );
}
