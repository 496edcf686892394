/**
 * The container plugin (Docker's `--network container:<id>`), packaged:
 * container X is a namespace of ours with a process in it (its "PID") and
 * an address; the plugin must accept CNI_NETNS only when it is X's
 * namespace, by identity, and report X's interfaces without changing any.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, runPlugin } from '../../../testkit/exec';
import { addNetns, delNetns, ipj, uniqueName } from '../../../testkit/netns';
import { ResultCache, Runtime, SpawnInvoker, parseNetworkConfig } from '../../../conformance/libcni';

const names = { x: uniqueName('tctx'), other: uniqueName('tcto'), host: uniqueName('tcth') };
const paths: Record<string, string> = {};
const holders: ChildProcess[] = [];
let xPid: number;
let otherPid: number;
let work: string;

/** A process that lives in the namespace: what a runtime means by the container's PID. */
function holder(ns: string): number {
  const child = spawn('nsenter', [`--net=/var/run/netns/${ns}`, 'sleep', '600'], { stdio: 'ignore' });
  holders.push(child);
  return child.pid!;
}

/** nsenter execs sleep in place: wait until the PID is in the namespace. */
function waitInNs(pid: number, nsPath: string): void {
  const want = fs.statSync(nsPath).ino;
  for (let i = 0; i < 200; i++) {
    try {
      if (fs.statSync(`/proc/${pid}/ns/net`).ino === want) return;
    } catch {
      // not yet
    }
    spawnSync('sleep', ['0.02']);
  }
  throw new Error(`process ${pid} never entered ${nsPath}`);
}

