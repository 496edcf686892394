/**
 * The one file that loads the native binding (its C source and node-gyp
 * build live in shared/netlink/native/, since most of what it does is
 * netlink sockets).
 *
 * The binding is deliberately tiny (socket, bind, send, recv, close, setns,
 * flock, the peer of a unix socket, an inet socket bound inside a
 * namespace); everything else is TypeScript.
 * Netlink code calls its socket verbs through shared/netlink/socket.ts; the
 * other system calls have small typed wrappers beside this file
 * (flock.ts, setns.ts, mount.ts, peer.ts), so code that only wants a file
 * lock never imports netlink. Two ways to find it:
 *  - from a source checkout (tests, `node dist/...`): the node-gyp output;
 *  - inside the packaged single executable: the .node file travels as a SEA
 *    asset, is written once to a content-addressed path and dlopen'ed from
 *    there (a shared object can only be loaded from a file).
 *
 * What root dlopens from a file must be exactly what the build packed: the
 * file is opened without following links, must be ours and writable by
 * nobody else, and its sha256 is computed from the very descriptor that is
 * then loaded (through /proc/self/fd), so nothing swapped in between the
 * check and the load is ever run. A file that fails any of this (planted
 * under the right name, truncated, another build's) is replaced by a fresh
 * copy written to a private temp file and renamed into place.
 *
 * NETLINK_TS_CACHE_DIR (tests, read-only /run) moves that directory. It
 * reaches a plugin from its caller's environment, so it is honoured only
 * because it cannot change what runs: the directory must be a real one,
 * ours, and not group- or world-writable (else it is refused), and what is
 * loaded from it passes the digest check above.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ASSET_DIR } from '../paths';

export interface NativeBinding {
  /** socket(AF_NETLINK, SOCK_RAW|SOCK_CLOEXEC, protocol) in the thread's current netns */
  socket(protocol: number): number;
  /** the same socket, created inside the network namespace open at nsFd */
  socketAt(nsFd: number, protocol: number): number;
  /** SO_NETNS_COOKIE of the network namespace open at nsFd: unique for the boot, never reused like an inode */
  netnsCookie(nsFd: number): bigint;
  /** an inet socket (SOCK_DGRAM=2 / SOCK_STREAM=1) created and bound to address:port inside the network namespace open at nsFd (IP_FREEBIND, non-blocking, close-on-exec) */
  inetSocketAt(nsFd: number, type: number, address: string, port: number): number;
  /** bind to the given multicast groups; returns the kernel-assigned port id */
  bind(fd: number, groups: number): number;
  setsockoptInt(fd: number, level: number, option: number, value: number): void;
  send(fd: number, data: Buffer): number;
  /** one datagram, never truncated */
  recv(fd: number): Buffer;
  close(fd: number): void;
  /** setns(2) for the JavaScript thread */
  setns(fd: number, nstype: number): void;
  /** flock(2): LOCK_SH=1, LOCK_EX=2, LOCK_NB=4, LOCK_UN=8 */
  flock(fd: number, operation: number): void;
  /** ioctl(fd, NS_GET_NSTYPE): the CLONE_NEW* type of a namespace file */
  nsType(fd: number): number;
  /** a new network namespace pinned (bind-mounted) at an existing empty file */
  netnsCreate(path: string): void;
  /** umount2(2); MNT_DETACH = 2 */
  umount(path: string, flags: number): void;
  /** the uid of the peer of a connected unix socket (SO_PEERCRED) */
  peerUid(fd: number): number;
  /** pid (in our pid namespace; 0 when not visible), uid and gid of a unix socket's peer (SO_PEERCRED) */
  peerCred(fd: number): { pid: number; uid: number; gid: number };
  /** a pidfd for the process that connected a unix socket (SO_PEERPIDFD, Linux 6.5) */
  peerPidfd(fd: number): number;
  /** pidfd_open(2) */
  pidfdOpen(pid: number): number;
  /** false once the pidfd's process has exited (a zombie is still alive) */
  pidfdAlive(pidfd: number): boolean;
  /** inode of the process's namespace (PIDFD_GET_*_NAMESPACE, Linux 6.11): which = PIDFD_NS_* */
  pidfdNsInode(pidfd: number, which: number): bigint;
  /** poll(2) one fd without waiting; returns revents */
  pollEvents(fd: number, events: number): number;
}

/** Error thrown by the binding: errno is the positive kernel errno. */
export interface NativeError extends Error {
  errno: number;
  syscall: string;
}

/** Name of the asset inside the packaged executable (see build.sh). */
export const NATIVE_ASSET = 'netlink_native.node';

