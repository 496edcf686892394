/**
 * The conformance suite: every rule against every configured network.
 *
 *   const report = runSuite({ pluginDirs: ['/usr/lib/cni'], configs: [{ file: 'conformance/configs/ref-bridge.json' }] });
 *   process.stdout.write(formatReport(report));
 *
 * Per network: a scratch directory (result cache, ${STATE_DIR}), the host
 * namespace (a private one unless the config says "current"), hostSetup,
 * the config's services (started there, stopped at the end), the VERSION and error rules, one warm-up ADD/DEL, then the rest. The
 * warm-up exists because plugins legitimately keep shared infrastructure
 * they create on first use (the bridge device, top-level nft chains, an
 * IPAM lock file); the leak rules measure what each attachment adds, from a
 * baseline that already has those.
 *
 * Everything runs synchronously: plugins are spawned inside the host
 * namespace, and entering a namespace moves only the calling thread.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { configFromObject, loadConfig, loadExpectations, type Placeholders, type SuiteConfig } from './config';
import { RuleContext, RuleFail, RuleNotApplicable } from './context';
import { createNetns, CURRENT_NS, deleteNetns, ip, run, type Ns } from './kernel';
import { ConfigError, ResultCache, Runtime, SpawnInvoker, type InvocationRecord } from './libcni';
import { RULE_IDS, RULES, type Rule } from './rules';
import { startServices, stopServices, type RunningService } from './services';

export type Status = 'PASS' | 'FAIL' | 'N/A' | 'DEVIATION';

export interface RuleResult {
  config: string;
  rule: string;
  status: Status;
  reason: string;
}

export interface SuiteReport {
  configs: string[];
  rules: string[];
  results: RuleResult[];
  /** true when any rule FAILed (a known deviation is not a failure) */
  failed: boolean;
  /** every plugin call per config, for debugging a failure */
  calls: Record<string, InvocationRecord[]>;
}

export type ConfigSource = { file: string } | { name: string; object: unknown; baseDir?: string };

export interface SuiteOptions {
  /** directories searched for plugin binaries, in order (CNI_PATH) */
  pluginDirs: string[];
  configs: ConfigSource[];
  /** run only rules whose id starts with one of these (default: all) */
  rules?: string[];
  /** extra expectation files (known deviations), on top of those the configs name */
  expectations?: string[];
  /** called as each rule finishes, for streaming output */
  onResult?: (r: RuleResult) => void;
  /** parent of the per-run scratch directory (default: os.tmpdir()) */
  workDir?: string;
}

/** Rules that need no working ADD; they run before the warm-up. */
const BEFORE_WARMUP = /^(version|errors)\./;

export function runSuite(opts: SuiteOptions): SuiteReport {
  if (opts.pluginDirs.length === 0) throw new ConfigError('no plugin directory given');
  for (const d of opts.pluginDirs) {
    if (!fs.statSync(d, { throwIfNoEntry: false })?.isDirectory()) throw new ConfigError(`plugin directory ${d} does not exist`);
  }
  const selected = RULES.filter((r) => !opts.rules?.length || opts.rules.some((p) => r.id.startsWith(p)));
  if (selected.length === 0) throw new ConfigError(`no rule matches ${JSON.stringify(opts.rules)}; rules: ${RULE_IDS.join(', ')}`);
  const report: SuiteReport = { configs: [], rules: selected.map((r) => r.id), results: [], failed: false, calls: {} };
  const emit = (r: RuleResult): void => {
    report.results.push(r);
    if (r.status === 'FAIL') report.failed = true;
    opts.onResult?.(r);
  };

  for (const source of opts.configs) {
    const runId = randomBytes(3).toString('hex');
    const scratch = fs.mkdtempSync(path.join(opts.workDir ?? os.tmpdir(), `cni-conformance-${runId}-`));
    const ph: Placeholders = { STATE_DIR: path.join(scratch, 'state'), RUN_ID: runId };
    let cfg: SuiteConfig;
    try {
      cfg = 'file' in source ? loadConfig(source.file, ph) : configFromObject(source.object, path.join(source.baseDir ?? process.cwd(), `${source.name}.json`), ph);
      for (const f of opts.expectations ?? []) Object.assign(cfg.deviations, loadExpectations(f, cfg.name));
      checkRuleNames(cfg);
    } catch (e) {
      fs.rmSync(scratch, { recursive: true, force: true });
      throw e;
    }
    report.configs.push(cfg.name);
    try {
      report.calls[cfg.name] = runConfig(cfg, opts.pluginDirs, selected, runId, scratch, emit);
    } finally {
      fs.rmSync(scratch, { recursive: true, force: true });
    }
  }
  return report;
}

/** A misspelt rule id in notApplicable or an expectation file would hide nothing and mislead; refuse it. */
function checkRuleNames(cfg: SuiteConfig): void {
  for (const [where, ids] of [
    ['notApplicable', Object.keys(cfg.notApplicable)],
    ['expectations', Object.keys(cfg.deviations)],
  ] as const) {
    const unknown = ids.filter((id) => !RULE_IDS.includes(id));
    if (unknown.length) throw new ConfigError(`${cfg.file}: ${where} names unknown rules: ${unknown.join(', ')}`);
  }
}

