/**
 * The rules, one per requirement of the CNI spec (SPEC.md, spec-v1.1.0
 * unless a rule says otherwise). Each rule is its own test: it makes its own
 * containers, cleans up after itself and compares the host with what it was
 * before the rule started, so one broken rule does not break the next.
 *
 * A rule returns a short sentence on success, or throws RuleFail /
 * RuleNotApplicable (via fail() / notApplicable()) with the reason.
 */
import { isIP } from 'node:net';
import {
  canonicalIp,
  fail,
  notApplicable,
  type Attachment,
  type RuleContext,
} from './context';
import { addresses, CommandError, describeDiff, ip, links, routes, type Ns, type SnapshotDiff } from './kernel';
import {
  buildOneConfig,
  parseCniError,
  PluginError,
  withVersion,
  type InvocationRecord,
  type NetworkConfigList,
} from './libcni';
import {
  parseCidr,
  parseSingleJson,
  RESULT_VERSIONS,
  validateAddResult,
  validateErrorResult,
  validateVersionResult,
  versionAtLeast,
} from './schema';

export interface Rule {
  id: string;
  /** what the rule demands, one sentence */
  title: string;
  run(ctx: RuleContext): string;
}

// ---------------------------------------------------------------------------
// helpers

/** The single-plugin config libcni would send this plugin (no prevResult). */
function pluginConf(ctx: RuleContext, index: number, list: NetworkConfigList = ctx.list): Record<string, unknown> {
  return buildOneConfig(list, list.plugins[index], undefined, ctx.cfg);
}

/** Each plugin of the list once, with its index. */
function eachPlugin(ctx: RuleContext): { type: string; index: number }[] {
  return ctx.pluginTypes.map((type) => ({ type, index: ctx.list.plugins.findIndex((p) => p.type === type) }));
}

/**
 * Problem with a call that should have failed with `code`, or undefined.
 * `names` must appear in msg or details (code 4 must name the variable).
 */
function expectError(r: InvocationRecord, code: number, names: string[] = []): string | undefined {
  if (r.spawnError) return `could not run: ${r.spawnError}`;
  if (r.status === 0) return `exited 0${r.stdout.trim() ? ` and printed ${JSON.stringify(r.stdout.trim().slice(0, 100))}` : ''}`;
  const e = parseCniError(r.stdout);
  if (!e) return `exited ${r.status} without a CNI error object on stdout`;
  if (e.code !== code) return `answered code ${e.code} (${e.msg}), expected ${code}`;
  const text = `${e.msg} ${e.details ?? ''}`;
  const missing = names.filter((n) => !text.includes(n));
  if (missing.length) return `code ${code} is right, but the message does not name ${missing.join(', ')}: ${JSON.stringify(e.msg)}`;
  return undefined;
}

/**
 * One call that is expected to fail, in a fresh container. Should it
 * succeed after all, the attachment gets a DEL so nothing outlives the rule.
 */
function callExpectingFailure(
  ctx: RuleContext,
  type: string,
  env: (att: Attachment) => Record<string, string>,
  stdin: string,
): InvocationRecord {
  const att = ctx.attach();
  try {
    const r = ctx.runtime.exec(type, env(att), stdin);
    if (r.status === 0 && env(att).CNI_COMMAND === 'ADD') ctx.cleanup(att);
    return r;
  } finally {
    ctx.dropNs(att);
  }
}

function errorOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Interfaces of a result, with where they live. */
function resultInterfaces(result: Record<string, unknown>): { name: string; mac?: string; mtu?: number; sandbox?: string }[] {
  return Array.isArray(result.interfaces) ? (result.interfaces as { name: string }[]) : [];
}

function resultIps(result: Record<string, unknown>): { address: string; gateway?: string; interface?: number }[] {
  return Array.isArray(result.ips) ? (result.ips as { address: string }[]) : [];
}

function resultRoutes(result: Record<string, unknown>): { dst: string; gw?: string }[] {
  return Array.isArray(result.routes) ? (result.routes as { dst: string }[]) : [];
}

/** The namespace an interface of the result lives in: its sandbox, or the host. */
function nsOfInterface(ctx: RuleContext, att: Attachment, iface: { sandbox?: string }): Ns {
  return iface.sandbox ? att.ns : ctx.hostNs;
}

function routeKey(dst: string, family: 4 | 6): string {
  if (dst === 'default') return family === 4 ? '0.0.0.0/0' : '::/0';
  const [addr, len] = dst.split('/');
  return `${canonicalIp(addr)}/${len ?? (family === 4 ? '32' : '128')}`;
}

