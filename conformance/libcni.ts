/**
 * A runtime that drives plugins the way libcni (containernetworking/cni,
 * libcni/api.go and pkg/invoke) does, so a plugin that passes here behaves
 * under containerd, CRI-O and podman too. The facts this follows:
 *
 *  - Environment: CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_ARGS,
 *    CNI_IFNAME and CNI_PATH are always set (empty when unused), in front of
 *    the runtime's own environment. CNI_ARGS is "K=V;K=V"; CNI_PATH joins
 *    the plugin directories with ':'.
 *  - Each plugin of a list gets its own config object with the list's
 *    `name` and `cniVersion` injected, `prevResult` when there is one, and a
 *    `runtimeConfig` holding only the capability arguments whose names the
 *    plugin's `capabilities` map sets to true.
 *  - ADD runs the plugins in order, each one's result the next one's
 *    prevResult; the last result is cached in
 *    CACHE/results/NETNAME-CONTAINERID-IFNAME ({"kind":"cniCacheV1",...}).
 *  - DEL runs the plugins in reverse; from 0.4.0 on each gets the cached
 *    result as prevResult (absent when nothing is cached); the cache entry is
 *    removed after a successful DEL.
 *  - CHECK exists from 0.4.0 on, is skipped when the list sets disableCheck,
 *    and feeds the cached result to every plugin in order.
 *  - GC first DELs every cached attachment of the network that is not in the
 *    valid list, then, from 1.1.0 on, sends GC to every plugin with
 *    `cni.dev/valid-attachments` injected and only CNI_COMMAND and CNI_PATH
 *    meaningful. STATUS (1.1.0 on) goes to every plugin, stopping at the first
 *    error.
 *
 * Where this differs on purpose: a single .conf is run as a list of one
 * (libcni's AddNetwork/DelNetwork differ only in error wording), and results
 * are not converted between versions because the suite never changes a
 * network's version between ADD and DEL.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { inNs, type Ns } from './kernel';
import { parseSingleJson, validateErrorResult, versionAtLeast } from './schema';

export type PluginConf = Record<string, unknown> & { type: string };

export interface NetworkConfigList {
  name: string;
  cniVersion: string;
  disableCheck: boolean;
  plugins: PluginConf[];
  /** The list as JSON, what libcni caches as `config`. */
  bytes: string;
}

export class ConfigError extends Error {}

/** A .conflist object, or a single .conf object turned into a list of one (libcni's ConfListFromConf). */
export function parseNetworkConfig(raw: unknown): NetworkConfigList {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new ConfigError('network config must be a JSON object');
  const o = raw as Record<string, unknown>;
  if (Array.isArray(o.plugins)) {
    if (typeof o.name !== 'string' || o.name === '') throw new ConfigError('conflist needs a "name"');
    if (typeof o.cniVersion !== 'string') throw new ConfigError('conflist needs a "cniVersion"');
    if (o.plugins.length === 0) throw new ConfigError('conflist has no plugins');
    const plugins = o.plugins.map((p, i) => {
      if (typeof p !== 'object' || p === null || typeof (p as { type?: unknown }).type !== 'string') {
        throw new ConfigError(`plugins[${i}] needs a "type"`);
      }
      return p as PluginConf;
    });
    return {
      name: o.name,
      cniVersion: o.cniVersion,
      disableCheck: o.disableCheck === true,
      plugins,
      bytes: JSON.stringify(o),
    };
  }
  if (typeof o.type !== 'string') throw new ConfigError('network config needs "plugins" (a list) or "type" (a single plugin)');
  if (typeof o.name !== 'string' || o.name === '') throw new ConfigError('network config needs a "name"');
  if (typeof o.cniVersion !== 'string') throw new ConfigError('network config needs a "cniVersion"');
  return {
    name: o.name,
    cniVersion: o.cniVersion,
    disableCheck: false,
    plugins: [o as PluginConf],
    bytes: JSON.stringify(o),
  };
}

/** The same list at another cniVersion (the suite's per-version ADD rules). */
export function withVersion(list: NetworkConfigList, cniVersion: string): NetworkConfigList {
  const raw = JSON.parse(list.bytes) as Record<string, unknown>;
  raw.cniVersion = cniVersion;
  if (!Array.isArray(raw.plugins)) return parseNetworkConfig(raw);
  return { ...parseNetworkConfig(raw), disableCheck: list.disableCheck };
}

/** What one invocation is about, apart from the network config. */
export interface RuntimeConf {
  containerId: string;
  netns: string;
  ifname: string;
  /** CNI_ARGS as pairs, joined "K=V;K=V" */
  args: [string, string][];
  /** runtime capability arguments; each plugin sees only those it declares */
  capabilityArgs: Record<string, unknown>;
}

