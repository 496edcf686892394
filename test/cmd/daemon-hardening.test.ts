/**
 * `cni-ts daemon` against hostile or careless callers, and under load
 * (issue "Node hardening", items 4-6): the daemon works out its callers'
 * namespaces and capabilities itself, serves calls concurrently so one slow
 * call never stalls the others, never runs a call whose caller has gone,
 * answers prototype names cleanly, loads only the native binding the build
 * packed, and starts the way systemd or the shim start it (socket
 * activation, --idle-exit). Everything through bin/ as built, in real
 * namespaces.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ROOT, addNetns, delNetns, uniqueName } from '../../testkit/exec';
import { type TestDaemon, processGone, startDaemon } from '../../testkit/daemon';

const BIN = path.join(ROOT, 'bin');
const PATH = '/usr/sbin:/usr/bin:/sbin:/bin';

let work: string;

beforeAll(() => {
  expect(fs.existsSync(path.join(BIN, 'cni-ts-shim')), 'bin/ is empty: run ./build.sh first').toBe(true);
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-ts-daemon-hard-'));
});
afterAll(() => {
  fs.rmSync(work, { recursive: true, force: true });
});
beforeEach(() => new Promise<void>((resolve) => setImmediate(resolve)));

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function until(what: string, cond: () => boolean, ms = 30_000): Promise<void> {
  for (let waited = 0; !cond(); waited += 20) {
    if (waited > ms) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

function nsIno(file: string): bigint {
  return fs.statSync(file, { bigint: true }).ino;
}

/** A request as cmd/shim.c builds it, with whatever namespace inodes the caller claims. */
function shimRequest(claim: { net: bigint; mnt: bigint }, name: string, env: Record<string, string>, stdin: string): Buffer {
  const field = (b: Buffer) => {
    const len = Buffer.alloc(4);
    len.writeUInt32LE(b.length);
    return Buffer.concat([len, b]);
  };
  const inodes = Buffer.alloc(16);
  inodes.writeBigUInt64LE(claim.net, 0);
  inodes.writeBigUInt64LE(claim.mnt, 8);
  const environ = Object.entries(env).map(([k, v]) => `${k}=${v}\0`).join('');
  return Buffer.concat([Buffer.from('CNT1'), inodes, field(Buffer.from(name)), field(Buffer.from(environ)), field(Buffer.from(stdin))]);
}

/** Sends one raw request from a process of its own (inside netns when given); returns the answer's bytes. */
function rawCall(socket: string, request: Buffer, netns?: string): Buffer {
  const reqFile = path.join(work, `req-${process.hrtime.bigint()}`);
  fs.writeFileSync(reqFile, request);
  const client = `
    const net = require('node:net');
    const c = net.connect(process.argv[1]);
    const chunks = [];
    c.on('data', (d) => chunks.push(d));
    c.on('end', () => process.stdout.write(Buffer.concat(chunks).toString('hex')));
    c.on('close', () => process.stdout.write(''));
    c.on('error', () => {});
    c.end(require('node:fs').readFileSync(process.argv[2]));`;
  const argv = [...(netns ? ['nsenter', `--net=${netns}`, '--'] : []), process.execPath, '-e', client, socket, reqFile];
  const r = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8', env: { PATH }, timeout: 60_000 });
  fs.rmSync(reqFile);
  return Buffer.from(r.stdout ?? '', 'hex');
}

function linkExists(netns: string, name: string): boolean {
  return spawnSync('ip', ['-n', path.basename(netns), 'link', 'show', name], { encoding: 'utf8' }).status === 0;
}

