/**
 * cni-ts-shim and `cni-ts daemon` (cmd/shim.c, cmd/daemon.ts), as built in
 * bin/: the shim hands calls to a daemon on a socket of the test's own, and
 * runs bin/cni-ts itself whenever the daemon cannot take the call. Which
 * path answered is read from the daemon's --log-calls lines and from the
 * caller's peak memory (the shim alone is about 1 MB, a Node process about
 * 50), never from timings.
 */
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { plugins } from '../../cmd/plugins';
import { expandConfigPaths } from '../../conformance/config';
import { formatLine } from '../../conformance/report';
import { runSuite } from '../../conformance/runner';
import { decodeRequest, encodeAnswer } from '../../cmd/daemon';
import { ROOT, addNetns, delNetns, uniqueName } from '../../testkit/exec';
import { type TestDaemon, processGone, startDaemon } from '../../testkit/daemon';

const BIN = path.join(ROOT, 'bin');
const PATH = '/usr/sbin:/usr/bin:/sbin:/bin';

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

interface Call {
  status: number;
  stdout: string;
  stderr: string;
  /** the calling process's peak resident memory, kB (GNU time) */
  peakKb: number;
}

/** One call as a runtime makes it, through the shim under the plugin's name (from inside netns, if given). */
function call(binary: string, env: Record<string, string>, stdin: string, netns?: string): Call {
  const peakFile = path.join(work, `peak-${process.hrtime.bigint()}`);
  const argv = ['-f', '%M', '-o', peakFile, ...(netns ? ['nsenter', `--net=${netns}`, '--'] : []), binary];
  const r = spawnSync('/usr/bin/time', argv, { env: { PATH, ...env }, input: stdin, encoding: 'utf8' });
  const peak = Number(fs.readFileSync(peakFile, 'utf8').trim().split('\n').pop());
  fs.rmSync(peakFile);
  return { status: r.status ?? -1, stdout: r.stdout ?? '', stderr: r.stderr ?? '', peakKb: peak };
}

let work: string;
let daemon: TestDaemon;

beforeAll(async () => {
  expect(fs.existsSync(path.join(BIN, 'cni-ts-shim')), 'bin/ is empty: run ./build.sh first').toBe(true);
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-ts-daemon-test-'));
  daemon = startDaemon({ binDir: BIN, socket: path.join(work, 'daemon.sock') });
});
afterAll(async () => {
  daemon?.stop();
  fs.rmSync(work, { recursive: true, force: true });
});

// Each test blocks on synchronous plugin runs for seconds; back to back,
// with only promise ticks between them, they would starve the worker's
// event loop and vitest's RPC to its parent times out (60 s). One turn of
// the loop per test keeps it answering.
beforeEach(() => new Promise<void>((resolve) => setImmediate(resolve)));

describe('the wire format', () => {
  it('decodes what the shim sends and refuses truncated or foreign requests', () => {
    const field = (b: Buffer) => {
      const len = Buffer.alloc(4);
      len.writeUInt32LE(b.length);
      return Buffer.concat([len, b]);
    };
    const inodes = Buffer.alloc(16);
    inodes.writeBigUInt64LE(7n, 0);
    inodes.writeBigUInt64LE(9n, 8);
    const req = Buffer.concat([Buffer.from('CNT1'), inodes, field(Buffer.from('bridge')), field(Buffer.from('A=1\0B=x=y\0')), field(Buffer.from('{"a":1}'))]);
    expect(decodeRequest(req)).toEqual({ netnsInode: 7n, mntnsInode: 9n, name: 'bridge', env: { A: '1', B: 'x=y' }, stdin: Buffer.from('{"a":1}') });
    expect(() => decodeRequest(req.subarray(0, req.length - 1))).toThrow(/truncated/);
    expect(() => decodeRequest(Buffer.from('GET / HTTP/1.1\r\n\r\n'))).toThrow(/not a cni-ts-shim request/);
    const answer = encodeAnswer(1, 'out', 'err');
    expect([answer.readUInt32LE(0), answer.readUInt32LE(4), answer.readUInt32LE(8)]).toEqual([0, 1, 3]);
  });
});

