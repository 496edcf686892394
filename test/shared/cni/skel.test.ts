import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { netConfBase } from '../../../shared/cni/config';
import { CniError } from '../../../shared/cni/errors';
import { requirePrevResult, runPlugin } from '../../../shared/cni/skel';
import type { CniContext, NetnsStatus, Plugin, SkelIO } from '../../../shared/cni/skel';
import type { Attachment, Result } from '../../../shared/cni/types';
import { SUPPORTED_VERSIONS } from '../../../shared/cni/version';

const schema = netConfBase.extend({ bridge: z.string().default('cni0'), mtu: z.number().optional() });
type Conf = z.infer<typeof schema>;

const addResult: Result = {
  cniVersion: '1.1.0',
  interfaces: [{ name: 'eth0', mac: '99:88:77:66:55:44', mtu: 1450, sandbox: '/var/run/netns/blue' }],
  ips: [{ address: '10.1.0.5/16', gateway: '10.1.0.1', interface: 0 }],
  routes: [{ dst: '0.0.0.0/0', priority: 5 }],
};

interface Calls {
  add: CniContext<Conf>[];
  del: CniContext<Conf>[];
  check: CniContext<Conf>[];
  gc: { ctx: CniContext<Conf>; attachments: Attachment[] }[];
  status: CniContext<Conf>[];
}

/** A plugin that records each call and does what `behave` says. */
function recordingPlugin(
  behave: { throws?: unknown; result?: Result } = {},
  extra: Partial<Plugin<Conf>> = {},
): { plugin: Plugin<Conf>; calls: Calls } {
  const calls: Calls = { add: [], del: [], check: [], gc: [], status: [] };
  const act = async () => {
    if (behave.throws !== undefined) throw behave.throws;
  };
  const plugin: Plugin<Conf> = {
    about: 'CNI plugin test v0.0.1',
    schema,
    async add(ctx) {
      calls.add.push(ctx);
      await act();
      return behave.result ?? addResult;
    },
    async del(ctx) {
      calls.del.push(ctx);
      await act();
    },
    async check(ctx) {
      calls.check.push(ctx);
      await act();
    },
    async gc(ctx, attachments) {
      calls.gc.push({ ctx, attachments });
      await act();
    },
    async status(ctx) {
      calls.status.push(ctx);
      await act();
    },
    ...extra,
  };
  return { plugin, calls };
}

const baseEnv = {
  CNI_CONTAINERID: 'ctr1',
  CNI_NETNS: '/var/run/netns/blue',
  CNI_IFNAME: 'eth0',
  CNI_PATH: '/opt/cni/bin',
};

function conf(version: string | undefined, extra: Record<string, unknown> = {}): string {
  return JSON.stringify({ ...(version === undefined ? {} : { cniVersion: version }), name: 'dbnet', type: 'bridge', ...extra });
}

interface Run {
  code: number;
  stdout: string;
  stderr: string;
  /** stdout parsed; fails the test unless stdout is exactly one JSON document */
  json: Record<string, unknown>;
  ifChecks: [string, string][];
}

async function run(
  plugin: Plugin<Conf>,
  env: Record<string, string>,
  stdin: string | Error,
  opts: { netns?: NetnsStatus; ifExists?: boolean; stdoutThrows?: boolean } = {},
): Promise<Run> {
  const out: string[] = [];
  const err: string[] = [];
  const ifChecks: [string, string][] = [];
  const io: SkelIO = {
    env,
    readStdin: () => {
      if (stdin instanceof Error) throw stdin;
      return Buffer.from(stdin);
    },
    writeStdout: (s) => {
      if (opts.stdoutThrows) throw Object.assign(new Error('EPIPE'), { code: 'EPIPE' });
      out.push(s);
    },
    log: (line) => err.push(`${line}\n`),
    interfaceExists: (netns, ifname) => {
      ifChecks.push([netns, ifname]);
      return opts.ifExists ?? false;
    },
    netnsStatus: () => opts.netns ?? 'netns',
  };
  const code = await runPlugin(plugin, io);
  const stdout = out.join('');
  let json: Record<string, unknown> = {};
  if (stdout !== '') json = JSON.parse(stdout);
  return { code, stdout, stderr: err.join(''), json, ifChecks };
}