/** Problems between a result and the kernel; empty when every claim holds. */
export function realityProblems(ctx: RuleContext, att: Attachment, result: Record<string, unknown>): string[] {
  const problems: string[] = [];
  const ifaces = resultInterfaces(result);
  const linkCache = new Map<Ns, ReturnType<typeof links>>();
  const linksIn = (ns: Ns): ReturnType<typeof links> => {
    if (!linkCache.has(ns)) linkCache.set(ns, links(ns));
    return linkCache.get(ns)!;
  };
  const where = (ns: Ns): string => (ns === ctx.hostNs ? 'the host' : 'the container');

  ifaces.forEach((iface, i) => {
    const ns = nsOfInterface(ctx, att, iface);
    const link = linksIn(ns).find((l) => l.ifname === iface.name);
    if (!link) {
      problems.push(`interfaces[${i}] ${iface.name} is not in ${where(ns)}`);
      return;
    }
    if (iface.mac && link.address && iface.mac.toLowerCase() !== link.address.toLowerCase()) {
      problems.push(`interfaces[${i}] ${iface.name} has MAC ${link.address}, the result says ${iface.mac}`);
    }
    if (iface.mtu !== undefined && link.mtu !== undefined && iface.mtu !== link.mtu) {
      problems.push(`interfaces[${i}] ${iface.name} has MTU ${link.mtu}, the result says ${iface.mtu}`);
    }
  });

  const addrCache = new Map<Ns, ReturnType<typeof addresses>>();
  const addrsIn = (ns: Ns): ReturnType<typeof addresses> => {
    if (!addrCache.has(ns)) addrCache.set(ns, addresses(ns));
    return addrCache.get(ns)!;
  };
  resultIps(result).forEach((ipc, i) => {
    const cidr = parseCidr(ipc.address);
    if (!cidr) return; // the schema rule reports it
    const iface = ipc.interface !== undefined ? ifaces[ipc.interface] : undefined;
    const ns = iface ? nsOfInterface(ctx, att, iface) : att.ns;
    const found = addrsIn(ns).some(
      (a) =>
        canonicalIp(a.local) === canonicalIp(cidr.ip) &&
        a.prefixlen === cidr.prefix &&
        (iface === undefined || a.ifname === iface.name),
    );
    if (!found) {
      problems.push(`ips[${i}] ${ipc.address} is not on ${iface ? iface.name : 'any interface'} in ${where(ns)}`);
    }
  });

  const rs = resultRoutes(result);
  if (rs.length > 0) {
    const have = routes(att.ns);
    rs.forEach((r, i) => {
      const dst = parseCidr(r.dst);
      if (!dst) return;
      const key = routeKey(r.dst, dst.family);
      const match = have.filter((h) => h.family === dst.family && routeKey(h.dst, h.family) === key);
      if (match.length === 0) {
        problems.push(`routes[${i}] ${r.dst} is not in the container's routing tables`);
      } else if (r.gw && !match.some((h) => h.gateway && canonicalIp(h.gateway) === canonicalIp(r.gw!))) {
        problems.push(`routes[${i}] ${r.dst} goes via ${match.map((h) => h.gateway ?? 'no gateway').join('/')}, the result says via ${r.gw}`);
      }
    });
  }
  return problems;
}

function diffOrPass(diff: SnapshotDiff[], what: string): string | never {
  if (diff.length > 0) fail(`${what}: ${describeDiff(diff)}`);
  return 'the host is as it was before';
}

function needsCheck(ctx: RuleContext, list = ctx.list): void {
  if (!versionAtLeast(list.cniVersion, '0.4.0')) notApplicable(`CHECK exists from 0.4.0; the network is ${list.cniVersion}`);
  if (list.disableCheck) notApplicable('the network sets disableCheck, so runtimes never call CHECK');
}

function needsOwnNetns(ctx: RuleContext, why: string): void {
  if (ctx.sharesHostNetns) notApplicable(`the container shares the host's namespace, so ${why}`);
}

/** The list raised to 1.1.0 when every plugin supports it (for GC and STATUS). */
function list110(ctx: RuleContext): NetworkConfigList {
  const lacking = ctx.pluginsLacking('1.1.0');
  if (lacking.length > 0) {
    notApplicable(`${lacking.join(', ')} does not advertise CNI 1.1.0 in VERSION`);
  }
  return versionAtLeast(ctx.list.cniVersion, '1.1.0') ? ctx.list : withVersion(ctx.list, '1.1.0');
}