describe('cni-ts daemon', () => {
  it('listens on a socket only root can use', () => {
    expect(fs.statSync(daemon.socket).mode & 0o777).toBe(0o600);
  });

  it('answers through the shim without a Node process per call, byte for byte as the standalone executable does', () => {
    const inputs: Array<[Record<string, string>, string]> = [
      [{ CNI_COMMAND: 'VERSION' }, '{"cniVersion":"1.0.0"}'],
      [{ CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'x', CNI_NETNS: '/proc/self/ns/net', CNI_IFNAME: 'eth0', CNI_PATH: BIN }, '{bad json'],
      [{ CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'x', CNI_IFNAME: 'eth0', CNI_PATH: BIN }, '{"cniVersion":"1.0.0","name":"n","type":"bridge"}'],
      [{ CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'x', CNI_NETNS: '/tmp', CNI_IFNAME: 'eth0', CNI_PATH: BIN }, '{"cniVersion":"9.9.9","name":"n","type":"bridge"}'],
      [{ CNI_COMMAND: 'DEL', CNI_CONTAINERID: 'x', CNI_IFNAME: 'eth0', CNI_PATH: BIN }, '{"cniVersion":"1.1.0","name":"n","type":"bridge","ipam":{"type":"cluster-ipam","ranges":[[{"subnet":"10.0.0.0/33"}]]}}'],
      [{ CNI_COMMAND: 'BOGUS' }, '{}'],
      [{}, ''],
    ];
    const before = daemon.served();
    for (const [env, stdin] of inputs) {
      const viaDaemon = call(path.join(BIN, 'bridge'), { ...env, CNI_TS_DAEMON_SOCKET: daemon.socket }, stdin);
      const direct = call(path.join(BIN, 'bridge'), { ...env, CNI_TS_NO_DAEMON: '1' }, stdin);
      expect({ status: viaDaemon.status, stdout: viaDaemon.stdout, stderr: viaDaemon.stderr }).toEqual({ status: direct.status, stdout: direct.stdout, stderr: direct.stderr });
      expect(viaDaemon.peakKb).toBeLessThan(10 * 1024);
      expect(direct.peakKb).toBeGreaterThan(20 * 1024);
    }
    expect(daemon.served() - before).toBe(inputs.length);
    // the error cases really were errors, with the spec's JSON
    const bad = call(path.join(BIN, 'bridge'), { ...inputs[1][0], CNI_TS_DAEMON_SOCKET: daemon.socket }, inputs[1][1]);
    expect(bad.status).toBe(1);
    expect(JSON.parse(bad.stdout).code).toBe(6);
  });

  it('keeps no file descriptors from the calls it served', async () => {
    // its own host namespace: the bridge and its nft table never touch the machine's
    const hostNs = uniqueName('dmnfdh');
    const host = addNetns(hostNs);
    const ctrNs = uniqueName('dmnfdc');
    const ctr = addNetns(ctrNs);
    const d = startDaemon({ binDir: BIN, socket: path.join(work, 'fd.sock'), netns: host });
    const conf = JSON.stringify({
      cniVersion: '1.1.0',
      name: 'fdnet',
      type: 'bridge',
      bridge: 'dfd0',
      ipMasq: true,
      ipam: { type: 'cluster-ipam', ranges: [[{ subnet: '10.249.7.0/24' }]], dataDir: path.join(work, 'fd-ipam') },
    });
    const env = (command: string, i: number) => ({
      CNI_COMMAND: command,
      CNI_CONTAINERID: `fd${i}`,
      CNI_NETNS: ctr,
      CNI_IFNAME: 'eth0',
      CNI_PATH: BIN,
      CNI_TS_DAEMON_SOCKET: d.socket,
    });
    const fds = () => fs.readdirSync(`/proc/${d.pid}/fd`).length;
    try {
      const cycle = (i: number) => {
        const added = call(path.join(BIN, 'bridge'), env('ADD', i), conf, host);
        expect(added.status, added.stdout + added.stderr).toBe(0);
        const withPrev = JSON.stringify({ ...JSON.parse(conf), prevResult: JSON.parse(added.stdout) });
        for (const command of ['CHECK', 'DEL']) {
          const r = call(path.join(BIN, 'bridge'), env(command, i), withPrev, host);
          expect(r.status, r.stdout + r.stderr).toBe(0);
        }
      };
      cycle(0); // warm-up: modules loaded, the network's rules made
      const start = fds();
      for (let i = 1; i <= 40; i++) cycle(i);
      // and failures: an ADD refused late (eth0 exists), a DEL of nothing
      call(path.join(BIN, 'bridge'), env('ADD', 100), conf, host);
      expect(call(path.join(BIN, 'bridge'), env('ADD', 101), conf, host).status).toBe(1);
      expect(call(path.join(BIN, 'bridge'), env('DEL', 100), conf, host).status).toBe(0);
      expect(fds()).toBe(start);
      expect(d.served()).toBe(3 + 40 * 3 + 3);
    } finally {
      d.stop();
      delNetns(ctrNs);
      delNetns(hostNs);
      fs.rmSync('/run/cni-ts/bridge-dfd0.lock', { force: true });
    }
  }, 240_000);

  it('a plugin the daemon execs (an IPAM type that is one of our shims) runs standalone instead of waiting for the busy daemon', () => {
    const hostNs = uniqueName('dmnnh');
    const host = addNetns(hostNs);
    const ctrNs = uniqueName('dmnnc');
    const ctr = addNetns(ctrNs);
    const d = startDaemon({ binDir: BIN, socket: path.join(work, 'nested.sock'), netns: host });
    try {
      // "none" as the IPAM type: found in CNI_PATH (bin/none, the shim) and exec'd
      const conf = { cniVersion: '1.1.0', name: 'nestnet', type: 'bridge', bridge: 'dnest0', ipam: { type: 'none' } };
      const r = spawnSync('nsenter', [`--net=${host}`, '--', path.join(BIN, 'bridge')], {
        env: { PATH, CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'n1', CNI_NETNS: ctr, CNI_IFNAME: 'eth0', CNI_PATH: BIN, CNI_TS_DAEMON_SOCKET: d.socket },
        input: JSON.stringify(conf),
        encoding: 'utf8',
        timeout: 30_000,
      });
      expect(r.signal, 'the call hung').toBe(null);
      // whatever none says as an IPAM, the answer is the spec's JSON, from the daemon
      expect(JSON.parse(r.stdout)).toBeTypeOf('object');
      expect(d.served()).toBe(1);
    } finally {
      d.stop();
      delNetns(ctrNs);
      delNetns(hostNs);
      fs.rmSync('/run/cni-ts/bridge-dnest0.lock', { force: true });
    }
  });

  it('declines a caller in another network namespace, which then runs the plugin itself', () => {
    const ns = uniqueName('dmnother');
    addNetns(ns);
    try {
      const before = daemon.served();
      const r = spawnSync('nsenter', [`--net=/var/run/netns/${ns}`, '--', path.join(BIN, 'none')], {
        env: { PATH, CNI_COMMAND: 'VERSION', CNI_TS_DAEMON_SOCKET: daemon.socket },
        input: '{"cniVersion":"0.4.0"}',
        encoding: 'utf8',
      });
      expect(r.status).toBe(0);
      expect(JSON.parse(r.stdout).cniVersion).toBe('0.4.0');
      expect(daemon.served()).toBe(before);
      expect(daemon.log()).toContain('declined none: the caller is in another network or mount namespace');
    } finally {
      delNetns(ns);
    }
  });

  it('answers garbage on its socket with a refusal and keeps serving', async () => {
    const reply = await new Promise<Buffer>((resolve, reject) => {
      const c = net.connect(daemon.socket);
      const chunks: Buffer[] = [];
      c.on('data', (d) => chunks.push(d));
      c.on('end', () => resolve(Buffer.concat(chunks)));
      c.on('error', reject);
      c.end('GET / HTTP/1.1\r\n\r\n');
    });
    expect(reply.readUInt32LE(0)).toBe(1);
    const r = call(path.join(BIN, 'none'), { CNI_COMMAND: 'VERSION', CNI_TS_DAEMON_SOCKET: daemon.socket }, '');
    expect(r.status).toBe(0);
    expect(r.peakKb).toBeLessThan(10 * 1024);
  });

  it('hands a configuration too big for the daemon (over 64 MB) whole to the standalone executable', () => {
    const big = JSON.stringify({ cniVersion: '0.4.0', name: 'big', type: 'none', padding: 'x'.repeat(65 << 20) });
    const before = daemon.served();
    const r = call(path.join(BIN, 'none'), { CNI_COMMAND: 'VERSION', CNI_TS_DAEMON_SOCKET: daemon.socket }, big);
    expect(r.status, r.stderr).toBe(0);
    // the version came from parsing all of it
    expect(JSON.parse(r.stdout).cniVersion).toBe('0.4.0');
    expect(daemon.served()).toBe(before);
  });

  it('refuses a caller that is not root even when the socket file lets it connect', () => {
    const socket = path.join(work, 'open.sock');
    const d = startDaemon({ binDir: BIN, socket });
    try {
      // a mode loosened by mistake, and the work directory reachable; the
      // plugin installed there too (the checkout may sit in a private home)
      fs.chmodSync(socket, 0o666);
      fs.chmodSync(work, 0o755);
      const inst = path.join(work, 'open-inst');
      fs.mkdirSync(inst, { mode: 0o755 });
      fs.copyFileSync(path.join(BIN, 'cni-ts-shim'), path.join(inst, 'none'));
      fs.copyFileSync(path.join(BIN, 'cni-ts'), path.join(inst, 'cni-ts'));
      for (const f of ['none', 'cni-ts']) fs.chmodSync(path.join(inst, f), 0o755);
      const r = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', path.join(inst, 'none')], {
        env: { PATH, CNI_COMMAND: 'VERSION', CNI_TS_DAEMON_SOCKET: socket },
        input: '{"cniVersion":"0.3.1"}',
        encoding: 'utf8',
      });
      // the shim ran the plugin itself, as that user
      expect(r.status, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout).cniVersion).toBe('0.3.1');
      expect(d.served()).toBe(0);
      expect(d.log()).toContain('refused a connection from uid 65534');
    } finally {
      fs.chmodSync(work, 0o700);
      d.stop();
    }
  });

  it('CNI_TS_NO_DAEMON=1 bypasses it', () => {
    const before = daemon.served();
    const r = call(path.join(BIN, 'none'), { CNI_COMMAND: 'VERSION', CNI_TS_DAEMON_SOCKET: daemon.socket, CNI_TS_NO_DAEMON: '1' }, '');
    expect(r.status).toBe(0);
    expect(daemon.served()).toBe(before);
  });

  it('refuses to start on a socket another daemon listens on, and replaces a killed one\'s', async () => {
    expect(() => startDaemon({ binDir: BIN, socket: daemon.socket })).toThrow(/another daemon already listens/);
    const socket = path.join(work, 'stale.sock');
    const killed = startDaemon({ binDir: BIN, socket });
    process.kill(killed.pid, 'SIGKILL');
    for (let i = 0; i < 500 && !processGone(killed.pid); i++) await sleep(10);
    expect(fs.existsSync(socket)).toBe(true); // left behind
    const d = startDaemon({ binDir: BIN, socket });
    try {
      const r = call(path.join(BIN, 'none'), { CNI_COMMAND: 'VERSION', CNI_TS_DAEMON_SOCKET: socket }, '');
      expect(r.status).toBe(0);
      expect(d.served()).toBe(1);
    } finally {
      d.stop();
    }
    expect(fs.existsSync(socket)).toBe(false); // an orderly stop removes it
  });
});

