/**
 * The one command-line flag parser of cni-ts's commands (`cni-ts daemon`,
 * `cni-ts overlay-agent`, `cni-ts ipam-maint`), on Node's util.parseArgs, and
 * the one duration syntax they share.
 *
 * Durations: a number (decimals allowed) followed by a unit, ms, s, m or h:
 * "500ms", "2s", "1.5s", "30m", "12h". A bare number is SECONDS, as systemd
 * reads a time span and as the shim and the example units have always passed
 * --idle-exit and --call-timeout. The one exception is a flag whose name
 * states its unit (--resync-ms, --timeout-ms): there a bare number is in that
 * unit, so every command line written before this module still means what it
 * meant. A duration never exceeds what a Node timer can hold (about 24.8
 * days): a longer one would fire at once.
 *
 * Bad flags raise UsageError, a message for one line of stderr; each command
 * prints it with its usage and exits 2, never with a stack trace.
 */
import { parseArgs } from 'node:util';

/** A mistake on the command line: the command prints it with its usage and exits 2. */
export class UsageError extends Error {
  override name = 'UsageError';
}

/** The longest delay setTimeout honours; a longer one fires immediately. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

const UNIT_MS = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 } as const;
export type DurationUnit = keyof typeof UNIT_MS;

/**
 * "500ms", "2s", "1.5m", "12h" to milliseconds (rounded to a whole ms); a
 * bare number is in `bare` (seconds unless the flag's name says otherwise).
 */
export function parseDuration(text: string, bare: DurationUnit = 's'): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text);
  if (!m) throw new UsageError(`"${text}" is not a duration (e.g. 500ms, 2s, 30m, 12h; a bare number is ${bare === 's' ? 'seconds' : bare})`);
  const ms = Math.round(Number(m[1]) * UNIT_MS[(m[2] as DurationUnit | undefined) ?? bare]);
  if (!Number.isSafeInteger(ms)) throw new UsageError(`"${text}" is too long a duration`);
  return ms;
}

/** The shortest exact spelling of a duration in the syntax above: 300000 -> "5m". */
export function formatDuration(ms: number): string {
  for (const unit of ['h', 'm', 's'] as const) if (ms !== 0 && ms % UNIT_MS[unit] === 0) return `${ms / UNIT_MS[unit]}${unit}`;
  return `${ms}ms`;
}

interface Described {
  /** one-letter alias: -h */
  readonly short?: string;
}
export interface StringFlag extends Described {
  readonly type: 'string';
  readonly default?: string;
}
export interface BooleanFlag extends Described {
  readonly type: 'boolean';
}
export interface IntegerFlag extends Described {
  readonly type: 'integer';
  readonly default?: number;
  readonly min?: number;
  readonly max?: number;
}
export interface DurationFlag extends Described {
  readonly type: 'duration';
  /** milliseconds */
  readonly default?: number;
  /** milliseconds; default 0 */
  readonly min?: number;
  /** milliseconds; default MAX_TIMER_MS */
  readonly max?: number;
  /** the unit of a bare number: 's' unless the flag's name ends in it (--timeout-ms: 'ms') */
  readonly bare?: DurationUnit;
  /** the value must be whole seconds (an etcd lease TTL) */
  readonly wholeSeconds?: boolean;
}
export type FlagSpec = StringFlag | BooleanFlag | IntegerFlag | DurationFlag;
export type FlagSpecs = Readonly<Record<string, FlagSpec>>;

type ValueOf<F extends FlagSpec> = F extends BooleanFlag ? boolean : F extends StringFlag ? string : number;
/** Durations in milliseconds; a flag with no default and not given is undefined; a switch is false. */
export type FlagValues<S extends FlagSpecs> = {
  -readonly [K in keyof S]: S[K] extends BooleanFlag ? boolean : S[K] extends { default: unknown } ? ValueOf<S[K]> : ValueOf<S[K]> | undefined;
};

