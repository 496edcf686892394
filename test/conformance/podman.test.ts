/**
 * A real runtime: podman (CNI backend, runc) starts a busybox container on a
 * network whose plugins come from one directory holding only the plugins
 * under test, checks that the container got what the plugins promised, then
 * removes it and checks nothing is left: not the namespace, not podman's
 * cached result, not the IPAM reservation, not a veth on the bridge.
 *
 * For our plugins it runs twice: the shim running bin/cni-ts per call, and
 * the shim handing each call to a `cni-ts daemon` (podman's environment,
 * which libcni passes on to the plugins, names the daemon's socket).
 *
 * Which plugins: PODMAN_TARGET below. Today that is the reference plugins;
 * to run podman on this project's executables, set it to OUR_PLUGINS (the
 * one line to change, once ./build.sh has made bin/none; add OUR_PLUGINS'
 * bridge network when plugins/bridge lands).
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type TestDaemon, startDaemon } from '../../testkit/daemon';

interface PodmanNetwork {
  /** what the test calls it */
  label: string;
  /** plugin conflist; `name` is filled in by the test */
  conflist(ids: { bridge: string; subnet: string; dataDir: string }): Record<string, unknown>;
  /** the bridge the network uses on the host, if any (its ports must be gone afterwards) */
  usesBridge: boolean;
  /** what the container must have: an IPv4 address in the subnet on eth0, or only loopback */
  expect: 'eth0-in-subnet' | 'loopback-only';
}

interface Target {
  /** where the plugin binaries are */
  dir: string;
  /** the binaries podman may see (symlinked into a directory of their own) */
  plugins: string[];
  networks: PodmanNetwork[];
}

export const REFERENCE_PLUGINS: Target = {
  dir: '/usr/lib/cni',
  plugins: ['bridge', 'host-local', 'loopback'],
  networks: [
    {
      label: 'loopback only (stand-in for our none)',
      conflist: () => ({ cniVersion: '1.0.0', plugins: [{ type: 'loopback' }] }),
      usesBridge: false,
      expect: 'loopback-only',
    },
    {
      label: 'bridge + host-local',
      conflist: ({ bridge, subnet, dataDir }) => ({
        cniVersion: '1.0.0',
        plugins: [
          {
            type: 'bridge',
            bridge,
            isGateway: true,
            ipam: { type: 'host-local', dataDir, ranges: [[{ subnet }]], routes: [{ dst: '0.0.0.0/0' }] },
          },
        ],
      }),
      usesBridge: true,
      expect: 'eth0-in-subnet',
    },
  ],
};

/**
 * Debian's podman 4.3 vendors libcni 1.1, which reads results up to 1.0.0
 * only ("unsupported CNI result version 1.1.0"), so our examples run at 1.0.0.
 */
const PODMAN_CNI_VERSION = '1.0.0';

function example(name: string): Record<string, unknown> {
  const conflist = JSON.parse(fs.readFileSync(path.resolve(__dirname, '../../examples', name), 'utf8')) as Record<string, unknown>;
  return { ...conflist, cniVersion: PODMAN_CNI_VERSION };
}

/** This project's plugins from ./build.sh, on their examples/*.conflist. */
export const OUR_PLUGINS: Target = {
  dir: path.resolve(__dirname, '../../bin'),
  plugins: ['none', 'bridge', 'cluster-ipam'],
  networks: [
    {
      label: 'none',
      conflist: () => example('none.conflist'),
      usesBridge: false,
      expect: 'loopback-only',
    },
    {
      label: 'bridge + cluster-ipam (local store)',
      conflist: ({ bridge, subnet, dataDir }) => ({
        cniVersion: PODMAN_CNI_VERSION,
        plugins: [
          {
            type: 'bridge',
            bridge,
            isDefaultGateway: true,
            ipMasq: true,
            ipam: { type: 'cluster-ipam', dataDir, ranges: [[{ subnet }]] },
          },
        ],
      }),
      usesBridge: true,
      expect: 'eth0-in-subnet',
    },
  ],
};