describe('when the daemon goes away', () => {
  it('a daemon killed in the middle of a call: the shim runs the call itself, with the same stdin', async () => {
    const d = startDaemon({ binDir: BIN, socket: path.join(work, 'killed.sock') });
    try {
      // stopped, the daemon accepts (the kernel queues the connection) but never answers
      process.kill(d.pid, 'SIGSTOP');
      const caller = spawn(path.join(BIN, 'none'), [], { env: { PATH, CNI_COMMAND: 'VERSION', CNI_TS_DAEMON_SOCKET: d.socket }, stdio: ['pipe', 'pipe', 'pipe'] });
      let out = '';
      caller.stdout!.on('data', (c) => (out += c));
      caller.stdin!.end('{"cniVersion":"0.3.1"}');
      const status = new Promise<number | null>((r) => caller.on('close', (code) => r(code)));
      await sleep(500);
      expect(caller.exitCode).toBe(null); // still waiting for the daemon
      process.kill(d.pid, 'SIGKILL');
      expect(await status).toBe(0);
      expect(JSON.parse(out).cniVersion).toBe('0.3.1');
    } finally {
      d.stop();
    }
  });

  it('a call blocked past --call-timeout ends the daemon, and the shim runs the call itself', async () => {
    const hostNs = uniqueName('dmnwdh');
    const host = addNetns(hostNs);
    const ctrNs = uniqueName('dmnwdc');
    const ctr = addNetns(ctrNs);
    const bridge = uniqueName('dwd');
    const lockFile = `/run/cni-ts/bridge-${bridge}.lock`;
    fs.mkdirSync('/run/cni-ts', { recursive: true });
    // someone holds the network's lock (a plugin wedged in the middle of its work)
    // one process: the shell takes the lock on fd 9 and becomes sleep, which keeps it
    const holder = spawn('sh', ['-c', `exec 9>${lockFile}; flock 9; exec sleep 600`], { stdio: 'ignore' });
    // held once a non-blocking flock of our own fails
    for (let i = 0; i < 500 && spawnSync('flock', ['-n', lockFile, 'true']).status === 0; i++) await sleep(10);
    const d = startDaemon({ binDir: BIN, socket: path.join(work, 'wd.sock'), netns: host, args: ['--call-timeout', '2'] });
    try {
      const conf = { cniVersion: '1.1.0', name: 'wdnet', type: 'bridge', bridge, ipam: { type: 'cluster-ipam', ranges: [[{ subnet: '10.249.9.0/24' }]], dataDir: path.join(work, 'wd-ipam') } };
      const caller = spawn('nsenter', [`--net=${host}`, '--', path.join(BIN, 'bridge')], {
        env: { PATH, CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'wd1', CNI_NETNS: ctr, CNI_IFNAME: 'eth0', CNI_PATH: BIN, CNI_TS_DAEMON_SOCKET: d.socket },
        stdio: ['pipe', 'pipe', 'pipe'],
      });
      let out = '';
      caller.stdout!.on('data', (c) => (out += c));
      caller.stdin!.end(JSON.stringify(conf));
      const status = new Promise<number | null>((r) => caller.on('close', (code) => r(code)));
      // the daemon, blocked in flock(2), is ended by its watchdog thread
      for (let i = 0; i < 1000 && !processGone(d.pid); i++) await sleep(20);
      expect(processGone(d.pid)).toBe(true);
      expect(d.log()).toMatch(/bridge ADD wd1 still running after 2000 ms; exiting/);
      // the shim now runs the call itself, which waits for the same lock
      expect(caller.exitCode).toBe(null);
      holder.kill('SIGKILL');
      expect(await status, out).toBe(0);
      expect(JSON.parse(out).ips[0].address).toMatch(/^10\.249\.9\./);
    } finally {
      holder.kill('SIGKILL');
      d.stop();
      delNetns(ctrNs);
      delNetns(hostNs);
      fs.rmSync(lockFile, { force: true });
    }
  });

  it('no daemon at all: every plugin still answers, through bin/cni-ts', () => {
    for (const name of plugins.keys()) {
      const r = call(path.join(BIN, name), { CNI_COMMAND: 'VERSION', CNI_TS_DAEMON_SOCKET: path.join(work, 'nobody.sock') }, '');
      expect(r.status, `${name}: ${r.stderr}`).toBe(0);
      expect(JSON.parse(r.stdout).supportedVersions).toContain('1.1.0');
    }
  });

  it('an upgraded executable: the old daemon declines, stops, and the new code answers', async () => {
    // an installation of our own, as /opt/cni/bin would be
    const inst = path.join(work, 'inst');
    fs.mkdirSync(inst);
    fs.copyFileSync(path.join(BIN, 'cni-ts'), path.join(inst, 'cni-ts'));
    fs.chmodSync(path.join(inst, 'cni-ts'), 0o755);
    fs.copyFileSync(path.join(BIN, 'cni-ts-shim'), path.join(inst, 'none'));
    fs.chmodSync(path.join(inst, 'none'), 0o755);
    const d = startDaemon({ binDir: inst, socket: path.join(work, 'upgrade.sock') });
    try {
      const version = () => call(path.join(inst, 'none'), { CNI_COMMAND: 'VERSION', CNI_TS_DAEMON_SOCKET: d.socket }, '');
      expect(version().status).toBe(0);
      expect(d.served()).toBe(1);
      // the upgrade: a new file renamed over the old one, as build.sh install does
      fs.copyFileSync(path.join(BIN, 'cni-ts'), path.join(inst, '.cni-ts.new'));
      fs.chmodSync(path.join(inst, '.cni-ts.new'), 0o755);
      fs.renameSync(path.join(inst, '.cni-ts.new'), path.join(inst, 'cni-ts'));
      const after = version();
      expect(after.status).toBe(0);
      expect(after.peakKb).toBeGreaterThan(20 * 1024); // answered by the new executable itself
      expect(d.served()).toBe(1);
      for (let i = 0; i < 500 && !processGone(d.pid); i++) await sleep(10);
      expect(processGone(d.pid)).toBe(true);
      expect(d.log()).toContain('executable replaced; stopping');
    } finally {
      d.stop(); // a failed assertion must not leave it running
    }
  });
});

