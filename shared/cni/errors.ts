/**
 * The one error type of the CNI protocol core.
 *
 * Every failure a plugin reports travels as a CniError carrying one of the
 * spec's well-known codes (SPEC.md, "Error"), or a plugin-specific code of
 * 100 and up. `toCniError` is the single place where anything else becomes
 * code 999, so a plugin never prints a stack trace or an untyped message.
 */

/** Well-known error codes: 0-99 are reserved by the spec, 100+ are ours to use. */
export const ErrorCode = {
  IncompatibleVersion: 1,
  UnsupportedField: 2,
  UnknownContainer: 3,
  InvalidEnvironment: 4,
  IOFailure: 5,
  DecodingFailure: 6,
  InvalidNetworkConfig: 7,
  // 8 is not in the spec's table but the reference library defines it
  // (types.ErrInvalidNetNS) and uses it for a bad CNI_NETNS.
  InvalidNetns: 8,
  TryAgainLater: 11,
  PluginNotAvailable: 50,
  PluginNotAvailableLimited: 51,
  Internal: 999,
} as const;

export type WellKnownCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** The spec's error result, as printed on stdout. */
export interface CniErrorJson {
  cniVersion: string;
  code: number;
  msg: string;
  details?: string;
}

export class CniError extends Error {
  readonly code: number;
  readonly msg: string;
  readonly details?: string;

  constructor(code: number, msg: string, details?: string, options?: { cause?: unknown }) {
    // Same text as the reference's types.Error.Error(): "msg; details".
    super(details ? `${msg}; ${details}` : msg, options);
    this.name = 'CniError';
    this.code = code;
    this.msg = msg;
    if (details) this.details = details;
  }

  /** The spec's error object; `details` is left out when empty, like the reference. */
  toJSON(cniVersion: string): CniErrorJson {
    const out: CniErrorJson = { cniVersion, code: this.code, msg: this.msg };
    if (this.details) out.details = this.details;
    return out;
  }
}

/**
 * Map anything thrown to a CniError. CniErrors pass through untouched.
 * Errors with a numeric errno (netlink-ts and node's own system errors) keep
 * their message and say which errno in `details`, because "File exists" alone
 * does not tell an operator which syscall or which errno to look up.
 */
export function toCniError(e: unknown): CniError {
  if (e instanceof CniError) return e;
  if (e instanceof Error) {
    const errno = (e as { errno?: unknown }).errno;
    if (typeof errno === 'number') {
      return new CniError(ErrorCode.Internal, e.message, describeErrno(e, errno), { cause: e });
    }
    return new CniError(ErrorCode.Internal, e.message || e.name, undefined, { cause: e });
  }
  return new CniError(ErrorCode.Internal, typeof e === 'string' ? e : safeString(e), undefined, { cause: e });
}

/** Code 2: the spec requires the message to contain the key and the value. */
export function unsupportedField(key: string, value: unknown): CniError {
  return new CniError(ErrorCode.UnsupportedField, `unsupported field in network config: ${key}=${safeString(value)}`);
}

/** Code 4: the spec requires the message to contain the variable's name. */
export function invalidEnv(variable: string, why: string): CniError {
  return new CniError(ErrorCode.InvalidEnvironment, `${variable}: ${why}`);
}

function describeErrno(e: Error, errno: number): string {
  // netlink-ts reports the positive kernel errno; node's system errors carry
  // a negative errno and the name in `code`.
  const code = (e as { code?: unknown }).code;
  const syscall = (e as { syscall?: unknown }).syscall;
  const num = Math.abs(errno);
  const name = typeof code === 'string' && /^E[A-Z0-9]+$/.test(code) ? code : errnoName(num);
  const where = typeof syscall === 'string' && syscall ? ` in ${syscall}` : '';
  return `${name ?? 'errno'} (errno ${num})${where}`;
}

let errnoNames: Map<number, string> | undefined;

function errnoName(num: number): string | undefined {
  if (!errnoNames) {
    // Built on first use only: most plugin runs never fail.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const table = (require('node:os') as typeof import('node:os')).constants.errno as Record<string, number>;
    errnoNames = new Map();
    for (const [name, value] of Object.entries(table)) {
      // EWOULDBLOCK aliases EAGAIN, EDEADLOCK aliases EDEADLK: keep the first.
      if (!errnoNames.has(value)) errnoNames.set(value, name);
    }
  }
  return errnoNames.get(num);
}

function safeString(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v);
  try {
    const s = JSON.stringify(v);
    if (s !== undefined) return s;
  } catch {
    // circular or BigInt: fall through
  }
  return String(v);
}