/** libcni's buildOneConfig: inject name, cniVersion, prevResult and the plugin's share of runtimeConfig. */
export function buildOneConfig(
  list: Pick<NetworkConfigList, 'name' | 'cniVersion'>,
  plugin: PluginConf,
  prevResult: unknown,
  rt: Pick<RuntimeConf, 'capabilityArgs'> | undefined,
): Record<string, unknown> {
  const conf: Record<string, unknown> = { ...plugin, name: list.name, cniVersion: list.cniVersion };
  if (prevResult !== undefined) conf.prevResult = prevResult;
  if (rt) {
    const caps = (plugin.capabilities ?? {}) as Record<string, unknown>;
    const rc: Record<string, unknown> = {};
    for (const [cap, on] of Object.entries(caps)) {
      if (on === true && cap in rt.capabilityArgs) rc[cap] = rt.capabilityArgs[cap];
    }
    // libcni's InjectConf replaces a runtimeConfig already in the file.
    if (Object.keys(rc).length > 0) conf.runtimeConfig = rc;
  }
  return conf;
}

// ---------------------------------------------------------------------------
// Running one plugin

export interface Invocation {
  plugin: string;
  /** the CNI_* variables as set (a missing key means unset) */
  env: Record<string, string>;
  stdin: string;
}

export interface InvocationOutcome {
  status: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
  /** spawn failure (ENOENT, timeout): the plugin never answered */
  spawnError?: string;
}

export interface InvocationRecord extends Invocation, InvocationOutcome {
  /** which rule made the call, for the report */
  rule?: string;
}

/** Starts plugin processes. The real one spawns; tests of this module use a fake. */
export interface Invoker {
  invoke(pluginPath: string, inv: Invocation): InvocationOutcome;
}

const CNI_VARS = ['CNI_COMMAND', 'CNI_CONTAINERID', 'CNI_NETNS', 'CNI_ARGS', 'CNI_IFNAME', 'CNI_PATH'];

/**
 * Spawns plugins synchronously inside the runtime's namespace (the spec:
 * "the runtime must execute the plugin in the runtime's networking domain").
 * Synchronous because entering a namespace moves only the calling thread.
 */
export class SpawnInvoker implements Invoker {
  constructor(
    private readonly hostNs: Ns,
    private readonly timeoutMs = 60_000,
  ) {}

  invoke(pluginPath: string, inv: Invocation): InvocationOutcome {
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(process.env)) {
      if (v !== undefined && !CNI_VARS.includes(k)) env[k] = v;
    }
    Object.assign(env, inv.env);
    const out = inNs(this.hostNs, () =>
      spawnSync(pluginPath, [], {
        input: inv.stdin,
        env,
        encoding: 'utf8',
        timeout: this.timeoutMs,
        maxBuffer: 16 << 20,
      }),
    );
    // A plugin may exit without reading stdin (VERSION often does): the
    // write then fails with EPIPE, which says nothing about the plugin.
    const err = out.error as NodeJS.ErrnoException | undefined;
    const spawnError = err && !(err.code === 'EPIPE' && out.status !== null) ? err.message : undefined;
    return {
      status: out.status,
      signal: out.signal,
      stdout: out.stdout ?? '',
      stderr: out.stderr ?? '',
      spawnError,
    };
  }
}

/** A plugin call that failed, with the parsed CNI error when the plugin gave one. */
export class PluginError extends Error {
  constructor(
    readonly record: InvocationRecord,
    readonly cniError: { code: number; msg: string; details?: string } | undefined,
  ) {
    super(describeFailure(record, cniError));
  }
}

function describeFailure(r: InvocationRecord, e: PluginError['cniError']): string {
  const cmd = r.env.CNI_COMMAND ?? '(no CNI_COMMAND)';
  if (r.spawnError) return `${r.plugin} ${cmd}: could not run: ${r.spawnError}`;
  if (e) return `${r.plugin} ${cmd} failed with code ${e.code}: ${e.msg}${e.details ? ` (${e.details})` : ''}`;
  const tail = (r.stdout.trim() || r.stderr.trim()).split('\n').slice(-2).join(' / ');
  return `${r.plugin} ${cmd} exited ${r.status ?? r.signal}${tail ? `: ${tail.slice(0, 200)}` : ''}`;
}

/** The parsed error object of a failed call, when stdout holds a well-formed one. */
export function parseCniError(stdout: string): PluginError['cniError'] {
  try {
    const v = parseSingleJson(stdout);
    if (validateErrorResult(v).length === 0) return v as PluginError['cniError'];
  } catch {
    // not JSON: no structured error
  }
  return undefined;
}

