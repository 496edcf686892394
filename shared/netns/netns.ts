/**
 * Network namespace handles.
 *
 * Why this is careful: setns(2) moves only the calling thread. Node runs our
 * JavaScript on one thread and does synchronous file and process work on that
 * same thread, so `withNetns` can enter a namespace, run *synchronous* code
 * (open /proc/sys files, spawnSync nft), and leave again. Asynchronous work
 * started inside would run on libuv's worker threads, which never moved, so
 * `withNetns` only accepts synchronous functions and refuses promises.
 *
 * Netlink work does not need any of this: netlink-ts opens its socket inside
 * the target namespace once (socketAt) and the socket stays bound there.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CLONE_NEWNET, MNT_DETACH, netnsCreate, nsType, setns, umount } from '../sys';

/** An open network namespace file (a /var/run/netns/X bind mount or /proc/PID/ns/net). */
export class NetNs {
  private constructor(
    readonly path: string,
    readonly fd: number,
  ) {}

  static open(nsPath: string): NetNs {
    const fd = fs.openSync(nsPath, fs.constants.O_RDONLY | 0o2000000 /* O_CLOEXEC */);
    if (!isNsfs(fd)) {
      fs.closeSync(fd);
      throw new NotANetnsError(nsPath);
    }
    return new NetNs(nsPath, fd);
  }

  /** The namespace this thread is in right now. */
  static current(): NetNs {
    return NetNs.open('/proc/thread-self/ns/net');
  }

  /** Inode number: equal inodes mean the same namespace. */
  inode(): number {
    return fs.fstatSync(this.fd).ino;
  }

  /**
   * The same namespace as other: st_dev and st_ino of the open nsfs files
   * (fstat, so neither path can be swapped between the check and its use).
   * Path strings say nothing: two paths may pin one namespace, and a path
   * may be re-pointed at another.
   */
  sameAs(other: NetNs): boolean {
    const a = fs.fstatSync(this.fd, { bigint: true });
    const b = fs.fstatSync(other.fd, { bigint: true });
    return a.dev === b.dev && a.ino === b.ino;
  }

  /** Run a synchronous function inside this namespace and come back, even on throw. */
  run<T>(fn: () => T): T {
    return withNetnsFd(this.fd, fn);
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}

export class NotANetnsError extends Error {
  constructor(readonly nsPath: string) {
    super(`${nsPath} is not a network namespace`);
  }
}

/**
 * A network namespace file: the kernel says so (NS_GET_NSTYPE). A regular
 * file fails the ioctl; a UTS or mount namespace answers another type.
 */
function isNsfs(fd: number): boolean {
  try {
    return nsType(fd) === CLONE_NEWNET;
  } catch {
    return false;
  }
}

/** True when nsPath names a network namespace (existing nsfs file). */
export function isNetnsPath(nsPath: string): boolean {
  try {
    NetNs.open(nsPath).close();
    return true;
  } catch {
    // /proc/PID/ns/net of a process we may not ptrace cannot be opened, but
    // its link text still says what it is.
    return readNsLink(nsPath) !== undefined;
  }
}

function readNsLink(nsPath: string): number | undefined {
  try {
    const m = /^net:\[(\d+)\]$/.exec(fs.readlinkSync(nsPath));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The namespace's inode number: equal inodes mean the same namespace (all
 * network namespaces live on the one nsfs). Works for bind mounts
 * (/var/run/netns/X) by stat and for /proc/PID/ns/net links by their text,
 * which stays readable where stat is refused (another PID's namespace
 * under a restrictive ptrace policy).
 */
export function netnsInode(nsPath: string): number {
  return readNsLink(nsPath) ?? fs.statSync(nsPath).ino;
}

/**
 * The host's network namespace: the one PID 1 lives in. Where PID 1 cannot
 * be inspected (it holds capabilities we lack, so ptrace access checks
 * refuse even readlink, as in some sandboxes), the namespace this plugin was
 * started in stands for it: runtimes exec plugins from the host namespace.
 */
export function hostNetnsInode(): number {
  try {
    return netnsInode('/proc/1/ns/net');
  } catch {
    return netnsInode('/proc/self/ns/net');
  }
}

/** True when nsPath is the host's network namespace. */
export function isHostNetns(nsPath: string): boolean {
  return netnsInode(nsPath) === hostNetnsInode();
}

function withNetnsFd<T>(fd: number, fn: () => T): T {
  const home = fs.openSync('/proc/thread-self/ns/net', fs.constants.O_RDONLY);
  try {
    setns(fd, CLONE_NEWNET);
    try {
      const out = fn();
      if (out instanceof Promise) throw new Error('withNetns: the function must be synchronous');
      return out;
    } finally {
      setns(home, CLONE_NEWNET);
    }
  } finally {
    fs.closeSync(home);
  }
}

/** Run a synchronous function inside the namespace at nsPath (host namespace when undefined). */
export function withNetns<T>(nsPath: string | undefined, fn: () => T): T {
  if (nsPath === undefined) return fn();
  const ns = NetNs.open(nsPath);
  try {
    return ns.run(fn);
  } finally {
    ns.close();
  }
}

function sysctlPath(key: string): string {
  // accept both net.ipv4.ip_forward and net/ipv4/ip_forward
  return `/proc/sys/${key.includes('/') ? key : key.replace(/\./g, '/')}`;
}

/**
 * sysctl -w KEY=VALUE, inside nsPath when given. /proc/sys/net resolves the
 * namespace at open(2) time, from the opening thread, so the open must happen
 * inside the namespace. Interface names containing dots need the slash form.
 */
export function sysctlSet(key: string, value: string, nsPath?: string): void {
  withNetns(nsPath, () => fs.writeFileSync(sysctlPath(key), value));
}

/** sysctl -n KEY, inside nsPath when given. */
export function sysctlGet(key: string, nsPath?: string): string {
  return withNetns(nsPath, () => fs.readFileSync(sysctlPath(key), 'utf8').trim());
}

/**
 * ip netns add, at any path: a new network namespace pinned at `file`.
 * Returns false when one is already pinned there.
 */
export function createNetns(file: string): boolean {
  if (fs.existsSync(file) && isNetnsPath(file)) return false;
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o755 });
  fs.closeSync(fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_CREAT, 0o444));
  try {
    netnsCreate(file);
  } catch (e) {
    fs.rmSync(file, { force: true });
    throw e;
  }
  return true;
}

/**
 * ip netns del: unpin and remove a namespace made by createNetns; absent is
 * success. The unmount is lazy: a process still inside keeps the namespace
 * alive, but its name is gone at once.
 */
export function deleteNetns(file: string): void {
  if (!fs.existsSync(file)) return;
  if (isNetnsPath(file)) umount(file, MNT_DETACH);
  fs.rmSync(file, { force: true });
}