export interface Parsed<S extends FlagSpecs> {
  values: FlagValues<S>;
  positionals: string[];
}

/** Node's parse errors, said the way the rest of the command's messages are. */
function usageError(e: unknown): UsageError {
  const err = e as { code?: string; message?: string };
  const msg = err.message ?? String(e);
  // Node names a flag as '--name', '-n, --name' or '--name <value>': the long name, else the short one
  const quoted = /'([^']*)'/.exec(msg)?.[1] ?? '';
  const flag = /--[^\s,]+/.exec(quoted)?.[0] ?? /-[^\s,]+/.exec(quoted)?.[0] ?? '';
  switch (err.code) {
    case 'ERR_PARSE_ARGS_UNKNOWN_OPTION':
      return new UsageError(`unknown flag ${flag}`);
    case 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL':
      return new UsageError(`unexpected argument "${/'([^']*)'/.exec(msg)?.[1] ?? ''}"`);
    case 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE':
      if (/does not take an argument/.test(msg)) return new UsageError(`${flag} takes no value`);
      if (/ambiguous/.test(msg)) return new UsageError(`${flag} needs a value (write ${flag}=VALUE for one starting with "-")`);
      return new UsageError(`${flag} needs a value`);
    default:
      return new UsageError(msg);
  }
}

function convert(name: string, spec: FlagSpec, raw: string | boolean | undefined): string | number | boolean | undefined {
  if (spec.type === 'boolean') return raw === true;
  if (raw === undefined) return spec.default;
  const text = raw as string;
  if (spec.type === 'string') {
    if (text === '') throw new UsageError(`--${name} needs a value`);
    return text;
  }
  if (spec.type === 'integer') {
    const min = spec.min ?? 0;
    const max = spec.max ?? Number.MAX_SAFE_INTEGER;
    const n = /^-?\d+$/.test(text) ? Number(text) : NaN;
    if (!Number.isSafeInteger(n) || n < min || n > max) throw new UsageError(`--${name}: expected an integer from ${min} to ${max}, got "${text}"`);
    return n;
  }
  let ms: number;
  try {
    ms = parseDuration(text, spec.bare ?? 's');
  } catch (e) {
    throw new UsageError(`--${name}: ${(e as Error).message}`);
  }
  const min = spec.min ?? 0;
  const max = spec.max ?? MAX_TIMER_MS;
  if (ms < min) throw new UsageError(`--${name} must be at least ${formatDuration(min)}, got "${text}"`);
  if (ms > max) throw new UsageError(`--${name} must be at most ${formatDuration(max)}, got "${text}"`);
  if (spec.wholeSeconds && ms % 1000 !== 0) throw new UsageError(`--${name} must be whole seconds, got "${text}"`);
  return ms;
}

/**
 * Parses `args` against `specs`: long flags as `--name VALUE` or
 * `--name=VALUE`, switches as `--name`, positionals only when `positionals`
 * allows them. Throws UsageError.
 */
export function parseFlags<S extends FlagSpecs>(args: readonly string[], specs: S, opts: { positionals?: boolean } = {}): Parsed<S> {
  const options: Record<string, { type: 'string' | 'boolean'; short?: string }> = {};
  for (const [name, spec] of Object.entries(specs)) {
    options[name] = { type: spec.type === 'boolean' ? 'boolean' : 'string', ...(spec.short && { short: spec.short }) };
  }
  let parsed: { values: Record<string, string | boolean | undefined>; positionals: string[] };
  try {
    parsed = parseArgs({ args: [...args], options, strict: true, allowPositionals: opts.positionals === true }) as typeof parsed;
  } catch (e) {
    throw usageError(e);
  }
  const values: Record<string, string | number | boolean | undefined> = {};
  for (const [name, spec] of Object.entries(specs)) values[name] = convert(name, spec, parsed.values[name]);
  return { values: values as FlagValues<S>, positionals: parsed.positionals };
}
