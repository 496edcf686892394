/**
 * A burst through the daemon: BURST containers at once on one bridge
 * network (bridge ADD then portmap ADD each, as libcni chains them), then
 * all the DELs at once. Every call is answered by the daemon (none handed
 * back to the shim for the standalone path: calls of one network queue
 * behind their own lock key in the daemon instead of parking workers in
 * flock(2) until the wait budget runs out), no address is handed out
 * twice, and the DELs leave no veth, no address and no port mapping.
 *
 * And the same for bridge calls alone, which take their network's lock in
 * shared mode and so run side by side on the daemon's workers: the first
 * ADDs race to create the bridge and write the network's rules (an
 * exclusive turn each), the last DELs race to tear the rules down.
 *
 * The "host" is a namespace of the test's own, where the daemon runs and
 * every call is made (nsenter --net keeps the mount namespace).
 */
import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type TestDaemon, startDaemon } from '../../testkit/daemon';
import { BIN } from '../../testkit/exec';
import { addNetns, delNetns, ipj, uniqueName } from '../../testkit/netns';

const BURST = 50;
const PATH = '/usr/sbin:/usr/bin:/sbin:/bin';

interface Answer {
  status: number | null;
  stdout: string;
  stderr: string;
}

function callIn(hostNs: string, plugin: string, env: Record<string, string>, stdin: string): Promise<Answer> {
  return new Promise((resolve) => {
    const child = spawn('nsenter', [`--net=${hostNs}`, '--', path.join(BIN, plugin)], { env: { PATH, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.stdin.end(stdin);
    child.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}

describe('the daemon under a burst on one network', () => {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-ts-burst-'));
  const hostName = uniqueName('jburst-host');
  const containers = Array.from({ length: BURST }, () => uniqueName('jburst-c'));
  let host = '';
  let daemon: TestDaemon | undefined;

  beforeAll(() => {
    host = addNetns(hostName);
    for (const c of containers) addNetns(c);
    daemon = startDaemon({ binDir: BIN, socket: path.join(work, 'daemon.sock'), netns: host, args: ['--workers', '4'] });
  }, 120_000);

  afterAll(() => {
    daemon?.stop();
    for (const c of containers) delNetns(c);
    delNetns(hostName);
    fs.rmSync(work, { recursive: true, force: true });
  });

  it(`answers ${BURST} concurrent bridge+portmap ADDs and then their DELs, every call by the daemon, no address twice`, async () => {
    const base = { cniVersion: '1.0.0', name: 'jburst' };
    const bridgeConf = { ...base, type: 'bridge', bridge: 'jbr0', isGateway: true, ipMasq: true, ipam: { type: 'cluster-ipam', dataDir: path.join(work, 'ipam'), ranges: [[{ subnet: '10.251.0.0/24' }]] } };
    const portConf = (i: number, prevResult: unknown) =>
      JSON.stringify({ ...base, type: 'portmap', capabilities: { portMappings: true }, runtimeConfig: { portMappings: [{ hostPort: 41000 + i, containerPort: 80, protocol: 'tcp' }] }, prevResult });
    const env = (cmd: string, i: number) => ({ CNI_COMMAND: cmd, CNI_CONTAINERID: `jburst-${i}`, CNI_NETNS: `/var/run/netns/${containers[i]}`, CNI_IFNAME: 'eth0', CNI_PATH: BIN, CNI_TS_DAEMON_SOCKET: daemon!.socket });

    const results: unknown[] = [];
    const failures: string[] = [];
    await Promise.all(
      containers.map(async (_, i) => {
        const b = await callIn(host, 'bridge', env('ADD', i), JSON.stringify(bridgeConf));
        if (b.status !== 0) {
          failures.push(`bridge ADD ${i}: ${b.stdout}${b.stderr}`);
          return;
        }
        results[i] = JSON.parse(b.stdout);
        const p = await callIn(host, 'portmap', env('ADD', i), portConf(i, results[i]));
        if (p.status !== 0) failures.push(`portmap ADD ${i}: ${p.stdout}${p.stderr}`);
      }),
    );
    expect(failures).toEqual([]);
    const addresses = results.map((r) => (r as { ips: { address: string }[] }).ips[0].address);
    expect(new Set(addresses).size).toBe(BURST);
    // what the kernel holds agrees: each container has the address it was told
    for (let i = 0; i < BURST; i++) {
      const inside = ipj(containers[i], 'addr', 'show', 'eth0')[0].addr_info.filter((a: { family: string }) => a.family === 'inet');
      expect(`${inside[0].local}/${inside[0].prefixlen}`).toBe(addresses[i]);
    }

    await Promise.all(
      containers.map(async (_, i) => {
        const p = await callIn(host, 'portmap', env('DEL', i), portConf(i, results[i]));
        if (p.status !== 0) failures.push(`portmap DEL ${i}: ${p.stdout}${p.stderr}`);
        const b = await callIn(host, 'bridge', env('DEL', i), JSON.stringify({ ...bridgeConf, prevResult: results[i] }));
        if (b.status !== 0) failures.push(`bridge DEL ${i}: ${b.stdout}${b.stderr}`);
      }),
    );
    expect(failures).toEqual([]);
    const log = daemon!.log();
    expect(log.split('\n').filter((l) => l.includes('declined'))).toEqual([]);
    expect(daemon!.served()).toBe(4 * BURST);
    // no veth left on the host's side, and the addresses are free again
    expect(ipj(hostName, 'link', 'show', 'master', 'jbr0')).toEqual([]);
    const again = await callIn(host, 'bridge', env('ADD', 0), JSON.stringify(bridgeConf));
    expect(again.status).toBe(0);
    const del = await callIn(host, 'bridge', env('DEL', 0), JSON.stringify({ ...bridgeConf, prevResult: JSON.parse(again.stdout) }));
    expect(del.status).toBe(0);
  }, 600_000);

  it(`answers ${BURST} concurrent bridge ADDs on a new network and then their DELs, every call by the daemon, no address twice, the network's rules gone with the last`, async () => {
    const bridgeConf = { cniVersion: '1.0.0', name: 'jburst2', type: 'bridge', bridge: 'jbr1', isGateway: true, isDefaultGateway: true, ipMasq: true, ipam: { type: 'cluster-ipam', dataDir: path.join(work, 'ipam'), ranges: [[{ subnet: '10.251.1.0/24' }]] } };
    const env = (cmd: string, i: number) => ({ CNI_COMMAND: cmd, CNI_CONTAINERID: `jburst2-${i}`, CNI_NETNS: `/var/run/netns/${containers[i]}`, CNI_IFNAME: 'eth0', CNI_PATH: BIN, CNI_TS_DAEMON_SOCKET: daemon!.socket });
    const servedBefore = daemon!.served();
    const declinedBefore = daemon!.log().split('\n').filter((l) => l.includes('declined')).length;
    const chains = () => execFileSync('ip', ['netns', 'exec', hostName, 'nft', 'list', 'table', 'inet', 'cni_ts_bridge'], { encoding: 'utf8' }).match(/chain net-jbr1-\w+/g) ?? [];

    const adds = await Promise.all(containers.map((_, i) => callIn(host, 'bridge', env('ADD', i), JSON.stringify(bridgeConf))));
    expect(adds.filter((a) => a.status !== 0).map((a) => a.stdout + a.stderr)).toEqual([]);
    const results = adds.map((a) => JSON.parse(a.stdout) as { ips: { address: string }[] });
    const addresses = results.map((r) => r.ips[0].address);
    expect(new Set(addresses).size).toBe(BURST);
    for (let i = 0; i < BURST; i++) {
      const inside = ipj(containers[i], 'addr', 'show', 'eth0')[0].addr_info.filter((a: { family: string }) => a.family === 'inet');
      expect(`${inside[0].local}/${inside[0].prefixlen}`).toBe(addresses[i]);
    }
    expect(ipj(hostName, 'link', 'show', 'master', 'jbr1')).toHaveLength(BURST);
    expect(chains().sort()).toEqual(['chain net-jbr1-in', 'chain net-jbr1-masq', 'chain net-jbr1-out']);

    const dels = await Promise.all(containers.map((_, i) => callIn(host, 'bridge', env('DEL', i), JSON.stringify({ ...bridgeConf, prevResult: results[i] }))));
    expect(dels.filter((d) => d.status !== 0).map((d) => d.stdout + d.stderr)).toEqual([]);
    expect(daemon!.log().split('\n').filter((l) => l.includes('declined')).length).toBe(declinedBefore);
    expect(daemon!.served() - servedBefore).toBe(2 * BURST);
    expect(ipj(hostName, 'link', 'show', 'master', 'jbr1')).toEqual([]);
    expect(chains()).toEqual([]);
    for (const c of containers) expect(ipj(c, 'link', 'show').map((l: { ifname: string }) => l.ifname)).toEqual(['lo']);
    // every address is free again: the whole range can be handed out anew
    expect(fs.readdirSync(path.join(work, 'ipam', 'jburst2')).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f))).toEqual([]);
  }, 600_000);
});
