/**
 * Everything a rule needs while it runs against one network: the runtime,
 * the namespaces, fresh attachments, snapshots of the host.
 */
import { isIP } from 'node:net';
import { sleepMs } from './clock';
import type { SuiteConfig } from './config';
import {
  createNetns,
  CURRENT_NS,
  deleteNetns,
  diffSnapshots,
  snapshot,
  type Ns,
  type Snapshot,
  type SnapshotDiff,
} from './kernel';
import { PluginError, type NetworkConfigList, type Runtime, type RuntimeConf, type VersionInfo } from './libcni';

/** Thrown by a rule: the plugin broke it. */
export class RuleFail extends Error {}
/** Thrown by a rule: it cannot apply to this network (the reason says why). */
export class RuleNotApplicable extends Error {}

export function fail(msg: string): never {
  throw new RuleFail(msg);
}
export function notApplicable(msg: string): never {
  throw new RuleNotApplicable(msg);
}

export interface Attachment {
  rt: RuntimeConf;
  /** the container's namespace (the host's own when containerNetns is "host") */
  ns: Ns;
}


export class RuleContext {
  private seq = 0;
  private readonly ownNamespaces: Ns[] = [];
  private readonly versionCache = new Map<string, VersionInfo | Error>();
  /** results shared between rules of one run (the leak cycles run once for all leak rules) */
  readonly memo = new Map<string, unknown>();

  constructor(
    readonly cfg: SuiteConfig,
    readonly runtime: Runtime,
    readonly hostNs: Ns,
    readonly runId: string,
    /** CNI_NETNS for a container that shares the host's namespace (see runner.ts) */
    private readonly hostNetnsPath?: string,
  ) {}

  get list(): NetworkConfigList {
    return this.cfg.network;
  }

  get sharesHostNetns(): boolean {
    return this.cfg.containerNetns === 'host';
  }

  /** The plugin types of the list, each once, in order. */
  get pluginTypes(): string[] {
    return [...new Set(this.list.plugins.map((p) => p.type))];
  }

  /** A fresh container: new ID, new namespace (unless it shares the host's). */
  attach(): Attachment {
    const n = ++this.seq;
    const containerId = `ct${this.runId}-${n}`;
    let ns: Ns;
    if (this.sharesHostNetns) {
      if (!this.hostNetnsPath) throw new Error('no host namespace path for a container sharing the host namespace');
      // `name` stays undefined: `ip` looks at the suite's own namespace, and dropNs leaves it alone
      ns = { ...CURRENT_NS, path: this.hostNetnsPath };
    } else {
      ns = createNetns(`cf${this.runId}-${n}`);
      this.ownNamespaces.push(ns);
      // a namespace's lo starts down; runtimes bring it up (or run loopback)
    }
    return {
      ns,
      rt: {
        containerId,
        netns: ns.path,
        ifname: this.cfg.ifname,
        args: this.cfg.cniArgs,
        capabilityArgs: perAttachment(this.cfg.capabilityArgs, n),
      },
    };
  }

  /** Delete the attachment's namespace (as a runtime does when the container is gone). */
  dropNs(att: Attachment): void {
    if (att.ns.name !== undefined) deleteNetns(att.ns);
  }

  /** Delete every namespace this context made (end of the run). */
  dropAll(): void {
    for (const ns of this.ownNamespaces) {
      try {
        deleteNetns(ns);
      } catch {
        // best effort at the end of a run
      }
    }
  }

  /** ADD that must work for the rule to say anything; a failure fails the rule. */
  add(att: Attachment, list = this.list, onStep?: (plugin: string, result: unknown) => void): Record<string, unknown> {
    try {
      return this.runtime.add(list, att.rt, onStep && ((p, r) => onStep(p.type, r))) as Record<string, unknown>;
    } catch (e) {
      fail(`ADD failed: ${(e as Error).message}`);
    }
  }

  del(att: Attachment, list = this.list, what = 'DEL'): void {
    try {
      this.runtime.del(list, att.rt);
    } catch (e) {
      fail(`${what} failed: ${(e as Error).message}`);
    }
  }

