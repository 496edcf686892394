/**
 * The demo: real network namespaces as containers on the embedded defaults
 * (bridge + cluster-ipam's local store + portmap), every step printed.
 *   1. two containers on a bridge network ping each other and the gateway
 *   2. a tiny web server in one is reached through a published host port
 *   3. a container on an internal network cannot get out
 *   4. everything is torn down and nothing is left behind
 * Run as root after ./build.sh:  node dist/demo.js
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
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

function inNs(ns: string, args: string[], timeoutMs?: number) {
  return sh(['ip', 'netns', 'exec', ns, ...args], timeoutMs);
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
    for (const ns of Object.values(names)) execFileSync('ip', ['netns', 'add', ns]);

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
    console.log(`   a's routes: ${inNs(names.a, ['ip', 'route']).out.replace(/\n/g, '; ')}`);

    step('they talk: ping a -> b, b -> a, a -> gateway');
    expectOk(`a pings b (${ipOf(rb)})`, inNs(names.a, ['busybox', 'ping', '-c', '1', '-W', '2', ipOf(rb)]).ok);
    expectOk(`b pings a (${ipOf(ra)})`, inNs(names.b, ['busybox', 'ping', '-c', '1', '-W', '2', ipOf(ra)]).ok);
    expectOk(`a pings the gateway (${gw})`, inNs(names.a, ['busybox', 'ping', '-c', '1', '-W', '2', gw]).ok);

    step('a tiny web server in a, reached from the host through the published port');
    const docroot = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-ts-demo-www-'));
    fs.writeFileSync(path.join(docroot, 'index.html'), `hello from container a (${ipOf(ra)})\n`);
    server = spawn('ip', ['netns', 'exec', names.a, 'busybox', 'httpd', '-f', '-p', '80', '-h', docroot], { stdio: 'ignore' });
    await new Promise((r) => setTimeout(r, 300));
    const fromB = inNs(names.b, ['busybox', 'wget', '-q', '-T', '3', '-O', '-', `http://${ipOf(ra)}/`]);
    expectOk(`b fetches http://${ipOf(ra)}/ directly: "${fromB.out}"`, fromB.ok && fromB.out.includes('hello'));
    const viaHost = sh(['busybox', 'wget', '-q', '-T', '3', '-O', '-', `http://${gw}:18080/`]);
    expectOk(`the host fetches http://${gw}:18080/ (published): "${viaHost.out}"`, viaHost.ok && viaHost.out.includes('hello'));
    const viaLocalhost = sh(['busybox', 'wget', '-q', '-T', '3', '-O', '-', 'http://127.0.0.1:18080/']);
    expectOk(`the host fetches http://127.0.0.1:18080/ (published on localhost): "${viaLocalhost.out}"`, viaLocalhost.ok && viaLocalhost.out.includes('hello'));
    console.log('   nft: ' + sh(['nft', 'list', 'tables']).out.split('\n').filter((l) => l.includes('cni_ts')).join(', '));

    step(`ADD c to the internal network "${internal.name}" (no gateway, no NAT, no route out)`);
    const c: Attachment = { containerId: `demo-c-${tag}`, netns: `/var/run/netns/${names.c}`, ifname: 'eth0' };
    const rc = runtime.add(internal, c);
    attached.push([internal, c]);
    console.log(`   c = ${ipOf(rc)}; routes: ${inNs(names.c, ['ip', 'route']).out.replace(/\n/g, '; ')}`);
    expectOk('c has no default route', !inNs(names.c, ['ip', 'route']).out.includes('default'));
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
    for (const ns of Object.values(names)) spawnSync('ip', ['netns', 'del', ns]);
    const leftovers = fs.readdirSync(dataDir, { recursive: true }).map(String).filter((f) => /\d+\.\d+\.\d+\.\d+$/.test(f));
    expectOk(`no address allocations left (${leftovers.length})`, leftovers.length === 0);
    const veths = sh(['ip', '-br', 'link']).out.split('\n').filter((l) => /^veth[0-9a-f]{11}/.test(l));
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