/** CHECK must fail with a well-formed error after `breakIt` changed the container. */
function checkDetectsBreakage(
  ctx: RuleContext,
  pick: (att: Attachment, result: Record<string, unknown>) => { what: string; argv: string[] } | undefined,
): string {
  needsCheck(ctx);
  needsOwnNetns(ctx, 'the suite will not break the host to see CHECK notice');
  const att = ctx.attach();
  try {
    const result = ctx.add(att);
    const breakage = pick(att, result);
    if (!breakage) notApplicable('the result lists nothing in the container this rule could remove');
    try {
      ip(att.ns, ...breakage.argv);
    } catch (e) {
      notApplicable(`cannot remove ${breakage.what}: ${e instanceof CommandError ? e.stderr.trim() : errorOf(e)}`);
    }
    const err = ctx.check(att);
    if (!err) fail(`CHECK passed after ${breakage.what} was removed behind the plugin's back`);
    if (!(err instanceof PluginError)) fail(`CHECK could not run: ${err.message}`);
    if (!err.cniError) fail(`CHECK failed, but without a CNI error object on stdout: ${err.message}`);
    try {
      ctx.runtime.del(ctx.list, att.rt);
    } catch (e) {
      fail(`CHECK failed as it should, but DEL afterwards failed: ${errorOf(e)}`);
    }
    return `CHECK failed with code ${err.cniError.code} after ${breakage.what} was removed (${err.cniError.msg})`;
  } finally {
    ctx.cleanup(att);
  }
}

// ---------------------------------------------------------------------------
// the rules

const versionRules: Rule[] = [
  {
    id: 'version.well-formed',
    title: 'VERSION prints {cniVersion, supportedVersions} and exits 0',
    run(ctx) {
      const bad: string[] = [];
      for (const { type } of eachPlugin(ctx)) {
        const r = ctx.runtime.exec(type, { CNI_COMMAND: 'VERSION' }, JSON.stringify({ cniVersion: ctx.list.cniVersion }));
        if (r.status !== 0) {
          bad.push(`${type}: exited ${r.status ?? r.signal}${r.spawnError ? ` (${r.spawnError})` : ''}`);
          continue;
        }
        let answer: unknown;
        try {
          answer = parseSingleJson(r.stdout);
        } catch (e) {
          bad.push(`${type}: ${errorOf(e)}`);
          continue;
        }
        const problems = validateVersionResult(answer);
        if (problems.length) bad.push(`${type}: ${problems.join('; ')}`);
      }
      if (bad.length) fail(bad.join(' | '));
      return `every plugin answered VERSION (${ctx.pluginTypes.join(', ')})`;
    },
  },
  {
    id: 'version.echoes-cniversion',
    title: 'VERSION answers with the cniVersion it was given',
    run(ctx) {
      const bad: string[] = [];
      const asked: string[] = [];
      for (const { type } of eachPlugin(ctx)) {
        const info = ctx.versionInfo(type);
        if (info instanceof Error) fail(`${type}: VERSION failed: ${info.message}`);
        // the network's version, and the oldest supported one the suite knows, so an answer fixed at one value shows
        const probes = new Set([ctx.list.cniVersion]);
        const oldest = RESULT_VERSIONS.find((v) => info.supportedVersions.includes(v));
        if (oldest) probes.add(oldest);
        for (const v of probes) {
          asked.push(`${type}@${v}`);
          const r = ctx.runtime.exec(type, { CNI_COMMAND: 'VERSION' }, JSON.stringify({ cniVersion: v }));
          let answer: { cniVersion?: unknown } | undefined;
          try {
            answer = parseSingleJson(r.stdout) as { cniVersion?: unknown };
          } catch (e) {
            bad.push(`${type} asked with ${v}: ${errorOf(e)}`);
            continue;
          }
          if (answer?.cniVersion !== v) bad.push(`${type} asked with ${v} answered cniVersion ${JSON.stringify(answer?.cniVersion)}`);
        }
      }
      if (bad.length) fail(bad.join(' | '));
      return `asked ${asked.join(', ')}`;
    },
  },
  {
    id: 'version.lists-config-version',
    title: "every plugin's supportedVersions includes the network's cniVersion",
    run(ctx) {
      const bad: string[] = [];
      for (const { type } of eachPlugin(ctx)) {
        const info = ctx.versionInfo(type);
        if (info instanceof Error) bad.push(`${type}: VERSION failed: ${info.message}`);
        else if (!info.supportedVersions?.includes(ctx.list.cniVersion)) {
          bad.push(`${type} supports ${JSON.stringify(info.supportedVersions)}, not ${ctx.list.cniVersion}`);
        }
      }
      if (bad.length) fail(bad.join(' | '));
      return `${ctx.list.cniVersion} is supported by ${ctx.pluginTypes.join(', ')}`;
    },
  },
  {
    id: 'version.unsupported-version',
    title: 'ADD with a cniVersion the plugin does not support fails with code 1',
    run(ctx) {
      const bad: string[] = [];
      const unsupported = '9.9.9';
      for (const { type, index } of eachPlugin(ctx)) {
        const conf = { ...pluginConf(ctx, index), cniVersion: unsupported };
        const r = callExpectingFailure(ctx, type, (att) => ctx.runtime.env('ADD', att.rt), JSON.stringify(conf));
        const problem = expectError(r, 1);
        if (problem) bad.push(`${type}: ${problem}`);
      }
      if (bad.length) fail(bad.join(' | '));
      return `every plugin refused cniVersion ${unsupported} with code 1`;
    },
  },
];

