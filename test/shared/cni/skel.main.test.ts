/**
 * pluginMain as a real process: a fixture plugin bundled with esbuild (the
 * way build.sh ships plugins) and run with real stdin/stdout/exit codes,
 * plus the default CNI_NETNS and CNI_IFNAME checks against a real namespace.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { build } from 'esbuild';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const repo = path.resolve(__dirname, '../../..');
const nativeBinding = path.join(repo, 'shared/netlink/native/build/Release/netlink_native.node');
let dir: string;
let pluginJs: string;
let indexJs: string;
const netnsName = `cnitest-skel-${randomBytes(4).toString('hex')}`;
const netnsPath = `/var/run/netns/${netnsName}`;
let utsMount: string | undefined;

const fixture = `
import { pluginMain } from ${JSON.stringify(path.join(repo, 'cmd/plugin-io'))};
import { netConfBase } from ${JSON.stringify(path.join(repo, 'shared/cni/config'))};
import { CniError } from ${JSON.stringify(path.join(repo, 'shared/cni/errors'))};

pluginMain({
  about: 'CNI plugin fixture v1',
  schema: netConfBase,
  createsInterface: true,
  async add(ctx) {
    console.log('noise from console.log');
    console.info('noise from console.info');
    return { cniVersion: ctx.cniVersion, ips: [{ address: '10.1.0.5/16', gateway: '10.1.0.1' }] };
  },
  async del(ctx) {
    if (ctx.config.type === 'explode') throw new Error('del exploded');
    if (ctx.config.type === 'busy') throw new CniError(11, 'busy');
  },
  async check() {},
});
`;

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cni-skel-'));
  fs.writeFileSync(path.join(dir, 'fixture.ts'), fixture);
  pluginJs = path.join(dir, 'fixture.js');
  indexJs = path.join(dir, 'index.js');
  const common = { bundle: true, platform: 'node' as const, format: 'cjs' as const, target: 'node20', logLevel: 'silent' as const };
  await build({ ...common, entryPoints: [path.join(dir, 'fixture.ts')], outfile: pluginJs });
  await build({ ...common, entryPoints: [path.join(repo, 'shared/cni/index.ts')], outfile: indexJs });
  const r = spawnSync('ip', ['netns', 'add', netnsName]);
  if (r.status !== 0) throw new Error(`ip netns add failed: ${r.stderr}`);
});

afterAll(() => {
  if (utsMount) spawnSync('umount', [utsMount]);
  spawnSync('ip', ['netns', 'del', netnsName]);
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

const baseEnv = { CNI_CONTAINERID: 'ctr1', CNI_IFNAME: 'eth0', CNI_PATH: '/opt/cni/bin' };

function runFixture(env: Record<string, string>, stdin: string | null) {
  const r = spawnSync(process.execPath, [pluginJs], {
    // PATH only: the plugin must not depend on anything else from our environment
    env: { PATH: process.env.PATH, NETLINK_TS_NATIVE: nativeBinding, ...env },
    input: stdin ?? undefined,
    stdio: [stdin === null ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    encoding: 'utf8',
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function conf(extra: Record<string, unknown> = {}): string {
  return JSON.stringify({ cniVersion: '1.0.0', name: 'net1', type: 'fixture', ...extra });
}

describe('pluginMain', () => {
  it('prints the result alone on stdout and sends console output to stderr', () => {
    const r = runFixture({ CNI_COMMAND: 'ADD', CNI_NETNS: netnsPath, ...baseEnv }, conf());
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout)).toStrictEqual({ cniVersion: '1.0.0', ips: [{ address: '10.1.0.5/16', gateway: '10.1.0.1' }] });
    expect(r.stderr).toContain('noise from console.log');
    expect(r.stderr).toContain('noise from console.info');
  });

  it('reads a configuration much larger than one read() from stdin', () => {
    const r = runFixture({ CNI_COMMAND: 'ADD', CNI_NETNS: netnsPath, ...baseEnv }, conf({ padding: 'x'.repeat(300_000) }));
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout).cniVersion).toBe('1.0.0');
  });

  it('answers VERSION with stdin on /dev/null', () => {
    const r = runFixture({ CNI_COMMAND: 'VERSION' }, null);
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout)).toStrictEqual({ cniVersion: '1.1.0', supportedVersions: ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] });
  });

  it('exits 0 with nothing on stdout after a DEL', () => {
    const r = runFixture({ CNI_COMMAND: 'DEL', ...baseEnv }, conf());
    expect(r.status).toBe(0);
    expect(r.stdout).toBe('');
  });

  it('exits 1 with the error JSON and no stack when the plugin throws', () => {
    const r = runFixture({ CNI_COMMAND: 'DEL', ...baseEnv }, conf({ type: 'explode' }));
    expect(r.status).toBe(1);
    expect(JSON.parse(r.stdout)).toStrictEqual({ cniVersion: '1.0.0', code: 999, msg: 'del exploded' });
    expect(r.stdout + r.stderr).not.toContain('    at ');
  });

  it('writes the stack to stderr only when CNI_DEBUG is set', () => {
    const r = runFixture({ CNI_COMMAND: 'DEL', CNI_DEBUG: '1', ...baseEnv }, conf({ type: 'explode' }));
    expect(r.status).toBe(1);
    expect(JSON.parse(r.stdout).code).toBe(999);
    expect(r.stderr).toContain('    at ');
  });

  it('passes a CniError code through to the process output', () => {
    const r = runFixture({ CNI_COMMAND: 'DEL', ...baseEnv }, conf({ type: 'busy' }));
    expect(r.status).toBe(1);
    expect(JSON.parse(r.stdout)).toStrictEqual({ cniVersion: '1.0.0', code: 11, msg: 'busy' });
  });

  it('exits 1 with code 4 when a required variable is missing', () => {
    const r = runFixture({ CNI_COMMAND: 'ADD' }, conf());
    expect(r.status).toBe(1);
    expect(JSON.parse(r.stdout)).toMatchObject({ code: 4 });
  });

  it('prints the about text on stderr when run by hand without CNI_COMMAND', () => {
    const r = runFixture({}, null);
    expect(r.status).toBe(0);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain('CNI plugin fixture v1');
  });
});

describe('default CNI_NETNS and CNI_IFNAME checks', () => {
  it('accepts a real network namespace', () => {
    expect(runFixture({ CNI_COMMAND: 'ADD', CNI_NETNS: netnsPath, ...baseEnv }, conf()).status).toBe(0);
  });

  it("refuses the plugin's own namespace with code 8", () => {
    const r = runFixture({ CNI_COMMAND: 'ADD', CNI_NETNS: '/proc/self/ns/net', ...baseEnv }, conf());
    expect(r.status).toBe(1);
    expect(JSON.parse(r.stdout)).toMatchObject({ code: 8, msg: "plugin's netns and netns from CNI_NETNS should not be the same" });
  });

  it('refuses a path that is not a network namespace with code 8', () => {
    const plainFile = path.join(dir, 'not-a-netns');
    fs.writeFileSync(plainFile, '');
    for (const p of [plainFile, '/nonexistent/netns', '/proc/self/ns/uts']) {
      const r = runFixture({ CNI_COMMAND: 'ADD', CNI_NETNS: p, ...baseEnv }, conf());
      expect(r.status, p).toBe(1);
      expect(JSON.parse(r.stdout), p).toMatchObject({ code: 8 });
    }
  });

  it('refuses a bind-mounted namespace of another type, as runtimes mount network ones', () => {
    const file = path.join(dir, 'uts-bind');
    fs.writeFileSync(file, '');
    const m = spawnSync('mount', ['--bind', '/proc/self/ns/uts', file]);
    expect(m.status, String(m.stderr)).toBe(0);
    utsMount = file;
    const r = runFixture({ CNI_COMMAND: 'ADD', CNI_NETNS: file, ...baseEnv }, conf());
    expect(r.status).toBe(1);
    expect(JSON.parse(r.stdout)).toMatchObject({ code: 8 });
    expect(JSON.parse(r.stdout).msg).toContain('is not a network namespace');
  });

  it('refuses ADD with code 4 when CNI_IFNAME already exists in the namespace', () => {
    // every new namespace has "lo"
    const r = runFixture({ CNI_COMMAND: 'ADD', CNI_NETNS: netnsPath, ...baseEnv, CNI_IFNAME: 'lo' }, conf());
    expect(r.status).toBe(1);
    expect(JSON.parse(r.stdout)).toMatchObject({ code: 4 });
    expect(JSON.parse(r.stdout).msg).toContain('CNI_IFNAME');
  });
});

describe('module load', () => {
  it('reads no environment variable while loading the protocol core', () => {
    const probe = `
      const seen = [];
      const real = process.env;
      process.env = new Proxy(real, { get(t, k) { if (typeof k === 'string') seen.push(k); return Reflect.get(t, k); } });
      require(${JSON.stringify(indexJs)});
      process.env = real;
      process.stdout.write(JSON.stringify(seen));
    `;
    const r = spawnSync(process.execPath, ['-e', probe], { encoding: 'utf8' });
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual([]);
  });
});
