/**
 * Name resolution through a real runtime: podman (CNI backend, runc) runs
 * busybox containers on DNS-enabled bridge networks of ours (bin/bridge and
 * bin/cluster-ipam from ./build.sh). Podman sends the container's name in
 * CNI_ARGS (K8S_POD_NAME) and its aliases as the `aliases` capability, and
 * writes resolv.conf from the result's `dns`; the containers' own busybox
 * nslookup and ping then reach each other by name.
 *
 * Forwarded names go to a loopback port where nothing listens (dns.upstream),
 * so no query ever leaves the machine.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const BIN = path.resolve(__dirname, '../../bin');
const id = randomBytes(3).toString('hex');
const work = fs.mkdtempSync(path.join(os.tmpdir(), `cni-podman-dns-${id}-`));
const dirs = {
  plugins: path.join(work, 'plugins'),
  networks: path.join(work, 'networks'),
  state: path.join(work, 'state'),
  rootfs: path.join(work, 'rootfs'),
  root: path.join(work, 'storage'),
  runroot: path.join(work, 'run'),
  dns: path.join(work, 'dns'),
};
const containersConf = path.join(work, 'containers.conf');
const octet = 100 + (parseInt(id.slice(0, 2), 16) % 100);

interface Net {
  name: string;
  bridge: string;
  subnet: string;
  gateway: string;
}

const nets: Net[] = [];

function network(n: number, extra: Record<string, unknown> = {}): Net {
  const net = { name: `pdns-${id}-${n}`, bridge: `pdns${id}${n}`, subnet: `10.${octet}.${n}.0/24`, gateway: `10.${octet}.${n}.1` };
  nets.push(net);
  fs.writeFileSync(
    path.join(dirs.networks, `${net.name}.conflist`),
    JSON.stringify({
      cniVersion: '1.0.0',
      name: net.name,
      plugins: [
        {
          type: 'bridge',
          bridge: net.bridge,
          isDefaultGateway: true,
          capabilities: { aliases: true },
          ipam: { type: 'cluster-ipam', dataDir: path.join(dirs.state, net.name), ranges: [[{ subnet: net.subnet }]] },
          dns: { enabled: true, dataDir: dirs.dns, upstream: ['127.0.0.1:9'] },
          ...extra,
        },
      ],
    }),
  );
  return net;
}

function sh(argv: string[], opts: { allowFail?: boolean } = {}): { status: number | null; out: string } {
  const r = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8', env: { ...process.env, CONTAINERS_CONF: containersConf }, timeout: 120_000 });
  if (r.status !== 0 && !opts.allowFail) throw new Error(`${argv.join(' ')} failed (${r.status ?? r.signal}): ${r.stderr}${r.stdout}`);
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

function podman(args: string[], opts: { allowFail?: boolean } = {}) {
  return sh(['podman', '--root', dirs.root, '--runroot', dirs.runroot, '--runtime', 'runc', '--cgroup-manager', 'cgroupfs', '--network-backend', 'cni', ...args], opts);
}

function run(name: string, network: string): void {
  podman([
    'run', '-d', '--name', name, '--network', network, '--cap-add', 'NET_RAW',
    '--ulimit', 'nofile=10000:10000', '--ulimit', 'nproc=1000:1000',
    '--rootfs', dirs.rootfs, '/bin/sleep', '600',
  ]);
}

/** busybox nslookup NAME inside the container (its resolv.conf: what podman wrote from our result) */
function nslookup(container: string, name: string): { ok: boolean; out: string } {
  const r = podman(['exec', container, '/bin/nslookup', name], { allowFail: true });
  return { ok: r.status === 0, out: r.out };
}

function ipOf(container: string, net: Net): string {
  const inspect = JSON.parse(podman(['inspect', container]).out)[0] as { NetworkSettings: { Networks: Record<string, { IPAddress: string }> } };
  return inspect.NetworkSettings.Networks[net.name].IPAddress;
}

const c = (n: string) => `pdns-${id}-${n}`;
let N1: Net;
let N2: Net;
let N3: Net;