describe('the conformance suite through the daemon', () => {
  // Each config's run gets a daemon of its own, started by the suite as one
  // more service inside the run's host namespace (where the suite calls the
  // plugins from); every call goes shim -> daemon.
  const configs = expandConfigPaths([path.join(ROOT, 'conformance/configs/ours')]);
  for (const file of configs) {
    const name = path.basename(file, '.json');
    it(`${name} breaks no rule beyond its documented deviations, every call served by the daemon`, () => {
      const socket = path.join(work, `cf-${name}.sock`);
      const raw = JSON.parse(fs.readFileSync(file, 'utf8'));
      raw.services = [...(raw.services ?? []), { name: 'cni-ts-daemon', argv: [path.join(BIN, 'cni-ts'), 'daemon', '--socket', socket, '--log-calls'], readyLog: 'listening on' }];
      const runs = fs.mkdtempSync(path.join(work, `cf-${name}-`));
      let log = '';
      const saved = process.env.CNI_TS_DAEMON_SOCKET;
      process.env.CNI_TS_DAEMON_SOCKET = socket;
      let report;
      try {
        report = runSuite({
          pluginDirs: [BIN],
          configs: [{ name, object: raw, baseDir: path.dirname(file) }],
          workDir: runs,
          // the run's scratch directory goes with the run: read the daemon's log while it lasts
          onResult: () => {
            for (const d of fs.readdirSync(runs)) {
              const f = path.join(runs, d, 'services', 'cni-ts-daemon.log');
              if (fs.existsSync(f)) log = fs.readFileSync(f, 'utf8');
            }
          },
        });
      } finally {
        if (saved === undefined) delete process.env.CNI_TS_DAEMON_SOCKET;
        else process.env.CNI_TS_DAEMON_SOCKET = saved;
      }
      expect(report.results.filter((r) => r.status === 'FAIL').map(formatLine)).toEqual([]);
      expect(report.results.filter((r) => r.status === 'PASS').length).toBeGreaterThan(report.rules.length / 2);
      const served = (log.match(/^cni-ts daemon: served /gm) ?? []).length;
      const declined = log.split('\n').filter((l) => l.includes('declined'));
      expect(served, log).toBeGreaterThan(20);
      expect(declined).toEqual([]);
    }, 240_000);
  }
});
