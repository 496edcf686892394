/**
 * The system layer: the system calls Node lacks, below netlink and netns.
 * Everything here is a thin typed wrapper over the native binding, which
 * only ./native.ts loads.
 */
export { LOCK_SH, LOCK_EX, LOCK_NB, LOCK_UN, flock, withFileLock } from './flock';
export type { FileLockOptions } from './flock';
export { CLONE_NEWNET, setns, nsType } from './setns';
export { MNT_DETACH, netnsCreate, umount } from './mount';
export {
  PIDFD_NS_MNT,
  PIDFD_NS_NET,
  PIDFD_NS_USER,
  POLLHUP,
  POLLERR,
  peerUid,
  peerCred,
  peerPidfd,
  pidfdOpen,
  pidfdAlive,
  pidfdNsInode,
  pollEvents,
} from './peer';
export { readAllSync, sleepSync, writeAllSync } from './stdio';
export { assetCacheDir } from './native';
export type { NativeError } from './native';