describe('the daemon works out who its caller is', () => {
  let hostNs: string;
  let host: string;
  let ctrNs: string;
  let ctr: string;
  let d: TestDaemon;
  beforeAll(() => {
    hostNs = uniqueName('dhh');
    host = addNetns(hostNs);
    ctrNs = uniqueName('dhc');
    ctr = addNetns(ctrNs);
    d = startDaemon({ binDir: BIN, socket: path.join(work, 'peer.sock'), netns: host });
  });
  afterAll(() => {
    d?.stop();
    delNetns(ctrNs);
    delNetns(hostNs);
  });

  const bridgeAdd = (bridge: string, id: string) => ({
    env: { CNI_COMMAND: 'ADD', CNI_CONTAINERID: id, CNI_NETNS: ctr, CNI_IFNAME: 'eth0', CNI_PATH: BIN },
    conf: JSON.stringify({ cniVersion: '1.1.0', name: `n${bridge}`, type: 'bridge', bridge, ipam: { type: 'cluster-ipam', ranges: [[{ subnet: '10.250.7.0/24' }]], dataDir: path.join(work, `ipam-${bridge}`) } }),
  });

  it("declines a uid-0 caller in another network namespace that claims the daemon's namespaces, and runs nothing there", () => {
    const evilNs = uniqueName('dhe');
    const evil = addNetns(evilNs);
    const bridge = uniqueName('dhb');
    try {
      const { env, conf } = bridgeAdd(bridge, 'evil1');
      // the daemon's own namespaces, as a container sharing /run could read them off the host
      const claim = { net: nsIno(host), mnt: nsIno('/proc/self/ns/mnt') };
      const answer = rawCall(d.socket, shimRequest(claim, 'bridge', env, conf), evil);
      expect(answer.length, 'no answer at all').toBeGreaterThanOrEqual(4);
      expect(answer.readUInt32LE(0), 'the daemon ran the call').toBe(1); // run it yourself
      expect(linkExists(host, bridge)).toBe(false);
      expect(d.log()).toContain('declined bridge: the caller is in another network or mount namespace');
      // the same request from the daemon's own namespace is served: the test can tell
      const served = d.served();
      const ok = rawCall(d.socket, shimRequest(claim, 'bridge', env, conf), host);
      expect(ok.readUInt32LE(0)).toBe(0);
      expect(d.served()).toBe(served + 1);
      expect(linkExists(host, bridge)).toBe(true);
    } finally {
      delNetns(evilNs);
      fs.rmSync(`/run/cni-ts/bridge-${bridge}.lock`, { force: true });
    }
  });

  it('refuses a root caller without CAP_NET_ADMIN, which then gets nothing the daemon can do', () => {
    const bridge = uniqueName('dhb');
    try {
      const { env, conf } = bridgeAdd(bridge, 'nocap1');
      const served = d.served();
      const r = spawnSync('nsenter', [`--net=${host}`, '--', 'setpriv', '--inh-caps=-net_admin', '--bounding-set=-net_admin', '--', path.join(BIN, 'bridge')], {
        env: { PATH, ...env, CNI_TS_DAEMON_SOCKET: d.socket },
        input: conf,
        encoding: 'utf8',
        timeout: 60_000,
      });
      expect(d.served()).toBe(served);
      expect(d.log()).toMatch(/refused a connection from pid \d+, which lacks CAP_NET_ADMIN/);
      // the shim ran the plugin itself, without the capability: it could not make the bridge
      expect(r.status, r.stdout).not.toBe(0);
      expect(linkExists(host, bridge)).toBe(false);
    } finally {
      fs.rmSync(`/run/cni-ts/bridge-${bridge}.lock`, { force: true });
    }
  });
});

describe('plugin names that are Object.prototype members', () => {
  const names = ['constructor', '__proto__', 'toString', 'hasOwnProperty', 'valueOf'];

  it('cni-ts answers each with its usage, no stack trace', () => {
    for (const name of names) {
      const r = spawnSync(path.join(BIN, 'cni-ts'), [name], { env: { PATH, CNI_COMMAND: 'VERSION' }, encoding: 'utf8', input: '' });
      expect(r.status, `${name}: ${r.stderr}`).toBe(2);
      expect(r.stderr).toMatch(/^usage: cni-ts </);
      expect(r.stderr).not.toMatch(/\n\s+at /);
      expect(r.stdout).toBe('');
    }
  });

  it('a link under such a name answers the same way, through the daemon and without it', () => {
    const inst = fs.mkdtempSync(path.join(work, 'proto-'));
    fs.copyFileSync(path.join(BIN, 'cni-ts'), path.join(inst, 'cni-ts'));
    fs.chmodSync(path.join(inst, 'cni-ts'), 0o755);
    const d = startDaemon({ binDir: inst, socket: path.join(work, 'proto.sock') });
    try {
      for (const name of names) {
        fs.copyFileSync(path.join(BIN, 'cni-ts-shim'), path.join(inst, name));
        fs.chmodSync(path.join(inst, name), 0o755);
        for (const extra of [{ CNI_TS_DAEMON_SOCKET: d.socket }, { CNI_TS_NO_DAEMON: '1' }]) {
          const r = spawnSync(path.join(inst, name), [], { env: { PATH, CNI_COMMAND: 'VERSION', ...extra }, encoding: 'utf8', input: '' });
          expect(r.status, `${name}: ${r.stderr}`).toBe(2);
          expect(r.stderr).not.toMatch(/\n\s+at /);
        }
        expect(d.log()).toContain(`declined ${name}: not a plugin of this executable`);
      }
      expect(processGone(d.pid)).toBe(false);
    } finally {
      d.stop();
    }
  });
});