// ---------------------------------------------------------------------------
// The result cache

export interface CachedAttachment {
  containerId: string;
  ifname: string;
  networkName: string;
  netns: string;
  cniArgs: [string, string][];
  capabilityArgs: Record<string, unknown>;
  result: unknown;
}

/** libcni's on-disk cache: DIR/results/NETNAME-CONTAINERID-IFNAME holding {"kind":"cniCacheV1",...}. */
export class ResultCache {
  constructor(readonly dir: string) {}

  private file(netName: string, containerId: string, ifname: string): string {
    return path.join(this.dir, 'results', `${netName}-${containerId}-${ifname}`);
  }

  add(list: NetworkConfigList, rt: RuntimeConf, result: unknown): void {
    const file = this.file(list.name, rt.containerId, rt.ifname);
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    const cached = {
      kind: 'cniCacheV1',
      containerId: rt.containerId,
      config: Buffer.from(list.bytes).toString('base64'),
      ifName: rt.ifname,
      networkName: list.name,
      netns: rt.netns,
      cniArgs: rt.args,
      capabilityArgs: rt.capabilityArgs,
      result,
    };
    fs.writeFileSync(file, JSON.stringify(cached), { mode: 0o600 });
  }

  get(netName: string, containerId: string, ifname: string): unknown {
    let text: string;
    try {
      text = fs.readFileSync(this.file(netName, containerId, ifname), 'utf8');
    } catch {
      return undefined; // like libcni: a missing cache entry is no error
    }
    const cached = JSON.parse(text) as { kind?: string; result?: unknown };
    return cached.kind === 'cniCacheV1' ? cached.result : undefined;
  }

  del(netName: string, containerId: string, ifname: string): void {
    fs.rmSync(this.file(netName, containerId, ifname), { force: true });
  }

  list(): CachedAttachment[] {
    const dir = path.join(this.dir, 'results');
    let names: string[];
    try {
      names = fs.readdirSync(dir).sort();
    } catch {
      return [];
    }
    const out: CachedAttachment[] = [];
    for (const n of names) {
      try {
        const c = JSON.parse(fs.readFileSync(path.join(dir, n), 'utf8')) as Record<string, unknown>;
        if (c.kind !== 'cniCacheV1' || !c.ifName || !c.networkName) continue;
        out.push({
          containerId: c.containerId as string,
          ifname: c.ifName as string,
          networkName: c.networkName as string,
          netns: (c.netns as string) ?? '',
          cniArgs: (c.cniArgs as [string, string][]) ?? [],
          capabilityArgs: (c.capabilityArgs as Record<string, unknown>) ?? {},
          result: c.result,
        });
      } catch {
        // unreadable entries are skipped, as libcni's GetCachedAttachments does
      }
    }
    return out;
  }
}

// ---------------------------------------------------------------------------
// The runtime

export interface VersionInfo {
  cniVersion: string;
  supportedVersions: string[];
}

export class Runtime {
  /** Every plugin call, in order, for the rules that judge all output. */
  readonly log: InvocationRecord[] = [];
  /** Set by the suite so the log says which rule made each call. */
  currentRule: string | undefined;

  constructor(
    readonly pluginDirs: readonly string[],
    private readonly invoker: Invoker,
    readonly cache: ResultCache,
  ) {}

  /** libcni's FindInPath: the first directory holding an executable of that name. */
  findPlugin(type: string): string {
    if (type.includes('/')) throw new ConfigError(`plugin type ${JSON.stringify(type)} must be a bare name`);
    for (const dir of this.pluginDirs) {
      const p = path.join(dir, type);
      try {
        fs.accessSync(p, fs.constants.X_OK);
        if (fs.statSync(p).isFile()) return p;
      } catch {
        // not here
      }
    }
    throw new ConfigError(`failed to find plugin "${type}" in path [${this.pluginDirs.join(' ')}]`);
  }

  get cniPath(): string {
    return this.pluginDirs.join(':');
  }

  /** The six variables as libcni sets them. */
  env(command: string, rt?: Pick<RuntimeConf, 'containerId' | 'netns' | 'ifname' | 'args'>): Record<string, string> {
    return {
      CNI_COMMAND: command,
      CNI_CONTAINERID: rt?.containerId ?? '',
      CNI_NETNS: rt?.netns ?? '',
      CNI_ARGS: (rt?.args ?? []).map(([k, v]) => `${k}=${v}`).join(';'),
      CNI_IFNAME: rt?.ifname ?? '',
      CNI_PATH: this.cniPath,
    };
  }