const errorRules: Rule[] = [
  {
    id: 'errors.malformed-json',
    title: 'ADD with malformed JSON on stdin fails with code 6',
    run(ctx) {
      const bad: string[] = [];
      for (const { type, index } of eachPlugin(ctx)) {
        const text = JSON.stringify(pluginConf(ctx, index)).slice(0, -1); // lose the closing brace
        const problem = expectError(callExpectingFailure(ctx, type, (att) => ctx.runtime.env('ADD', att.rt), text), 6);
        if (problem) bad.push(`${type}: ${problem}`);
      }
      if (bad.length) fail(bad.join(' | '));
      return 'every plugin answered code 6';
    },
  },
  {
    id: 'errors.bad-config',
    title: 'ADD with a config that breaks the spec (no name, a name with invalid characters) fails with code 7',
    run(ctx) {
      const bad: string[] = [];
      for (const { type, index } of eachPlugin(ctx)) {
        const base = pluginConf(ctx, index);
        const { name: _omit, ...noName } = base;
        const cases: [string, Record<string, unknown>][] = [
          ['without "name"', noName],
          ['with "name": "bad name/x"', { ...base, name: 'bad name/x' }],
        ];
        for (const [what, conf] of cases) {
          const r = callExpectingFailure(ctx, type, (att) => ctx.runtime.env('ADD', att.rt), JSON.stringify(conf));
          const problem = expectError(r, 7);
          if (problem) bad.push(`${type} ${what}: ${problem}`);
        }
      }
      if (bad.length) fail(bad.join(' | '));
      return 'every plugin answered code 7';
    },
  },
  {
    id: 'errors.env-missing',
    title: 'ADD without CNI_CONTAINERID, CNI_NETNS or CNI_IFNAME fails with code 4 naming it; DEL needs no CNI_NETNS',
    run(ctx) {
      const bad: string[] = [];
      for (const { type, index } of eachPlugin(ctx)) {
        const conf = JSON.stringify(pluginConf(ctx, index));
        for (const missing of ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME']) {
          const without = (att: Attachment): Record<string, string> => {
            const env = ctx.runtime.env('ADD', att.rt);
            delete env[missing];
            return env;
          };
          const problem = expectError(callExpectingFailure(ctx, type, without, conf), 4, [missing]);
          if (problem) bad.push(`${type} without ${missing}: ${problem}`);
        }
        // The spec lists CNI_NETNS as optional for DEL: a runtime may have lost the namespace.
        const delWithout = (att: Attachment): Record<string, string> => {
          const env = ctx.runtime.env('DEL', att.rt);
          delete env.CNI_NETNS;
          return env;
        };
        const r = callExpectingFailure(ctx, type, delWithout, conf);
        if (r.status !== 0) bad.push(`${type} DEL without CNI_NETNS: ${new PluginError(r, parseCniError(r.stdout)).message}`);
      }
      if (bad.length) fail(bad.join(' | '));
      return 'code 4 naming the variable each time; DEL without CNI_NETNS succeeded';
    },
  },
  {
    id: 'errors.env-no-command',
    title: 'a call without CNI_COMMAND fails with code 4 naming CNI_COMMAND',
    run(ctx) {
      const bad: string[] = [];
      for (const { type, index } of eachPlugin(ctx)) {
        const without = (att: Attachment): Record<string, string> => {
          const env = ctx.runtime.env('ADD', att.rt);
          delete env.CNI_COMMAND;
          return env;
        };
        const problem = expectError(callExpectingFailure(ctx, type, without, JSON.stringify(pluginConf(ctx, index))), 4, ['CNI_COMMAND']);
        if (problem) bad.push(`${type}: ${problem}`);
      }
      if (bad.length) fail(bad.join(' | '));
      return 'code 4 from every plugin';
    },
  },
  {
    id: 'errors.env-unknown-command',
    title: 'an unknown CNI_COMMAND fails with code 4',
    run(ctx) {
      const bad: string[] = [];
      for (const { type, index } of eachPlugin(ctx)) {
        const r = callExpectingFailure(ctx, type, (att) => ctx.runtime.env('FROBNICATE', att.rt), JSON.stringify(pluginConf(ctx, index)));
        const problem = expectError(r, 4);
        if (problem) bad.push(`${type}: ${problem}`);
      }
      if (bad.length) fail(bad.join(' | '));
      return 'code 4 from every plugin';
    },
  },
  {
    id: 'errors.env-bad-containerid',
    title: 'a CNI_CONTAINERID outside the spec\'s pattern ([a-zA-Z0-9][a-zA-Z0-9_.-]*) fails with code 4',
    run(ctx) {
      const bad: string[] = [];
      for (const { type, index } of eachPlugin(ctx)) {
        const env = (att: Attachment): Record<string, string> => ({ ...ctx.runtime.env('ADD', att.rt), CNI_CONTAINERID: '-not/valid' });
        const problem = expectError(callExpectingFailure(ctx, type, env, JSON.stringify(pluginConf(ctx, index))), 4);
        if (problem) bad.push(`${type}: ${problem}`);
      }
      if (bad.length) fail(bad.join(' | '));
      return 'code 4 from every plugin';
    },
  },
];

