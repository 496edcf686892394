/**
 * Who is on the other end of a daemon connection, worked out by the daemon
 * itself. The shim's request carries its own idea of its namespaces; a
 * caller can say anything there, so it is not read. A uid-0 process in a
 * container's network namespace (no user namespace, /run mounted) must not
 * get bridge or portmap run in the host's.
 *
 * From the connected socket: SO_PEERCRED (uid, pid) and SO_PEERPIDFD, a
 * pidfd for the very process that called connect(2), which can never come
 * to name another process. Its network, mount and user namespaces are
 * asked of the pidfd (PIDFD_GET_*_NAMESPACE); on kernels without those, of
 * /proc/PID/ns, checked afterwards against the pidfd still being alive (a
 * pid is not reused before its process is reaped). Its effective
 * capabilities come from /proc/PID/status, read before the namespaces, so
 * the same liveness proof covers them.
 */
import * as fs from 'node:fs';
import { PIDFD_NS_MNT, PIDFD_NS_NET, PIDFD_NS_USER, peerCred, peerPidfd, pidfdAlive, pidfdNsInode, pidfdOpen } from '../shared/sys/peer';

const CAP_NET_ADMIN = 12n;

export interface Namespaces {
  net: bigint;
  mnt: bigint;
  user: bigint;
}

/**
 * ok: serve it. decline: a legitimate caller the daemon cannot serve (it
 * sits in other namespaces): the shim runs the plugin itself. refuse: not
 * allowed to run plugins at all; the connection is dropped.
 */
export type PeerVerdict = { kind: 'ok'; pid: number } | { kind: 'decline'; why: string } | { kind: 'refuse'; why: string };

export function ownNamespaces(): Namespaces {
  const ino = (f: string) => fs.statSync(f, { bigint: true }).ino;
  return { net: ino('/proc/self/ns/net'), mnt: ino('/proc/self/ns/mnt'), user: ino('/proc/self/ns/user') };
}

export function checkPeer(fd: number, own: Namespaces): PeerVerdict {
  let cred: { pid: number; uid: number };
  try {
    cred = peerCred(fd);
  } catch (e) {
    return { kind: 'refuse', why: `a peer without credentials (${(e as Error).message})` };
  }
  // The socket file is root's (0600), and the peer is checked as well: a
  // mode loosened by mistake must not let anyone run plugins as root.
  if (cred.uid !== 0 && cred.uid !== process.getuid?.()) return { kind: 'refuse', why: `uid ${cred.uid}` };
  if (cred.pid <= 0) return { kind: 'decline', why: 'the caller is in another pid namespace' };
  let pidfd: number;
  try {
    pidfd = peerPidfd(fd);
  } catch {
    // before Linux 6.5: a pidfd of the pid, which the liveness check below ties to the caller
    try {
      pidfd = pidfdOpen(cred.pid);
    } catch {
      return { kind: 'refuse', why: `pid ${cred.pid}, which is gone` };
    }
  }
  try {
    let capEff: bigint;
    try {
      capEff = effectiveCaps(cred.pid);
    } catch {
      return { kind: 'refuse', why: `pid ${cred.pid}, which is gone` };
    }
    let ns: Namespaces;
    try {
      ns = peerNamespaces(pidfd, cred.pid);
    } catch {
      return { kind: 'refuse', why: `pid ${cred.pid}, which is gone` };
    }
    if (ns.user !== own.user) return { kind: 'decline', why: 'the caller is in another user namespace' };
    if (ns.net !== own.net || ns.mnt !== own.mnt) return { kind: 'decline', why: 'the caller is in another network or mount namespace' };
    if (((capEff >> CAP_NET_ADMIN) & 1n) === 0n) return { kind: 'refuse', why: `pid ${cred.pid}, which lacks CAP_NET_ADMIN` };
    return { kind: 'ok', pid: cred.pid };
  } finally {
    fs.closeSync(pidfd);
  }
}

function effectiveCaps(pid: number): bigint {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(status);
  if (!m) throw new Error(`/proc/${pid}/status: no CapEff`);
  return BigInt(`0x${m[1]}`);
}

function peerNamespaces(pidfd: number, pid: number): Namespaces {
  try {
    return { net: pidfdNsInode(pidfd, PIDFD_NS_NET), mnt: pidfdNsInode(pidfd, PIDFD_NS_MNT), user: pidfdNsInode(pidfd, PIDFD_NS_USER) };
  } catch (e) {
    if ((e as { errno?: number }).errno !== 25 /* ENOTTY: before Linux 6.11 */) throw e;
  }
  const ino = (kind: string) => fs.statSync(`/proc/${pid}/ns/${kind}`, { bigint: true }).ino;
  const ns = { net: ino('net'), mnt: ino('mnt'), user: ino('user') };
  // still the same process: what /proc said was its own
  if (!pidfdAlive(pidfd)) throw new Error(`pid ${pid} exited`);
  return ns;
}
