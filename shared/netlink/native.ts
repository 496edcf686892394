/**
 * The one file that loads netlink-ts's native binding.
 *
 * The binding is deliberately tiny (socket, bind, send, recv, close, setns,
 * flock, and the peer of a unix socket); everything else is TypeScript. Two ways to find it:
 *  - from a source checkout (tests, `node dist/...`): the node-gyp output;
 *  - inside the packaged single executable: the .node file travels as a SEA
 *    asset, is written once to a content-addressed path and dlopen'ed from
 *    there (a shared object can only be loaded from a file).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

export interface NativeBinding {
  /** socket(AF_NETLINK, SOCK_RAW|SOCK_CLOEXEC, protocol) in the thread's current netns */
  socket(protocol: number): number;
  /** the same socket, created inside the network namespace open at nsFd */
  socketAt(nsFd: number, protocol: number): number;
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
}

/** Error thrown by the binding: errno is the positive kernel errno. */
export interface NativeError extends Error {
  errno: number;
  syscall: string;
}

export const LOCK_SH = 1;
export const LOCK_EX = 2;
export const LOCK_NB = 4;
export const LOCK_UN = 8;
export const CLONE_NEWNET = 0x40000000;
export const MNT_DETACH = 2;

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
    path.join(__dirname, 'native/build/Release/netlink_native.node'),
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
  // The build stores the binding's sha256 beside it, so the hot path is a
  // single dlopen of a path we can name without hashing anything.
  const digest = sea.getAsset(`${NATIVE_ASSET}.sha256`, 'utf8').trim();
  const dir = process.env.NETLINK_TS_CACHE_DIR ?? '/run/cni-ts';
  const file = path.join(dir, `netlink-${digest.slice(0, 16)}.node`);
  try {
    return dlopen(file);
  } catch {
    // not written yet (first run after boot or upgrade): fall through
  }
  // Root-only directory: a shared object that root dlopens must not be
  // replaceable by anyone else.
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, Buffer.from(sea.getRawAsset(NATIVE_ASSET)), { mode: 0o500 });
  fs.renameSync(tmp, file);
  return dlopen(file);
}
