/**
 * Publishing on IPv6 localhost (::1) through the userspace relay
 * (`cni-ts port-proxy`, shared/portproxy), on a real kernel with real
 * traffic, as Docker's docker-proxy does.
 *
 * Everything happens inside namespaces this file creates: HOST plays the
 * host (the plugins run there, so the relay they start runs there too and
 * serves HOST's ::1, never the machine's), C4 is an IPv4-only container on
 * one bridge, C6 an IPv6-only container on another, CX another container on
 * C6's bridge that tries to reach the relay. CX removes its own ::1 and
 * routes ::1 to HOST over the bridge, which is all on its side of the wire.
 *
 * What must hold: [::1]:P answers HOST for hostIP ::1 and for wildcard
 * mappings, TCP and UDP, to an IPv4 and an IPv6 container; the relay
 * listens on ::1 and nothing else, so neither CX's crafted packets to ::1
 * nor its connections to HOST's bridge address reach it; an explicit ::1
 * port someone else holds fails the ADD (110) and leaves nothing behind; a
 * killed relay is started again by the next ADD and serves every record;
 * CHECK sees a dead relay; DEL and GC close the ports; with nothing left the
 * relay exits.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PluginError, ResultCache, Runtime, SpawnInvoker, parseNetworkConfig, type NetworkConfigList, type RuntimeConf } from '../../../conformance/libcni';
import { netnsId } from '../../../shared/nft/records';
import { PORT_PROXY_ROOT, recordFile } from '../../../shared/portproxy/records';
import { ask, buildPlugins, randomId, sh, startServer, trySh, writeNetTools, type NetTools, type PluginDirs } from './kernel';

const EXAMPLE = path.resolve(__dirname, '../../../examples/bridge-portmap.conflist');
/** How long an answer that must not come is waited for. */
const NO_ANSWER_MS = 1500;

const id = randomId();
const ns = { host: `pm6h-${id}`, c4: `pm6c4-${id}`, c6: `pm6c6-${id}`, cx: `pm6cx-${id}`, cy: `pm6cy-${id}`, cz: `pm6cz-${id}` };
const x = 100 + Math.floor(Math.random() * 150);
const base = 20000 + Math.floor(Math.random() * 400) * 20;
const PORT = {
  /** C4, hostIP ::1 */ c4lo: base,
  /** C4, wildcard */ c4any: base + 1,
  /** C6, hostIP ::1 */ c6lo: base + 2,
  /** C6, wildcard */ c6any: base + 3,
  /** held on ::1 by a process of HOST's */ taken: base + 4,
  /** CY, hostIP ::1, added after the relay was killed */ cylo: base + 5,
};

let dirs: PluginDirs;
let tools: NetTools;
let net4: NetworkConfigList;
let net6: NetworkConfigList;
let runtime: Runtime;
let proxyDir: string;
const servers: ChildProcess[] = [];

const v4 = (h: number) => `10.${x}.1.${h}`;
const v6 = (h: number) => `fd98:${x}:1::${h}`;

const both = (hostPort: number, hostIP?: string) => [
  { hostPort, containerPort: 8080, protocol: 'tcp', ...(hostIP !== undefined && { hostIP }) },
  { hostPort, containerPort: 5353, protocol: 'udp', ...(hostIP !== undefined && { hostIP }) },
];
const container = (name: string, netns: string, portMappings: unknown[]): RuntimeConf => ({
  containerId: `${name}-${id}`,
  netns: `/var/run/netns/${netns}`,
  ifname: 'eth0',
  args: [],
  capabilityArgs: { portMappings },
});
const rtC4 = () => container('c4', ns.c4, [...both(PORT.c4lo, '::1'), ...both(PORT.c4any)]);
const rtC6 = () => container('c6', ns.c6, [...both(PORT.c6lo, '::1'), ...both(PORT.c6any, '::')]);
const rtCx = () => container('cx', ns.cx, []);
const rtCy = () => container('cy', ns.cy, both(PORT.cylo, '::1'));
const rtCz = () => container('cz', ns.cz, [...both(PORT.c4any + 100), { hostPort: PORT.taken, containerPort: 8080, protocol: 'tcp', hostIP: '::1' }]);

const inNs = (netns: string, ...argv: string[]) => sh(['ip', 'netns', 'exec', netns, ...argv]);

