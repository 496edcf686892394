/**
 * `cni-ts dns` run the way examples/cni-ts-dns.service runs it (no lock
 * handed over, no exit when empty), from bin/cni-ts: it takes the
 * directory's lock itself, a second one refuses to start, SIGHUP reloads
 * the records, SIGTERM stops it and removes its pid file. Its listeners are
 * on loopback addresses playing a network's gateway.
 */
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addressesOf, query } from '../../shared/dns/client';
import { signalResolver, waitLoaded } from '../../shared/dns/launch';
import { putEntry, type DnsNetwork } from '../../shared/dns/records';

const BIN = path.resolve(__dirname, '../../bin/cni-ts');
const B = 100 + ((process.pid >> 3) % 100);
const NET = `127.${B}.77`;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-dns-cmd-'));
const network: DnsNetwork = { name: 'svcnet', domain: 'dns.cni-ts', internal: true, listen: [`${NET}.53`], subnets: [`${NET}.0/24`] };
let pid = 0;

function gone(p: number): boolean {
  try {
    return / [ZX] /.test(fs.readFileSync(`/proc/${p}/stat`, 'utf8'));
  } catch {
    return true;
  }
}

async function until(fn: () => boolean): Promise<boolean> {
  for (let i = 0; i < 500 && !fn(); i++) await new Promise((r) => setTimeout(r, 20));
  return fn();
}

beforeAll(async () => {
  if (!fs.existsSync(BIN)) throw new Error('bin/cni-ts missing: run ./build.sh first');
  putEntry(dir, network, { containerId: 'a'.repeat(20), ifname: 'eth0', names: ['alpha'], v4: [`${NET}.2`], v6: [] });
  const log = fs.openSync(path.join(dir, 'test.log'), 'w');
  const child = spawn(BIN, ['dns', '--dir', dir], { stdio: ['ignore', log, log], env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' } });
  fs.closeSync(log);
  pid = child.pid!;
  expect(await until(() => fs.readFileSync(path.join(dir, 'test.log'), 'utf8').includes('listening on'))).toBe(true);
});

afterAll(() => {
  if (pid && !gone(pid)) process.kill(pid, 'SIGKILL');
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('cni-ts dns as a service', () => {
  it('answers its network\'s names from the records directory', async () => {
    expect(addressesOf(await query('alpha', 'A', { server: `${NET}.53`, from: `${NET}.7`, timeoutMs: 1000 }))).toEqual([`${NET}.2`]);
  });

  it('a second one on the same directory refuses to start', () => {
    const r = spawnSync(BIN, ['dns', '--dir', dir], { encoding: 'utf8', timeout: 30_000, env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' } });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/another resolver serves/);
  });

  it('SIGHUP: serves records written since, and says so in its loaded serial', async () => {
    const serial = putEntry(dir, network, { containerId: 'b'.repeat(20), ifname: 'eth0', names: ['bravo'], v4: [`${NET}.3`], v6: [] });
    expect(signalResolver(dir)).toBe(true);
    expect(waitLoaded(dir, serial)).toBe(true);
    expect(addressesOf(await query('bravo', 'A', { server: `${NET}.53`, from: `${NET}.7`, timeoutMs: 1000 }))).toEqual([`${NET}.3`]);
  });

  it('SIGTERM stops it and removes its pid file', async () => {
    process.kill(pid, 'SIGTERM');
    expect(await until(() => gone(pid))).toBe(true);
    expect(fs.existsSync(path.join(dir, 'resolver.pid'))).toBe(false);
  });
});