function runConfig(
  cfg: SuiteConfig,
  pluginDirs: string[],
  rules: readonly Rule[],
  runId: string,
  scratch: string,
  emit: (r: RuleResult) => void,
): InvocationRecord[] {
  let hostNs: Ns = CURRENT_NS;
  if (cfg.host === 'isolated') {
    hostNs = createNetns(`cf${runId}-host`);
    ip(hostNs, 'link', 'set', 'lo', 'up');
  }
  // A container sharing the host's namespace gets CNI_NETNS pointing at a
  // bind mount of it (`ip netns attach`), an ordinary netns path any plugin
  // can open: /proc/1/ns/net is unreadable under a strict ptrace policy.
  let hostView: Ns | undefined;
  if (cfg.containerNetns === 'host') {
    hostView = { name: `cf${runId}-hostview`, path: `/var/run/netns/cf${runId}-hostview` };
    run(['ip', 'netns', 'attach', hostView.name!, String(process.pid)]);
  }
  fs.mkdirSync(path.join(scratch, 'state'), { recursive: true });
  const runtime = new Runtime(pluginDirs, new SpawnInvoker(hostNs), new ResultCache(path.join(scratch, 'cache')));
  const ctx = new RuleContext(cfg, runtime, hostNs, runId, hostView?.path);
  let services: RunningService[] = [];
  try {
    for (const argv of cfg.hostSetup) ip(hostNs, ...argv);
    services = startServices(cfg.services, hostNs, pluginDirs, path.join(scratch, 'services'));
    let warmedUp = false;
    for (const rule of rules) {
      if (!warmedUp && !BEFORE_WARMUP.test(rule.id)) {
        warmUp(ctx);
        warmedUp = true;
      }
      emit(judge(ctx, rule));
    }
    return runtime.log;
  } finally {
    runtime.currentRule = 'cleanup';
    // Anything a failed rule left cached gets its DEL, so state outside the
    // scratch directory (a default dataDir) does not outlive the run.
    for (const c of runtime.cache.list()) {
      try {
        runtime.del(cfg.network, { containerId: c.containerId, netns: c.netns, ifname: c.ifname, args: c.cniArgs, capabilityArgs: c.capabilityArgs });
      } catch {
        // best effort
      }
    }
    ctx.dropAll();
    // after the cleanup DELs, which may need them (an agent, the store)
    stopServices(services);
    if (hostNs.name !== undefined) deleteNetns(hostNs);
    // unmounts the bind mount only; the host's namespace lives on
    if (hostView) deleteNetns(hostView);
  }
}

function warmUp(ctx: RuleContext): void {
  ctx.runtime.currentRule = 'warm-up';
  const att = ctx.attach();
  try {
    ctx.runtime.add(ctx.list, att.rt);
  } catch {
    // the rules that need ADD will each say why it fails
  } finally {
    ctx.cleanup(att);
  }
}

function judge(ctx: RuleContext, rule: Rule): RuleResult {
  const config = ctx.cfg.name;
  const na = ctx.cfg.notApplicable[rule.id];
  if (na !== undefined) return { config, rule: rule.id, status: 'N/A', reason: `${na} (declared in ${path.basename(ctx.cfg.file)})` };
  ctx.runtime.currentRule = rule.id;
  let status: Status;
  let reason: string;
  try {
    reason = rule.run(ctx);
    status = 'PASS';
  } catch (e) {
    if (e instanceof RuleNotApplicable) {
      status = 'N/A';
    } else {
      status = 'FAIL';
    }
    // A ConfigError (plugin not found, say) is the config's fault, not the rule's: say it plainly.
    reason =
      e instanceof RuleFail || e instanceof RuleNotApplicable || e instanceof ConfigError
        ? e.message
        : `the rule itself broke: ${(e as Error).stack ?? e}`;
  }
  const deviation = ctx.cfg.deviations[rule.id];
  if (deviation !== undefined) {
    if (status === 'FAIL') return { config, rule: rule.id, status: 'DEVIATION', reason: `known deviation: ${deviation} — observed: ${reason}` };
    if (status === 'PASS') {
      return {
        config,
        rule: rule.id,
        status: 'FAIL',
        reason: `listed as a known deviation ("${deviation}") but the rule passed: remove the entry from the expectation file`,
      };
    }
  }
  return { config, rule: rule.id, status, reason };
}

/** Check that the tools the suite needs are there, with a message that says what to install. */
export function checkPrerequisites(): string[] {
  const missing: string[] = [];
  for (const [tool, pkg] of [
    ['ip', 'iproute2'],
    ['nft', 'nftables'],
  ]) {
    try {
      run([tool, '-V']);
    } catch {
      missing.push(`${tool} (Debian package ${pkg})`);
    }
  }
  if (process.getuid?.() !== 0) missing.push('root (the suite creates network namespaces)');
  return missing;
}
