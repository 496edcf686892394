/**
 * containerd as a real runtime for tests and benchmarks, offline: a private
 * containerd (its own root, state and socket under a directory the caller
 * owns), a busybox image built here from busybox-static as an OCI archive
 * for `ctr images import` (no registry), and a way to run `ctr` so that it
 * finds a CNI configuration and plugins of the caller's own.
 *
 * ctr 1.6 takes CNI configuration only from /etc/cni/net.d and plugins only
 * from /opt/cni/bin (`ctr run --cni` has no flag or variable for either),
 * and runs the plugins itself, in its own network namespace. So ctr runs in
 * a mount namespace of its own where those two paths are bind mounts of the
 * caller's directories (mountNamespace, inHeld): nothing of the host's is
 * read or touched.
 */
import { type SpawnSyncReturns, execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

function run(argv: string[], opts: { env?: NodeJS.ProcessEnv; allowFail?: boolean; timeout?: number } = {}): SpawnSyncReturns<string> {
  const r = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8', env: opts.env ?? process.env, timeout: opts.timeout ?? 120_000 });
  if (r.status !== 0 && !opts.allowFail) throw new Error(`${argv.join(' ')} failed (${r.status ?? r.signal}): ${r.stderr}${r.stdout}`);
  return r;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function waitGone(pid: number, tries: number): void {
  for (let i = 0; i < tries && alive(pid); i++) execFileSync('sleep', ['0.05']);
}

/** The busybox applets the image links to; each is /bin/NAME -> busybox. */
export const BUSYBOX_APPLETS = ['sh', 'true', 'sleep', 'ip', 'cat', 'echo', 'ls', 'wget', 'nc', 'httpd', 'hostname', 'ping'];

/** A root filesystem of busybox-static (/bin/busybox must be static: nothing else is copied) and links. */
export function makeBusyboxRootfs(rootfs: string, applets: readonly string[] = BUSYBOX_APPLETS): void {
  fs.mkdirSync(path.join(rootfs, 'bin'), { recursive: true });
  fs.copyFileSync('/bin/busybox', path.join(rootfs, 'bin/busybox'));
  fs.chmodSync(path.join(rootfs, 'bin/busybox'), 0o755);
  for (const t of applets) fs.symlinkSync('busybox', path.join(rootfs, 'bin', t));
}

/**
 * An OCI image layout (one layer: rootfs's bin/), as a tar for `ctr images
 * import`, referenced as `ref`. Built under work; returns the tar's path.
 */
export function buildImage(work: string, rootfs: string, ref: string): string {
  const layout = path.join(work, 'oci');
  const blobs = path.join(layout, 'blobs/sha256');
  fs.mkdirSync(blobs, { recursive: true });
  const blob = (data: Buffer) => {
    const digest = createHash('sha256').update(data).digest('hex');
    fs.writeFileSync(path.join(blobs, digest), data);
    return { digest: `sha256:${digest}`, size: data.length };
  };
  const layerTar = path.join(work, 'layer.tar');
  run(['tar', '-C', rootfs, '-cf', layerTar, '--owner=0', '--group=0', '--mtime=@0', 'bin']);
  const layer = blob(fs.readFileSync(layerTar));
  const config = blob(Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: { Cmd: ['/bin/sh'], Env: ['PATH=/bin'] }, rootfs: { type: 'layers', diff_ids: [layer.digest] } })));
  const manifest = blob(
    Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
        layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', ...layer }],
      }),
    ),
  );
  fs.writeFileSync(
    path.join(layout, 'index.json'),
    JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...manifest, annotations: { 'org.opencontainers.image.ref.name': ref }, platform: { architecture: 'amd64', os: 'linux' } }] }),
  );
  fs.writeFileSync(path.join(layout, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  const tar = path.join(work, 'image.tar');
  run(['tar', '-C', layout, '-cf', tar, '.']);
  return tar;
}

export interface Containerd {
  socket: string;
  /** the containerd namespace every ctr call uses */
  namespace: string;
  pid: number;
  /** argv of `ctr` on this containerd: ctr(...args) */
  ctr(...args: string[]): string[];
  /** containerd's own log, for failure messages */
  log(): string;
  /** SIGTERM, then SIGKILL if it has not gone within 5 s */
  stop(): void;
}

/**
 * containerd with a config, root, state and socket of its own under dir.
 * The CRI plugin is disabled: ctr does not use it, and it would look for a
 * CNI configuration of its own.
 */
export function startContainerd(dir: string, namespace: string): Containerd {
  fs.mkdirSync(dir, { recursive: true });
  const socket = path.join(dir, 'containerd.sock');
  const config = path.join(dir, 'config.toml');
  const logFile = path.join(dir, 'containerd.log');
  fs.writeFileSync(
    config,
    [
      'version = 2',
      `root = "${dir}/root"`,
      `state = "${dir}/state"`,
      'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
      '[grpc]',
      `  address = "${socket}"`,
      '[ttrpc]',
      `  address = "${socket}.ttrpc"`,
      '[debug]',
      '  address = ""',
      '[metrics]',
      '  address = ""',
      '',
    ].join('\n'),
  );
  const log = fs.openSync(logFile, 'w');
  const child = spawn('containerd', ['--config', config], { stdio: ['ignore', log, log], detached: true });
  fs.closeSync(log);
  child.unref();
  const pid = child.pid!;
  const cd: Containerd = {
    socket,
    namespace,
    pid,
    ctr: (...args: string[]) => ['ctr', '-a', socket, '-n', namespace, ...args],
    log: () => fs.readFileSync(logFile, 'utf8'),
    stop: () => {
      if (!alive(pid)) return;
      process.kill(pid, 'SIGTERM');
      waitGone(pid, 100);
      if (alive(pid)) process.kill(pid, 'SIGKILL');
      waitGone(pid, 100);
    },
  };
  for (let i = 0; ; i++) {
    if (run(cd.ctr('version'), { allowFail: true }).status === 0) break;
    if (i > 200 || !alive(pid)) {
      cd.stop();
      throw new Error(`containerd did not start: ${cd.log()}`);
    }
    execFileSync('sleep', ['0.05']);
  }
  return cd;
}

/** Import the image tar (buildImage) under refBase. */
export function importImage(cd: Containerd, tar: string, refBase: string): void {
  run(cd.ctr('images', 'import', '--base-name', refBase, tar));
}

/**
 * Every container and task of the namespace gone (tasks killed), so stop()
 * leaves no shim, mount or snapshot behind. Failures are ignored: this runs
 * in afterAll, after failures too.
 */
export function removeAllContainers(cd: Containerd): void {
  const ids = run(cd.ctr('containers', 'list', '-q'), { allowFail: true }).stdout.split('\n').filter(Boolean);
  for (const id of ids) {
    run(cd.ctr('tasks', 'kill', '-s', 'SIGKILL', id), { allowFail: true });
    for (let i = 0; i < 50; i++) {
      if (run(cd.ctr('tasks', 'delete', id), { allowFail: true }).status === 0) break;
      if (!run(cd.ctr('tasks', 'list', '-q'), { allowFail: true }).stdout.split('\n').includes(id)) break;
      execFileSync('sleep', ['0.1']);
    }
    run(cd.ctr('containers', 'delete', id), { allowFail: true });
  }
}

/**
 * A private mount namespace, held by a sleeping process, where
 * /etc/cni/net.d and /opt are netd and opt. Run commands in it with
 * inHeld(pid, argv). With hostNetns the holder also sits in that network
 * namespace (`ip netns exec`, which remounts /sys for it and makes its
 * mounts a slave of the host's, so nothing made inside reaches the host):
 * the simulated host of a test. One namespace for every call matters where
 * plugins pin namespaces by bind mounts (the overlay's network namespaces)
 * that later calls and the overlay agent must see.
 */
export function mountNamespace(netd: string, opt: string, hostNetns?: string): { pid: number; stop(): void } {
  const argv = hostNetns ? ['ip', 'netns', 'exec', hostNetns, 'sleep', '3600'] : ['unshare', '--mount', '--propagation', 'private', 'sleep', '3600'];
  const holder = spawn(argv[0], argv.slice(1), { stdio: 'ignore', detached: true });
  holder.unref();
  const pid = holder.pid!;
  const stop = () => {
    if (alive(pid)) process.kill(pid, 'SIGKILL');
  };
  try {
    // ip netns exec and unshare exec sleep once the namespace is made
    for (let i = 0; i < 200 && fs.readlinkSync(`/proc/${pid}/ns/mnt`) === fs.readlinkSync('/proc/self/ns/mnt'); i++) execFileSync('sleep', ['0.01']);
    run(['nsenter', '-t', String(pid), '-m', '--', 'sh', '-c', `mount --bind "$1" /etc/cni/net.d && mount --bind "$2" /opt`, 'sh', netd, opt]);
  } catch (e) {
    stop();
    throw e;
  }
  return { pid, stop };
}

/** argv run in the holder's mount and network namespaces (mountNamespace). */
export function inHeld(pid: number, argv: string[]): string[] {
  return ['nsenter', '-t', String(pid), '-m', '-n', '--', ...argv];
}
