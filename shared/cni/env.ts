/**
 * The CNI_* environment variables (SPEC.md section 2, "Parameters").
 *
 * Which variables each command requires follows the reference skel
 * (pkg/skel/skel.go), which is stricter than the spec's text in one place:
 * it requires CNI_PATH for ADD, CHECK and DEL too. Runtimes always set it,
 * and our plugins need it to find the IPAM plugin. STATUS follows the spec
 * (CNI_PATH optional) because the reference's extra demand buys nothing there.
 *
 * Nothing here reads process.env at module load: the bundle may be
 * evaluated into a V8 startup snapshot at build time.
 */
import { CniError, ErrorCode, invalidEnv } from './errors';

/**
 * The spec's rule for container IDs and network names: an alphanumeric
 * first character, then alphanumerics, '_', '.' or '-' (the reference's
 * utils.cniValidNameChars).
 */
export const NAME_PATTERN = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;

export const COMMANDS = ['ADD', 'DEL', 'CHECK', 'GC', 'STATUS', 'VERSION'] as const;
export type Command = (typeof COMMANDS)[number];

export interface CniEnv {
  command: Command;
  /** '' when the command does not take one (GC, STATUS, VERSION) */
  containerId: string;
  /** '' when not given (always allowed for DEL, GC, STATUS, VERSION) */
  netns: string;
  ifname: string;
  /** CNI_ARGS split into pairs; see parseCniArgs for the strict, per-plugin reading */
  args: Record<string, string>;
  /** CNI_ARGS as given */
  rawArgs: string;
  /** CNI_PATH split on ':' */
  path: string[];
  /** CNI_NETNS_OVERRIDE=1/true: the runtime vouches for CNI_NETNS being the plugin's own namespace */
  netnsOverride: boolean;
}

type Var = 'CNI_CONTAINERID' | 'CNI_NETNS' | 'CNI_IFNAME' | 'CNI_PATH';

/** Per command: the variables that must be present and non-empty. */
export type EnvRules = Readonly<Record<Command, readonly Var[]>>;

export const ENV_RULES: EnvRules = {
  ADD: ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME', 'CNI_PATH'],
  CHECK: ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME', 'CNI_PATH'],
  // DEL must work after the namespace is gone (SPEC.md: CNI_NETNS optional).
  DEL: ['CNI_CONTAINERID', 'CNI_IFNAME', 'CNI_PATH'],
  GC: ['CNI_PATH'],
  STATUS: [],
  VERSION: [],
};

/** Where each variable lands in CniEnv, in the order the reference checks them. */
const VARS: readonly Var[] = ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME', 'CNI_PATH'];

const VALIDATORS: Partial<Record<Var, (value: string) => void>> = {
  CNI_CONTAINERID: validateContainerId,
  CNI_IFNAME: validateIfname,
};

/**
 * Read and validate the CNI_* variables for the command in CNI_COMMAND.
 * CniError 4 (naming the variable) when CNI_COMMAND is missing or unknown,
 * when a required variable is missing (all missing ones are named at once),
 * or when CNI_CONTAINERID, CNI_IFNAME or CNI_ARGS is malformed.
 */
export function readEnv(rules: EnvRules = ENV_RULES, env: NodeJS.ProcessEnv = process.env): CniEnv {
  const cmd = env.CNI_COMMAND ?? '';
  if (cmd === '') throw new CniError(ErrorCode.InvalidEnvironment, 'required env variables [CNI_COMMAND] missing');
  if (!(COMMANDS as readonly string[]).includes(cmd)) {
    throw invalidEnv('CNI_COMMAND', `unknown command ${JSON.stringify(cmd)} (expected one of ${COMMANDS.join(', ')})`);
  }
  const command = cmd as Command;
  const required = rules[command];
  const missing: string[] = [];
  for (const name of VARS) {
    const value = env[name] ?? '';
    if (!required.includes(name)) continue;
    if (value === '') missing.push(name);
    // Like the reference, a present-but-invalid value is reported before
    // the missing ones; only required variables are validated.
    else VALIDATORS[name]?.(value);
  }
  if (missing.length) {
    throw new CniError(ErrorCode.InvalidEnvironment, `required env variables [${missing.join(',')}] missing`);
  }
  const rawArgs = env.CNI_ARGS ?? '';
  const override = (env.CNI_NETNS_OVERRIDE ?? '').toLowerCase();
  return {
    command,
    containerId: env.CNI_CONTAINERID ?? '',
    netns: env.CNI_NETNS ?? '',
    ifname: env.CNI_IFNAME ?? '',
    args: splitCniArgs(rawArgs),
    rawArgs,
    path: (env.CNI_PATH ?? '').split(':').filter((p) => p !== ''),
    netnsOverride: override === 'true' || override === '1',
  };
}

