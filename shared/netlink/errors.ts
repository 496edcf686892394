/**
 * Typed kernel errors. Every failure that comes back from the kernel keeps
 * its errno, so callers can decide on the code (EEXIST on an idempotent add,
 * ENODEV on a DEL of a link that is already gone) instead of the message.
 */
import { constants } from 'node:os';

const errnoNames: Record<number, string> = {};
for (const [name, value] of Object.entries(constants.errno)) errnoNames[value] = name;

export function errnoName(errno: number): string {
  return errnoNames[errno] ?? `E${errno}`;
}

export class NetlinkError extends Error {
  /** positive errno, e.g. 17 */
  readonly errno: number;
  /** symbolic name, e.g. 'EEXIST' */
  readonly code: string;
  /** what we were doing, in `ip` terms: 'ip link add br0 type bridge' */
  readonly op: string;
  /** the kernel's extended-ack message, when it gave one */
  readonly kernelMessage?: string;

  constructor(errno: number, op: string, kernelMessage?: string) {
    const code = errnoName(errno);
    super(`${op}: ${code}${kernelMessage ? ` (${kernelMessage})` : ''}`);
    this.name = 'NetlinkError';
    this.errno = errno;
    this.code = code;
    this.op = op;
    this.kernelMessage = kernelMessage;
  }
}

export const EPERM = 1;
export const ENOENT = 2;
export const ESRCH = 3;
export const EBUSY = 16;
export const EEXIST = 17;
export const ENODEV = 19;
export const EINVAL = 22;
export const ERANGE = 34;
export const EOPNOTSUPP = 95;
export const EADDRNOTAVAIL = 99;
export const EAFNOSUPPORT = 97;

export function isNetlinkError(e: unknown, ...codes: number[]): e is NetlinkError {
  return e instanceof NetlinkError && (codes.length === 0 || codes.includes(e.errno));
}

/** The link, address or route is not there: what DEL treats as already done. */
export function isNotFound(e: unknown): boolean {
  return isNetlinkError(e, ENODEV, ENOENT, ESRCH, EADDRNOTAVAIL);
}