function expectError(r: Run, code: number, msgPart?: string): void {
  expect(r.code).toBe(1);
  expect(r.json.code).toBe(code);
  expect(typeof r.json.msg).toBe('string');
  if (msgPart) expect(`${r.json.msg as string} ${(r.json.details as string) ?? ''}`).toContain(msgPart);
  expect(Object.keys(r.json).sort()).toEqual(r.json.details === undefined ? ['cniVersion', 'code', 'msg'] : ['cniVersion', 'code', 'details', 'msg']);
}

describe('ADD', () => {
  for (const v of SUPPORTED_VERSIONS) {
    it(`prints the result in the ${v} shape and exits 0`, async () => {
      const { plugin, calls } = recordingPlugin();
      const r = await run(plugin, { CNI_COMMAND: 'ADD', ...baseEnv }, conf(v));
      expect(r.code).toBe(0);
      expect(calls.add).toHaveLength(1);
      expect(r.json.cniVersion).toBe(v);
      const ips = r.json.ips as Record<string, unknown>[];
      const intf = (r.json.interfaces as Record<string, unknown>[])[0];
      const route = (r.json.routes as Record<string, unknown>[])[0];
      expect(ips[0].address).toBe('10.1.0.5/16');
      expect(ips[0].version).toBe(v.startsWith('0.') ? '4' : undefined);
      expect(intf.mtu).toBe(v === '1.1.0' ? 1450 : undefined);
      expect(route.priority).toBe(v === '1.1.0' ? 5 : undefined);
    });

    it(`hands the plugin its context and typed config (${v})`, async () => {
      const { plugin, calls } = recordingPlugin();
      const stdin = conf(v, { mtu: 1400, ipam: { type: 'cluster-ipam', subnet: '10.1.0.0/16' } });
      const env = { CNI_COMMAND: 'ADD', ...baseEnv, CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAME=web', CNI_PATH: '/a:/b' };
      await run(plugin, env, stdin);
      const ctx = calls.add[0];
      expect(ctx).toMatchObject({
        command: 'ADD',
        containerId: 'ctr1',
        netns: '/var/run/netns/blue',
        ifname: 'eth0',
        args: { IgnoreUnknown: '1', K8S_POD_NAME: 'web' },
        rawArgs: 'IgnoreUnknown=1;K8S_POD_NAME=web',
        path: ['/a', '/b'],
        cniVersion: v,
      });
      expect(ctx.config.bridge).toBe('cni0');
      expect(ctx.config.mtu).toBe(1400);
      expect(ctx.stdinData.toString()).toBe(stdin);
      expect(ctx.env).toBe(env);
      expect(ctx.prevResult).toBeUndefined();
    });

    it(`gives a chained ADD its prevResult in the internal shape (${v})`, async () => {
      const { plugin, calls } = recordingPlugin();
      const prev = {
        cniVersion: v,
        interfaces: [{ name: 'eth0', sandbox: '/var/run/netns/blue' }],
        ips: [{ ...(v.startsWith('0.') ? { version: '4' } : {}), address: '10.1.0.5/16', interface: 0 }],
      };
      const r = await run(plugin, { CNI_COMMAND: 'ADD', ...baseEnv }, conf(v, { prevResult: prev }));
      expect(r.code).toBe(0);
      expect(calls.add[0].prevResult).toStrictEqual({
        cniVersion: v,
        interfaces: [{ name: 'eth0', sandbox: '/var/run/netns/blue' }],
        ips: [{ address: '10.1.0.5/16', interface: 0 }],
      });
    });
  }

  it('prints only the JSON document on stdout', async () => {
    const { plugin } = recordingPlugin();
    const r = await run(plugin, { CNI_COMMAND: 'ADD', ...baseEnv }, conf('1.1.0'));
    expect(r.stdout.trim().startsWith('{')).toBe(true);
    expect(() => JSON.parse(r.stdout)).not.toThrow();
  });

  it('refuses an interface name that already exists in the namespace, without calling the plugin', async () => {
    const { plugin, calls } = recordingPlugin({}, { createsInterface: true });
    const r = await run(plugin, { CNI_COMMAND: 'ADD', ...baseEnv }, conf('1.1.0'), { ifExists: true });
    expectError(r, 4, 'CNI_IFNAME');
    expect(r.json.msg).toContain('already exists');
    expect(r.ifChecks).toEqual([['/var/run/netns/blue', 'eth0']]);
    expect(calls.add).toHaveLength(0);
  });

  it('goes ahead when the interface name is free', async () => {
    const { plugin, calls } = recordingPlugin({}, { createsInterface: true });
    const r = await run(plugin, { CNI_COMMAND: 'ADD', ...baseEnv }, conf('1.1.0'), { ifExists: false });
    expect(r.code).toBe(0);
    expect(r.ifChecks).toHaveLength(1);
    expect(calls.add).toHaveLength(1);
  });

  it('does not look for the interface when the plugin does not create one', async () => {
    const { plugin } = recordingPlugin();
    const r = await run(plugin, { CNI_COMMAND: 'ADD', ...baseEnv }, conf('1.1.0'), { ifExists: true });
    expect(r.code).toBe(0);
    expect(r.ifChecks).toHaveLength(0);
  });

  it('refuses a CNI_NETNS that is not a network namespace with code 8', async () => {
    const { plugin, calls } = recordingPlugin();
    const r = await run(plugin, { CNI_COMMAND: 'ADD', ...baseEnv }, conf('1.1.0'), { netns: 'not-netns' });
    expectError(r, 8, 'CNI_NETNS');
    expect(calls.add).toHaveLength(0);
  });

  it("refuses the plugin's own namespace with code 8", async () => {
    const { plugin, calls } = recordingPlugin();
    const r = await run(plugin, { CNI_COMMAND: 'ADD', ...baseEnv }, conf('1.1.0'), { netns: 'own' });
    expectError(r, 8, 'should not be the same');
    expect(calls.add).toHaveLength(0);
  });

  it("allows the plugin's own namespace when CNI_NETNS_OVERRIDE=1", async () => {
    const { plugin, calls } = recordingPlugin();
    const r = await run(plugin, { CNI_COMMAND: 'ADD', ...baseEnv, CNI_NETNS_OVERRIDE: '1' }, conf('1.1.0'), { netns: 'own' });
    expect(r.code).toBe(0);
    expect(calls.add).toHaveLength(1);
  });

  it('refuses a garbage prevResult with code 6 before calling the plugin', async () => {
    const { plugin, calls } = recordingPlugin();
    const r = await run(plugin, { CNI_COMMAND: 'ADD', ...baseEnv }, conf('1.1.0', { prevResult: { ips: 'x' } }));
    expectError(r, 6, 'prevResult.ips');
    expect(calls.add).toHaveLength(0);
  });
});

describe('version rules', () => {
  for (const command of ['ADD', 'DEL', 'CHECK', 'GC', 'STATUS']) {
    for (const v of ['0.1.0', '0.2.0', '1.2.0', '2.0.0']) {
      it(`${command} refuses config version ${v} with code 1 and calls nothing`, async () => {
        const { plugin, calls } = recordingPlugin();
        const r = await run(plugin, { CNI_COMMAND: command, ...baseEnv }, conf(v));
        expectError(r, 1);
        expect(Object.values(calls).flat()).toHaveLength(0);
      });
    }

    it(`${command} refuses a config without cniVersion (which means 0.1.0) with code 1`, async () => {
      const { plugin } = recordingPlugin();
      expectError(await run(plugin, { CNI_COMMAND: command, ...baseEnv }, conf(undefined)), 1, '0.1.0');
    });

    it(`${command} refuses a cniVersion that is not a string with code 6`, async () => {
      const { plugin } = recordingPlugin();
      expectError(await run(plugin, { CNI_COMMAND: command, ...baseEnv }, JSON.stringify({ cniVersion: 1, name: 'n', type: 't' })), 6, 'cniVersion');
    });
  }

  it('names the supported versions when refusing one', async () => {
    const { plugin } = recordingPlugin();
    const r = await run(plugin, { CNI_COMMAND: 'ADD', ...baseEnv }, conf('2.0.0'));
    expect(r.json.msg).toBe('incompatible CNI versions');
    expect(r.json.details).toBe('config is "2.0.0", plugin supports ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]');
  });

  it("honours a plugin's narrower list of versions", async () => {
    const { plugin, calls } = recordingPlugin({}, { supportedVersions: ['1.0.0', '1.1.0'] });
    expectError(await run(plugin, { CNI_COMMAND: 'ADD', ...baseEnv }, conf('0.4.0')), 1, '["1.0.0", "1.1.0"]');
    expect(calls.add).toHaveLength(0);
    expect((await run(plugin, { CNI_COMMAND: 'ADD', ...baseEnv }, conf('1.0.0'))).code).toBe(0);
  });

  for (const v of SUPPORTED_VERSIONS) {
    const allowsCheck = v !== '0.3.0' && v !== '0.3.1';
    it(`CHECK with config version ${v} is ${allowsCheck ? 'called' : 'refused with code 1, as the reference does'}`, async () => {
      const { plugin, calls } = recordingPlugin();
      const r = await run(plugin, { CNI_COMMAND: 'CHECK', ...baseEnv }, conf(v, { prevResult: { cniVersion: v } }));
      if (allowsCheck) {
        expect(r.code).toBe(0);
        expect(r.stdout).toBe('');
        expect(calls.check).toHaveLength(1);
        expect(calls.check[0].prevResult).toEqual({ cniVersion: v });
      } else {
        expectError(r, 1, 'config version does not allow CHECK');
        expect(calls.check).toHaveLength(0);
      }
    });

    for (const command of ['GC', 'STATUS']) {
      const allowed = v === '1.1.0';
      it(`${command} with config version ${v} is ${allowed ? 'called' : 'refused with code 1'}`, async () => {
        const { plugin, calls } = recordingPlugin();
        const r = await run(plugin, { CNI_COMMAND: command, CNI_PATH: '/opt/cni/bin' }, conf(v));
        if (allowed) {
          expect(r.code).toBe(0);
          expect(r.stdout).toBe('');
          expect(command === 'GC' ? calls.gc : calls.status).toHaveLength(1);
        } else {
          expectError(r, 1, `config version does not allow ${command}`);
          expect(Object.values(calls).flat()).toHaveLength(0);
        }
      });
    }
  }
});

describe('VERSION', () => {
  it('answers with the latest version and every supported one when stdin is empty', async () => {
    const { plugin, calls } = recordingPlugin();
    const r = await run(plugin, { CNI_COMMAND: 'VERSION' }, '');
    expect(r.code).toBe(0);
    expect(r.json).toStrictEqual({ cniVersion: '1.1.0', supportedVersions: ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] });
    expect(Object.values(calls).flat()).toHaveLength(0);
  });

  for (const v of SUPPORTED_VERSIONS) {
    it(`echoes the config's cniVersion ${v}`, async () => {
      const { plugin } = recordingPlugin();
      const r = await run(plugin, { CNI_COMMAND: 'VERSION' }, JSON.stringify({ cniVersion: v }));
      expect(r.json.cniVersion).toBe(v);
    });
  }

  for (const [what, stdin] of [
    ['an unsupported version', JSON.stringify({ cniVersion: '0.2.0' })],
    ['text that is not JSON', 'hello'],
    ['unreadable stdin', new Error('EBADF')],
  ] as const) {
    it(`answers with the latest version when given ${what}`, async () => {
      const { plugin } = recordingPlugin();
      const r = await run(plugin, { CNI_COMMAND: 'VERSION' }, stdin);
      expect(r.code).toBe(0);
      expect(r.json.cniVersion).toBe('1.1.0');
    });
  }

  it("reports a plugin's narrower list", async () => {
    const { plugin } = recordingPlugin({}, { supportedVersions: ['0.4.0', '1.0.0'] });
    const r = await run(plugin, { CNI_COMMAND: 'VERSION' }, '');
    expect(r.json).toStrictEqual({ cniVersion: '1.0.0', supportedVersions: ['0.4.0', '1.0.0'] });
  });
});