const schemaRules: Rule[] = RESULT_VERSIONS.map(
  (version): Rule => ({
    id: `add.schema.v${version}`,
    title: `ADD at cniVersion ${version} prints a result valid for ${version}, at every step of the chain`,
    run(ctx) {
      const lacking = ctx.pluginsLacking(version);
      if (lacking.length) notApplicable(`${lacking.join(', ')} does not support ${version}`);
      const list = version === ctx.list.cniVersion ? ctx.list : withVersion(ctx.list, version);
      const att = ctx.attach();
      const problems: string[] = [];
      try {
        ctx.add(att, list, (plugin, result) => {
          for (const p of validateAddResult(result, version)) problems.push(`${plugin}: ${p}`);
        });
      } finally {
        ctx.cleanup(att, list);
      }
      if (problems.length) fail(problems.slice(0, 8).join('; '));
      return `valid ${version} result from ${list.plugins.map((p) => p.type).join(' -> ')}`;
    },
  }),
);

const addRules: Rule[] = [
  {
    id: 'add.kernel-reality',
    title: "the interfaces, addresses and routes in ADD's result exist in the kernel where the result says",
    run(ctx) {
      const att = ctx.attach();
      try {
        const result = ctx.add(att);
        const problems = realityProblems(ctx, att, result);
        if (problems.length) fail(problems.join('; '));
        return `${resultInterfaces(result).length} interfaces, ${resultIps(result).length} addresses, ${resultRoutes(result).length} routes found`;
      } finally {
        ctx.cleanup(att);
      }
    },
  },
  {
    id: 'add.sandbox',
    title: 'interfaces inside the container carry sandbox = CNI_NETNS; host interfaces carry none',
    run(ctx) {
      const att = ctx.attach();
      try {
        const result = ctx.add(att);
        const ifaces = resultInterfaces(result);
        if (ifaces.length === 0) notApplicable('the result lists no interfaces');
        const hostLinks = new Set(links(ctx.hostNs).map((l) => l.ifname));
        const ctrLinks = new Set(links(att.ns).map((l) => l.ifname));
        const problems: string[] = [];
        ifaces.forEach((iface, i) => {
          if (iface.sandbox) {
            if (iface.sandbox !== att.rt.netns) problems.push(`interfaces[${i}] ${iface.name}: sandbox ${iface.sandbox}, CNI_NETNS was ${att.rt.netns}`);
          } else if (!hostLinks.has(iface.name) && ctrLinks.has(iface.name)) {
            problems.push(`interfaces[${i}] ${iface.name} is in the container but has no sandbox`);
          }
        });
        if (!ctx.sharesHostNetns && !ifaces.some((i) => i.sandbox)) problems.push('no interface has a sandbox: nothing is in the container');
        if (problems.length) fail(problems.join('; '));
        return `${ifaces.filter((i) => i.sandbox).length} of ${ifaces.length} interfaces in the sandbox ${att.rt.netns}`;
      } finally {
        ctx.cleanup(att);
      }
    },
  },
  {
    id: 'add.second-add',
    title: 'a second ADD for the same container and CNI_IFNAME fails, and leaves the first attachment working',
    run(ctx) {
      const att = ctx.attach();
      try {
        // The rule is about an interface the first ADD created. One that was
        // there before (lo, or the host's own in a shared namespace) or that
        // the plugin never makes (none) leaves nothing for it to judge.
        const existedBefore = links(att.ns).some((l) => l.ifname === att.rt.ifname);
        const result = ctx.add(att);
        const createdByAdd = !existedBefore && links(att.ns).some((l) => l.ifname === att.rt.ifname);
        if (!createdByAdd) {
          ctx.del(att);
          notApplicable(
            existedBefore
              ? `${att.rt.ifname} exists in the container before any ADD, so no ADD can be refused for it`
              : `the first ADD made no interface named ${att.rt.ifname}`,
          );
        }
        // CHECK is a witness only if it passes before the second ADD (check.healthy judges CHECK itself).
        const checkable = versionAtLeast(ctx.list.cniVersion, '0.4.0') && !ctx.list.disableCheck && !ctx.check(att);
        let second: unknown;
        let secondError: Error | undefined;
        try {
          second = ctx.runtime.add(ctx.list, att.rt);
        } catch (e) {
          secondError = e as Error;
        }
        if (!secondError) {
          // restore the first result as the cached one, so cleanup DELs the first attachment's state
          ctx.runtime.cache.add(ctx.list, att.rt, result);
          fail(`the second ADD succeeded (the spec: "If an interface of the requested name already exists in the container, the CNI plugin MUST return with an error"); it returned ${JSON.stringify(second).slice(0, 120)}`);
        }
        if (!(secondError instanceof PluginError) || !secondError.cniError) {
          fail(`the second ADD failed without a CNI error object: ${secondError.message}`);
        }
        const problems = realityProblems(ctx, att, result);
        if (problems.length) fail(`after the refused second ADD the first attachment is damaged: ${problems.join('; ')}`);
        if (checkable) {
          const err = ctx.check(att);
          if (err) fail(`after the refused second ADD, CHECK of the first attachment fails: ${err.message}`);
        }
        return `refused with code ${secondError.cniError.code} (${secondError.cniError.msg}); the first attachment is intact`;
      } finally {
        ctx.cleanup(att);
      }
    },
  },
];