  /** DEL for cleanup after the rule has decided: errors are ignored here (other rules judge DEL). */
  cleanup(att: Attachment, list = this.list): void {
    try {
      this.runtime.del(list, att.rt);
    } catch {
      // judged elsewhere
    }
    try {
      this.dropNs(att);
    } catch {
      // best effort
    }
  }

  /** CHECK; returns the error instead of throwing, since some rules want it to fail. */
  check(att: Attachment, list = this.list): PluginError | Error | undefined {
    try {
      this.runtime.check(list, att.rt);
      return undefined;
    } catch (e) {
      return e as Error;
    }
  }

  versionInfo(type: string): VersionInfo | Error {
    let v = this.versionCache.get(type);
    if (!v) {
      try {
        v = this.runtime.version(type, this.list.cniVersion);
      } catch (e) {
        v = e as Error;
      }
      this.versionCache.set(type, v);
    }
    return v;
  }

  /** Plugins of the list that do not list `version` (a VERSION failure counts as not listing it). */
  pluginsLacking(version: string): string[] {
    return this.pluginTypes.filter((t) => {
      const v = this.versionInfo(t);
      return v instanceof Error || !Array.isArray(v.supportedVersions) || !v.supportedVersions.includes(version);
    });
  }

  snap(): Snapshot {
    const s = snapshot(this.hostNs, this.cfg.stateDirs);
    s.stateFiles = s.stateFiles.filter((f) => !this.cfg.stateExcludes.some((x) => f === `${x}/` || f.startsWith(`${x}/`)));
    return s;
  }

  /**
   * Diff against `expected`, waiting briefly while links, addresses or
   * routes differ: the kernel destroys a deleted namespace's devices (and
   * their veth peers in the host) from a workqueue, after `ip netns del` has
   * returned. nft rules and files do not change on their own, so a
   * difference there alone is final at once.
   */
  settle(expected: Snapshot, maxWaitMs = 3_000): SnapshotDiff[] {
    const deadline = Date.now() + maxWaitMs;
    for (;;) {
      const diff = diffSnapshots(expected, this.snap());
      const kernelPending = diff.some((d) => d.category === 'links' || d.category === 'addresses' || d.category === 'routes');
      if (!kernelPending || Date.now() >= deadline) return diff;
      sleepMs(50);
    }
  }
}

/** Canonical text of an IP address, so "fd00:0::1" and "fd00::1" compare equal. */
export function canonicalIp(addr: string): string {
  if (isIP(addr) !== 6) return addr;
  let [head, tail] = addr.toLowerCase().split('::') as [string, string | undefined];
  // an embedded IPv4 tail becomes two groups
  const v4 = (s: string): string =>
    s.replace(/(\d+)\.(\d+)\.(\d+)\.(\d+)$/, (_m, a, b, c, d) =>
      [((+a << 8) | +b).toString(16), ((+c << 8) | +d).toString(16)].join(':'),
    );
  head = v4(head);
  tail = tail === undefined ? undefined : v4(tail);
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
  return groups.map((g) => parseInt(g, 16).toString(16)).join(':');
}

/**
 * A runtime gives each container its own host ports: two attachments of one
 * rule (GC keeps one and frees the other) publish the configured ports
 * shifted by the attachment's number, so a portmap that refuses a host port
 * already in use (as Docker does) is not failed for it.
 */
function perAttachment(capabilityArgs: Record<string, unknown>, n: number): Record<string, unknown> {
  const mappings = capabilityArgs.portMappings;
  if (!Array.isArray(mappings) || n <= 1) return capabilityArgs;
  return {
    ...capabilityArgs,
    portMappings: mappings.map((m) => (typeof m === 'object' && m !== null && typeof (m as { hostPort?: unknown }).hostPort === 'number' ? { ...m, hostPort: (m as { hostPort: number }).hostPort + n - 1 } : m)),
  };
}