describe('DEL', () => {
  for (const v of SUPPORTED_VERSIONS) {
    it(`calls del, prints nothing and exits 0 (${v})`, async () => {
      const { plugin, calls } = recordingPlugin();
      const r = await run(plugin, { CNI_COMMAND: 'DEL', ...baseEnv }, conf(v, { prevResult: { cniVersion: v, ips: [{ address: '10.1.0.5/16' }] } }));
      expect(r.code).toBe(0);
      expect(r.stdout).toBe('');
      expect(calls.del[0].prevResult).toEqual({ cniVersion: v, ips: [{ address: '10.1.0.5/16' }] });
    });
  }

  it('runs without CNI_NETNS', async () => {
    const { plugin, calls } = recordingPlugin();
    const { CNI_NETNS: _n, ...env } = baseEnv;
    const r = await run(plugin, { CNI_COMMAND: 'DEL', ...env }, conf('1.1.0'));
    expect(r.code).toBe(0);
    expect(calls.del[0].netns).toBe('');
  });

  it('runs when CNI_NETNS no longer is a namespace, leaving that to the plugin', async () => {
    const { plugin, calls } = recordingPlugin();
    const r = await run(plugin, { CNI_COMMAND: 'DEL', ...baseEnv }, conf('1.1.0'), { netns: 'not-netns' });
    expect(r.code).toBe(0);
    expect(calls.del[0].netns).toBe('/var/run/netns/blue');
  });

  it("refuses the plugin's own namespace with code 8", async () => {
    const { plugin, calls } = recordingPlugin();
    expectError(await run(plugin, { CNI_COMMAND: 'DEL', ...baseEnv }, conf('1.1.0'), { netns: 'own' }), 8);
    expect(calls.del).toHaveLength(0);
  });

  it('still deletes when the prevResult is unreadable, and says so on stderr', async () => {
    const { plugin, calls } = recordingPlugin();
    const r = await run(plugin, { CNI_COMMAND: 'DEL', ...baseEnv }, conf('1.1.0', { prevResult: { ips: [{ address: 'bogus' }] } }));
    expect(r.code).toBe(0);
    expect(calls.del).toHaveLength(1);
    expect(calls.del[0].prevResult).toBeUndefined();
    expect(r.stderr).toContain('prevResult');
  });
});