// The plugins podman runs: the one line to change (REFERENCE_PLUGINS -> OUR_PLUGINS).
const PODMAN_TARGET: Target = OUR_PLUGINS;

const id = randomBytes(3).toString('hex');
const work = fs.mkdtempSync(path.join(os.tmpdir(), `cni-podman-${id}-`));
const dirs = {
  plugins: path.join(work, 'plugins'),
  networks: path.join(work, 'networks'),
  state: path.join(work, 'state'),
  rootfs: path.join(work, 'rootfs'),
  root: path.join(work, 'storage'),
  runroot: path.join(work, 'run'),
};
const bridge = `cfpm${id}`;
const subnet = `10.203.${parseInt(id.slice(0, 2), 16)}.0/24`;
const containersConf = path.join(work, 'containers.conf');

function sh(argv: string[], opts: { env?: NodeJS.ProcessEnv; allowFail?: boolean } = {}): string {
  const out = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8', env: opts.env ?? process.env, timeout: 120_000 });
  if (out.status !== 0 && !opts.allowFail) {
    throw new Error(`${argv.join(' ')} failed (${out.status ?? out.signal}): ${out.stderr}${out.stdout}`);
  }
  return out.stdout;
}

/** Added to podman's environment, which libcni hands on to every plugin it runs. */
let podmanEnv: Record<string, string> = {};

function podman(...args: string[]): string {
  return sh(
    [
      'podman',
      '--root', dirs.root,
      '--runroot', dirs.runroot,
      '--runtime', 'runc',
      '--cgroup-manager', 'cgroupfs',
      '--network-backend', 'cni',
      ...args,
    ],
    { env: { ...process.env, CONTAINERS_CONF: containersConf, ...podmanEnv } },
  );
}

function ipJson(...args: string[]): Record<string, unknown>[] {
  const text = sh(['ip', '-j', ...args]).trim();
  return text ? (JSON.parse(text) as Record<string, unknown>[]) : [];
}

/** podman's libcni keeps ADD results here, keyed NETWORK-CONTAINERID-IFNAME. */
const LIBCNI_CACHE = '/var/lib/cni/results';

beforeAll(() => {
  for (const d of Object.values(dirs)) fs.mkdirSync(d, { recursive: true });
  for (const p of PODMAN_TARGET.plugins) fs.symlinkSync(path.join(PODMAN_TARGET.dir, p), path.join(dirs.plugins, p));
  // A busybox rootfs: all the container needs is a shell's worth of tools.
  fs.mkdirSync(path.join(dirs.rootfs, 'bin'));
  fs.copyFileSync('/bin/busybox', path.join(dirs.rootfs, 'bin/busybox'));
  fs.chmodSync(path.join(dirs.rootfs, 'bin/busybox'), 0o755);
  for (const tool of ['sh', 'ip', 'sleep', 'cat']) fs.symlinkSync('busybox', path.join(dirs.rootfs, 'bin', tool));
  fs.writeFileSync(
    containersConf,
    [
      '[network]',
      'network_backend = "cni"',
      `cni_plugin_dirs = ["${dirs.plugins}"]`,
      `network_config_dir = "${dirs.networks}"`,
      '',
    ].join('\n'),
  );
});

afterAll(() => {
  podman('rm', '--all', '--force', '--time', '0');
  sh(['ip', 'link', 'del', bridge], { allowFail: true });
  for (const f of fs.existsSync(LIBCNI_CACHE) ? fs.readdirSync(LIBCNI_CACHE) : []) {
    if (f.startsWith(`cfpm-${id}-`)) fs.rmSync(path.join(LIBCNI_CACHE, f), { force: true });
  }
  fs.rmSync(work, { recursive: true, force: true });
});

