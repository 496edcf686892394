/**
 * The plugin configuration every plugin receives on stdin (SPEC.md section 1,
 * "Plugin configuration objects", and section 3, "Deriving request
 * configuration"), as a zod schema plugins `.extend()` with their own keys.
 *
 * Start-up cost matters (every plugin call pays it), so the schemas here are
 * flat and built once; nothing runs at load beyond constructing them.
 */
import { z } from 'zod';
import { NAME_PATTERN } from './env';
import { CniError, ErrorCode } from './errors';

/** A loose JSON object: known keys typed, unknown keys kept. */
const looseRecord = z.record(z.string(), z.unknown());

export const netConfBase = z.object({
  cniVersion: z.string(),
  name: z.string().regex(NAME_PATTERN, {
    message: 'network name must start with a letter or digit, followed by letters, digits, "_", "." or "-"',
  }),
  type: z.string(),
  disableCheck: z.boolean().optional(),
  disableGC: z.boolean().optional(),
  /** CONVENTIONS.md: {"cni": {"ips": [...], ...}} and other runtime-provided args */
  args: looseRecord.optional(),
  ipMasq: z.boolean().optional(),
  /** The delegated IPAM plugin's section: only `type` is ours to read. */
  ipam: z.object({ type: z.string() }).passthrough().optional(),
  dns: z
    .object({
      nameservers: z.array(z.string()).optional(),
      domain: z.string().optional(),
      search: z.array(z.string()).optional(),
      options: z.array(z.string()).optional(),
    })
    .optional(),
  capabilities: z.record(z.string(), z.boolean()).optional(),
  /** Capability arguments (CONVENTIONS.md); each plugin narrows the ones it declares. */
  runtimeConfig: z
    .object({
      portMappings: z.array(looseRecord).optional(),
      ips: z.array(z.string()).optional(),
      mac: z.string().optional(),
      bandwidth: looseRecord.optional(),
    })
    .passthrough()
    .optional(),
  /** Read with parsePrevResult, which knows every version's shape. */
  prevResult: z.unknown().optional(),
  'cni.dev/valid-attachments': z.array(z.object({ containerID: z.string(), ifname: z.string() })).optional(),
});

export type NetConf = z.infer<typeof netConfBase>;

/**
 * The `mac` capability (runtimeConfig.mac): a unicast, non-zero MAC, checked
 * by the schema so a bad one is code 7 before anything is created (the
 * kernel would only refuse it half-way through an ADD).
 */
export const unicastMac = z
  .string()
  .regex(/^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$/, 'not a MAC address (xx:xx:xx:xx:xx:xx)')
  .refine((m) => (parseInt(m.slice(0, 2), 16) & 1) === 0, 'a multicast MAC cannot be an interface address')
  .refine((m) => !/^(00:){5}00$/.test(m), 'the all-zero MAC cannot be an interface address');

/**
 * Decode and validate a plugin configuration.
 * CniError 6 when stdin is not a JSON object, 7 when the schema rejects it;
 * the message names every offending key path and what was expected there.
 */
export function parseConfig<T>(stdin: Buffer | string, schema: z.ZodType<T, z.ZodTypeDef, unknown>): T {
  return validateConfig(decodeJsonObject(stdin, 'network config'), schema);
}

/** parseConfig for JSON already decoded: CniError 7 naming each offending key path. */
export function validateConfig<T>(json: unknown, schema: z.ZodType<T, z.ZodTypeDef, unknown>): T {
  const parsed = schema.safeParse(json);
  if (parsed.success) return parsed.data;
  const problems = parsed.error.issues.map(formatIssue);
  throw new CniError(ErrorCode.InvalidNetworkConfig, `invalid network config: ${problems.join('; ')}`);
}

/** JSON.parse that insists on an object and reports code 6 (decoding failure) otherwise. */
export function decodeJsonObject(data: Buffer | string, what: string): Record<string, unknown> {
  const text = typeof data === 'string' ? data : data.toString('utf8');
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new CniError(ErrorCode.DecodingFailure, `error decoding ${what}: ${(e as Error).message}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    const got = value === null ? 'null' : Array.isArray(value) ? 'an array' : typeof value;
    throw new CniError(ErrorCode.DecodingFailure, `error decoding ${what}: expected a JSON object, got ${got}`);
  }
  return value as Record<string, unknown>;
}

function formatIssue(issue: z.ZodIssue): string {
  const path = formatPath(issue.path);
  if (issue.code === 'invalid_type') {
    if (issue.received === 'undefined') return `${path}: required ${issue.expected} is missing`;
    return `${path}: expected ${issue.expected}, received ${issue.received}`;
  }
  if (issue.code === 'invalid_union') {
    // zod's own text for unions is just "Invalid input". When every
    // alternative failed on the type of this very value, list the types
    // wanted; otherwise show the first alternative's complaint.
    const inner = issue.unionErrors.map((e) => e.issues[0]).filter((i) => i !== undefined);
    const sameSpot = inner.every((i) => i.code === 'invalid_type' && i.path.length === issue.path.length);
    if (inner.length && sameSpot) {
      const expected = inner.map((i) => (i as z.ZodInvalidTypeIssue).expected).join(' or ');
      return `${path}: expected ${expected}, received ${(inner[0] as z.ZodInvalidTypeIssue).received}`;
    }
    if (inner.length) return formatIssue(inner[0]);
  }
  return `${path}: ${issue.message}`;
}

function formatPath(path: (string | number)[]): string {
  if (path.length === 0) return '(config)';
  let out = '';
  for (const p of path) {
    if (typeof p === 'number') out += `[${p}]`;
    else if (/^[A-Za-z_$][\w$]*$/.test(p)) out += out ? `.${p}` : p;
    else out += `[${JSON.stringify(p)}]`;
  }
  return out;
}