beforeAll(() => {
  if (!fs.existsSync(path.join(BIN, 'bridge'))) throw new Error('bin/bridge missing: run ./build.sh first');
  for (const d of Object.values(dirs)) fs.mkdirSync(d, { recursive: true });
  for (const p of ['bridge', 'cluster-ipam', 'cni-ts']) fs.symlinkSync(path.join(BIN, p), path.join(dirs.plugins, p));
  fs.mkdirSync(path.join(dirs.rootfs, 'bin'));
  fs.mkdirSync(path.join(dirs.rootfs, 'etc'));
  fs.copyFileSync('/bin/busybox', path.join(dirs.rootfs, 'bin/busybox'));
  fs.chmodSync(path.join(dirs.rootfs, 'bin/busybox'), 0o755);
  for (const tool of ['sh', 'ip', 'sleep', 'cat', 'nslookup', 'ping']) fs.symlinkSync('busybox', path.join(dirs.rootfs, 'bin', tool));
  fs.writeFileSync(containersConf, ['[network]', 'network_backend = "cni"', `cni_plugin_dirs = ["${dirs.plugins}"]`, `network_config_dir = "${dirs.networks}"`, ''].join('\n'));
  N1 = network(1);
  N2 = network(2, { internal: true, isDefaultGateway: false });
  N3 = network(3);
  run(c('web'), `${N1.name}:alias=www`);
  run(c('client'), N1.name);
  run(c('inner'), N2.name);
  run(c('inner2'), N2.name);
  run(c('other'), N3.name);
}, 300_000);

afterAll(() => {
  podman(['rm', '--all', '--force', '--time', '0'], { allowFail: true });
  for (const n of nets) spawnSync('ip', ['link', 'del', n.bridge], { stdio: 'ignore' });
  try {
    const pid = Number(fs.readFileSync(path.join(dirs.dns, 'resolver.pid'), 'utf8'));
    if (pid > 1) process.kill(pid, 'SIGTERM');
  } catch {
    // exited after the last container went
  }
  for (const f of fs.existsSync('/var/lib/cni/results') ? fs.readdirSync('/var/lib/cni/results') : []) {
    if (f.startsWith(`pdns-${id}-`)) fs.rmSync(path.join('/var/lib/cni/results', f), { force: true });
  }
  fs.rmSync(work, { recursive: true, force: true });
}, 120_000);

describe('podman on DNS-enabled bridge networks of ours', () => {
  it('writes resolv.conf from our result: the gateway as nameserver, the search domain', () => {
    const rc = podman(['exec', c('client'), '/bin/cat', '/etc/resolv.conf']).out;
    expect(rc).toMatch(new RegExp(`nameserver ${N1.gateway.replace(/\./g, '\\.')}`));
    expect(rc).toMatch(/search .*dns\.cni-ts/);
  });

  it('one container resolves and pings the other by container name and by alias', () => {
    const ip = ipOf(c('web'), N1);
    for (const name of [c('web'), 'www', `${c('web')}.dns.cni-ts`]) {
      const r = nslookup(c('client'), name);
      expect(r.ok, r.out).toBe(true);
      expect(r.out).toContain(ip);
    }
    for (const name of [c('web'), 'www']) {
      const p = podman(['exec', c('client'), '/bin/ping', '-c1', '-W2', name], { allowFail: true });
      expect(p.status, p.out).toBe(0);
      expect(p.out).toContain(ip);
    }
  });

  it('an internal network resolves its own names and nothing outside', () => {
    const r = nslookup(c('inner'), c('inner2'));
    expect(r.ok, r.out).toBe(true);
    expect(r.out).toContain(ipOf(c('inner2'), N2));
    const out = nslookup(c('inner'), 'example.org');
    expect(out.ok).toBe(false);
    expect(out.out).toMatch(/NXDOMAIN|can't resolve/i);
    expect(nslookup(c('inner'), c('web')).ok).toBe(false);
  });

  it('two networks do not see each other\'s names', () => {
    expect(nslookup(c('other'), c('web')).ok).toBe(false);
    expect(nslookup(c('other'), `${c('web')}.dns.cni-ts`).ok).toBe(false);
    expect(nslookup(c('client'), c('other')).ok).toBe(false);
    const own = nslookup(c('other'), c('other'));
    expect(own.ok, own.out).toBe(true);
  });

  it('a name is gone right after its container is removed (its DEL)', () => {
    expect(nslookup(c('client'), c('web')).ok).toBe(true);
    podman(['rm', '--force', '--time', '0', c('web')]);
    const r = nslookup(c('client'), `${c('web')}.dns.cni-ts`);
    expect(r.ok).toBe(false);
    expect(r.out).toMatch(/NXDOMAIN|can't resolve/i);
    expect(nslookup(c('client'), 'www.dns.cni-ts').ok).toBe(false);
  });
});