describe('CHECK', () => {
  it('refuses a CNI_NETNS that is not a network namespace with code 8', async () => {
    const { plugin, calls } = recordingPlugin();
    expectError(await run(plugin, { CNI_COMMAND: 'CHECK', ...baseEnv }, conf('1.1.0'), { netns: 'not-netns' }), 8);
    expect(calls.check).toHaveLength(0);
  });

  it('refuses a garbage prevResult with code 6', async () => {
    const { plugin, calls } = recordingPlugin();
    expectError(await run(plugin, { CNI_COMMAND: 'CHECK', ...baseEnv }, conf('1.1.0', { prevResult: [] })), 6);
    expect(calls.check).toHaveLength(0);
  });

  it('requirePrevResult gives the prevResult, or code 7 when there is none', async () => {
    const seen: (Result | CniError)[] = [];
    const { plugin } = recordingPlugin(
      {},
      {
        async check(ctx) {
          try {
            seen.push(requirePrevResult(ctx));
          } catch (e) {
            seen.push(e as CniError);
            throw e;
          }
        },
      },
    );
    expectError(await run(plugin, { CNI_COMMAND: 'CHECK', ...baseEnv }, conf('1.1.0')), 7, 'prevResult is required for CHECK');
    expect((await run(plugin, { CNI_COMMAND: 'CHECK', ...baseEnv }, conf('1.1.0', { prevResult: {} }))).code).toBe(0);
    expect(seen[1]).toEqual({ cniVersion: '1.1.0' });
  });
});