/** SPEC.md: not empty, then the same character rule as network names. */
export function validateContainerId(id: string): void {
  if (id === '') throw invalidEnv('CNI_CONTAINERID', 'missing container ID');
  if (!NAME_PATTERN.test(id)) {
    throw new CniError(
      ErrorCode.InvalidEnvironment,
      'CNI_CONTAINERID: invalid characters in container ID (must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$)',
      id,
    );
  }
}

/** Linux's rules for interface names (net/core/dev.c dev_valid_name), as the reference checks them. */
export function validateIfname(name: string): void {
  if (name === '') throw invalidEnv('CNI_IFNAME', 'interface name is empty');
  // IFNAMSIZ is 16 bytes including the NUL; the kernel counts bytes, not characters.
  if (Buffer.byteLength(name, 'utf8') > 15) {
    throw invalidEnv('CNI_IFNAME', `interface name ${JSON.stringify(name)} is longer than 15 bytes`);
  }
  if (name === '.' || name === '..') throw invalidEnv('CNI_IFNAME', `interface name must not be ${JSON.stringify(name)}`);
  // Go's unicode.IsSpace also counts U+0085 (NEL), which \s does not.
  if (/[\s\u0085/:]/.test(name)) {
    throw invalidEnv('CNI_IFNAME', `interface name ${JSON.stringify(name)} contains '/', ':' or whitespace`);
  }
}

/**
 * Split CNI_ARGS ("K1=V1;K2=V2") without judging the keys. Empty segments
 * are skipped and a value may contain '=' (the reference rejects both, but a
 * plugin that never reads CNI_ARGS should not fail over them). A segment
 * without '=' or with an empty key is CniError 4.
 */
export function splitCniArgs(s: string): Record<string, string> {
  // No prototype: a key such as "__proto__" must stay a plain key.
  const out: Record<string, string> = Object.create(null);
  for (const pair of s.split(';')) {
    if (pair === '') continue;
    const eq = pair.indexOf('=');
    if (eq <= 0) throw invalidEnv('CNI_ARGS', `invalid pair ${JSON.stringify(pair)} (expected KEY=VALUE)`);
    out[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return out;
}

/**
 * Read CNI_ARGS the way the reference's types.LoadArgs does for a plugin
 * that understands the keys in `known`: an unknown key is an error unless
 * IgnoreUnknown is 1/true (any case), which runtimes such as containerd
 * always send. Returns only the known keys. Errors are CniError 4 naming
 * CNI_ARGS (the reference leaves the code to the plugin; 4 is the spec's
 * code for a bad environment variable).
 */
export function parseCniArgs(s: string, known: readonly string[]): Record<string, string> {
  const pairs = splitCniArgs(s);
  let ignoreUnknown = false;
  if ('IgnoreUnknown' in pairs) {
    const v = pairs.IgnoreUnknown.toLowerCase();
    if (v === '1' || v === 'true') ignoreUnknown = true;
    else if (v !== '0' && v !== 'false') {
      throw invalidEnv('CNI_ARGS', `IgnoreUnknown must be 1, 0, true or false, got ${JSON.stringify(pairs.IgnoreUnknown)}`);
    }
  }
  const out: Record<string, string> = Object.create(null);
  const unknown: string[] = [];
  for (const [k, v] of Object.entries(pairs)) {
    if (k === 'IgnoreUnknown') continue;
    if (known.includes(k)) out[k] = v;
    else unknown.push(k);
  }
  if (unknown.length && !ignoreUnknown) {
    throw invalidEnv('CNI_ARGS', `unknown args [${unknown.join(', ')}] (set IgnoreUnknown=1 to allow them)`);
  }
  return out;
}
