/**
 * The demo: real network namespaces as containers on the embedded defaults
 * (bridge + cluster-ipam's local store + portmap), every step printed.
 *   1. two containers on a bridge network ping each other and the gateway
 *   2. a tiny web server in one is reached through a published host port
 *   3. a container on an internal network cannot get out
 *   4. everything is torn down and nothing is left behind
 * Run as root after ./build.sh:  node dist/demo.js
 */
import { spawn, spawnSync } from 'node:child_process';
import { withHandle } from '../shared/netlink';
import { createNetns, deleteNetns, withNetns } from '../shared/netns/netns';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Attachment, Conflist, MiniRuntime } from './runtime';

const root = process.cwd();
const runtime = new MiniRuntime(path.join(root, 'bin'));
const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-ts-demo-'));
const tag = process.pid.toString(36);
let failures = 0;

function step(text: string): void {
  console.log(`\n== ${text}`);
}

function expectOk(what: string, ok: boolean): void {
  if (!ok) failures++;
  console.log(`   ${ok ? 'ok  ' : 'FAIL'} ${what}`);
}

function sh(args: string[], timeoutMs = 5000): { ok: boolean; out: string } {
  const r = spawnSync(args[0], args.slice(1), { encoding: 'utf8', timeout: timeoutMs });
  return { ok: r.status === 0, out: `${r.stdout ?? ''}${r.stderr ?? ''}`.trim() };
}

const nsPath = (ns: string) => `/var/run/netns/${ns}`;

/** Run a command inside a container's namespace (the thread enters it around the fork). */
function inNs(ns: string, args: string[], timeoutMs?: number) {
  return withNetns(nsPath(ns), () => sh(args, timeoutMs));
}

/** The container's routes, read with netlink-ts, one line each. */
function routesOf(ns: string): string {
  return withHandle(nsPath(ns), (h) => h.routeList().map((r) => `${r.dst}${r.gw ? ` via ${r.gw}` : ''}`)).join('; ');
}

/** GET http://ip:port/ with busybox nc (from a namespace, or the host when ns is undefined); the body. */
function httpGet(ns: string | undefined, ip: string, port: number): { ok: boolean; out: string } {
  const get = () => spawnSync('busybox', ['nc', '-w', '3', ip, String(port)], { input: 'GET / HTTP/1.0\r\n\r\n', encoding: 'utf8', timeout: 5000 });
  const r = ns ? withNetns(nsPath(ns), get) : get();
  const body = (r.stdout ?? '').split('\r\n\r\n')[1]?.trim() ?? '';
  return { ok: r.status === 0 && (r.stdout ?? '').startsWith('HTTP/1.1 200'), out: body };
}

function withDataDir(list: Conflist): Conflist {
  for (const p of list.plugins) if (p.ipam?.type === 'cluster-ipam') p.ipam.dataDir = dataDir;
  return list;
}

function ipOf(result: any): string {
  return result.ips.find((ip: any) => !ip.address.includes(':')).address.split('/')[0];
}