describe('GC and STATUS', () => {
  it('GC hands the plugin the valid attachments', async () => {
    const { plugin, calls } = recordingPlugin();
    const attachments = [
      { containerID: 'a', ifname: 'eth0' },
      { containerID: 'b', ifname: 'net1' },
    ];
    const r = await run(plugin, { CNI_COMMAND: 'GC', CNI_PATH: '/opt/cni/bin' }, conf('1.1.0', { 'cni.dev/valid-attachments': attachments }));
    expect(r.code).toBe(0);
    expect(calls.gc[0].attachments).toEqual(attachments);
    expect(calls.gc[0].ctx).toMatchObject({ command: 'GC', containerId: '', netns: '', ifname: '' });
  });

  it('GC hands an empty list when the runtime sends none', async () => {
    const { plugin, calls } = recordingPlugin();
    await run(plugin, { CNI_COMMAND: 'GC', CNI_PATH: '/opt/cni/bin' }, conf('1.1.0'));
    expect(calls.gc[0].attachments).toEqual([]);
  });

  it('GC refuses malformed valid attachments with code 7', async () => {
    const { plugin, calls } = recordingPlugin();
    const r = await run(plugin, { CNI_COMMAND: 'GC', CNI_PATH: '/opt/cni/bin' }, conf('1.1.0', { 'cni.dev/valid-attachments': [{ containerID: 'a' }] }));
    expectError(r, 7, 'cni.dev/valid-attachments');
    expect(calls.gc).toHaveLength(0);
  });

  it('GC and STATUS succeed silently for a plugin that implements neither', async () => {
    const { plugin } = recordingPlugin({}, { gc: undefined, status: undefined });
    for (const command of ['GC', 'STATUS']) {
      const r = await run(plugin, { CNI_COMMAND: command, CNI_PATH: '/opt/cni/bin' }, conf('1.1.0'));
      expect(r.code).toBe(0);
      expect(r.stdout).toBe('');
    }
  });

  it('STATUS runs without CNI_PATH, as the spec allows', async () => {
    const { plugin, calls } = recordingPlugin();
    expect((await run(plugin, { CNI_COMMAND: 'STATUS' }, conf('1.1.0'))).code).toBe(0);
    expect(calls.status).toHaveLength(1);
  });

  for (const code of [50, 51]) {
    it(`STATUS reports a plugin that is not available with code ${code}`, async () => {
      const { plugin } = recordingPlugin({ throws: new CniError(code, 'etcd unreachable') });
      const r = await run(plugin, { CNI_COMMAND: 'STATUS' }, conf('1.1.0'));
      expectError(r, code, 'etcd unreachable');
      expect(r.json.cniVersion).toBe('1.1.0');
    });
  }

  it('GC ignores a prevResult, which it never gets', async () => {
    const { plugin, calls } = recordingPlugin();
    const r = await run(plugin, { CNI_COMMAND: 'GC', CNI_PATH: '/opt/cni/bin' }, conf('1.1.0', { prevResult: 'junk' }));
    expect(r.code).toBe(0);
    expect(calls.gc[0].ctx.prevResult).toBeUndefined();
  });
});

