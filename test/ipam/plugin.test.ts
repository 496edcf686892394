import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { CniError, ErrorCode } from '../../shared/cni/errors';
import { runPlugin, type SkelIO } from '../../shared/cni/skel';
import { IpamErrorCode } from '../../ipam/errors';
import { plugin } from '../../ipam/main';
import { ipamAdd, ipamCheck, ipamDel, ipamGc, ipamStatus, parseResolvConf } from '../../ipam/plugin';

const tmpDirs: string[] = [];
afterEach(() => {
  for (const d of tmpDirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});
function tmpDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'ipam-plugin-'));
  tmpDirs.push(d);
  return d;
}

function netConf(dataDir: string, ipam: Record<string, unknown> = {}, extra: Record<string, unknown> = {}) {
  return {
    cniVersion: '1.0.0',
    name: 'plugnet',
    type: 'bridge',
    ipam: {
      type: 'cluster-ipam',
      dataDir,
      ranges: [[{ subnet: '10.7.0.0/24' }], [{ subnet: 'fd00:7::/64' }]],
      routes: [{ dst: '0.0.0.0/0' }, { dst: '::/0' }],
      ...ipam,
    },
    ...extra,
  };
}

async function cniError(p: Promise<unknown>): Promise<CniError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(CniError);
  return e as CniError;
}