describe('the native binding written out by the packaged executable', () => {
  /** a call that loads the binding (loopback up in a namespace), by the executable itself (the shim passes no NETLINK_TS_* on) */
  function noneAdd(cacheDir: string, netns: string) {
    return spawnSync(path.join(BIN, 'cni-ts'), ['none'], {
      env: { PATH, NETLINK_TS_CACHE_DIR: cacheDir, CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'n1', CNI_NETNS: netns, CNI_IFNAME: 'eth0', CNI_PATH: BIN },
      input: JSON.stringify({ cniVersion: '1.1.0', name: 'nn', type: 'none' }),
      encoding: 'utf8',
    });
  }

  it('is loaded only when its content has the digest the build packed: a planted file under its name never runs', () => {
    const ns = uniqueName('dhn');
    const netns = addNetns(ns);
    const cache = fs.mkdtempSync(path.join(work, 'cache-'));
    try {
      expect(noneAdd(cache, netns).status).toBe(0);
      const [name] = fs.readdirSync(cache).filter((f) => /^netlink-[0-9a-f]{16}\.node$/.test(f));
      expect(name).toBeTruthy();
      const good = createHash('sha256').update(fs.readFileSync(path.join(cache, name))).digest('hex');
      // someone puts a shared object of their own under that very name
      const marker = path.join(work, 'planted-ran');
      const src = path.join(work, 'planted.c');
      fs.writeFileSync(src, `#include <fcntl.h>\n#include <unistd.h>\n__attribute__((constructor)) static void planted(void) { close(open("${marker}", O_CREAT | O_WRONLY, 0600)); }\n`);
      const cc = spawnSync('cc', ['-shared', '-fPIC', '-o', path.join(cache, name), src], { encoding: 'utf8' });
      expect(cc.status, cc.stderr).toBe(0);
      fs.chmodSync(path.join(cache, name), 0o500);
      const r = noneAdd(cache, netns);
      expect(r.status, r.stdout + r.stderr).toBe(0);
      expect(fs.existsSync(marker), 'the planted object was loaded').toBe(false);
      // and the right one is back in its place
      expect(createHash('sha256').update(fs.readFileSync(path.join(cache, name))).digest('hex')).toBe(good);
    } finally {
      delNetns(ns);
    }
  });

  it('refuses a cache directory that others can write to', () => {
    const ns = uniqueName('dhn');
    const netns = addNetns(ns);
    const cache = fs.mkdtempSync(path.join(work, 'open-cache-'));
    try {
      fs.chmodSync(cache, 0o777);
      const r = noneAdd(cache, netns);
      // whatever step first needs the binding fails, with the spec's error
      expect(r.status).not.toBe(0);
      expect(JSON.parse(r.stdout).code).toBeTypeOf('number');
      expect(fs.readdirSync(cache)).toEqual([]);
    } finally {
      delNetns(ns);
    }
  });
});

