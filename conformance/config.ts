/**
 * What the suite runs: one network per config file.
 *
 * A config file is either
 *  - a plain CNI network config (.conf) or list (.conflist): run with the
 *    defaults below, so a plugin author's examples/*.conflist works as is; or
 *  - a suite descriptor (.json with a "network" key) that names or embeds the
 *    network and says what the suite needs to know to exercise it. All keys
 *    but "network" are optional:
 *
 *    {
 *      "description": "bridge + host-local",
 *      "network": "../../examples/bridge.conflist" | { ...inline conf or conflist... },
 *      "ifname": "eth0",                        CNI_IFNAME for every attachment
 *      "cniArgs": [["IgnoreUnknown", "1"]],     CNI_ARGS pairs
 *      "capabilityArgs": { "portMappings": [...] },   what the runtime offers
 *      "host": "isolated" | "current",          where plugins run (below)
 *      "containerNetns": "new" | "host",        CNI_NETNS: a fresh netns per attachment, or the host's
 *      "hostSetup": [["link", "add", ...]],     ip(8) commands run in the host namespace first
 *      "services": [{ "name", "argv", "readyLog"?, "readyTimeoutMs"? }],
 *                                               processes kept running in the host namespace for the
 *                                               whole run, after hostSetup (etcd, an agent: services.ts)
 *      "stateDirs": ["${STATE_DIR}"],           directories the plugin keeps state in (leak checks)
 *      "cycles": 3,                             ADD/CHECK/DEL cycles for the leak rules
 *      "notApplicable": { "rule.id": "why" },   rules that cannot apply to this network
 *      "expectations": "../expectations/x.json" known deviations (see loadExpectations)
 *    }
 *
 * "host": "isolated" (the default) starts every plugin inside a network
 * namespace the suite creates for the run and throws away afterwards, so
 * bridges, routes and nft rules never touch the machine, two runs never
 * collide, and the leak rules see only what the plugin did. "current" runs
 * plugins in the suite's own namespace: needed by a plugin that insists on
 * the real host (our `host` plugin); leak rules there can see other
 * processes' changes.
 *
 * Strings anywhere in the descriptor may use ${STATE_DIR} (a directory of
 * this run, removed afterwards: point dataDir there) and ${RUN_ID} (a short
 * random id, for names that must be unique on a shared host).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import { ConfigError, parseNetworkConfig, type NetworkConfigList } from './libcni';
import { ServiceSchema, type ServiceSpec } from './services';

const Descriptor = z
  .object({
    $comment: z.string().optional(),
    description: z.string().optional(),
    network: z.union([z.string(), z.record(z.unknown())]),
    ifname: z.string().min(1).default('eth0'),
    cniArgs: z.array(z.tuple([z.string(), z.string()])).default([]),
    capabilityArgs: z.record(z.unknown()).default({}),
    host: z.enum(['isolated', 'current']).default('isolated'),
    containerNetns: z.enum(['new', 'host']).default('new'),
    hostSetup: z.array(z.array(z.string()).min(1)).default([]),
    services: z.array(ServiceSchema).default([]),
    stateDirs: z.array(z.string()).optional(),
    cycles: z.number().int().min(1).max(100).default(3),
    notApplicable: z.record(z.string()).default({}),
    expectations: z.string().optional(),
  })
  .strict();

export interface SuiteConfig {
  /** name in the report: the file name without extension */
  name: string;
  file: string;
  description?: string;
  network: NetworkConfigList;
  ifname: string;
  cniArgs: [string, string][];
  capabilityArgs: Record<string, unknown>;
  host: 'isolated' | 'current';
  containerNetns: 'new' | 'host';
  hostSetup: string[][];
  services: ServiceSpec[];
  stateDirs: string[];
  /** state directories the defaults exclude (libcni's own result cache) */
  stateExcludes: string[];
  cycles: number;
  notApplicable: Record<string, string>;
  deviations: Record<string, string>;
}

export interface Placeholders {
  STATE_DIR: string;
  RUN_ID: string;
}

/** Load a plain .conf/.conflist or a descriptor; placeholders are filled in. */
export function loadConfig(file: string, ph: Placeholders): SuiteConfig {
  const text = fs.readFileSync(file, 'utf8');
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`${file}: not JSON: ${(e as Error).message}`);
  }
  return configFromObject(raw, file, ph);
}