async function main(): Promise<void> {
  const web = withDataDir(MiniRuntime.load(path.join(root, 'examples/bridge-portmap.conflist')));
  const internal: Conflist = withDataDir({
    cniVersion: '1.1.0',
    name: `demo-internal`,
    plugins: [
      {
        type: 'bridge',
        bridge: `cnits-int${tag}`.slice(0, 15),
        internal: true,
        ipam: { type: 'cluster-ipam', ranges: [[{ subnet: '10.250.99.0/24' }]] },
      },
    ],
  });
  const names = { a: `demo-a-${tag}`, b: `demo-b-${tag}`, c: `demo-c-${tag}` };
  const attached: Array<[Conflist, Attachment]> = [];
  let server: ReturnType<typeof spawn> | undefined;
  try {
    step(`create three network namespaces (the "containers"): ${Object.values(names).join(', ')}`);
    for (const ns of Object.values(names)) createNetns(nsPath(ns));

    step(`ADD a and b to network "${web.name}" (${web.plugins.map((p) => p.type).join(' + ')}); a publishes host port 18080 -> 80`);
    const a: Attachment = {
      containerId: `demo-a-${tag}`,
      netns: `/var/run/netns/${names.a}`,
      ifname: 'eth0',
      capabilityArgs: { portMappings: [{ hostPort: 18080, containerPort: 80, protocol: 'tcp' }] },
    };
    const b: Attachment = { containerId: `demo-b-${tag}`, netns: `/var/run/netns/${names.b}`, ifname: 'eth0' };
    const ra = runtime.add(web, a);
    attached.push([web, a]);
    const rb = runtime.add(web, b);
    attached.push([web, b]);
    const gw = ra.ips[0].gateway;
    console.log(`   a = ${ipOf(ra)}, b = ${ipOf(rb)}, gateway = ${gw} on bridge ${ra.interfaces[0].name}`);
    console.log(`   a's routes: ${routesOf(names.a)}`);

    step('they talk: ping a -> b, b -> a, a -> gateway');
    expectOk(`a pings b (${ipOf(rb)})`, inNs(names.a, ['busybox', 'ping', '-c', '1', '-W', '2', ipOf(rb)]).ok);
    expectOk(`b pings a (${ipOf(ra)})`, inNs(names.b, ['busybox', 'ping', '-c', '1', '-W', '2', ipOf(ra)]).ok);
    expectOk(`a pings the gateway (${gw})`, inNs(names.a, ['busybox', 'ping', '-c', '1', '-W', '2', gw]).ok);

    step('a tiny web server in a, reached from the host through the published port');
    const docroot = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-ts-demo-www-'));
    fs.writeFileSync(path.join(docroot, 'index.html'), `hello from container a (${ipOf(ra)})\n`);
    server = withNetns(nsPath(names.a), () => spawn('busybox', ['httpd', '-f', '-p', '80', '-h', docroot], { stdio: 'ignore' }));
    // busybox httpd needs lo in its namespace only for itself; wait until it listens
    for (let i = 0; i < 20 && !inNs(names.a, ['busybox', 'netstat', '-tln']).out.includes(':80 '); i++) await new Promise((r) => setTimeout(r, 100));
    const fromB = httpGet(names.b, ipOf(ra), 80);
    expectOk(`b fetches http://${ipOf(ra)}/ directly: "${fromB.out}"`, fromB.ok && fromB.out.includes('hello'));
    const viaHost = httpGet(undefined, gw, 18080);
    expectOk(`the host fetches http://${gw}:18080/ (published): "${viaHost.out}"`, viaHost.ok && viaHost.out.includes('hello'));
    const viaLocalhost = httpGet(undefined, '127.0.0.1', 18080);
    expectOk(`the host fetches http://127.0.0.1:18080/ (published on localhost): "${viaLocalhost.out}"`, viaLocalhost.ok && viaLocalhost.out.includes('hello'));
    console.log('   nft: ' + sh(['nft', 'list', 'tables']).out.split('\n').filter((l) => l.includes('cni_ts')).join(', '));

    step(`ADD c to the internal network "${internal.name}" (no gateway, no NAT, no route out)`);
    const c: Attachment = { containerId: `demo-c-${tag}`, netns: `/var/run/netns/${names.c}`, ifname: 'eth0' };
    const rc = runtime.add(internal, c);
    attached.push([internal, c]);
    console.log(`   c = ${ipOf(rc)}; routes: ${routesOf(names.c)}`);
    expectOk('c has no default route', !routesOf(names.c).includes('default'));
    expectOk(`c cannot reach a (${ipOf(ra)}) on the other network`, !inNs(names.c, ['busybox', 'ping', '-c', '1', '-W', '1', ipOf(ra)]).ok);
    expectOk(`c cannot reach the web network's gateway (${gw})`, !inNs(names.c, ['busybox', 'ping', '-c', '1', '-W', '1', gw]).ok);
  } finally {
    step('tear down: DEL every attachment, delete the namespaces');
    server?.kill();
    for (const [list, att] of attached.reverse()) {
      try {
        runtime.del(list, att);
        console.log(`   DEL ${att.containerId} from ${list.name}`);
      } catch (e) {
        failures++;
        console.log(`   FAIL DEL ${att.containerId}: ${(e as Error).message}`);
      }
    }
    for (const ns of Object.values(names)) deleteNetns(nsPath(ns));
    const leftovers = fs.readdirSync(dataDir, { recursive: true }).map(String).filter((f) => /\d+\.\d+\.\d+\.\d+$/.test(f));
    expectOk(`no address allocations left (${leftovers.length})`, leftovers.length === 0);
    const veths = withHandle(undefined, (h) => h.linkList().filter((l) => /^veth[0-9a-f]{11}$/.test(l.name)));
    expectOk(`no host veths left (${veths.length})`, veths.length === 0);
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
  console.log(failures ? `\ndemo finished with ${failures} failed step(s)` : '\ndemo finished: every step ok');
  process.exitCode = failures ? 1 : 0;
}

main().catch((e) => {
  console.error(`demo failed: ${(e as Error).message}`);
  process.exitCode = 1;
});
