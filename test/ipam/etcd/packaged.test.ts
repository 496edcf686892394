/**
 * The packaged executable (bin/cluster-ipam after ./build.sh) and etcd3: the
 * etcd client and its gRPC stack travel inside it as assets, written out
 * and loaded only when a configuration selects the etcd store. A local-store
 * call must not load them at all (their start-up cost is most of a call).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { BIN, addNetns, delNetns, uniqueName } from '../../../testkit/exec';
import { startEtcd, type EtcdServer } from '../../../testkit/etcd-server';

/**
 * The packaged executable itself (`bin/cni-ts cluster-ipam`): this test moves
 * its asset cache with NETLINK_TS_CACHE_DIR, which the shim (bin/cluster-ipam)
 * never passes on to root code (cmd/shim.c).
 */
function runPlugin(name: string, env: Record<string, string>, stdin: object) {
  const r = spawnSync(path.join(BIN, 'cni-ts'), [name], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...env }, input: JSON.stringify(stdin), encoding: 'utf8' });
  const stdout = r.stdout ?? '';
  return { status: r.status ?? -1, stdout, stderr: r.stderr ?? '', json: stdout.trim() ? JSON.parse(stdout) : undefined };
}

let etcd: EtcdServer;
const ns = uniqueName('tipkg');
let nsPath: string;
const cacheDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-ts-cache-'));
const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-ts-ipam-'));

beforeAll(async () => {
  etcd = await startEtcd();
  nsPath = addNetns(ns);
});
afterAll(async () => {
  delNetns(ns);
  await etcd?.stop();
  fs.rmSync(cacheDir, { recursive: true, force: true });
  fs.rmSync(dataDir, { recursive: true, force: true });
});

const env = (command: string, id: string) => ({
  CNI_COMMAND: command,
  CNI_CONTAINERID: id,
  CNI_NETNS: nsPath,
  CNI_IFNAME: 'eth0',
  CNI_PATH: '/opt/cni/bin',
  NETLINK_TS_CACHE_DIR: cacheDir,
});
const etcdDirs = () => fs.readdirSync(cacheDir).filter((f) => f.startsWith('etcd-'));

describe('bin/cluster-ipam and etcd3', () => {
  it('a local-store ADD never writes out or loads the etcd client', () => {
    const conf = { cniVersion: '1.1.0', name: 'pkg-local', type: 'x', ipam: { type: 'cluster-ipam', dataDir, ranges: [[{ subnet: '10.61.0.0/24' }]] } };
    const r = runPlugin('cluster-ipam', env('ADD', 'local1'), conf);
    expect(r.status, r.stdout).toBe(0);
    expect(r.json.ips[0].address).toBe('10.61.0.2/24');
    expect(etcdDirs()).toEqual([]);
    expect(runPlugin('cluster-ipam', env('DEL', 'local1'), conf).status).toBe(0);
  });

  it('an etcd-store ADD and DEL work from the packaged executable, loading the client from its assets', () => {
    const conf = {
      cniVersion: '1.1.0',
      name: 'pkg-etcd',
      type: 'x',
      ipam: { type: 'cluster-ipam', store: 'etcd', etcd: { endpoints: [etcd.endpoint], nodeName: 'pkg-node' }, ranges: [[{ subnet: '10.62.0.0/24' }]] },
    };
    const add = runPlugin('cluster-ipam', env('ADD', 'etcd1'), conf);
    expect(add.status, add.stdout + add.stderr).toBe(0);
    expect(add.json.ips[0].address).toMatch(/^10\.62\.0\.\d+\/24$/);
    expect(etcdDirs()).toHaveLength(1);
    expect(runPlugin('cluster-ipam', env('DEL', 'etcd1'), conf).status).toBe(0);
  });
});