describe('concurrent calls', () => {
  let hostNs: string;
  let host: string;
  let ctrNs: string;
  let ctr: string;
  beforeAll(() => {
    hostNs = uniqueName('dch');
    host = addNetns(hostNs);
    ctrNs = uniqueName('dcc');
    ctr = addNetns(ctrNs);
  });
  afterAll(() => {
    delNetns(ctrNs);
    delNetns(hostNs);
  });

  interface Timed {
    status: number | null;
    stdout: string;
    ms: number;
    child: ChildProcess;
    done: Promise<void>;
  }

  /** a shim call inside the host namespace, timed from spawn to exit */
  function timedCall(plugin: string, env: Record<string, string>, conf: string): Timed {
    const t0 = process.hrtime.bigint();
    const child = spawn('nsenter', [`--net=${host}`, '--', path.join(BIN, plugin)], { env: { PATH, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Timed = { status: null, stdout: '', ms: -1, child, done: Promise.resolve() };
    child.stdout!.on('data', (c) => (out.stdout += c));
    child.stderr!.resume();
    out.done = new Promise((resolve) =>
      child.on('close', (code) => {
        out.status = code;
        out.ms = Number(process.hrtime.bigint() - t0) / 1e6;
        resolve();
      }),
    );
    child.stdin!.end(conf);
    return out;
  }

  it('with etcd unreachable, 20 etcd-IPAM ADDs never delay 20 local bridge ADDs: each answers in under a tenth of the etcd timeout', async () => {
    const ETCD_TIMEOUT_MS = 20_000;
    // etcd down the hard way: a loopback port (in the daemon's namespace)
    // that accepts connections and never answers, as a hung or partitioned
    // etcd does, so every etcd call waits for its whole request timeout
    // (a closed port is refused at once)
    spawnSync('ip', ['-n', hostNs, 'link', 'set', 'lo', 'up']);
    const blackhole = spawn('nsenter', [`--net=${host}`, '--', process.execPath, '-e', `
      const held = [];
      const s = require('node:net').createServer((c) => { held.push(c); c.on('error', () => {}); });
      s.listen(0, '127.0.0.1', () => console.log(s.address().port));`], { stdio: ['ignore', 'pipe', 'inherit'] });
    const port = await new Promise<number>((resolve) => blackhole.stdout!.once('data', (d) => resolve(Number(String(d).trim()))));
    const bridge = uniqueName('dcb');
    const d = startDaemon({ binDir: BIN, socket: path.join(work, 'conc.sock'), netns: host });
    const calls: Timed[] = [];
    try {
      const etcdConf = JSON.stringify({
        cniVersion: '1.1.0',
        name: 'etcdnet',
        type: 'bridge',
        ipam: { type: 'cluster-ipam', store: 'etcd', ranges: [[{ subnet: '10.250.8.0/24' }]], etcd: { endpoints: [`http://127.0.0.1:${port}`], requestTimeoutMs: ETCD_TIMEOUT_MS, nodeName: 'dc-node' } },
      });
      const localConf = JSON.stringify({ cniVersion: '1.1.0', name: 'localnet', type: 'bridge', bridge, ipam: { type: 'cluster-ipam', ranges: [[{ subnet: '10.250.9.0/24' }]], dataDir: path.join(work, 'conc-ipam') } });
      const env = (command: string, id: string, ifname: string) => ({ CNI_COMMAND: command, CNI_CONTAINERID: id, CNI_NETNS: ctr, CNI_IFNAME: ifname, CNI_PATH: BIN, CNI_TS_DAEMON_SOCKET: d.socket });
      const etcd: Timed[] = [];
      const local: Timed[] = [];
      for (let i = 0; i < 20; i++) {
        etcd.push(timedCall('cluster-ipam', env('ADD', `etcd${i}`, `e${i}`), etcdConf));
        local.push(timedCall('bridge', env('ADD', `local${i}`, `l${i}`), localConf));
      }
      calls.push(...etcd, ...local);
      await Promise.all(local.map((c) => c.done));
      for (const c of local) expect(c.status, c.stdout).toBe(0);
      const slowest = Math.max(...local.map((c) => c.ms));
      expect(slowest, `bridge ADDs took ${local.map((c) => c.ms.toFixed(0)).join(', ')} ms; the daemon says:\n${d.log().split('\n').filter((l) => /served bridge ADD local/.test(l)).join('\n')}`).toBeLessThan(ETCD_TIMEOUT_MS / 10);
      // and the bridge ADDs were the daemon's, not 20 standalone processes
      expect(d.log().match(/^cni-ts daemon: served bridge ADD local\d+ exit 0/gm)?.length).toBe(20);
      // every etcd call still ends with the spec's error (try again later), after the timeout
      await Promise.all(etcd.map((c) => c.done));
      for (const c of etcd) expect(JSON.parse(c.stdout).code).toBe(11);
      expect(Math.min(...etcd.map((c) => c.ms))).toBeGreaterThan(ETCD_TIMEOUT_MS / 2);
    } finally {
      for (const c of calls) c.child.kill('SIGKILL');
      d.stop();
      blackhole.kill('SIGKILL');
      fs.rmSync(`/run/cni-ts/bridge-${bridge}.lock`, { force: true });
    }
  }, 120_000);

  it('never runs a call whose caller went away before it started (no ghost ADD)', async () => {
    // two networks (the daemon gives one network at most half its workers)
    const busy = [uniqueName('dcg'), uniqueName('dcg')];
    const lockFiles = busy.map((b) => `/run/cni-ts/bridge-${b}.lock`);
    fs.mkdirSync('/run/cni-ts', { recursive: true });
    // the networks' locks held elsewhere: every call on them waits inside a worker
    const holder = spawn('sh', ['-c', `exec 8>${lockFiles[0]}; exec 9>${lockFiles[1]}; flock 8; flock 9; exec sleep 600`], { stdio: 'ignore' });
    for (const lockFile of lockFiles) for (let i = 0; i < 500 && spawnSync('flock', ['-n', lockFile, 'true']).status === 0; i++) await sleep(10);
    const d = startDaemon({ binDir: BIN, socket: path.join(work, 'ghost.sock'), netns: host, args: ['--workers', '2', '--wait-budget', '60'] });
    const ghostBridge = uniqueName('dcx');
    const fillers: Timed[] = [];
    try {
      const conf = (bridge: string, dataDir: string) => JSON.stringify({ cniVersion: '1.1.0', name: `n${bridge}`, type: 'bridge', bridge, ipam: { type: 'cluster-ipam', ranges: [[{ subnet: '10.250.10.0/24' }]], dataDir } });
      const env = (id: string, ifname: string) => ({ CNI_COMMAND: 'ADD', CNI_CONTAINERID: id, CNI_NETNS: ctr, CNI_IFNAME: ifname, CNI_PATH: BIN, CNI_TS_DAEMON_SOCKET: d.socket });
      // two slow calls fill both workers
      for (let i = 0; i < 2; i++) fillers.push(timedCall('bridge', env(`fill${i}`, `f${i}`), conf(busy[i], path.join(work, `ghost-busy${i}`))));
      await until('both workers busy', () => (d.log().match(/waiting for a worker: bridge ADD fill/g) ?? []).length === 2);
      await sleep(200);
      const ghostData = path.join(work, 'ghost-ipam');
      const ghost = timedCall('bridge', env('ghost1', 'g0'), conf(ghostBridge, ghostData));
      await until('the ghost call queued', () => d.log().includes('waiting for a worker: bridge ADD ghost1'));
      // its runtime gives up on it
      ghost.child.kill('SIGKILL');
      await ghost.done;
      holder.kill('SIGKILL');
      await Promise.all(fillers.map((c) => c.done));
      await until('the ghost call handled', () => /dropped bridge ADD ghost1|served bridge ADD ghost1/.test(d.log()));
      expect(d.log()).toContain('dropped bridge ADD ghost1: its caller went away before it started');
      expect(d.log()).not.toMatch(/served bridge ADD ghost1/);
      expect(linkExists(host, ghostBridge)).toBe(false);
      expect(fs.existsSync(ghostData) && fs.readdirSync(ghostData, { recursive: true }).some((f) => String(f).includes('10.250.10.'))).toBe(false);
      // the fillers ran once the lock was free
      for (const c of fillers) expect(c.status, c.stdout).toBe(0);
    } finally {
      holder.kill('SIGKILL');
      for (const c of fillers) c.child.kill('SIGKILL');
      d.stop();
      for (const lockFile of lockFiles) fs.rmSync(lockFile, { force: true });
      fs.rmSync(`/run/cni-ts/bridge-${ghostBridge}.lock`, { force: true });
    }
  }, 120_000);
});

describe('how the daemon is started and stops', () => {
  it('--idle-exit: stops by itself after that long without a call, removing its socket', async () => {
    const socket = path.join(work, 'idle.sock');
    const d = startDaemon({ binDir: BIN, socket, args: ['--idle-exit', '1'] });
    try {
      const r = spawnSync(path.join(BIN, 'none'), [], { env: { PATH, CNI_COMMAND: 'VERSION', CNI_TS_DAEMON_SOCKET: socket }, input: '', encoding: 'utf8' });
      expect(r.status).toBe(0);
      await until('the daemon to exit', () => processGone(d.pid));
      expect(d.log()).toContain('stopping: idle for 1 s');
      expect(d.served()).toBeGreaterThanOrEqual(0);
      expect(fs.existsSync(socket)).toBe(false);
    } finally {
      d.stop();
    }
  });

  it('serves on the socket systemd hands it (LISTEN_FDS), with no socket of its own', async () => {
    const socket = path.join(work, 'activated.sock');
    const logFile = path.join(work, 'activated.log');
    const fd = fs.openSync(logFile, 'w');
    const child = spawn('systemd-socket-activate', ['-l', socket, path.join(BIN, 'cni-ts'), 'daemon', '--log-calls', '--socket', path.join(work, 'not-this.sock')], { stdio: ['ignore', fd, fd], env: { PATH } });
    fs.closeSync(fd);
    try {
      await until('the socket', () => fs.existsSync(socket));
      const r = spawnSync(path.join(BIN, 'none'), [], { env: { PATH, CNI_COMMAND: 'VERSION', CNI_TS_DAEMON_SOCKET: socket }, input: '{"cniVersion":"0.4.0"}', encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout).cniVersion).toBe('0.4.0');
      const log = fs.readFileSync(logFile, 'utf8');
      expect(log).toContain('listening on fd 3 (socket activation)');
      expect(log).toMatch(/served none VERSION/);
      expect(fs.existsSync(path.join(work, 'not-this.sock'))).toBe(false);
    } finally {
      child.kill('SIGTERM');
    }
  });
});
