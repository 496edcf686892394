/**
 * NftError: the one error type of the nft layer, thrown by realNft and
 * FakeNft alike.
 *
 * nft reports failures as text on stderr, e.g.
 *   /dev/stdin:3:1-30: Error: Could not process rule: No such file or directory
 *   add rule inet t nochain accept
 *   ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
 * We keep that text whole (for logs and CNI error details) and derive a
 * `kind` from it, so callers branch on `isNotFound(err)` instead of matching
 * strings. The line number points into the script the Transaction rendered,
 * which is how `command` is recovered. nft runs with LC_ALL=C, so the
 * strerror texts below are not translated.
 */

export type NftErrorKind =
  /** ENOENT: missing table, chain, set, element, rule handle, jump target. */
  | 'not-found'
  /** EEXIST: `create` of something that exists, conflicting set or map definition. */
  | 'exists'
  /** EBUSY: deleting a chain that still has rules or is jumped to, or a set a rule uses. */
  | 'busy'
  /** EOPNOTSUPP: e.g. a NAT statement in a filter chain, changing a base chain's hook or priority. */
  | 'not-supported'
  /** Rejected before the kernel: syntax, bad names, comment too long, invalid priority... */
  | 'invalid'
  /** nft could not be started at all (binary missing, killed by a signal). */
  | 'exec'
  | 'other';

export class NftError extends Error {
  override readonly name = 'NftError';
  constructor(
    readonly kind: NftErrorKind,
    /** The first error's text, without the "Error: " prefix. */
    readonly detail: string,
    /** nft's whole stderr (or the fake's imitation of it). */
    readonly stderr: string,
    /** nft's exit status; -1 when nft did not run (validation or exec failure). */
    readonly exitCode: number,
    /** 1-based line of the failing command in the rendered script, when known. */
    readonly line?: number,
    /** The failing command's text, when known. */
    readonly command?: string,
  ) {
    super(command ? `nft: ${detail} (in "${command}")` : `nft: ${detail}`);
  }
}

export function isNftError(err: unknown): err is NftError {
  return err instanceof NftError;
}

export function isNotFound(err: unknown): boolean {
  return err instanceof NftError && err.kind === 'not-found';
}

export function isAlreadyExists(err: unknown): boolean {
  return err instanceof NftError && err.kind === 'exists';
}

export function isBusy(err: unknown): boolean {
  return err instanceof NftError && err.kind === 'busy';
}

/** Message fragments (strerror texts and nft's own) mapped to kinds; first match wins. */
const KINDS: Array<[RegExp, NftErrorKind]> = [
  [/No such file or directory|does not exist/, 'not-found'],
  [/File exists/, 'exists'],
  [/Device or resource busy/, 'busy'],
  [/Operation not supported/, 'not-supported'],
  [/syntax error|Invalid argument|too long|invalid|Too many links|Numerical result out of range|Could not resolve|unknown|not allowed/i, 'invalid'],
];

export function kindOf(detail: string): NftErrorKind {
  for (const [re, kind] of KINDS) if (re.test(detail)) return kind;
  return 'other';
}

/**
 * Build the NftError for a failed `nft -f -` run. `script` is what was fed
 * on stdin, used to name the failing command when stderr carries a line.
 */
export function parseNftFailure(stderr: string, exitCode: number, script?: string): NftError {
  const located = /^(?:\/dev\/stdin|-):(\d+):[\d-]+: Error: (.*)$/m.exec(stderr);
  if (located) {
    const line = Number(located[1]);
    const detail = located[2].replace(/^Could not process rule: /, '');
    const command = script?.split('\n')[line - 1];
    return new NftError(kindOf(detail), detail, stderr, exitCode, line, command);
  }
  const plain = /^Error: (.*)$/m.exec(stderr);
  const detail = plain ? plain[1].replace(/^Could not process rule: /, '') : stderr.trim() || `exit status ${exitCode}`;
  return new NftError(kindOf(detail), detail, stderr, exitCode);
}

/** The stderr nft would print for a failure at `line` of a script; the fake uses it. */
export function formatNftStderr(line: number, command: string, detail: string, fromKernel: boolean): string {
  const text = fromKernel ? `Could not process rule: ${detail}` : detail;
  return `/dev/stdin:${line}:1-${command.length}: Error: ${text}\n${command}\n${'^'.repeat(command.length)}\n`;
}
