import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { CniError, ErrorCode } from '../../../shared/cni/errors';
import { LOCK_EX, LOCK_NB, LOCK_UN } from '../../../shared/sys/flock';
import { native } from '../../../shared/sys/native';
import { allocate, collectGarbage, release } from '../../../ipam/allocator';
import { loadIpamConfig } from '../../../ipam/config';
import { formatIP, parseIP } from '../../../shared/ip';
import { LocalStore } from '../../../ipam/local/store';

const REPO = path.resolve(__dirname, '../../..');
const NATIVE = path.join(REPO, 'shared/netlink/native/build/Release/netlink_native.node');

const tmpDirs: string[] = [];
function tmpDir(prefix = 'ipam-local-'): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  tmpDirs.push(d);
  return d;
}
afterEach(() => {
  for (const d of tmpDirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

const rangeSets = (ranges: unknown[][]) =>
  loadIpamConfig({ cniVersion: '1.0.0', name: 'net', ipam: { type: 'cluster-ipam', ranges } }).rangeSets;
const V4 = rangeSets([[{ subnet: '10.1.0.0/24' }]]);
const owner = (id: string, ifname = 'eth0') => ({ containerId: id, ifname });

async function take(store: LocalStore, id: string, ifname = 'eth0', requested?: string): Promise<string> {
  const got = await allocate(store, V4, owner(id, ifname), requested ? [parseIP(requested)!] : []);
  return formatIP(got[0]!.ip);
}

/** Whether someone else holds the store's flock (probed through a separate open file description). */
function lockedElsewhere(dir: string): boolean {
  const fd = fs.openSync(path.join(dir, 'lock'), 'r+');
  try {
    native().flock(fd, LOCK_EX | LOCK_NB);
    native().flock(fd, LOCK_UN);
    return false;
  } catch (e) {
    if ((e as { errno?: number }).errno === 11) return true; // EWOULDBLOCK
    throw e;
  } finally {
    fs.closeSync(fd);
  }
}

describe('LocalStore', () => {
  it("writes host-local's layout: one file per address holding \"containerID\\r\\nifname\", last_reserved_ip.N and a lock file", async () => {
    const data = tmpDir();
    const store = LocalStore.open(data, 'net');
    expect(await take(store, 'c1')).toBe('10.1.0.2');
    const dir = path.join(data, 'net');
    expect(fs.readFileSync(path.join(dir, '10.1.0.2'), 'utf8')).toBe('c1\r\neth0');
    expect(fs.readFileSync(path.join(dir, 'last_reserved_ip.0'), 'utf8')).toBe('10.1.0.2');
    expect(fs.existsSync(path.join(dir, 'lock'))).toBe(true);
    // the owner's name is a hard link to the address file itself
    const addr = fs.statSync(path.join(dir, '10.1.0.2'));
    const link = fs.statSync(path.join(dir, 'owner@c1@eth0@10.1.0.2'));
    expect(link.ino).toBe(addr.ino);
    expect(addr.nlink).toBe(2);
    expect(fs.readdirSync(dir).sort()).toEqual(['10.1.0.2', 'last_reserved_ip.0', 'lock', 'owner@c1@eth0@10.1.0.2']);
    await store.close();
  });

  it('keeps nothing in memory: a store opened again reads every allocation and the round-robin position from disk', async () => {
    const data = tmpDir();
    const first = LocalStore.open(data, 'net');
    await take(first, 'c1');
    await take(first, 'c2');
    await first.close();
    const again = LocalStore.open(data, 'net');
    expect((await again.getByOwner('c2', 'eth0')).map(formatIP)).toEqual(['10.1.0.3']);
    expect(formatIP((await again.lastReserved('0'))!)).toBe('10.1.0.3');
    expect((await again.listAll()).map((a) => `${a.containerId} ${formatIP(a.ip)}`).sort()).toEqual(['c1 10.1.0.2', 'c2 10.1.0.3']);
    expect(await take(again, 'c3')).toBe('10.1.0.4');
    await again.close();
  });

  it('ignores a stale last_reserved temp file left by a crash, and GC removes it', async () => {
    const data = tmpDir();
    const store = LocalStore.open(data, 'net');
    await take(store, 'c1');
    const dir = path.join(data, 'net');
    // a crash between writing the temp file and renaming it, mid-write
    fs.writeFileSync(path.join(dir, 'last_reserved_ip.0.tmp'), '10.1.0.');
    expect(await take(store, 'c2')).toBe('10.1.0.3');
    fs.writeFileSync(path.join(dir, 'last_reserved_ip.0.tmp'), '10.1.0.');
    await collectGarbage(store, [owner('c1'), owner('c2')]);
    expect(fs.existsSync(path.join(dir, 'last_reserved_ip.0.tmp'))).toBe(false);
    expect((await store.listAll()).length).toBe(2);
    await store.close();
  });

  it('only loses its round-robin position to an unreadable last_reserved file', async () => {
    const data = tmpDir();
    const store = LocalStore.open(data, 'net');
    await take(store, 'c1');
    await take(store, 'c2');
    fs.writeFileSync(path.join(data, 'net', 'last_reserved_ip.0'), 'garbage');
    await release(store, owner('c1'));
    expect(await take(store, 'c3')).toBe('10.1.0.2');
    await store.close();
  });

  it('ignores an owner link whose address was never linked (a crash inside reserve), and its owner cleans it up', async () => {
    const data = tmpDir();
    const dir = path.join(data, 'net');
    const store = LocalStore.open(data, 'net');
    fs.writeFileSync(path.join(dir, 'owner@c1@eth0@10.1.0.9'), 'c1\r\neth0');
    expect(await store.getByOwner('c1', 'eth0')).toEqual([]);
    expect(await store.listAll()).toEqual([]);
    expect(await take(store, 'c1')).toBe('10.1.0.2');
    await release(store, owner('c1'));
    expect(fs.readdirSync(dir).sort()).toEqual(['last_reserved_ip.0', 'lock']);
    await store.close();
  });

  it('does not let an owner link left by a crash inside release claim the address someone else holds now', async () => {
    const data = tmpDir();
    const dir = path.join(data, 'net');
    const store = LocalStore.open(data, 'net');
    await take(store, 'c1'); // 10.1.0.2
    fs.unlinkSync(path.join(dir, '10.1.0.2')); // release died after the address file, before the owner link
    expect(await take(store, 'c2', 'eth0', '10.1.0.2')).toBe('10.1.0.2');
    expect(await store.getByOwner('c1', 'eth0')).toEqual([]);
    expect(await release(store, owner('c1'))).toEqual([]);
    expect((await store.getByOwner('c2', 'eth0')).map(formatIP)).toEqual(['10.1.0.2']);
    expect(fs.readFileSync(path.join(dir, '10.1.0.2'), 'utf8')).toBe('c2\r\neth0');
    expect(fs.existsSync(path.join(dir, 'owner@c1@eth0@10.1.0.2'))).toBe(false);
    await store.close();
  });

  it('honours address files written without an owner link (host-local), and GC frees them', async () => {
    const data = tmpDir();
    const dir = path.join(data, 'net');
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, '10.1.0.2'), 'hl1\r\neth0');
    fs.writeFileSync(path.join(dir, '10.1.0.3'), 'old-style-id'); // host-local before ifname was recorded
    const store = LocalStore.open(data, 'net');
    expect(await take(store, 'c1')).toBe('10.1.0.4');
    expect((await store.listAll()).map((a) => `${a.containerId}/${a.ifname} ${formatIP(a.ip)}`).sort()).toEqual([
      'c1/eth0 10.1.0.4',
      'hl1/eth0 10.1.0.2',
      'old-style-id/ 10.1.0.3',
    ]);
    const freed = await collectGarbage(store, [owner('c1'), owner('old-style-id', 'eth3')]);
    expect(freed.map((f) => formatIP(f.ip))).toEqual(['10.1.0.2']);
    expect(fs.existsSync(path.join(dir, '10.1.0.3'))).toBe(true);
    await store.close();
  });

  it('GC leaves only the kept allocations, the lock and the last_reserved files', async () => {
    const data = tmpDir();
    const dir = path.join(data, 'net');
    const store = LocalStore.open(data, 'net');
    for (const id of ['c1', 'c2', 'c3']) await take(store, id);
    fs.writeFileSync(path.join(dir, 'owner@ghost@eth0@10.1.0.77'), 'ghost\r\neth0');
    fs.writeFileSync(path.join(dir, 'last_reserved_ip.0.tmp'), '');
    await collectGarbage(store, [owner('c2')]);
    expect(fs.readdirSync(dir).sort()).toEqual(['10.1.0.3', 'last_reserved_ip.0', 'lock', 'owner@c2@eth0@10.1.0.3']);
    await collectGarbage(store, []);
    expect(fs.readdirSync(dir).sort()).toEqual(['last_reserved_ip.0', 'lock']);
    await store.close();
  });

  it('escapes owner names so that no two attachments can share one', async () => {
    const data = tmpDir();
    const store = LocalStore.open(data, 'net');
    const a = await take(store, 'x@a', 'b');
    const b = await take(store, 'x', 'a@b');
    expect(a).not.toBe(b);
    expect((await store.getByOwner('x@a', 'b')).map(formatIP)).toEqual([a]);
    expect((await store.getByOwner('x', 'a@b')).map(formatIP)).toEqual([b]);
    expect(fs.readdirSync(path.join(data, 'net'))).toContain(`owner@x%40a@b@${a}`);
    await store.close();
  });

  it('hashes an owner name that would not fit in a file name, and still finds and releases it', async () => {
    const data = tmpDir();
    const store = LocalStore.open(data, 'net');
    const id = 'c'.repeat(300);
    const ip = await take(store, id);
    const links = fs.readdirSync(path.join(data, 'net')).filter((n) => n.startsWith('owner@'));
    expect(links).toHaveLength(1);
    expect(links[0]!.length).toBeLessThanOrEqual(255);
    expect((await store.getByOwner(id, 'eth0')).map(formatIP)).toEqual([ip]);
    expect((await store.listAll())[0]!.containerId).toBe(id);
    expect((await release(store, owner(id))).map(formatIP)).toEqual([ip]);
    await store.close();
  });

  it('refuses changes made without holding the lock, and network names that leave dataDir', async () => {
    const data = tmpDir();
    const store = LocalStore.open(data, 'net');
    await expect(store.reserve('c1', 'eth0', parseIP('10.1.0.2')!, '0')).rejects.toMatchObject({ code: ErrorCode.Internal });
    await store.close();
    expect(() => LocalStore.open(data, '../x')).toThrow(CniError);
  });

  it('releases its flock after a failed allocation', async () => {
    const data = tmpDir();
    const store = LocalStore.open(data, 'net');
    const tiny = rangeSets([[{ subnet: '10.1.0.0/30' }]]);
    await allocate(store, tiny, owner('c1'));
    await expect(allocate(store, tiny, owner('c2'))).rejects.toMatchObject({ code: 100 });
    expect(lockedElsewhere(path.join(data, 'net'))).toBe(false);
    await store.close();
  });
});

describe('LocalStore across processes', () => {
  let bundleDir: string;
  let worker: string;

  beforeAll(() => {
    bundleDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ipam-worker-'));
    worker = path.join(bundleDir, 'worker.js');
    execFileSync(
      path.join(REPO, 'node_modules/.bin/esbuild'),
      [path.join(__dirname, 'fixtures/worker.ts'), '--bundle', '--platform=node', '--log-level=warning', `--outfile=${worker}`],
      { stdio: 'inherit' },
    );
  });
  afterAll(() => {
    fs.rmSync(bundleDir, { recursive: true, force: true });
  });

  function run(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
    return new Promise((resolve, reject) => {
      const child = spawn(process.execPath, [worker, ...args], { env: { ...process.env, NETLINK_TS_NATIVE: NATIVE } });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      child.on('error', reject);
      child.on('close', (code) => resolve({ code, stdout, stderr }));
    });
  }

  it('does not stay locked when the process holding the lock is killed with SIGKILL', async () => {
    const data = tmpDir();
    const child = spawn(process.execPath, [worker, 'hold', data, 'net'], { env: { ...process.env, NETLINK_TS_NATIVE: NATIVE } });
    try {
      await new Promise<void>((resolve, reject) => {
        let out = '';
        child.stdout.on('data', (d: Buffer) => {
          out += d.toString();
          if (out.includes('locked')) resolve();
        });
        child.on('close', (code) => reject(new Error(`holder exited early (${code})`)));
      });
      expect(lockedElsewhere(path.join(data, 'net'))).toBe(true);
    } finally {
      const exited = new Promise((resolve) => child.on('close', resolve));
      child.kill('SIGKILL');
      await exited;
    }
    expect(lockedElsewhere(path.join(data, 'net'))).toBe(false);
    const store = LocalStore.open(data, 'net');
    expect(await take(store, 'after-kill')).toBe('10.1.0.2');
    await store.close();
  });

  it('gives 50 concurrent processes 50 distinct addresses per family, and 50 concurrent releases leave only the lock and last_reserved files', async () => {
    const data = tmpDir();
    const conf = path.join(data, 'conf.json');
    fs.writeFileSync(
      conf,
      JSON.stringify({
        cniVersion: '1.0.0',
        name: 'many',
        type: 'bridge',
        ipam: { type: 'cluster-ipam', dataDir: data, ranges: [[{ subnet: '10.50.0.0/26' }], [{ subnet: 'fd00:50::/120' }]] },
      }),
    );
    const ids = Array.from({ length: 50 }, (_, i) => `ctr-${i}`);
    const adds = await Promise.all(ids.map((id) => run(['add', id, conf])));
    for (const r of adds) expect(r.code, r.stderr).toBe(0);
    const results = adds.map((r) => JSON.parse(r.stdout) as { ips: { address: string; gateway: string }[] });
    const v4 = results.map((r) => r.ips[0]!.address);
    const v6 = results.map((r) => r.ips[1]!.address);
    expect(new Set(v4).size).toBe(50);
    expect(new Set(v6).size).toBe(50);
    for (const a of v4) expect(a).toMatch(/^10\.50\.0\.([2-9]|[1-5]\d|6[0-2])\/26$/);
    for (const a of v6) expect(a).toMatch(/^fd00:50::[0-9a-f]+\/120$/);
    expect(results.every((r) => r.ips[0]!.gateway === '10.50.0.1' && r.ips[1]!.gateway === 'fd00:50::1')).toBe(true);

    const dir = path.join(data, 'many');
    // what the files say agrees with what the processes were told
    const store = LocalStore.open(data, 'many');
    for (let i = 0; i < ids.length; i++) {
      const held = (await store.getByOwner(ids[i]!, 'eth0')).map(formatIP).sort();
      expect(held).toEqual([v4[i]!.split('/')[0], v6[i]!.split('/')[0]].sort());
    }
    await store.close();

    const dels = await Promise.all(ids.map((id) => run(['del', id, conf])));
    for (const r of dels) expect(r.code, r.stderr).toBe(0);
    expect(fs.readdirSync(dir).sort()).toEqual(['last_reserved_ip.0', 'last_reserved_ip.1', 'lock']);
  });
});