describe('input errors', () => {
  it('prints the about text on stderr and exits 0 when CNI_COMMAND is unset', async () => {
    const { plugin } = recordingPlugin();
    const r = await run(plugin, {}, '');
    expect(r.code).toBe(0);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain('CNI plugin test v0.0.1');
    expect(r.stderr).toContain('0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0');
  });

  it('fails with code 4 when CNI_COMMAND is unset and the plugin has no about text', async () => {
    const { plugin } = recordingPlugin({}, { about: '' });
    expectError(await run(plugin, {}, ''), 4, 'CNI_COMMAND');
  });

  it('fails with code 4 for an unknown CNI_COMMAND', async () => {
    const { plugin } = recordingPlugin();
    expectError(await run(plugin, { CNI_COMMAND: 'RESET', ...baseEnv }, conf('1.1.0')), 4, 'CNI_COMMAND');
  });

  it('fails with code 4 naming every missing variable', async () => {
    const { plugin, calls } = recordingPlugin();
    expectError(await run(plugin, { CNI_COMMAND: 'ADD' }, conf('1.1.0')), 4, '[CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH]');
    expect(calls.add).toHaveLength(0);
  });

  it('fails with code 4 for a bad container ID', async () => {
    const { plugin } = recordingPlugin();
    expectError(await run(plugin, { CNI_COMMAND: 'ADD', ...baseEnv, CNI_CONTAINERID: '../etc' }, conf('1.1.0')), 4, 'CNI_CONTAINERID');
  });

  it('fails with code 5 when stdin cannot be read', async () => {
    const { plugin } = recordingPlugin();
    expectError(await run(plugin, { CNI_COMMAND: 'ADD', ...baseEnv }, new Error('EIO: i/o error')), 5, 'EIO');
  });

  for (const [what, stdin] of [
    ['malformed JSON', '{"cniVersion": "1.1.0", "name": '],
    ['empty stdin', ''],
    ['a JSON array', '[]'],
  ]) {
    it(`fails with code 6 for ${what}`, async () => {
      const { plugin, calls } = recordingPlugin();
      expectError(await run(plugin, { CNI_COMMAND: 'ADD', ...baseEnv }, stdin), 6);
      expect(calls.add).toHaveLength(0);
    });
  }

  it('fails with code 7 for a missing network name', async () => {
    const { plugin } = recordingPlugin();
    expectError(await run(plugin, { CNI_COMMAND: 'ADD', ...baseEnv }, JSON.stringify({ cniVersion: '1.1.0', type: 'bridge' })), 7, 'missing network name');
  });

  it('fails with code 7 for a network name with invalid characters', async () => {
    const { plugin } = recordingPlugin();
    const r = await run(plugin, { CNI_COMMAND: 'ADD', ...baseEnv }, conf('1.1.0', { name: 'my/net' }));
    expectError(r, 7, 'invalid characters found in network name');
    expect(r.json.details).toBe('my/net');
  });

  it('fails with code 7 naming the key and type of a field the schema refuses', async () => {
    const { plugin, calls } = recordingPlugin();
    const r = await run(plugin, { CNI_COMMAND: 'ADD', ...baseEnv }, conf('0.4.0', { mtu: 'big' }));
    expectError(r, 7, 'mtu: expected number, received string');
    expect(r.json.cniVersion).toBe('0.4.0');
    expect(calls.add).toHaveLength(0);
  });
});