describe('cluster-ipam verbs', () => {
  it('answers ADD with a 1.x result: one address per range set with its gateway, and the routes', async () => {
    const config = netConf(tmpDir());
    const result = await ipamAdd({ containerId: 'c1', ifname: 'eth0', config });
    expect(result).toEqual({
      cniVersion: '1.0.0',
      ips: [
        { address: '10.7.0.2/24', gateway: '10.7.0.1' },
        { address: 'fd00:7::2/64', gateway: 'fd00:7::1' },
      ],
      routes: [{ dst: '0.0.0.0/0' }, { dst: '::/0' }],
    });
  });

  it('puts resolvConf into the result as DNS, as host-local does', async () => {
    const dir = tmpDir();
    const resolv = path.join(dir, 'resolv.conf');
    fs.writeFileSync(resolv, '# comment\nnameserver 10.0.0.53\nnameserver fd00::53\ndomain example.test\nsearch a.test b.test\n; other\noptions ndots:2 rotate\n');
    const result = await ipamAdd({ containerId: 'c1', ifname: 'eth0', config: netConf(dir, { resolvConf: resolv }) });
    expect(result.dns).toEqual({
      nameservers: ['10.0.0.53', 'fd00::53'],
      domain: 'example.test',
      search: ['a.test', 'b.test'],
      options: ['ndots:2', 'rotate'],
    });
  });

  it('fails with code 5 and allocates nothing when resolvConf cannot be read', async () => {
    const dir = tmpDir();
    const err = await cniError(ipamAdd({ containerId: 'c1', ifname: 'eth0', config: netConf(dir, { resolvConf: path.join(dir, 'missing') }) }));
    expect(err.code).toBe(ErrorCode.IOFailure);
    expect(fs.existsSync(path.join(dir, 'plugnet', '10.7.0.2'))).toBe(false);
  });

  it('takes static addresses from CNI_ARGS IP=, args.cni.ips and the ips capability', async () => {
    const dir = tmpDir();
    const viaEnv = await ipamAdd({ containerId: 'c1', ifname: 'eth0', args: { IgnoreUnknown: '1', IP: '10.7.0.50' }, config: netConf(dir) });
    expect(viaEnv.ips!.map((i) => i.address)).toEqual(['10.7.0.50/24', 'fd00:7::2/64']);
    const viaArgs = await ipamAdd({ containerId: 'c2', ifname: 'eth0', config: netConf(dir, {}, { args: { cni: { ips: ['fd00:7::60'] } } }) });
    expect(viaArgs.ips!.map((i) => i.address)).toEqual(['10.7.0.51/24', 'fd00:7::60/64']);
    const viaCap = await ipamAdd({
      containerId: 'c3',
      ifname: 'eth0',
      config: netConf(dir, {}, { runtimeConfig: { ips: ['10.7.0.70/24', 'fd00:7::70/64'] } }),
    });
    expect(viaCap.ips!.map((i) => i.address)).toEqual(['10.7.0.70/24', 'fd00:7::70/64']);
  });

  it('refuses a static address outside every range with code 101 and leaves nothing allocated', async () => {
    const dir = tmpDir();
    const err = await cniError(ipamAdd({ containerId: 'c1', ifname: 'eth0', args: { IP: '192.168.1.5' }, config: netConf(dir) }));
    expect(err.code).toBe(IpamErrorCode.AddressUnavailable);
    expect(fs.readdirSync(path.join(dir, 'plugnet')).filter((n) => !['lock'].includes(n))).toEqual([]);
  });

  it('answers try-again-later (code 11) when the etcd store it selects cannot be reached', async () => {
    const config = netConf(tmpDir(), { store: 'etcd', etcd: { endpoints: ['http://127.0.0.1:9'], requestTimeoutMs: 1000 } });
    const err = await cniError(ipamAdd({ containerId: 'c1', ifname: 'eth0', config }));
    expect(err.code).toBe(ErrorCode.TryAgainLater);
  });

  it('frees on DEL, succeeds on a second DEL, and the address comes back only after the range wraps', async () => {
    const dir = tmpDir();
    const config = netConf(dir, { ranges: [[{ subnet: '10.7.0.0/29' }]] });
    await ipamAdd({ containerId: 'c1', ifname: 'eth0', config });
    await ipamDel({ containerId: 'c1', ifname: 'eth0', config });
    await ipamDel({ containerId: 'c1', ifname: 'eth0', config });
    expect(fs.readdirSync(path.join(dir, 'plugnet')).sort()).toEqual(['last_reserved_ip.0', 'lock']);
    const next = await ipamAdd({ containerId: 'c2', ifname: 'eth0', config });
    expect(next.ips![0]!.address).toBe('10.7.0.3/29');
  });

  it('passes CHECK for a live attachment and fails it (code 102) once the address is gone behind its back', async () => {
    const dir = tmpDir();
    const config = netConf(dir);
    const prevResult = await ipamAdd({ containerId: 'c1', ifname: 'eth0', config });
    await ipamCheck({ containerId: 'c1', ifname: 'eth0', config, prevResult });
    fs.unlinkSync(path.join(dir, 'plugnet', 'fd00:7::2'));
    const err = await cniError(ipamCheck({ containerId: 'c1', ifname: 'eth0', config, prevResult }));
    expect(err.code).toBe(IpamErrorCode.AllocationMissing);
    expect(err.msg).toMatch(/range set 1/);
  });

  it('fails CHECK when prevResult shows an address of our ranges the attachment does not hold', async () => {
    const config = netConf(tmpDir());
    await ipamAdd({ containerId: 'c1', ifname: 'eth0', config });
    const prevResult = { cniVersion: '1.0.0', ips: [{ address: '10.7.0.99/24' }, { address: '192.168.5.5/24' }] };
    const err = await cniError(ipamCheck({ containerId: 'c1', ifname: 'eth0', config, prevResult }));
    expect(err.code).toBe(IpamErrorCode.AllocationMissing);
    expect(err.msg).toMatch(/10\.7\.0\.99\/24 in prevResult/);
  });

  it('GC frees every attachment missing from the valid list', async () => {
    const dir = tmpDir();
    const config = netConf(dir);
    for (const id of ['c1', 'c2', 'c3']) await ipamAdd({ containerId: id, ifname: 'eth0', config });
    const freed = await ipamGc({ config }, [{ containerID: 'c2', ifname: 'eth0' }]);
    expect(new Set(freed.map((f) => f.containerId))).toEqual(new Set(['c1', 'c3']));
    expect(fs.readdirSync(path.join(dir, 'plugnet')).filter((n) => /^10\.|^fd00/.test(n)).sort()).toEqual(['10.7.0.3', 'fd00:7::3']);
  });

  it('STATUS succeeds while addresses are free and answers code 50 once a range set is exhausted', async () => {
    const config = netConf(tmpDir(), { ranges: [[{ subnet: '10.7.0.0/30' }]] });
    await ipamStatus({ config });
    await ipamAdd({ containerId: 'c1', ifname: 'eth0', config });
    const err = await cniError(ipamStatus({ config }));
    expect(err.code).toBe(ErrorCode.PluginNotAvailable);
    expect(err.msg).toMatch(/range set 0 is exhausted/);
  });

  it('STATUS answers code 50 when the store cannot be used', async () => {
    const dir = tmpDir();
    const blocker = path.join(dir, 'file');
    fs.writeFileSync(blocker, '');
    const err = await cniError(ipamStatus({ config: netConf(blocker) }));
    expect(err.code).toBe(ErrorCode.PluginNotAvailable);
  });

  it('reads resolv.conf lines the way host-local does, ignoring comments and short lines', () => {
    const dir = tmpDir();
    const f = path.join(dir, 'r');
    fs.writeFileSync(f, 'nameserver\n#nameserver 1.1.1.1\n  nameserver   9.9.9.9  \nsearch x\nsearch y z\n');
    expect(parseResolvConf(f)).toEqual({ nameservers: ['9.9.9.9'], search: ['x', 'y', 'z'] });
  });
});

