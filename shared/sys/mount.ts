/**
 * The two mount operations behind `ip netns add/del`: a new network
 * namespace pinned by a bind mount, and the lazy unmount that unpins it.
 */
import { native } from './native';

export const MNT_DETACH = 2;

/** unshare a new network namespace and bind-mount it at file, an existing empty file. */
export function netnsCreate(file: string): void {
  native().netnsCreate(file);
}

/** umount2(2); flags e.g. MNT_DETACH. */
export function umount(file: string, flags: number): void {
  native().umount(file, flags);
}