/** The same from an object (tests build descriptors in code); `file` names it and anchors relative paths. */
export function configFromObject(raw: unknown, file: string, ph: Placeholders): SuiteConfig {
  const name = path.basename(file).replace(/\.(json|conflist|conf)$/, '');
  const isDescriptor = typeof raw === 'object' && raw !== null && 'network' in raw;
  const parsed = Descriptor.safeParse(isDescriptor ? fill(raw, ph) : { network: fill(raw, ph) });
  if (!parsed.success) {
    throw new ConfigError(`${file}: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(top)'}: ${i.message}`).join('; ')}`);
  }
  const d = parsed.data;
  const dir = path.dirname(path.resolve(file));
  let networkRaw: unknown = d.network;
  if (typeof d.network === 'string') {
    const netFile = path.resolve(dir, d.network);
    networkRaw = fill(JSON.parse(fs.readFileSync(netFile, 'utf8')), ph);
  }
  let network: NetworkConfigList;
  try {
    network = parseNetworkConfig(networkRaw);
  } catch (e) {
    throw new ConfigError(`${file}: ${(e as Error).message}`);
  }
  if (d.containerNetns === 'host' && d.host !== 'current') {
    throw new ConfigError(`${file}: containerNetns "host" needs "host": "current" (the container shares the real host namespace)`);
  }
  const stateDirs = d.stateDirs ?? defaultStateDirs(network);
  const deviations = d.expectations ? loadExpectations(path.resolve(dir, d.expectations), name) : {};
  return {
    name,
    file,
    description: d.description,
    network,
    ifname: d.ifname,
    cniArgs: d.cniArgs,
    capabilityArgs: d.capabilityArgs,
    host: d.host,
    containerNetns: d.containerNetns,
    hostSetup: d.hostSetup,
    services: d.services,
    stateDirs,
    stateExcludes: d.stateDirs ? [] : ['/var/lib/cni/results'],
    cycles: d.cycles,
    notApplicable: d.notApplicable,
    deviations,
  };
}

/**
 * Without a descriptor the suite watches every "dataDir" the config names
 * and /var/lib/cni (the conventional home of plugin state), minus libcni's
 * result cache, which belongs to runtimes.
 */
function defaultStateDirs(list: NetworkConfigList): string[] {
  const dirs = new Set<string>(['/var/lib/cni']);
  const visit = (v: unknown): void => {
    if (Array.isArray(v)) v.forEach(visit);
    else if (v && typeof v === 'object') {
      for (const [k, x] of Object.entries(v)) {
        if (k === 'dataDir' && typeof x === 'string') dirs.add(x);
        else visit(x);
      }
    }
  };
  list.plugins.forEach(visit);
  return [...dirs];
}

function fill(v: unknown, ph: Placeholders): unknown {
  if (typeof v === 'string') {
    return v.replace(/\$\{(\w+)\}/g, (m, key: string) => (key in ph ? ph[key as keyof Placeholders] : m));
  }
  if (Array.isArray(v)) return v.map((x) => fill(x, ph));
  if (v && typeof v === 'object') {
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, fill(x, ph)]));
  }
  return v;
}

const Expectations = z
  .object({
    $comment: z.string().optional(),
    plugins: z.string().optional(),
    deviations: z.record(z.record(z.string().min(1))),
  })
  .strict();

/**
 * An expectation file lists, per config name, the rules a plugin is known to
 * break and why:
 *   { "deviations": { "ref-loopback": { "add.second-add": "why" } } }
 * The suite still runs those rules; a failure is reported as a known
 * deviation, and a pass as a failure ("remove the stale entry"), so the file
 * cannot silently drift from the truth.
 */
export function loadExpectations(file: string, configName: string): Record<string, string> {
  const parsed = Expectations.safeParse(JSON.parse(fs.readFileSync(file, 'utf8')));
  if (!parsed.success) throw new ConfigError(`${file}: ${parsed.error.message}`);
  return parsed.data.deviations[configName] ?? {};
}

/** Expand --config arguments: files as given, directories to their *.json, *.conf and *.conflist. */
export function expandConfigPaths(paths: readonly string[]): string[] {
  const out: string[] = [];
  for (const p of paths) {
    if (fs.statSync(p).isDirectory()) {
      for (const f of fs.readdirSync(p).sort()) {
        if (/\.(json|conf|conflist)$/.test(f)) out.push(path.join(p, f));
      }
    } else {
      out.push(p);
    }
  }
  return out;
}
