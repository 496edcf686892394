/**
 * CNI spec versions this code speaks, and how to compare them.
 *
 * 0.1.0 and 0.2.0 (the ip4/ip6 result shape) are deliberately absent: every
 * runtime still in use speaks 0.3.0 or later, and leaving them out keeps the
 * result converter to two shapes (0.3.0-0.4.0 and 1.x).
 */
import { CniError, ErrorCode } from './errors';

export const SUPPORTED_VERSIONS: readonly string[] = Object.freeze(['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0']);
export const LATEST = '1.1.0';

/**
 * Compare two "MAJOR.MINOR.PATCH" versions numerically: negative when a < b,
 * zero when equal, positive when a > b. Like the reference (version.ParseVersion),
 * missing minor/patch parts count as 0 and an empty string means 0.1.0.
 * Throws CniError 6 for a string that is not a version.
 */
export function compareVersions(a: string, b: string): number {
  const pa = parseVersion(a);
  const pb = parseVersion(b);
  for (let i = 0; i < 3; i++) {
    if (pa[i] !== pb[i]) return pa[i] < pb[i] ? -1 : 1;
  }
  return 0;
}

/** True when `v` is at least `min` (both valid versions). */
export function versionAtLeast(v: string, min: string): boolean {
  return compareVersions(v, min) >= 0;
}

/** Throws CniError 1 naming the supported list unless `v` is one of `supported`. */
export function requireSupported(v: string, supported: readonly string[] = SUPPORTED_VERSIONS): void {
  if (!supported.includes(v)) {
    throw new CniError(
      ErrorCode.IncompatibleVersion,
      'incompatible CNI versions',
      `config is ${JSON.stringify(v)}, plugin supports [${supported.map((s) => JSON.stringify(s)).join(', ')}]`,
    );
  }
}

function parseVersion(v: string): [number, number, number] {
  if (v === '') return [0, 1, 0];
  const parts = v.split('.');
  if (parts.length > 3 || !parts.every((p) => /^\d+$/.test(p))) {
    throw new CniError(ErrorCode.DecodingFailure, `invalid CNI version ${JSON.stringify(v)}`);
  }
  return [Number(parts[0]), Number(parts[1] ?? 0), Number(parts[2] ?? 0)];
}