function networkList(name: string, bridge: string, subnet: string, stateDir: string): NetworkConfigList {
  const raw = JSON.parse(fs.readFileSync(EXAMPLE, 'utf8')) as { name: string; plugins: Array<Record<string, unknown>> };
  raw.name = name;
  raw.plugins[0].bridge = bridge;
  raw.plugins[0].ipam = { ...(raw.plugins[0].ipam as object), dataDir: path.join(stateDir, 'ipam'), ranges: [[{ subnet }]] };
  // wildcard mappings on ::1 too (off by default)
  raw.plugins[1].ipv6Localhost = true;
  return parseNetworkConfig(raw);
}

function relayPid(): number | undefined {
  try {
    const pid = Number(fs.readFileSync(path.join(proxyDir, 'relay.pid'), 'utf8'));
    process.kill(pid, 0);
    return pid;
  } catch {
    return undefined;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function until(what: string, cond: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function codeOf(fn: () => unknown): number | undefined {
  try {
    fn();
  } catch (e) {
    if (e instanceof PluginError) return e.cniError?.code;
    throw e;
  }
  return undefined;
}

/** The relay's listening sockets in HOST, as ss prints their local address. */
function relaySockets(pid: number): string[] {
  return inNs(ns.host, 'ss', '-H', '-l', '-n', '-t', '-u', '-p')
    .split('\n')
    .filter((l) => l.includes(`pid=${pid},`))
    .map((l) => l.trim().split(/\s+/)[4]);
}

/** A process of HOST's listening on [::1]:port (TCP); resolves once it listens. */
function holdLoopbackPort(port: number): Promise<ChildProcess> {
  const script = `require('node:net').createServer((s) => s.end('SQUATTER\\n')).listen({ port: ${port}, host: '::1', ipv6Only: true }, () => process.stdout.write('ready\\n'));`;
  const p = spawn('ip', ['netns', 'exec', ns.host, process.execPath, '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
  return new Promise((resolve, reject) => {
    p.stdout?.on('data', (d) => {
      if (String(d).includes('ready')) resolve(p);
    });
    p.on('exit', (code) => reject(new Error(`squatter exited ${code}`)));
  });
}

beforeAll(async () => {
  dirs = buildPlugins();
  tools = writeNetTools(dirs.root);
  for (const n of Object.values(ns)) {
    sh(['ip', 'netns', 'add', n]);
    sh(['ip', '-n', n, 'link', 'set', 'lo', 'up']);
  }
  proxyDir = path.join(PORT_PROXY_ROOT, netnsId(`/var/run/netns/${ns.host}`));
  const stateDir = fs.mkdtempSync(path.join(dirs.root, 'state-'));
  net4 = networkList(`pm6a-${id}`, `pm6ba-${id}`, `${v4(0)}/24`, stateDir);
  net6 = networkList(`pm6b-${id}`, `pm6bb-${id}`, `fd98:${x}:1::/64`, stateDir);
  runtime = new Runtime([dirs.ours], new SpawnInvoker({ name: ns.host, path: `/var/run/netns/${ns.host}` }), new ResultCache(path.join(stateDir, 'cache')));
  runtime.add(net4, rtC4());
  runtime.add(net6, rtC6());
  runtime.add(net6, rtCx());
  servers.push(await startServer(tools, ns.c4, 8080, 5353, 'C4'));
  servers.push(await startServer(tools, ns.c6, 8080, 5353, 'C6'));
  servers.push(await startServer(tools, ns.cy, 8080, 5353, 'CY'));
  servers.push(await startServer(tools, ns.cz, 8080, 5353, 'CZ'));
  // CX sends ::1 to HOST over the bridge: its own ::1 removed, a route via HOST's bridge address
  sh(['ip', '-n', ns.cx, '-6', 'addr', 'del', '::1/128', 'dev', 'lo']);
  sh(['ip', '-n', ns.cx, '-6', 'route', 'add', '::1/128', 'via', v6(1), 'dev', 'eth0']);
}, 120_000);

afterAll(() => {
  if (process.env.CNI_TS_TEST_RELAY_LOG && proxyDir) process.stderr.write(fs.readFileSync(path.join(proxyDir, 'relay.log'), 'utf8'));
  for (const s of servers) s.kill('SIGKILL');
  const pid = proxyDir ? relayPid() : undefined;
  if (pid) process.kill(pid, 'SIGKILL');
  for (const n of Object.values(ns).reverse()) trySh(['ip', 'netns', 'del', n]);
  if (proxyDir) fs.rmSync(proxyDir, { recursive: true, force: true });
  dirs?.cleanup();
});

describe('ports published on ::1', () => {
  it('answer the host over TCP and UDP, for hostIP ::1 and wildcard mappings, to an IPv4-only container', () => {
    expect(ask(tools, ns.host, 'tcp', '::1', PORT.c4lo)).toBe('C4');
    expect(ask(tools, ns.host, 'udp', '::1', PORT.c4lo)).toBe('C4');
    expect(ask(tools, ns.host, 'tcp', '::1', PORT.c4any)).toBe('C4');
    expect(ask(tools, ns.host, 'udp', '::1', PORT.c4any)).toBe('C4');
    // the kernel still serves the wildcard mapping on IPv4, localhost included
    expect(ask(tools, ns.host, 'tcp', '127.0.0.1', PORT.c4any)).toBe('C4');
  });

  it('answer the host over TCP and UDP, for hostIP ::1 and "::" mappings, to an IPv6-only container', () => {
    expect(ask(tools, ns.host, 'tcp', '::1', PORT.c6lo)).toBe('C6');
    expect(ask(tools, ns.host, 'udp', '::1', PORT.c6lo)).toBe('C6');
    expect(ask(tools, ns.host, 'tcp', '::1', PORT.c6any)).toBe('C6');
    expect(ask(tools, ns.host, 'udp', '::1', PORT.c6any)).toBe('C6');
    expect(ask(tools, ns.host, 'tcp', v6(1), PORT.c6any)).toBe('C6');
  });

  it('are served by one relay that listens on ::1 and nothing else', () => {
    const pid = relayPid();
    expect(pid).toBeDefined();
    const local = relaySockets(pid!).sort();
    const want = [PORT.c4lo, PORT.c4any, PORT.c6lo, PORT.c6any].flatMap((p) => [`[::1]:${p}`, `[::1]:${p}`]).sort();
    expect(local).toEqual(want);
    // its state is root's alone
    expect(fs.statSync(proxyDir).mode & 0o777).toBe(0o700);
    for (const f of fs.readdirSync(proxyDir)) expect(fs.statSync(path.join(proxyDir, f)).mode & 0o077).toBe(0);
  });

  it('are not reached by a container on the bridge, neither through ::1 nor through the host address', () => {
    // control: CX reaches C6 through HOST's bridge address where the kernel publishes it
    expect(ask(tools, ns.cx, 'tcp', v6(1), PORT.c6any)).toBe('C6');
    expect(ask(tools, ns.cx, 'tcp', '::1', PORT.c6lo, { waitMs: NO_ANSWER_MS })).toMatch(/^ERR:/);
    expect(ask(tools, ns.cx, 'tcp', '::1', PORT.c6any, { waitMs: NO_ANSWER_MS })).toMatch(/^ERR:/);
    expect(ask(tools, ns.cx, 'udp', '::1', PORT.c6lo, { waitMs: NO_ANSWER_MS })).toMatch(/^ERR:/);
    // a ::1-only port is published nowhere else
    expect(ask(tools, ns.cx, 'tcp', v6(1), PORT.c6lo, { waitMs: NO_ANSWER_MS })).toMatch(/^ERR:/);
    expect(ask(tools, ns.cx, 'udp', v6(1), PORT.c6lo, { waitMs: NO_ANSWER_MS })).toMatch(/^ERR:/);
  });

  it('CHECK passes while the relay serves them', () => {
    runtime.check(net4, rtC4());
    runtime.check(net6, rtC6());
  });
});

describe('a ::1 port another process holds', () => {
  it('fails an explicit ::1 mapping with 110 and leaves nothing behind; a wildcard one is served elsewhere', async () => {
    const squatter = await holdLoopbackPort(PORT.taken);
    servers.push(squatter);
    const before = inNs(ns.host, 'nft', 'list', 'table', 'inet', 'cni_ts_portmap');
    expect(codeOf(() => runtime.add(net4, rtCz()))).toBe(110);
    const owner = { network: net4.name, containerID: rtCz().containerId, ifname: 'eth0' };
    expect(fs.existsSync(path.join(proxyDir, recordFile(owner)))).toBe(false);
    expect(inNs(ns.host, 'nft', 'list', 'table', 'inet', 'cni_ts_portmap')).toBe(before);
    expect(ask(tools, ns.host, 'tcp', '::1', PORT.taken)).toBe('SQUATTER');
    expect(ask(tools, ns.host, 'tcp', '::1', PORT.c4any + 100, { waitMs: NO_ANSWER_MS })).toMatch(/^ERR:/);
    runtime.del(net4, rtCz());

    // a wildcard mapping on the held port: the ADD succeeds, the kernel publishes it, ::1 stays the squatter's
    runtime.add(net4, container('cz', ns.cz, [{ hostPort: PORT.taken, containerPort: 8080, protocol: 'tcp' }]));
    expect(ask(tools, ns.host, 'tcp', '127.0.0.1', PORT.taken)).toBe('CZ');
    expect(ask(tools, ns.host, 'tcp', '::1', PORT.taken)).toBe('SQUATTER');
    runtime.check(net4, container('cz', ns.cz, [{ hostPort: PORT.taken, containerPort: 8080, protocol: 'tcp' }]));
    runtime.del(net4, container('cz', ns.cz, [{ hostPort: PORT.taken, containerPort: 8080, protocol: 'tcp' }]));
  });
});

describe('a killed relay', () => {
  it('fails CHECK, and the next ADD starts it again serving every recorded mapping', async () => {
    const pid = relayPid()!;
    process.kill(pid, 'SIGKILL');
    await until('the relay is gone', () => !alive(pid));
    expect(ask(tools, ns.host, 'tcp', '::1', PORT.c4lo, { waitMs: NO_ANSWER_MS })).toMatch(/^ERR:/);
    expect(codeOf(() => runtime.check(net4, rtC4()))).toBe(111);

    runtime.add(net6, rtCy());
    const again = relayPid();
    expect(again).toBeDefined();
    expect(again).not.toBe(pid);
    expect(ask(tools, ns.host, 'tcp', '::1', PORT.cylo)).toBe('CY');
    for (const [port, who] of [
      [PORT.c4lo, 'C4'],
      [PORT.c4any, 'C4'],
      [PORT.c6lo, 'C6'],
      [PORT.c6any, 'C6'],
    ] as const) {
      expect(ask(tools, ns.host, 'tcp', '::1', port)).toBe(who);
      expect(ask(tools, ns.host, 'udp', '::1', port)).toBe(who);
    }
    runtime.check(net4, rtC4());
  });
});

describe('DEL and GC', () => {
  it('DEL closes the ports at once and is idempotent', () => {
    runtime.del(net6, rtC6());
    expect(ask(tools, ns.host, 'tcp', '::1', PORT.c6lo, { waitMs: NO_ANSWER_MS })).toBe('ERR:ECONNREFUSED');
    expect(ask(tools, ns.host, 'tcp', '::1', PORT.c6any, { waitMs: NO_ANSWER_MS })).toBe('ERR:ECONNREFUSED');
    runtime.del(net6, rtC6());
    expect(ask(tools, ns.host, 'tcp', '::1', PORT.c4lo)).toBe('C4');
  });

  it("forgets a container whose namespace is gone without DEL (the relay's prune)", async () => {
    expect(ask(tools, ns.host, 'tcp', '::1', PORT.cylo)).toBe('CY');
    trySh(['ip', 'netns', 'del', ns.cy]);
    // the relay looks every 10 s: a generous bound
    await until('the port of the vanished container is closed', () => ask(tools, ns.host, 'tcp', '::1', PORT.cylo, { waitMs: NO_ANSWER_MS }) === 'ERR:ECONNREFUSED', 40_000);
    const owner = { network: net6.name, containerID: rtCy().containerId, ifname: 'eth0' };
    expect(fs.existsSync(path.join(proxyDir, recordFile(owner)))).toBe(false);
    expect(ask(tools, ns.host, 'tcp', '::1', PORT.c4lo)).toBe('C4');
  }, 60_000);

  it('GC forgets what valid-attachments does not list, and the relay exits with nothing left', async () => {
    const pid = relayPid()!;
    runtime.del(net6, rtCx());
    expect(runtime.gc(net4, [])).toEqual([]);
    expect(ask(tools, ns.host, 'tcp', '::1', PORT.c4lo, { waitMs: NO_ANSWER_MS })).toBe('ERR:ECONNREFUSED');
    await until('the relay has exited', () => !alive(pid));
    expect(fs.readdirSync(proxyDir).filter((f) => /^[0-9a-f]{32}\.json$/.test(f))).toEqual([]);
  });
});
