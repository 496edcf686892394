/**
 * The daemon is one of the long-running processes that keep an etcd-IPAM
 * host alive (ipam/etcd/liveness.ts): a host whose containers never change
 * makes no CNI call for hours, and its liveness key must outlive its TTL all
 * the same, or `ipam-maint` reports it suspect. The daemon also never idles
 * out while it keeps a host alive.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { allocate } from '../../ipam/allocator';
import { loadIpamConfig } from '../../ipam/config';
import { aliveKey } from '../../ipam/etcd/keys';
import { EtcdKV, type KeyValue } from '../../shared/etcd/kv';
import { EtcdStore } from '../../ipam/etcd/store';
import { startEtcd, type EtcdServer } from '../../testkit/etcd-server';
import { processGone, startDaemon } from '../../testkit/daemon';

const BIN = path.resolve(__dirname, '../../bin');
const TTL_MS = 2000;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

let etcd: EtcdServer;
let raw: EtcdKV;
let work: string;

beforeAll(async () => {
  etcd = await startEtcd();
  raw = new EtcdKV({ endpoints: [etcd.endpoint], requestTimeoutMs: 5000 });
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-ts-daemon-liveness-'));
});

afterAll(async () => {
  raw?.close();
  await etcd?.stop();
  fs.rmSync(work, { recursive: true, force: true });
});

async function get(key: string): Promise<KeyValue | undefined> {
  const { results } = await raw.txn({ success: [{ get: key }] }, Date.now() + 5000);
  return results[0]![0];
}

/** One ADD's worth of IPAM on a host, which records the host for the keeper, then no call at all. */
async function hostWithOneAllocation(prefix: string, node: string, livenessDir: string): Promise<void> {
  const store = EtcdStore.open(
    loadIpamConfig({
      cniVersion: '1.0.0',
      name: 'net1',
      ipam: {
        type: 'cluster-ipam',
        store: 'etcd',
        ranges: [[{ subnet: '10.91.0.0/24' }]],
        etcd: { endpoints: [etcd.endpoint], keyPrefix: prefix, nodeName: node, hostId: `id-${node}`, livenessTtlMs: TTL_MS },
      },
    }),
    { livenessDir },
  );
  try {
    await allocate(store, store.rangeSets, { containerId: 'c1', ifname: 'eth0' });
  } finally {
    await store.close();
  }
}

describe('the daemon keeps etcd-IPAM hosts alive', () => {
  it('a host that makes no CNI call for several TTLs keeps its liveness key while the daemon runs, and loses it once no process keeps it', async () => {
    expect(fs.existsSync(path.join(BIN, 'cni-ts')), 'bin/ is empty: run ./build.sh first').toBe(true);
    const prefix = `/daemon-liveness-${process.pid}`;
    const livenessDir = path.join(work, 'ipam-etcd');
    await hostWithOneAllocation(prefix, 'quiet-node', livenessDir);
    const key = aliveKey(prefix, 'quiet-node');
    expect(await get(key)).toBeDefined();

    // --idle-exit 1: a daemon with no calls would be gone after a second, but
    // it keeps a host alive, so it stays
    const daemon = startDaemon({ binDir: BIN, socket: path.join(work, 'd.sock'), args: ['--liveness-dir', livenessDir, '--idle-exit', '1'] });
    try {
      await sleep(TTL_MS * 3);
      expect(await get(key), daemon.log()).toBeDefined();
      expect(processGone(daemon.pid), daemon.log()).toBe(false);
    } finally {
      daemon.stop();
    }
    // nobody keeps it now: it expires (what the daemon prevented above)
    let gone = false;
    for (let waited = 0; waited < TTL_MS * 4 && !gone; waited += 250) {
      await sleep(250);
      gone = (await get(key)) === undefined;
    }
    expect(gone).toBe(true);
  }, 60_000);

  it('with no host to keep alive, the daemon idles out as asked', async () => {
    const daemon = startDaemon({ binDir: BIN, socket: path.join(work, 'idle.sock'), args: ['--liveness-dir', path.join(work, 'none-here'), '--idle-exit', '1'] });
    try {
      for (let waited = 0; waited < 15_000 && !processGone(daemon.pid); waited += 100) await sleep(100);
      expect(processGone(daemon.pid), daemon.log()).toBe(true);
    } finally {
      daemon.stop();
    }
  }, 30_000);
});