/** One container's life on one network, checked against the kernel before and after. */
function runContainer(net: PodmanNetwork, name: string): void {
  const dataDir = path.join(dirs.state, name);
  fs.writeFileSync(
    path.join(dirs.networks, `${name}.conflist`),
    JSON.stringify({ ...net.conflist({ bridge, subnet, dataDir }), name }),
  );

  const cid = podman(
    'run', '-d', '--name', name, '--network', name,
    '--ulimit', 'nofile=10000:10000', '--ulimit', 'nproc=1000:1000',
    '--rootfs', dirs.rootfs, '/bin/sleep', '300',
  ).trim();
  const inspect = JSON.parse(podman('inspect', name))[0] as { NetworkSettings: { SandboxKey: string } };
  const netnsPath = inspect.NetworkSettings.SandboxKey;
  const netnsName = path.basename(netnsPath);
  const cacheFile = path.join(LIBCNI_CACHE, `${name}-${cid}-eth0`);

  // The plugins ran: podman cached their result, and the kernel agrees with it.
  const cached = JSON.parse(fs.readFileSync(cacheFile, 'utf8')) as {
    result: { interfaces?: { name: string; sandbox?: string }[]; ips?: { address: string }[] };
  };
  const inside = podman('exec', name, '/bin/ip', '-o', 'addr', 'show');
  if (net.expect === 'eth0-in-subnet') {
    const address = cached.result.ips?.[0]?.address ?? '';
    expect(address.startsWith(subnet.replace(/0\/24$/, ''))).toBe(true);
    expect(inside).toMatch(new RegExp(`eth0\\s+inet ${address.replace(/\./g, '\\.')}`));
    const routes = ipJson('-n', netnsName, 'route', 'show', 'default');
    expect(routes.length).toBe(1);
    expect(ipJson('link', 'show', 'master', bridge).length).toBe(1);
    expect(fs.readdirSync(path.join(dataDir, name))).toContain(address.split('/')[0]);
  } else {
    expect(cached.result.interfaces?.map((x) => x.name)).toEqual(['lo']);
    expect(cached.result.interfaces?.[0].sandbox).toBe(netnsPath);
    expect(inside).toMatch(/lo\s+inet 127\.0\.0\.1\/8/);
    expect(inside).not.toContain('eth0');
  }

  podman('rm', '--force', '--time', '0', name);

  // Torn down cleanly: namespace, cached result, reservation, bridge ports.
  expect(fs.existsSync(netnsPath)).toBe(false);
  expect(fs.existsSync(cacheFile)).toBe(false);
  if (net.usesBridge) {
    expect(ipJson('link', 'show', 'master', bridge)).toEqual([]);
    const reserved = fs.readdirSync(path.join(dataDir, name)).filter((f) => f !== 'lock' && !f.startsWith('last_reserved_ip'));
    expect(reserved).toEqual([]);
  }
  expect(podman('ps', '--all', '--format', '{{.Names}}').split('\n')).not.toContain(name);
}

describe(`podman on ${PODMAN_TARGET.dir} (${PODMAN_TARGET.plugins.join(', ')})`, () => {
  PODMAN_TARGET.networks.forEach((net, i) => {
    it(`runs a busybox container on the ${net.label} network and removes it without leftovers`, () => {
      runContainer(net, `cfpm-${id}-${i}`);
    });
  });
});

describe.runIf(PODMAN_TARGET === OUR_PLUGINS)('podman on our plugins with a cni-ts daemon running', () => {
  let daemon: TestDaemon;
  beforeAll(() => {
    daemon = startDaemon({ binDir: OUR_PLUGINS.dir, socket: path.join(work, 'daemon.sock') });
    podmanEnv = { CNI_TS_DAEMON_SOCKET: daemon.socket };
  });
  afterAll(() => {
    podmanEnv = {};
    daemon?.stop();
  });

  PODMAN_TARGET.networks.forEach((net, i) => {
    it(`runs a busybox container on the ${net.label} network, every plugin call served by the daemon`, () => {
      const before = daemon.served();
      runContainer(net, `cfpm-${id}-d${i}`);
      const log = daemon.log();
      expect(log).not.toContain('declined');
      // podman's ADD and DEL of the network (and, for bridge, the IPAM calls run in-process)
      expect(daemon.served() - before).toBeGreaterThanOrEqual(2);
      expect(log).toMatch(new RegExp(`served ${String((net.conflist({ bridge, subnet, dataDir: '' }).plugins as Array<{ type: string }>)[0].type)} ADD .*exit 0 `));
    });
  });
});
