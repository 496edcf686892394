/**
 * Many portmap processes at once, in a scratch namespace: ADDs of distinct
 * ports all succeed, ADDs racing for one port leave exactly one owner, and
 * concurrent DELs leave no container state behind.
 */
import { spawn } from 'node:child_process';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { portmapConf } from './harness';
import { buildPlugins, randomId, sh, trySh, type PluginDirs } from './kernel';

const ns = `pmcc-${randomId()}`;
/** stands in for the containers' namespace: the skel wants one that is not the plugin's own */
const cns = `${ns}-c`;
let dirs: PluginDirs;

beforeAll(() => {
  dirs = buildPlugins();
  sh(['ip', 'netns', 'add', ns]);
  sh(['ip', 'netns', 'add', cns]);
});

afterAll(() => {
  trySh(['ip', 'netns', 'del', cns]);
  trySh(['ip', 'netns', 'del', ns]);
  dirs?.cleanup();
});

interface Outcome {
  status: number | null;
  out: { code?: number } | undefined;
}

/** One portmap process inside the namespace (plugins run in the host's namespace: here, the scratch one). */
function portmap(command: 'ADD' | 'DEL', containerId: string, conf: Record<string, unknown>): Promise<Outcome> {
  return new Promise((resolve, reject) => {
    const p = spawn('ip', ['netns', 'exec', ns, path.join(dirs.ours, 'portmap')], {
      env: {
        ...process.env,
        CNI_COMMAND: command,
        CNI_CONTAINERID: containerId,
        CNI_NETNS: `/var/run/netns/${cns}`,
        CNI_IFNAME: 'eth0',
        CNI_PATH: dirs.ours,
      },
    });
    let out = '';
    p.stdout.on('data', (d) => {
      out += d;
    });
    p.on('error', reject);
    p.stdin.end(JSON.stringify(conf));
    p.on('exit', (status) => resolve({ status, out: out.trim() ? (JSON.parse(out) as { code?: number }) : undefined }));
  });
}

const N = 20;
const ipOf = (i: number) => `10.77.${Math.floor(i / 200)}.${(i % 200) + 2}/24`;

describe('portmap under concurrency', () => {
  it('concurrent ADDs of distinct ports all succeed and concurrent DELs leave nothing', async () => {
    const confOf = (i: number) => portmapConf({ ips: [ipOf(i)], mappings: [{ hostPort: 20000 + i, containerPort: 80, protocol: 'tcp' }] });
    const adds = await Promise.all(Array.from({ length: N }, (_, i) => portmap('ADD', `c${i}`, confOf(i))));
    expect(adds.map((a) => a.status)).toEqual(Array(N).fill(0));
    const listed = sh(['ip', 'netns', 'exec', ns, 'nft', 'list', 'map', 'inet', 'cni_ts_portmap', 'wildcard4']);
    expect(listed.match(/tcp \. 2\d{4} comment/g)).toHaveLength(N);
    const dels = await Promise.all(Array.from({ length: N }, (_, i) => portmap('DEL', `c${i}`, confOf(i))));
    expect(dels.map((d) => d.status)).toEqual(Array(N).fill(0));
    expect(sh(['ip', 'netns', 'exec', ns, 'nft', 'list', 'table', 'inet', 'cni_ts_portmap'])).not.toMatch(/elements/);
  });

  it('ADDs racing for one host port leave exactly one owner; the others get code 110', async () => {
    const conf = (i: number) => portmapConf({ ips: [ipOf(i)], mappings: [{ hostPort: 30000, containerPort: 80, protocol: 'tcp' }] });
    const adds = await Promise.all(Array.from({ length: 8 }, (_, i) => portmap('ADD', `r${i}`, conf(i))));
    const winners = adds.filter((a) => a.status === 0);
    expect(winners).toHaveLength(1);
    expect(adds.filter((a) => a.status !== 0).map((a) => a.out?.code)).toEqual(Array(7).fill(110));
    const listed = sh(['ip', 'netns', 'exec', ns, 'nft', 'list', 'map', 'inet', 'cni_ts_portmap', 'wildcard4']);
    const winner = `r${adds.findIndex((a) => a.status === 0)}`;
    expect(listed.match(/tcp \. 30000 comment "([^"]*)"/g)).toEqual([`tcp . 30000 comment "cni-ts:net1:${winner}:eth0"`]);
  });
});
