/**
 * Fixtures for portmap's kernel tests (not a test file itself): a bundle of
 * the current sources run as plugin executables, namespaces, and a tiny
 * TCP/UDP server and client run inside namespaces.
 *
 * The plugins are bundled here with esbuild (what build.sh does before it
 * packs the executable) instead of using bin/, so a rebuild by someone else
 * in the middle of a run cannot swap the executables under the test, and the
 * test always runs the sources it sits beside.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const ROOT = path.resolve(__dirname, '../../..');

/** Run a command; throws with its stderr on failure. */
export function sh(argv: string[], input?: string): string {
  const r = spawnSync(argv[0], argv.slice(1), { input, encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`${argv.join(' ')} failed (${r.status}): ${r.stderr.trim()}`);
  return r.stdout;
}

/** Like sh, but never throws: for cleanup. */
export function trySh(argv: string[]): void {
  spawnSync(argv[0], argv.slice(1), { encoding: 'utf8' });
}

export interface PluginDirs {
  root: string;
  /** our bridge, cluster-ipam and portmap */
  ours: string;
  /** the reference bridge and host-local from /usr/lib/cni, and our portmap */
  reference: string;
  cleanup(): void;
}

/** Bundle cmd/main.ts and lay out the plugin directories both flavours need. */
export function buildPlugins(): PluginDirs {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-ts-portmap-'));
  const bundle = path.join(root, 'cni-ts.js');
  sh([
    path.join(ROOT, 'node_modules/.bin/esbuild'),
    path.join(ROOT, 'cmd/main.ts'),
    '--bundle',
    '--platform=node',
    '--target=node20',
    '--format=cjs',
    '--log-level=warning',
    '--external:etcd3',
    `--outfile=${bundle}`,
  ]);
  // A private copy: node-gyp rebuilds elsewhere delete the build directory.
  const native = path.join(root, 'netlink_native.node');
  fs.copyFileSync(path.join(ROOT, 'shared/netlink/native/build/Release/netlink_native.node'), native);
  const wrapper = (name: string) =>
    `#!/bin/sh\nNETLINK_TS_NATIVE=${native} exec ${process.execPath} ${bundle} ${name} "$@"\n`;
  const ours = path.join(root, 'ours');
  const reference = path.join(root, 'reference');
  fs.mkdirSync(ours);
  fs.mkdirSync(reference);
  for (const name of ['bridge', 'portmap', 'cluster-ipam']) fs.writeFileSync(path.join(ours, name), wrapper(name), { mode: 0o755 });
  fs.writeFileSync(path.join(reference, 'portmap'), wrapper('portmap'), { mode: 0o755 });
  for (const name of ['bridge', 'host-local']) fs.symlinkSync(`/usr/lib/cni/${name}`, path.join(reference, name));
  return { root, ours, reference, cleanup: () => fs.rmSync(root, { recursive: true, force: true }) };
}

const SERVER = `
const net = require('node:net');
const dgram = require('node:dgram');
const [tcpPort, udpPort, name] = process.argv.slice(2);
let pending = 3;
const ready = () => { if (--pending === 0) process.stdout.write('ready\\n'); };
net.createServer((s) => s.end(name + '\\n')).listen({ port: Number(tcpPort), host: '::', ipv6Only: false }, ready);
for (const type of ['udp4', 'udp6']) {
  const u = dgram.createSocket({ type, ipv6Only: type === 'udp6' });
  u.on('message', (_m, r) => u.send(name + '\\n', r.port, r.address));
  u.bind(Number(udpPort), ready);
}
`;

const CLIENT = `
const net = require('node:net');
const dgram = require('node:dgram');
const [proto, host, port, srcPort, waitMs] = process.argv.slice(2);
const done = (s) => { process.stdout.write(s.trim()); process.exit(0); };
// Only there so a broken path cannot hang the suite, unless a test asks for
// a short wait (an answer that must not come).
setTimeout(() => done('ERR:TIMEOUT'), Number(waitMs || 8000));
if (proto === 'tcp') {
  let data = '';
  const s = net.connect({ host, port: Number(port) });
  s.on('data', (d) => { data += d; });
  s.on('end', () => done(data));
  s.on('error', (e) => done('ERR:' + e.code));
} else {
  const u = dgram.createSocket(host.includes(':') ? 'udp6' : 'udp4');
  u.on('message', (m) => done(String(m)));
  u.on('error', (e) => done('ERR:' + e.code));
  // UDP may lose the first datagram while neighbours resolve: ask a few times.
  const ask = () => u.send('ping\\n', Number(port), host);
  // a fixed source port makes every run the same flow to conntrack
  u.bind(Number(srcPort || 0), () => {
    ask();
    const t = setInterval(ask, 200);
    t.unref();
  });
}
`;

export interface NetTools {
  dir: string;
  server: string;
  client: string;
}

export function writeNetTools(dir: string): NetTools {
  const server = path.join(dir, 'server.js');
  const client = path.join(dir, 'client.js');
  fs.writeFileSync(server, SERVER);
  fs.writeFileSync(client, CLIENT);
  return { dir, server, client };
}

/** Start the server in a namespace; resolves once both ports listen. */
export function startServer(tools: NetTools, netns: string, tcpPort: number, udpPort: number, name: string): Promise<ChildProcess> {
  const p = spawn('ip', ['netns', 'exec', netns, process.execPath, tools.server, String(tcpPort), String(udpPort), name], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  return new Promise((resolve, reject) => {
    let err = '';
    p.stderr?.on('data', (d) => {
      err += d;
    });
    p.stdout?.on('data', (d) => {
      if (String(d).includes('ready')) resolve(p);
    });
    p.on('exit', (code) => reject(new Error(`server in ${netns} exited ${code}: ${err}`)));
  });
}

/** What a client in `netns` gets from proto://host:port: the server's name, or "ERR:<code>". */
export function ask(tools: NetTools, netns: string | undefined, proto: 'tcp' | 'udp', host: string, port: number, opts: { srcPort?: number; waitMs?: number } = {}): string {
  const argv = [process.execPath, tools.client, proto, host, String(port), String(opts.srcPort ?? 0), String(opts.waitMs ?? 8000)];
  const full = netns ? ['ip', 'netns', 'exec', netns, ...argv] : argv;
  const r = spawnSync(full[0], full.slice(1), { encoding: 'utf8', timeout: 20_000 });
  if (r.error) throw r.error;
  return r.stdout.trim();
}

export function randomId(): string {
  return Math.random().toString(36).slice(2, 8);
}