const delRules: Rule[] = [
  {
    id: 'del.frees',
    title: 'DEL frees what ADD took: the host (links, addresses, routes, nft, state files) is as before, the container interface is gone',
    run(ctx) {
      const before = ctx.snap();
      const att = ctx.attach();
      try {
        const result = ctx.add(att);
        ctx.del(att);
        // The container's namespace still exists: DEL must not count on its deletion.
        const leftInside = ctx.sharesHostNetns
          ? []
          : resultInterfaces(result)
              .filter((i) => i.sandbox && i.name !== 'lo')
              .filter((i) => links(att.ns).some((l) => l.ifname === i.name))
              .map((i) => i.name);
        const diff = ctx.settle(before);
        if (leftInside.length) fail(`DEL left ${leftInside.join(', ')} in the container${diff.length ? `; host: ${describeDiff(diff)}` : ''}`);
        return diffOrPass(diff, 'after ADD+DEL');
      } finally {
        ctx.cleanup(att);
      }
    },
  },
  {
    id: 'del.twice',
    title: 'a second DEL of the same attachment succeeds',
    run(ctx) {
      const att = ctx.attach();
      try {
        ctx.add(att);
        ctx.del(att, ctx.list, 'the first DEL');
        ctx.del(att, ctx.list, 'the second DEL');
        return 'both DELs succeeded';
      } finally {
        ctx.cleanup(att);
      }
    },
  },
  {
    id: 'del.netns-gone',
    title: "DEL succeeds after the container's namespace is gone, and still frees everything",
    run(ctx) {
      needsOwnNetns(ctx, 'there is no namespace to delete');
      const before = ctx.snap();
      const att = ctx.attach();
      try {
        ctx.add(att);
        ctx.dropNs(att);
        ctx.del(att, ctx.list, 'DEL after the namespace was deleted');
        return diffOrPass(ctx.settle(before), 'after DEL with the namespace gone');
      } finally {
        ctx.cleanup(att);
      }
    },
  },
  {
    id: 'del.after-failed-add',
    title: 'DEL succeeds after a failed ADD (namespace missing; interface name taken) and leaves nothing behind',
    run(ctx) {
      const before = ctx.snap();
      const notes: string[] = [];
      // 1. the namespace path no longer exists when ADD runs
      const gone = ctx.attach();
      try {
        ctx.dropNs(gone);
        try {
          ctx.runtime.add(ctx.list, gone.rt);
          notes.push(ctx.sharesHostNetns ? 'ADD with the host namespace succeeded' : 'ADD into a missing namespace succeeded (!)');
        } catch {
          notes.push('ADD into a missing namespace failed');
        }
        ctx.del(gone, ctx.list, 'DEL after ADD into a missing namespace');
      } finally {
        ctx.cleanup(gone);
      }
      // 2. CNI_IFNAME is already taken inside the container
      if (ctx.sharesHostNetns || ctx.cfg.ifname === 'lo') {
        notes.push(`interface-name clash not tried (${ctx.sharesHostNetns ? 'host namespace' : '"lo" always exists'})`);
      } else {
        const clash = ctx.attach();
        try {
          ip(clash.ns, 'link', 'add', ctx.cfg.ifname, 'type', 'veth', 'peer', 'name', 'cfclash0');
          try {
            ctx.runtime.add(ctx.list, clash.rt);
            notes.push(`ADD with ${ctx.cfg.ifname} already present succeeded`);
          } catch {
            notes.push(`ADD with ${ctx.cfg.ifname} already present failed`);
          }
          ctx.del(clash, ctx.list, 'DEL after ADD with the interface name taken');
        } finally {
          ctx.cleanup(clash);
        }
      }
      const diff = ctx.settle(before);
      if (diff.length) fail(`${notes.join('; ')}; afterwards: ${describeDiff(diff)}`);
      return `${notes.join('; ')}; DEL succeeded each time and nothing was left`;
    },
  },
  {
    id: 'del.missing-prevresult',
    title: 'DEL without prevResult (the runtime lost its cache) succeeds and still frees everything',
    run(ctx) {
      if (!versionAtLeast(ctx.list.cniVersion, '0.4.0')) notApplicable(`prevResult on DEL exists from 0.4.0; the network is ${ctx.list.cniVersion}`);
      const before = ctx.snap();
      const att = ctx.attach();
      try {
        ctx.add(att);
        ctx.runtime.cache.del(ctx.list.name, att.rt.containerId, att.rt.ifname);
        ctx.del(att, ctx.list, 'DEL without prevResult');
        return diffOrPass(ctx.settle(before), 'after DEL without prevResult');
      } finally {
        ctx.cleanup(att);
      }
    },
  },
];

