/**
 * The command line as users run it: bundled by esbuild the way build.sh
 * makes dist/conformance.js, then started with node.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseArgs } from '../../conformance/cli';

const root = path.resolve(__dirname, '../..');
let work: string;
let bundle: string;

beforeAll(() => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'cf-cli-'));
  bundle = path.join(work, 'conformance.js');
  const out = spawnSync(
    path.join(root, 'node_modules/.bin/esbuild'),
    ['conformance/cli.ts', '--bundle', '--platform=node', '--target=node20', '--format=cjs', '--log-level=warning', `--outfile=${bundle}`],
    { cwd: root, encoding: 'utf8' },
  );
  if (out.status !== 0) throw new Error(out.stderr);
});
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

function cli(args: string[], env: NodeJS.ProcessEnv = {}) {
  return spawnSync(process.execPath, [bundle, ...args], {
    cwd: root,
    encoding: 'utf8',
    // the bundle lives outside dist/, so point it at the native binding
    env: { ...process.env, NETLINK_TS_NATIVE: path.join(root, 'shared/netlink/native/build/Release/netlink_native.node'), ...env },
  });
}

describe('parseArgs', () => {
  it('takes flags, repeated and inline, and falls back to the environment', () => {
    expect(parseArgs(['--plugins', '/a:/b', '--config=x.json', '--config', 'y', '--rules', 'del.,leaks.'], {})).toMatchObject({
      plugins: ['/a', '/b'],
      configs: ['x.json', 'y'],
      rules: ['del.', 'leaks.'],
    });
    expect(parseArgs([], { CONFORMANCE_PLUGINS: '/opt/cni/bin', CONFORMANCE_CONFIGS: 'a.json:b.conflist', CONFORMANCE_RULES: 'version.' })).toMatchObject({
      plugins: ['/opt/cni/bin'],
      configs: ['a.json', 'b.conflist'],
      rules: ['version.'],
    });
  });
});

describe('cni-conformance', () => {
  it('exits 0 and prints a line per rule and the table when nothing fails', () => {
    const r = cli(['--plugins', '/usr/lib/cni', '--config', 'conformance/configs/reference/ref-loopback.json', '--rules', 'version.,del.twice']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('[ref-loopback] PASS version.well-formed — every plugin answered VERSION (loopback)');
    expect(r.stdout).toContain('[ref-loopback] DEV  version.echoes-cniversion — known deviation');
    expect(r.stdout).toMatch(/^del\.twice\s+PASS$/m);
    expect(r.stdout).toContain('— OK');
  });

  it('exits 1 when a rule fails, taking plugins and configs from the environment', () => {
    const conf = path.join(work, 'chatty.conflist');
    fs.writeFileSync(
      conf,
      JSON.stringify({
        cniVersion: '1.0.0',
        name: 'cf-chatty',
        plugins: [{ type: 'chatty-bridge', bridge: 'cfbr8', ipam: { type: 'host-local', dataDir: path.join(work, 'hl'), ranges: [[{ subnet: '10.202.8.0/24' }]] } }],
      }),
    );
    const json = path.join(work, 'report.json');
    const r = cli(['--rules', 'del.twice,errors.stdout-only-json', '--json', json], {
      CONFORMANCE_PLUGINS: `${path.join(root, 'test/conformance/fixtures')}:/usr/lib/cni`,
      CONFORMANCE_CONFIGS: conf,
    });
    expect(r.status).toBe(1);
    expect(r.stdout).toContain('[chatty] FAIL errors.stdout-only-json');
    expect(r.stdout).toContain('— FAILED');
    const saved = JSON.parse(fs.readFileSync(json, 'utf8'));
    expect(saved.results.map((x: { status: string }) => x.status)).toEqual(['PASS', 'FAIL']);
  });

  it('exits 2 with a usage message when the plugin directory is missing', () => {
    const r = cli(['--config', 'conformance/configs']);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('no plugin directory');
  });

  it('exits 2 naming a config file that does not exist', () => {
    const r = cli(['--plugins', '/usr/lib/cni', '--config', 'nope.json']);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('nope.json');
  });

  it('lists the rules', () => {
    const r = cli(['--list-rules']);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^gc\.frees-unlisted\s+GC with cni\.dev\/valid-attachments/m);
  });
});