  /** One raw call; never throws for a plugin failure (the record says what happened). */
  exec(type: string, env: Record<string, string>, stdin: string): InvocationRecord {
    const pluginPath = this.findPlugin(type);
    const inv: Invocation = { plugin: type, env, stdin };
    const record: InvocationRecord = { ...inv, ...this.invoker.invoke(pluginPath, inv), rule: this.currentRule };
    this.log.push(record);
    return record;
  }

  /**
   * A call that must succeed. Like libcni, only ADD and VERSION have their
   * stdout read (ExecPluginWithResult); for the other verbs stdout is
   * ignored on success (errors.stdout-only-json judges it instead).
   */
  private execOk(type: string, env: Record<string, string>, conf: unknown): unknown {
    const r = this.exec(type, env, JSON.stringify(conf));
    if (r.status !== 0 || r.spawnError) throw new PluginError(r, parseCniError(r.stdout));
    if (env.CNI_COMMAND !== 'ADD' && env.CNI_COMMAND !== 'VERSION') return undefined;
    try {
      return parseSingleJson(r.stdout);
    } catch (e) {
      throw new PluginError({ ...r, spawnError: (e as Error).message }, undefined);
    }
  }

  version(type: string, cniVersion: string): VersionInfo {
    const out = this.execOk(type, { CNI_COMMAND: 'VERSION' }, { cniVersion });
    return out as VersionInfo;
  }

  /**
   * AddNetworkList. `onStep` sees every plugin's result (the suite checks
   * intermediate results too). Caches the final result like libcni.
   */
  add(list: NetworkConfigList, rt: RuntimeConf, onStep?: (plugin: PluginConf, result: unknown) => void): unknown {
    let result: unknown;
    for (const plugin of list.plugins) {
      const conf = buildOneConfig(list, plugin, result, rt);
      result = this.execOk(plugin.type, this.env('ADD', rt), conf);
      if (result === undefined) {
        throw new PluginError(
          { ...this.log[this.log.length - 1], spawnError: 'ADD succeeded but printed no result' },
          undefined,
        );
      }
      onStep?.(plugin, result);
    }
    this.cache.add(list, rt, result);
    return result;
  }

  check(list: NetworkConfigList, rt: RuntimeConf): void {
    if (!versionAtLeast(list.cniVersion, '0.4.0')) {
      throw new ConfigError(`configuration version "${list.cniVersion}" does not support the CHECK command`);
    }
    if (list.disableCheck) return;
    const cached = this.cache.get(list.name, rt.containerId, rt.ifname);
    for (const plugin of list.plugins) {
      this.execOk(plugin.type, this.env('CHECK', rt), buildOneConfig(list, plugin, cached, rt));
    }
  }

  del(list: NetworkConfigList, rt: RuntimeConf): void {
    const cached = versionAtLeast(list.cniVersion, '0.4.0')
      ? this.cache.get(list.name, rt.containerId, rt.ifname)
      : undefined;
    for (let i = list.plugins.length - 1; i >= 0; i--) {
      const plugin = list.plugins[i];
      this.execOk(plugin.type, this.env('DEL', rt), buildOneConfig(list, plugin, cached, rt));
    }
    this.cache.del(list.name, rt.containerId, rt.ifname);
  }

  /** GCNetworkList: DEL stale cached attachments, then GC every plugin (1.1.0 on). Errors are collected. */
  gc(list: NetworkConfigList, valid: { containerID: string; ifname: string }[]): Error[] {
    const errors: Error[] = [];
    const isValid = (c: CachedAttachment): boolean =>
      valid.some((v) => v.containerID === c.containerId && v.ifname === c.ifname);
    for (const c of this.cache.list()) {
      if (c.networkName !== list.name || isValid(c)) continue;
      try {
        this.del(list, {
          containerId: c.containerId,
          netns: c.netns,
          ifname: c.ifname,
          args: c.cniArgs,
          capabilityArgs: c.capabilityArgs,
        });
      } catch (e) {
        errors.push(e as Error);
      }
    }
    if (versionAtLeast(list.cniVersion, '1.1.0')) {
      for (const plugin of list.plugins) {
        const conf = { ...plugin, name: list.name, cniVersion: list.cniVersion, 'cni.dev/valid-attachments': valid };
        try {
          this.execOk(plugin.type, this.env('GC'), conf);
        } catch (e) {
          errors.push(e as Error);
        }
      }
    }
    return errors;
  }

  /** GetStatusNetworkList: STATUS to every plugin (1.1.0 on), stopping at the first error. */
  status(list: NetworkConfigList): void {
    if (!versionAtLeast(list.cniVersion, '1.1.0')) return;
    for (const plugin of list.plugins) {
      this.execOk(plugin.type, this.env('STATUS'), { ...plugin, name: list.name, cniVersion: list.cniVersion });
    }
  }
}
