/**
 * Firewall recovery for the overlay's gateway table on a real kernel, in the
 * overlay lab (testkit/overlay/lab.ts): one simulated host with its agent,
 * a real etcd, and OUTSIDE on the underlay with no route back to the
 * gateway subnet, so a container's ping is answered only through the
 * gateway bridge's masquerade.
 *
 *   - a second ADD finds the table's marker current and writes nothing
 *     (every handle of the table unchanged);
 *   - the operator's rules in the gateway table's user chain block egress
 *     and survive ADD and `cni-ts firewall-reload`;
 *   - `nft flush ruleset` breaks the egress and `cni-ts firewall-reload`
 *     restores it, no container added again (its interface the same);
 *   - the daemon's table watch rebuilds it by itself;
 *   - the agent rebuilds the table by itself: when it starts after a flush,
 *     and when a flush happens while it runs (polled, with a generous
 *     bound, no timing asserted).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Lab, OUTSIDE_IP, eventually } from '../../../testkit/overlay/lab';
import { ROOT } from '../../../testkit/exec';
import { netnsId } from '../../../shared/nft/records';
import { FIREWALL_STATE_DIR } from '../../../shared/paths';
import { realFirewallTables, startFirewallWatch } from '../../../cmd/firewall-reload';

const SUBNET = '10.61.0.0/24';
const TABLE = ['inet', 'cni_ts_overlay'];

describe('overlay gateway table: written once, recovered after nft flush ruleset', () => {
  const lab = new Lab(1);
  const host = () => lab.hosts[0]!;
  let bundle = '';
  let native = '';
  let records = '';
  const containers: string[] = [];

  const nft = (...args: string[]): string => lab.in(host(), 'nft', ...args);
  const egress = (c: string): boolean => lab.ping(c, OUTSIDE_IP);

  function add(c: string): { eth1: { ifindex: number; address: string } } {
    const r = lab.plugin(0, 'ADD', c, lab.conf(0, 'ovR', SUBNET));
    if (r.status !== 0) throw new Error(`ADD ${c} failed: ${r.stdout} ${r.stderr}`);
    return { eth1: eth1(c) };
  }

  function eth1(c: string): { ifindex: number; address: string } {
    const [link] = JSON.parse(lab.in(c, 'ip', '-j', 'addr', 'show', 'eth1')) as Array<{ ifindex: number; addr_info: Array<{ family: string; local: string }> }>;
    return { ifindex: link!.ifindex, address: link!.addr_info.find((a) => a.family === 'inet')!.local };
  }

  function firewallReload(): string {
    const r = spawnSync('ip', ['netns', 'exec', host(), 'env', `NETLINK_TS_NATIVE=${native}`, process.execPath, bundle, 'firewall-reload'], { encoding: 'utf8', timeout: 60_000 });
    if (r.status !== 0) throw new Error(`firewall-reload exited ${r.status}: ${r.stderr}`);
    return r.stderr;
  }

  const registrations = (): number => lab.agentLog(0).split('registered host').length - 1;
  /** Starts the agent and waits until it has registered (its first pass done). */
  async function startAgent(): Promise<void> {
    const before = registrations();
    lab.startAgent(0);
    if (!(await eventually(() => registrations() > before, 30_000))) throw new Error(`the agent did not register:\n${lab.agentLog(0)}`);
  }

  beforeAll(async () => {
    await lab.setUp();
    bundle = path.join(lab.dir, 'cni-ts.js');
    execFileSync(path.join(ROOT, 'node_modules/.bin/esbuild'), [path.join(ROOT, 'cmd/main.ts'), '--bundle', '--platform=node', '--target=node20', '--format=cjs', '--log-level=warning', '--external:etcd3', `--outfile=${bundle}`], { cwd: ROOT });
    // a private copy: a node-gyp rebuild elsewhere deletes the build directory
    native = path.join(lab.dir, 'netlink_native.node');
    fs.copyFileSync(path.join(ROOT, 'shared/netlink/native/build/Release/netlink_native.node'), native);
    records = path.join(FIREWALL_STATE_DIR, netnsId(lab.nsPath(host())));
    await startAgent();
    containers.push(lab.addContainer());
    add(containers[0]!);
  }, 120_000);

  afterAll(async () => {
    // the records of a namespace that is about to go (its inode may be reused by another namespace)
    if (records) fs.rmSync(records, { recursive: true, force: true });
    await lab.tearDown();
  });

  it('a container reaches OUTSIDE through the gateway NAT, and the ADD recorded the gateway', () => {
    expect(egress(containers[0]!)).toBe(true);
    const dir = path.join(records, 'inet-cni_ts_overlay');
    const files = fs.readdirSync(dir);
    expect(files).toHaveLength(1);
    expect(fs.statSync(path.join(dir, files[0]!)).mode & 0o777).toBe(0o600);
    expect(JSON.parse(fs.readFileSync(path.join(dir, files[0]!), 'utf8'))).toEqual({ key: 'gateway', value: { bridge: 'cni_gwbridge', subnet: '172.18.0.0/16' } });
  });

  it('a second ADD writes nothing to the table: every handle is the same', () => {
    const before = nft('-a', 'list', 'table', ...TABLE);
    expect(before).toContain('chain skeleton');
    containers.push(lab.addContainer());
    add(containers[1]!);
    expect(nft('-a', 'list', 'table', ...TABLE)).toBe(before);
    expect(egress(containers[1]!)).toBe(true);
  });

  it("the operator's rule in the user chain blocks egress and survives ADD and firewall-reload", () => {
    nft('add', 'rule', ...TABLE, 'user', 'ip', 'daddr', OUTSIDE_IP, 'icmp', 'type', 'echo-request', 'drop');
    expect(egress(containers[0]!)).toBe(false);
    containers.push(lab.addContainer());
    add(containers[2]!);
    expect(egress(containers[2]!)).toBe(false);
    // a reload rewrites the whole skeleton (no onlyGone), the user chain included but not flushed
    expect(firewallReload()).toContain('overlay: 1 gateway bridge(s)');
    expect(egress(containers[0]!)).toBe(false);
    expect(nft('list', 'chain', ...TABLE, 'user')).toContain(`ip daddr ${OUTSIDE_IP} icmp type echo-request drop`);
    // and it is the rule doing it
    nft('flush', 'chain', ...TABLE, 'user');
    expect(egress(containers[0]!)).toBe(true);
  }, 60_000);

  it('nft flush ruleset breaks the egress; cni-ts firewall-reload restores it, no container added again', async () => {
    // the agent would repair it by itself: this test is the command's
    await lab.killAgent(0);
    const before = containers.map(eth1);
    nft('flush', 'ruleset');
    expect(egress(containers[0]!)).toBe(false);
    firewallReload();
    for (const c of containers) expect(egress(c)).toBe(true);
    expect(containers.map(eth1)).toEqual(before);
    // a second reload changes nothing that matters
    firewallReload();
    expect(egress(containers[0]!)).toBe(true);
  }, 60_000);

  it("the daemon's table watch rebuilds it by itself (no agent running)", async () => {
    const ns = lab.nsPath(host());
    const lines: string[] = [];
    const stop = startFirewallWatch((l) => lines.push(l), realFirewallTables({ netnsPath: ns }), { netnsPath: ns, pollMs: 200 });
    try {
      nft('flush', 'ruleset');
      // generous bound: the watch drains every 200 ms
      expect(await eventually(() => nft('list', 'tables').includes('cni_ts_overlay'), 15_000)).toBe(true);
      expect(egress(containers[0]!)).toBe(true);
      expect(lines).toContain('firewall rebuilt from records: overlay: 1 gateway bridge(s)');
    } finally {
      stop();
    }
  }, 60_000);

  it('the agent rebuilds the table when it starts after a flush', async () => {
    nft('flush', 'ruleset');
    expect(egress(containers[0]!)).toBe(false);
    await startAgent();
    // generous bound: the agent rebuilds as it starts
    expect(await eventually(() => egress(containers[0]!), 15_000)).toBe(true);
  }, 60_000);

  it('the running agent rebuilds the table by itself after a flush', async () => {
    nft('flush', 'ruleset');
    // generous bound: the agent's watch drains every 250 ms
    expect(await eventually(() => nft('list', 'tables').includes('cni_ts_overlay'), 15_000)).toBe(true);
    for (const c of containers) expect(egress(c)).toBe(true);
    expect(lab.agentLog(0)).toContain('gateway table (cni_gwbridge, 172.18.0.0/16) rebuilt from its record');
  }, 60_000);
});