describe('cluster-ipam through the skel', () => {
  function invoke(env: Record<string, string>, stdin: unknown): Promise<{ code: number; out: unknown }> {
    let stdout = '';
    const io: SkelIO = {
      env: { CNI_PATH: '/opt/cni/bin', CNI_IFNAME: 'eth0', ...env },
      readStdin: () => Buffer.from(JSON.stringify(stdin)),
      writeStdout: (s) => {
        stdout += s;
      },
      interfaceExists: () => false,
      netnsStatus: () => 'netns',
    };
    return runPlugin(plugin, io).then((code) => ({ code, out: stdout ? JSON.parse(stdout) : undefined }));
  }

  it('prints an ADD result in the config version (0.4.0 adds ips[].version) and honours CNI_ARGS IP=', async () => {
    const dir = tmpDir();
    const conf = { ...netConf(dir), cniVersion: '0.4.0' };
    const res = await invoke(
      { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'c1', CNI_NETNS: '/var/run/netns/x', CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAME=p;IP=10.7.0.9' },
      conf,
    );
    expect(res.code).toBe(0);
    expect(res.out).toEqual({
      cniVersion: '0.4.0',
      ips: [
        { version: '4', address: '10.7.0.9/24', gateway: '10.7.0.1' },
        { version: '6', address: 'fd00:7::2/64', gateway: 'fd00:7::1' },
      ],
      routes: [{ dst: '0.0.0.0/0' }, { dst: '::/0' }],
    });
    expect((await invoke({ CNI_COMMAND: 'DEL', CNI_CONTAINERID: 'c1' }, conf)).code).toBe(0);
    expect(fs.existsSync(path.join(dir, 'plugnet', '10.7.0.9'))).toBe(false);
  });

  it('prints the spec error JSON with code 7 for an overlapping configuration', async () => {
    const conf = netConf(tmpDir(), { ranges: [[{ subnet: '10.7.0.0/24' }], [{ subnet: '10.7.0.128/25' }]] });
    const res = await invoke({ CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'c1', CNI_NETNS: '/var/run/netns/x' }, conf);
    expect(res.code).toBe(1);
    expect(res.out).toMatchObject({ cniVersion: '1.0.0', code: 7, msg: 'range set 0 range 0 overlaps range set 1 range 0' });
  });

  it('prints code 100 with a clear message when the range is exhausted', async () => {
    const conf = netConf(tmpDir(), { ranges: [[{ subnet: '10.7.0.0/30' }]] });
    const env = { CNI_COMMAND: 'ADD', CNI_NETNS: '/var/run/netns/x' };
    expect((await invoke({ ...env, CNI_CONTAINERID: 'c1' }, conf)).code).toBe(0);
    const res = await invoke({ ...env, CNI_CONTAINERID: 'c2' }, conf);
    expect(res.code).toBe(1);
    expect(res.out).toMatchObject({ code: 100, msg: 'no free IP address in range set 0' });
  });

  it('runs GC with cni.dev/valid-attachments from the config', async () => {
    const dir = tmpDir();
    const conf = { ...netConf(dir), cniVersion: '1.1.0' };
    const env = { CNI_COMMAND: 'ADD', CNI_NETNS: '/var/run/netns/x' };
    for (const id of ['c1', 'c2']) expect((await invoke({ ...env, CNI_CONTAINERID: id }, conf)).code).toBe(0);
    const gc = await invoke({ CNI_COMMAND: 'GC' }, { ...conf, 'cni.dev/valid-attachments': [{ containerID: 'c2', ifname: 'eth0' }] });
    expect(gc.code).toBe(0);
    expect(fs.readdirSync(path.join(dir, 'plugnet')).filter((n) => n.startsWith('owner@')).sort()).toEqual([
      'owner@c2@eth0@10.7.0.3',
      'owner@c2@eth0@fd00:7::3',
    ]);
  });
});
