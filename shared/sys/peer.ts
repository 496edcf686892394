/**
 * Who is at the other end of a unix socket, and whether a process is still
 * there: SO_PEERCRED, SO_PEERPIDFD, pidfd_open(2), the PIDFD_GET_*_NAMESPACE
 * ioctls, and poll(2) for a hung-up connection. The daemon decides whom it
 * serves with these (cmd/daemon-peer.ts).
 */
import { native } from './native';

export const PIDFD_NS_MNT = 3;
export const PIDFD_NS_NET = 4;
export const PIDFD_NS_USER = 9;
export const POLLHUP = 0x10;
export const POLLERR = 0x8;

/** the uid of the peer of a connected unix socket (SO_PEERCRED) */
export function peerUid(fd: number): number {
  return native().peerUid(fd);
}

/** pid (in our pid namespace; 0 when not visible), uid and gid of a unix socket's peer (SO_PEERCRED) */
export function peerCred(fd: number): { pid: number; uid: number; gid: number } {
  return native().peerCred(fd);
}

/** a pidfd for the process that connected a unix socket (SO_PEERPIDFD, Linux 6.5) */
export function peerPidfd(fd: number): number {
  return native().peerPidfd(fd);
}

/** pidfd_open(2) */
export function pidfdOpen(pid: number): number {
  return native().pidfdOpen(pid);
}

/** false once the pidfd's process has exited (a zombie is still alive) */
export function pidfdAlive(pidfd: number): boolean {
  return native().pidfdAlive(pidfd);
}

/** inode of the process's namespace (PIDFD_GET_*_NAMESPACE, Linux 6.11): which = PIDFD_NS_* */
export function pidfdNsInode(pidfd: number, which: number): bigint {
  return native().pidfdNsInode(pidfd, which);
}

/** poll(2) one fd without waiting; returns revents */
export function pollEvents(fd: number, events: number): number {
  return native().pollEvents(fd, events);
}