const checkRules: Rule[] = [
  {
    id: 'check.healthy',
    title: 'CHECK passes right after ADD',
    run(ctx) {
      needsCheck(ctx);
      const att = ctx.attach();
      try {
        ctx.add(att);
        const err = ctx.check(att);
        if (err) fail(`CHECK failed on a healthy attachment: ${err.message}`);
        return 'CHECK passed';
      } finally {
        ctx.cleanup(att);
      }
    },
  },
  {
    id: 'check.interface-removed',
    title: 'CHECK fails with an error after the container interface is deleted behind the plugin\'s back',
    run(ctx) {
      return checkDetectsBreakage(ctx, (att, result) => {
        const inside = resultInterfaces(result).filter((i) => i.sandbox);
        const target = inside.find((i) => i.name === att.rt.ifname) ?? inside[0];
        return target && { what: `interface ${target.name}`, argv: ['link', 'del', target.name] };
      });
    },
  },
  {
    id: 'check.address-removed',
    title: 'CHECK fails with an error after a container address is deleted behind the plugin\'s back',
    run(ctx) {
      return checkDetectsBreakage(ctx, (_att, result) => {
        const ifaces = resultInterfaces(result);
        const ipc = resultIps(result).find((a) => a.interface !== undefined && ifaces[a.interface]?.sandbox);
        if (!ipc || isIP(parseCidr(ipc.address)?.ip ?? '') === 0) return undefined;
        const dev = ifaces[ipc.interface!].name;
        return { what: `address ${ipc.address} on ${dev}`, argv: ['addr', 'del', ipc.address, 'dev', dev] };
      });
    },
  },
];

const gcStatusRules: Rule[] = [
  {
    id: 'gc.frees-unlisted',
    title: 'GC with cni.dev/valid-attachments frees everything of attachments not listed and keeps the listed one working',
    run(ctx) {
      needsOwnNetns(ctx, 'a stale attachment cannot be made by deleting its namespace');
      const list = list110(ctx);
      const before = ctx.snap();
      const keep = ctx.attach();
      const stale = ctx.attach();
      try {
        ctx.add(keep, list);
        const withKeep = ctx.snap();
        ctx.add(stale, list);
        // The runtime lost track of `stale` (its cache entry is gone) and the
        // container died: only the plugin's own GC can free what it holds.
        ctx.runtime.cache.del(list.name, stale.rt.containerId, stale.rt.ifname);
        ctx.dropNs(stale);
        const errors = ctx.runtime.gc(list, [{ containerID: keep.rt.containerId, ifname: keep.rt.ifname }]);
        if (errors.length) fail(`GC failed: ${errors.map((e) => e.message).join('; ')}`);
        const diff = ctx.settle(withKeep);
        if (diff.length) fail(`after GC the unlisted attachment is not freed: ${describeDiff(diff)}`);
        const err = ctx.check(keep, list);
        if (err && !(err.message.includes('does not support the CHECK'))) fail(`after GC, CHECK of the listed attachment fails: ${err.message}`);
        ctx.del(keep, list);
        return diffOrPass(ctx.settle(before), 'after GC and DEL of the listed attachment');
      } finally {
        ctx.cleanup(stale, list);
        ctx.cleanup(keep, list);
      }
    },
  },
  {
    id: 'status.answers',
    title: 'STATUS exits 0 with no output when ready, or fails with code 50/51',
    run(ctx) {
      const list = list110(ctx);
      const notes: string[] = [];
      list.plugins.forEach((plugin) => {
        const conf = { ...plugin, name: list.name, cniVersion: list.cniVersion };
        const r = ctx.runtime.exec(plugin.type, ctx.runtime.env('STATUS'), JSON.stringify(conf));
        if (r.status === 0) {
          if (r.stdout.trim() !== '') fail(`${plugin.type}: STATUS succeeded but printed ${JSON.stringify(r.stdout.trim().slice(0, 100))}`);
          notes.push(`${plugin.type} ready`);
          return;
        }
        const e = parseCniError(r.stdout);
        if (!e) fail(`${plugin.type}: STATUS exited ${r.status ?? r.signal} without a CNI error object`);
        if (e.code !== 50 && e.code !== 51) fail(`${plugin.type}: STATUS failed with code ${e.code} (${e.msg}); the spec's codes for STATUS are 50 and 51`);
        notes.push(`${plugin.type} not available (code ${e.code}: ${e.msg})`);
      });
      return notes.join('; ');
    },
  },
];