function ip(ns: string, ...args: string[]): void {
  const r = spawnSync('ip', ['-n', ns, ...args], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ip -n ${ns} ${args.join(' ')}: ${r.stderr}`);
}

/** Links and addresses of a namespace: what a refused call must leave as it was. */
// Links and their global addresses: what the plugin could change. Not the
// operstate or link-local addresses, which the kernel settles on its own
// after the fixture's veth comes up (IPv6 DAD), whatever the plugin does.
function snapshot(ns: string): string {
  return JSON.stringify(
    ipj(ns, 'addr', 'show').map((l: any) => [l.ifname, (l.addr_info ?? []).filter((a: any) => a.scope === 'global').map((a: any) => `${a.local}/${a.prefixlen}`)]),
  );
}

beforeAll(() => {
  for (const [k, n] of Object.entries(names)) paths[k] = addNetns(n);
  // container X: an interface with an address, up (a fixture: the plugin under test changes nothing)
  // (a veth pair between X and the other namespace: this kernel has no dummy links)
  ip(names.x, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', names.other);
  ip(names.x, 'addr', 'add', '10.251.7.2/24', 'dev', 'eth0');
  ip(names.x, 'link', 'set', 'eth0', 'up');
  ip(names.other, 'addr', 'add', '10.251.8.2/24', 'dev', 'eth0');
  ip(names.other, 'link', 'set', 'eth0', 'up');
  xPid = holder(names.x);
  otherPid = holder(names.other);
  waitInNs(xPid, paths.x);
  waitInNs(otherPid, paths.other);
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-ts-container-test-'));
});

afterAll(() => {
  for (const h of holders) h.kill('SIGKILL');
  for (const n of Object.values(names)) delNetns(n);
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

const conf = (extra: object = {}) => ({ cniVersion: '1.1.0', name: 'container-test', type: 'container', ...extra });
const env = (command: string, netns: string, args = '') => ({
  CNI_COMMAND: command,
  CNI_CONTAINERID: 'c-joiner-1',
  CNI_NETNS: netns,
  CNI_IFNAME: 'eth0',
  CNI_PATH: BIN,
  CNI_ARGS: args,
  // the plugin as such, whatever daemon another test may have running
  CNI_TS_NO_DAEMON: '1',
});

describe('container plugin (packaged executable)', () => {
  it("ADD into container X's namespace, named by PID in CNI_ARGS, reports X's interfaces and addresses", () => {
    const r = runPlugin('container', env('ADD', paths.x, `IgnoreUnknown=1;CONTAINER_PID=${xPid}`), conf());
    expect(r.status, r.stdout + r.stderr).toBe(0);
    expect(r.json.interfaces).toEqual([expect.objectContaining({ name: 'eth0', sandbox: paths.x })]);
    const mac = ipj(names.x, 'link', 'show', 'eth0')[0].address;
    expect(r.json.interfaces[0].mac).toBe(mac);
    expect(r.json.ips).toEqual([{ address: '10.251.7.2/24', interface: 0 }]);
  });

  it('identity, not path text: CNI_NETNS as /proc/PID/ns/net and X named by its netns path are the same namespace', () => {
    const r = runPlugin('container', env('ADD', `/proc/${xPid}/ns/net`), conf({ container: { netns: paths.x } }));
    expect(r.status, r.stdout).toBe(0);
    expect(r.json.ips.map((i: any) => i.address)).toEqual(['10.251.7.2/24']);
    const byPid = runPlugin('container', env('ADD', paths.x), conf({ container: { pid: xPid } }));
    expect(byPid.status, byPid.stdout).toBe(0);
  });

  it("naming container X's PID while passing another namespace is refused with code 8, nothing changed", () => {
    const before = [snapshot(names.x), snapshot(names.other)];
    for (const [e, c] of [
      [env('ADD', paths.other, `CONTAINER_PID=${xPid}`), conf()],
      [env('ADD', paths.other), conf({ container: { pid: xPid } })],
      [env('ADD', paths.other), conf({ container: { netns: paths.x } })],
      // every container named must match: the config names X, CNI_ARGS the other
      [env('ADD', paths.x, `CONTAINER_PID=${otherPid}`), conf({ container: { pid: xPid } })],
    ] as const) {
      const r = runPlugin('container', e, c);
      expect(r.status, r.stdout).not.toBe(0);
      expect(r.json.code, r.stdout).toBe(8);
      expect(r.json.msg).toMatch(/different one/);
      expect(r.stdout).not.toContain('10.251.8.2');
    }
    expect([snapshot(names.x), snapshot(names.other)]).toEqual(before);
  });

  it('no container named is code 7; a malformed CONTAINER_PID is code 4', () => {
    const none = runPlugin('container', env('ADD', paths.x), conf());
    expect(none.json.code, none.stdout).toBe(7);
    for (const bad of ['0', '-1', '1/../1', 'abc', '99999999']) {
      const r = runPlugin('container', env('ADD', paths.x, `CONTAINER_PID=${bad}`), conf());
      expect(r.json.code, `${bad}: ${r.stdout}`).toBe(4);
    }
    const relative = runPlugin('container', env('ADD', paths.x, 'CONTAINER_NETNS=run/netns/x'), conf());
    expect(relative.json.code, relative.stdout).toBe(4);
  });

  it('a container that is not running, or a path that is no namespace (file, FIFO), is code 3 without blocking', () => {
    const dead = spawnSync('true');
    const gone = runPlugin('container', env('ADD', paths.x, `CONTAINER_PID=${dead.pid}`), conf());
    expect(gone.json.code, gone.stdout).toBe(3);
    const file = path.join(work, 'plain');
    fs.writeFileSync(file, '');
    expect(runPlugin('container', env('ADD', paths.x, `CONTAINER_NETNS=${file}`), conf()).json.code).toBe(3);
    // a FIFO would block open(2) forever if the plugin opened it
    const fifo = path.join(work, 'fifo');
    spawnSync('mkfifo', [fifo]);
    const r = spawnSync(path.join(BIN, 'container'), [], {
      env: { PATH: process.env.PATH, ...env('ADD', paths.x, `CONTAINER_NETNS=${fifo}`) },
      input: JSON.stringify(conf()),
      encoding: 'utf8',
      timeout: 20_000,
    });
    expect(r.signal, 'the plugin blocked on the FIFO').toBeNull();
    expect(JSON.parse(r.stdout).code).toBe(3);
  });

  it('CHECK verifies the identity again and the reported addresses', () => {
    const add = runPlugin('container', env('ADD', paths.x, `CONTAINER_PID=${xPid}`), conf());
    expect(add.status).toBe(0);
    const ok = runPlugin('container', env('CHECK', paths.x, `CONTAINER_PID=${xPid}`), conf({ prevResult: add.json }));
    expect(ok.status, ok.stdout).toBe(0);
    const moved = runPlugin('container', env('CHECK', paths.other, `CONTAINER_PID=${xPid}`), conf({ prevResult: add.json }));
    expect(moved.json.code, moved.stdout).toBe(8);
    const forged = { ...add.json, ips: [...add.json.ips, { address: '10.251.7.99/24', interface: 0 }] };
    const bad = runPlugin('container', env('CHECK', paths.x, `CONTAINER_PID=${xPid}`), conf({ prevResult: forged }));
    expect(bad.status).not.toBe(0);
    expect(bad.json.msg).toMatch(/10\.251\.7\.99/);
  });

  it('DEL changes nothing, twice, and succeeds after the joined container is gone', () => {
    const before = snapshot(names.x);
    expect(runPlugin('container', env('DEL', paths.x, `CONTAINER_PID=${xPid}`), conf()).status).toBe(0);
    expect(runPlugin('container', env('DEL', paths.x, `CONTAINER_PID=${xPid}`), conf()).status).toBe(0);
    expect(snapshot(names.x)).toBe(before);
    const dead = spawnSync('true');
    expect(runPlugin('container', env('DEL', '', `CONTAINER_PID=${dead.pid}`), conf()).status).toBe(0);
  });

  it('GC and STATUS succeed (nothing is kept)', () => {
    expect(runPlugin('container', { CNI_COMMAND: 'GC', CNI_PATH: BIN }, conf({ 'cni.dev/valid-attachments': [] })).status).toBe(0);
    expect(runPlugin('container', { CNI_COMMAND: 'STATUS', CNI_PATH: BIN }, conf()).status).toBe(0);
  });
});

describe('container plugin in a libcni chain', () => {
  it("Docker's flow: X gets a bridge network, Y joins X's namespace and sees X's address; CHECK and DEL keep X's network", () => {
    const hostNs = { name: names.host, path: paths.host };
    const runtime = new Runtime([BIN], new SpawnInvoker(hostNs), new ResultCache(path.join(work, 'cache')));
    const bridgeName = `ctb${names.host.slice(-6)}`;
    const bridgeList = parseNetworkConfig({
      cniVersion: '1.0.0',
      name: 'ctr-mode-bridge',
      plugins: [{ type: 'bridge', bridge: bridgeName, isGateway: true, ipam: { type: 'cluster-ipam', dataDir: path.join(work, 'ipam'), ranges: [[{ subnet: '10.251.9.0/24' }]] } }],
    });
    const joinList = parseNetworkConfig({ cniVersion: '1.0.0', name: 'ctr-mode-join', plugins: [{ type: 'container' }] });
    // X in a fresh namespace of its own, with a process in it
    const xName = uniqueName('tctc');
    const xPath = addNetns(xName);
    const pid = holder(xName);
    try {
      waitInNs(pid, xPath);
      const x = { containerId: 'x1', netns: xPath, ifname: 'eth1', args: [] as [string, string][], capabilityArgs: {} };
      const xResult = runtime.add(bridgeList, x) as any;
      const xAddr = xResult.ips[0].address;
      // Y: CNI_NETNS is X's namespace (as the runtime hands Y's sandbox), X named by PID
      const y = { containerId: 'y1', netns: `/proc/${pid}/ns/net`, ifname: 'eth0', args: [['CONTAINER_PID', String(pid)]] as [string, string][], capabilityArgs: {} };
      const yResult = runtime.add(joinList, y) as any;
      expect(yResult.ips.map((i: any) => i.address)).toEqual([xAddr]);
      expect(yResult.interfaces.map((i: any) => i.name)).toEqual(['eth1']);
      runtime.check(joinList, y);
      runtime.del(joinList, y);
      // X's network is untouched by Y's DEL
      expect(ipj(xName, 'addr', 'show', 'eth1')[0].addr_info.map((a: any) => `${a.local}/${a.prefixlen}`)).toContain(xAddr);
      runtime.check(bridgeList, x);
      runtime.del(bridgeList, x);
    } finally {
      delNetns(xName);
      spawnSync('ip', ['-n', names.host, 'link', 'del', bridgeName]);
    }
  });
});