let binding: NativeBinding | undefined;

export function native(): NativeBinding {
  if (!binding) binding = load();
  return binding;
}

function load(): NativeBinding {
  const fromSea = loadFromSea();
  if (fromSea) return fromSea;
  const candidates = [
    process.env.NETLINK_TS_NATIVE,
    path.join(__dirname, '../netlink/native/build/Release/netlink_native.node'),
    // dist/*.js bundles sit two levels below the repo root's shared/
    path.join(__dirname, '../shared/netlink/native/build/Release/netlink_native.node'),
    path.join(__dirname, 'netlink_native.node'),
  ];
  for (const candidate of candidates) {
    if (candidate && fs.existsSync(candidate)) return dlopen(candidate);
  }
  throw new Error('netlink-ts native binding not found: run ./build.sh (node-gyp) first');
}

function dlopen(file: string): NativeBinding {
  const mod = { exports: {} as NativeBinding };
  process.dlopen(mod, file);
  return mod.exports;
}

function loadFromSea(): NativeBinding | undefined {
  let sea: { isSea(): boolean; getRawAsset(key: string): ArrayBuffer; getAsset(key: string, enc: string): string };
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    sea = require('node:sea');
  } catch {
    return undefined;
  }
  if (!sea.isSea()) return undefined;
  // The build stores the binding's sha256 beside it, so the file can be
  // named (and checked) before the asset itself is read.
  const digest = sea.getAsset(`${NATIVE_ASSET}.sha256`, 'utf8').trim();
  const dir = assetCacheDir();
  const file = path.join(dir, `netlink-${digest.slice(0, 16)}.node`);
  const fd = openVerified(file, digest) ?? writeVerified(file, Buffer.from(sea.getRawAsset(NATIVE_ASSET)), digest);
  try {
    return dlopen(`/proc/self/fd/${fd}`);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Where assets are written out: /run/cni-ts, or NETLINK_TS_CACHE_DIR (see
 * the header). Created root-only; refused when it is a link, someone
 * else's, or writable by group or others.
 */
export function assetCacheDir(): string {
  const dir = process.env.NETLINK_TS_CACHE_DIR || ASSET_DIR;
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = fs.lstatSync(dir);
  const uid = process.geteuid?.() ?? 0;
  if (!st.isDirectory() || st.uid !== uid || (st.mode & 0o022) !== 0) {
    throw new Error(`${dir}: not a directory of uid ${uid} closed to others; refusing to load code from it`);
  }
  return dir;
}

/**
 * An open descriptor of file when it holds exactly the content whose sha256
 * is digest, belongs to us and is writable by nobody else; else undefined.
 * The caller loads through this descriptor, never the path again.
 */
export function openVerified(file: string, digest: string): number | undefined {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
  } catch {
    return undefined;
  }
  try {
    const st = fs.fstatSync(fd);
    const ok = st.isFile() && st.uid === (process.geteuid?.() ?? 0) && (st.mode & 0o022) === 0 && sha256Fd(fd) === digest;
    if (ok) return fd;
  } catch {
    // unreadable: replaced below
  }
  fs.closeSync(fd);
  return undefined;
}

/**
 * Writes content to a new private file beside file (O_EXCL, mode 0500),
 * renames it into place for the next process, and returns a read-only
 * descriptor of what was written, checked against digest.
 */
export function writeVerified(file: string, content: Buffer, digest: string): number {
  const tmp = `${file}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
  const { O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = fs.constants;
  const wfd = fs.openSync(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o500);
  let fd: number;
  try {
    fs.writeSync(wfd, content);
    fs.fsyncSync(wfd);
    // the same inode, read-only, whatever happens to the name from now on
    fd = fs.openSync(`/proc/self/fd/${wfd}`, fs.constants.O_RDONLY);
  } finally {
    fs.closeSync(wfd);
  }
  if (sha256Fd(fd) !== digest) {
    fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw new Error(`${file}: the packaged asset does not match its digest ${digest}`);
  }
  try {
    fs.renameSync(tmp, file);
  } catch {
    fs.rmSync(tmp, { force: true }); // the copy we hold open still loads
  }
  return fd;
}

function sha256Fd(fd: number): string {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const hash = (require('node:crypto') as typeof import('node:crypto')).createHash('sha256');
  const buf = Buffer.allocUnsafe(64 * 1024);
  for (let pos = 0; ; ) {
    const n = fs.readSync(fd, buf, 0, buf.length, pos);
    if (n === 0) break;
    hash.update(buf.subarray(0, n));
    pos += n;
  }
  return hash.digest('hex');
}