/**
 * ADD/CHECK/DEL cycles run once; the five leak rules each judge one category.
 * A failing CHECK does not stop a cycle (check.healthy judges CHECK); a
 * failing ADD or DEL does, since then there is no cycle to measure.
 */
function leakCycles(ctx: RuleContext): { diff: SnapshotDiff[]; error?: string } {
  const memo = ctx.memo.get('leaks') as { diff: SnapshotDiff[]; error?: string } | undefined;
  if (memo) return memo;
  const before = ctx.snap();
  let error: string | undefined;
  for (let i = 1; i <= ctx.cfg.cycles && !error; i++) {
    const att = ctx.attach();
    try {
      ctx.runtime.add(ctx.list, att.rt);
      if (versionAtLeast(ctx.list.cniVersion, '0.4.0')) ctx.check(att);
      ctx.runtime.del(ctx.list, att.rt);
    } catch (e) {
      error = `cycle ${i}: ${errorOf(e)}`;
    } finally {
      ctx.cleanup(att);
    }
  }
  const out = { diff: ctx.settle(before), error };
  ctx.memo.set('leaks', out);
  return out;
}

const leakRules: Rule[] = (
  [
    ['links', 'links'],
    ['addresses', 'addresses'],
    ['routes', 'routes'],
    ['nft', 'nft rules'],
    ['stateFiles', 'state files'],
  ] as const
).map(
  ([category, label]): Rule => ({
    id: `leaks.${category === 'stateFiles' ? 'state-files' : category}`,
    title: `after repeated ADD/CHECK/DEL cycles the host has no extra or missing ${label}`,
    run(ctx) {
      const { diff, error } = leakCycles(ctx);
      if (error) fail(`the cycles did not complete: ${error}`);
      const mine = diff.filter((d) => d.category === category);
      if (mine.length) fail(`after ${ctx.cfg.cycles} cycles: ${describeDiff(mine)}`);
      return `${ctx.cfg.cycles} cycles, no change in ${label}`;
    },
  }),
);

const outputRules: Rule[] = [
  {
    id: 'errors.stdout-only-json',
    title: 'every call printed only JSON on stdout: a result, an error object on failure, or nothing',
    run(ctx) {
      const problems: string[] = [];
      for (const r of ctx.runtime.log) {
        if (r.spawnError && r.status === null) continue; // never ran; judged by the rule that called it
        const cmd = r.env.CNI_COMMAND ?? '(no CNI_COMMAND)';
        const where = `${r.plugin} ${cmd}${r.rule ? ` in ${r.rule}` : ''}`;
        let value: unknown;
        try {
          value = parseSingleJson(r.stdout);
        } catch (e) {
          problems.push(`${where}: ${errorOf(e)}`);
          continue;
        }
        if (r.status !== 0) {
          const errs = value === undefined ? ['stdout is empty'] : validateErrorResult(value);
          if (errs.length) problems.push(`${where} exited ${r.status}: no valid error object (${errs.join('; ')})`);
        } else if (value !== undefined && validateErrorResult(value).length === 0 && cmd !== 'VERSION') {
          problems.push(`${where} printed an error object but exited 0`);
        } else if (cmd === 'ADD' && (typeof value !== 'object' || value === null)) {
          problems.push(`${where} succeeded without printing a result`);
        }
      }
      if (problems.length) fail(`${problems.length} call(s): ${problems.slice(0, 4).join(' | ')}`);
      return `${ctx.runtime.log.length} calls, all clean`;
    },
  },
];

/** All rules, in the order they run; errors.stdout-only-json is last because it judges every call before it. */
export const RULES: readonly Rule[] = [
  ...versionRules,
  ...errorRules.filter((r) => r.id !== 'errors.stdout-only-json'),
  ...schemaRules,
  ...addRules,
  ...delRules,
  ...checkRules,
  ...gcStatusRules,
  ...leakRules,
  ...outputRules,
];

export const RULE_IDS: readonly string[] = RULES.map((r) => r.id);
