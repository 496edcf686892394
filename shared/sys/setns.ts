/**
 * setns(2) and NS_GET_NSTYPE: which namespace a file is, and moving the
 * calling thread into one. shared/netns builds its handles on these; see
 * there why only synchronous work may run inside.
 */
import { native } from './native';

export const CLONE_NEWNET = 0x40000000;

/** setns(2) for the JavaScript thread: nstype is the CLONE_NEW* the file must be (0: any). */
export function setns(fd: number, nstype: number): void {
  native().setns(fd, nstype);
}

/** ioctl(fd, NS_GET_NSTYPE): the CLONE_NEW* type of a namespace file; throws for any other file. */
export function nsType(fd: number): number {
  return native().nsType(fd);
}