describe('errors from the plugin', () => {
  for (const v of SUPPORTED_VERSIONS) {
    it(`passes a CniError through as the spec error JSON in ${v}`, async () => {
      const { plugin } = recordingPlugin({ throws: new CniError(11, 'lock busy', 'try again') });
      const r = await run(plugin, { CNI_COMMAND: 'ADD', ...baseEnv }, conf(v));
      expect(r.code).toBe(1);
      expect(r.json).toStrictEqual({ cniVersion: v, code: 11, msg: 'lock busy', details: 'try again' });
    });
  }

  it('turns any other error into code 999 without a stack trace on stdout', async () => {
    const { plugin } = recordingPlugin({ throws: new TypeError("Cannot read properties of undefined (reading 'x')") });
    const r = await run(plugin, { CNI_COMMAND: 'DEL', ...baseEnv }, conf('1.0.0'));
    expect(r.json).toStrictEqual({ cniVersion: '1.0.0', code: 999, msg: "Cannot read properties of undefined (reading 'x')" });
    expect(r.stdout).not.toContain('    at ');
    expect(r.stderr).toBe('');
  });

  it('keeps the errno of a netlink error', async () => {
    const { plugin } = recordingPlugin({ throws: Object.assign(new Error('RTM_NEWADDR: Permission denied'), { errno: 1 }) });
    const r = await run(plugin, { CNI_COMMAND: 'ADD', ...baseEnv }, conf('1.1.0'));
    expect(r.json).toStrictEqual({ cniVersion: '1.1.0', code: 999, msg: 'RTM_NEWADDR: Permission denied', details: 'EPERM (errno 1)' });
  });

  it('turns a thrown string into code 999', async () => {
    const { plugin } = recordingPlugin({ throws: 'oops' });
    expectError(await run(plugin, { CNI_COMMAND: 'CHECK', ...baseEnv }, conf('1.1.0')), 999, 'oops');
  });

  it('writes the stack to stderr when CNI_DEBUG is set, and still keeps it off stdout', async () => {
    const { plugin } = recordingPlugin({ throws: new Error('deep failure') });
    const r = await run(plugin, { CNI_COMMAND: 'ADD', ...baseEnv, CNI_DEBUG: '1' }, conf('1.1.0'));
    expectError(r, 999, 'deep failure');
    expect(r.stderr).toContain('deep failure');
    expect(r.stderr).toContain('    at ');
    expect(r.stdout).not.toContain('    at ');
  });

  it('reports errors in the latest version when the config version is unusable', async () => {
    const { plugin } = recordingPlugin();
    expect((await run(plugin, { CNI_COMMAND: 'ADD', ...baseEnv }, conf('9.9.9'))).json.cniVersion).toBe('1.1.0');
    expect((await run(plugin, { CNI_COMMAND: 'ADD' }, conf('0.4.0'))).json.cniVersion).toBe('1.1.0');
  });

  it('fails with code 1 when a result cannot be written at all', async () => {
    const { plugin } = recordingPlugin();
    const r = await run(plugin, { CNI_COMMAND: 'ADD', ...baseEnv }, conf('1.1.0'), { stdoutThrows: true });
    expect(r.code).toBe(1);
  });

  it('never rejects, even when the plugin rejects with nothing', async () => {
    const { plugin } = recordingPlugin({}, { add: () => Promise.reject(null) });
    expectError(await run(plugin, { CNI_COMMAND: 'ADD', ...baseEnv }, conf('1.1.0')), 999);
  });
});
