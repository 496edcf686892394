import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EtcdKV } from '../../../shared/etcd/kv';
import { startEtcd, type EtcdServer } from '../../../testkit/etcd-server';

const REPO = path.resolve(__dirname, '../../..');
const NATIVE = path.join(REPO, 'shared/netlink/native/build/Release/netlink_native.node');

let etcd: EtcdServer;
let raw: EtcdKV;
let dir: string;
let worker: string;

beforeAll(async () => {
  etcd = await startEtcd();
  raw = new EtcdKV({ endpoints: [etcd.endpoint], requestTimeoutMs: 5000 });
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ipam-etcd-worker-'));
  worker = path.join(dir, 'worker.js');
  // etcd3 stays external: it reads its .proto files next to its own module.
  execFileSync(path.join(REPO, 'node_modules/.bin/esbuild'), [
    path.join(__dirname, 'fixtures/worker.ts'),
    '--bundle',
    '--platform=node',
    '--log-level=warning',
    '--external:etcd3',
    `--outfile=${worker}`,
  ]);
});

afterAll(async () => {
  raw?.close();
  await etcd?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

interface Proc {
  node: string;
  ready: Promise<void>;
  done: Promise<{ code: number | null; lines: string[]; stderr: string }>;
  go(): void;
}

function startWorker(config: string, node: string, count: number): Proc {
  const child = spawn(process.execPath, [worker, config, node, String(count)], {
    env: { ...process.env, NODE_PATH: path.join(REPO, 'node_modules'), NETLINK_TS_NATIVE: NATIVE },
  });
  let out = '';
  let stderr = '';
  let signalReady: () => void;
  const ready = new Promise<void>((resolve) => (signalReady = resolve));
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString();
    if (out.startsWith('ready\n')) signalReady();
  });
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const done = new Promise<{ code: number | null; lines: string[]; stderr: string }>((resolve) =>
    child.once('exit', (code) => {
      signalReady();
      resolve({ code, lines: out.split('\n').filter((l) => l.startsWith('{')), stderr });
    }),
  );
  return { node, ready, done, go: () => child.stdin.end('go\n') };
}

describe('etcd store across processes', () => {
  it('never hands one address to two of 8 processes with distinct node names allocating at the same time', { timeout: 120_000 }, async () => {
    const p = `/procs-${process.pid}`;
    const config = path.join(dir, 'net.json');
    // a /25 in /28 blocks: 8 blocks for 8 hosts taking 12 each, so claims
    // race and some hosts end up borrowing
    fs.writeFileSync(
      config,
      JSON.stringify({
        cniVersion: '1.1.0',
        name: 'procs',
        ipam: { type: 'cluster-ipam', store: 'etcd', ranges: [[{ subnet: '10.60.0.0/25' }]], etcd: { endpoints: [etcd.endpoint], keyPrefix: p, blockSize: 28 } },
      }),
    );
    const procs = Array.from({ length: 8 }, (_, i) => startWorker(config, `node-${i}`, 12));
    await Promise.all(procs.map((w) => w.ready));
    for (const w of procs) w.go();
    const results = await Promise.all(procs.map((w) => w.done));
    for (const r of results) expect(r.stderr.split('\n').filter((l) => l && !l.includes('borrowed')).join('\n')).toBe('');
    expect(results.map((r) => r.code)).toEqual(procs.map(() => 0));

    const got = results.flatMap((r) => r.lines.map((l) => JSON.parse(l) as { containerId: string; address: string }));
    expect(got).toHaveLength(96);
    expect(new Set(got.map((g) => g.address)).size).toBe(96);

    // etcd agrees: one address key per allocation, owned by the process that
    // made it, and marked used in the block it names
    const { results: kvs } = await raw.txn({ success: [{ get: `${p}/networks/procs/ips/`, prefix: true }, { get: `${p}/networks/procs/hostblocks/`, prefix: true }] }, Date.now() + 5000);
    expect(kvs[0]!).toHaveLength(96);
    const blocks = new Map(kvs[1]!.map((k) => [k.key, JSON.parse(k.value) as { cidr: string; used: Record<string, number> }]));
    for (const k of kvs[0]!) {
      const v = JSON.parse(k.value) as { containerId: string; node: string; blockKey: string; seq: number };
      expect(v.containerId.startsWith(`${v.node}-`)).toBe(true);
      const block = blocks.get(v.blockKey)!;
      const ip = k.key.slice(k.key.lastIndexOf('/') + 1);
      const offset = Number(ip.split('.')[3]) - Number(block.cidr.split('/')[0]!.split('.')[3]);
      expect(block.used[String(offset)]).toBe(v.seq);
    }
  });
});
