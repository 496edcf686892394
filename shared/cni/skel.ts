/**
 * The dispatcher every plugin's main calls: our counterpart of the
 * reference's pkg/skel. It reads the environment and stdin, checks the
 * version rules, parses the configuration and prevResult, calls the
 * plugin's verb, and prints exactly one JSON document (the result or the
 * error) on stdout.
 *
 * Order of checks, and the code each failure gets:
 *   1. CNI_COMMAND and the variables the command needs ........ 4
 *   2. stdin readable ........................................... 5
 *   3. stdin is a JSON object ................................... 6
 *   4. `name` present and valid ................................. 7
 *   5. cniVersion: CHECK needs >= 0.4.0, GC and STATUS >= 1.1.0,
 *      and the version must be one the plugin supports ......... 1
 *   6. the plugin's config schema .............................. 7
 *   7. CNI_NETNS is a network namespace (ADD, CHECK) and not the
 *      plugin's own (ADD, CHECK, DEL; CNI_NETNS_OVERRIDE=1 skips)  8
 *   8. prevResult (ADD, CHECK, DEL) ............................. 6/7/1
 *   9. CNI_IFNAME not yet taken in CNI_NETNS (ADD, when the
 *      plugin creates the interface) ........................... 4
 *  10. the verb itself: CniErrors pass through, anything else is 999
 *
 * Whatever goes wrong, stdout carries the spec's error JSON and the exit
 * code is 1; a stack trace goes to the log (stderr), and only when
 * CNI_DEBUG is set.
 *
 * The core touches nothing outside itself: the process's streams, the
 * kernel's view of CNI_NETNS and CNI_IFNAME, and the log all come through
 * SkelIO, which the plugin process (cmd/plugin-io.ts), the daemon's workers
 * and the tests each build their own way. So this protocol layer sits above
 * no kernel code and its checks run in tests without namespaces.
 */
import type { z } from 'zod';
import { decodeJsonObject, validateConfig } from './config';
import { ENV_RULES, NAME_PATTERN, readEnv, type CniEnv } from './env';
import { CniError, ErrorCode, toCniError } from './errors';
import { formatResult, parsePrevResult } from './result';
import type { Attachment, Result } from './types';
import { LATEST, SUPPORTED_VERSIONS, compareVersions, requireSupported } from './version';
import type { Logger } from '../log';

export type PluginCommand = 'ADD' | 'DEL' | 'CHECK' | 'GC' | 'STATUS';

/** What a plugin's command sees: the call's environment (CniEnv's fields, VERSION aside) and its configuration. */
export interface CniContext<C> extends Omit<CniEnv, 'command' | 'netnsOverride'> {
  command: PluginCommand;
  config: C;
  /** the configuration's cniVersion; results are printed in this version */
  cniVersion: string;
  prevResult?: Result;
  /** stdin exactly as received: delegated plugins (IPAM) must get the complete configuration */
  stdinData: Buffer;
  /** the environment the plugin was called with: delegated plugins must get the same one */
  env: NodeJS.ProcessEnv;
  /** this call's diagnostics: stderr of the process, or of the daemon's caller */
  log: Logger;
}

export interface Plugin<C> {
  /** printed on stderr when the binary is run without CNI_COMMAND, e.g. "CNI plugin bridge v0.1.0" */
  about: string;
  /** defaults to SUPPORTED_VERSIONS */
  supportedVersions?: readonly string[];
  /** validates the whole configuration; usually netConfBase.extend({...}) */
  schema: z.ZodType<C, z.ZodTypeDef, unknown>;
  /**
   * The plugin creates CNI_IFNAME inside CNI_NETNS on ADD. The spec says ADD
   * "MUST return with an error" when that interface already exists, so the
   * skel refuses up front (code 4, naming CNI_IFNAME) instead of every plugin
   * discovering it halfway through its work.
   */
  createsInterface?: boolean;
  /**
   * CNI_NETNS is expected to be the plugin's own (the host's) namespace,
   * as for the host plugin; other plugins refuse it (code 8).
   */
  usesHostNetns?: boolean;
  add(ctx: CniContext<C>): Promise<Result>;
  del(ctx: CniContext<C>): Promise<void>;
  check(ctx: CniContext<C>): Promise<void>;
  /** absent: GC succeeds doing nothing (the plugin keeps no state outside the namespace) */
  gc?(ctx: CniContext<C>, validAttachments: Attachment[]): Promise<void>;
  /** absent: STATUS succeeds (always ready) */
  status?(ctx: CniContext<C>): Promise<void>;
}

/** What CNI_NETNS turned out to be. */
export type NetnsStatus = 'netns' | 'own' | 'not-netns';

/** Everything runPlugin touches outside itself, so tests can run it in-process. */
export interface SkelIO {
  env: NodeJS.ProcessEnv;
  readStdin(): Buffer;
  writeStdout(s: string): void;
  /** Does ifname exist inside the namespace at netnsPath? (the real one asks netlink) */
  interfaceExists(netnsPath: string, ifname: string): boolean;
  /** Is netnsPath a network namespace, and is it the plugin's own? (the real one asks the kernel: NS_GET_NSTYPE, inodes) */
  netnsStatus(netnsPath: string): NetnsStatus;
  /** the call's diagnostics (ctx.log); defaults to dropping them */
  log?: Logger;
}

/** Minimum cniVersion of the configuration per command (reference skel). */
const MIN_VERSION: Partial<Record<PluginCommand, string>> = { CHECK: '0.4.0', GC: '1.1.0', STATUS: '1.1.0' };

/** Run one plugin invocation; resolves to the process exit code. Never rejects. */
export async function runPlugin<C>(plugin: Plugin<C>, io: SkelIO): Promise<number> {
  const supported = plugin.supportedVersions ?? SUPPORTED_VERSIONS;
  // The version errors are reported in: the config's, once we know it is one we speak.
  let outVersion = highest(supported);
  const log = io.log ?? (() => {});
  try {
    if ((io.env.CNI_COMMAND ?? '') === '' && plugin.about) {
      // Like the reference: a human ran the binary; tell them what it is.
      log(`${plugin.about}\nCNI protocol versions supported: ${supported.join(', ')}`);
      return 0;
    }
    const env = readEnv(ENV_RULES, io.env);
    if (env.command === 'VERSION') {
      io.writeStdout(`${JSON.stringify({ cniVersion: versionForVersionCommand(io, supported), supportedVersions: [...supported] })}\n`);
      return 0;
    }
    const command = env.command;

    let stdinData: Buffer;
    try {
      stdinData = io.readStdin();
    } catch (e) {
      throw new CniError(ErrorCode.IOFailure, `error reading network config from stdin: ${(e as Error).message}`);
    }
    const raw = decodeJsonObject(stdinData, 'network config');
    if (typeof raw.cniVersion === 'string' && supported.includes(raw.cniVersion)) outVersion = raw.cniVersion;

    checkName(raw.name);
    const cniVersion = checkVersion(command, raw.cniVersion, supported);
    const config = validateConfig(raw, plugin.schema);

    if (command !== 'GC' && command !== 'STATUS') {
      checkNetns(command, env.netns, env.netnsOverride || plugin.usesHostNetns === true, io);
    }

    let prevResult: Result | undefined;
    if (command !== 'GC' && command !== 'STATUS' && raw.prevResult !== undefined && raw.prevResult !== null) {
      try {
        prevResult = parsePrevResult(raw.prevResult, cniVersion);
      } catch (e) {
        // DEL is best effort (SPEC.md): a runtime that cached a broken
        // result must still be able to tear the attachment down.
        if (command !== 'DEL') throw e;
        log(`ignoring unreadable prevResult on DEL: ${toCniError(e).message}`);
      }
    }

    const ctx: CniContext<C> = {
      command,
      containerId: env.containerId,
      netns: env.netns,
      ifname: env.ifname,
      args: env.args,
      rawArgs: env.rawArgs,
      path: env.path,
      config,
      cniVersion,
      prevResult,
      stdinData,
      env: io.env,
      log,
    };

    switch (command) {
      case 'ADD': {
        if (plugin.createsInterface && io.interfaceExists(env.netns, env.ifname)) {
          throw new CniError(
            ErrorCode.InvalidEnvironment,
            `CNI_IFNAME: interface ${JSON.stringify(env.ifname)} already exists in ${env.netns}`,
          );
        }
        const result = await plugin.add(ctx);
        const text = JSON.stringify(formatResult(result, cniVersion), null, 4);
        io.writeStdout(`${text}\n`);
        return 0;
      }
      case 'DEL':
        await plugin.del(ctx);
        return 0;
      case 'CHECK':
        await plugin.check(ctx);
        return 0;
      case 'GC':
        if (plugin.gc) await plugin.gc(ctx, readValidAttachments(raw['cni.dev/valid-attachments']));
        return 0;
      case 'STATUS':
        if (plugin.status) await plugin.status(ctx);
        return 0;
    }
  } catch (e) {
    const err = toCniError(e);
    if (io.env.CNI_DEBUG && e instanceof Error && e.stack) log(e.stack);
    try {
      io.writeStdout(`${JSON.stringify(err.toJSON(outVersion), null, 4)}\n`);
    } catch {
      // stdout is gone (runtime closed the pipe): the exit code still says it failed
    }
    return 1;
  }
}

/** The plugin's CHECK needs a prevResult (SPEC.md: the runtime must send one); code 7 when it is missing. */
export function requirePrevResult<C>(ctx: CniContext<C>): Result {
  if (!ctx.prevResult) {
    throw new CniError(ErrorCode.InvalidNetworkConfig, `prevResult is required for ${ctx.command}`);
  }
  return ctx.prevResult;
}

function highest(versions: readonly string[]): string {
  let best = versions[0] ?? LATEST;
  for (const v of versions) if (compareVersions(v, best) > 0) best = v;
  return best;
}

/**
 * SPEC.md: VERSION answers with "the value of cniVersion specified on input".
 * stdin may be empty or absent, so anything unreadable means "latest".
 */
function versionForVersionCommand(io: SkelIO, supported: readonly string[]): string {
  try {
    const v = (JSON.parse(io.readStdin().toString('utf8')) as { cniVersion?: unknown })?.cniVersion;
    if (typeof v === 'string' && supported.includes(v)) return v;
  } catch {
    // no config, or not JSON: not an error for VERSION
  }
  return highest(supported);
}

function checkName(name: unknown): void {
  if (name === undefined || name === null || name === '') {
    throw new CniError(ErrorCode.InvalidNetworkConfig, 'missing network name');
  }
  if (typeof name !== 'string') {
    throw new CniError(ErrorCode.InvalidNetworkConfig, `name: expected string, received ${typeof name}`);
  }
  if (!NAME_PATTERN.test(name)) {
    throw new CniError(ErrorCode.InvalidNetworkConfig, 'invalid characters found in network name', name);
  }
}

function checkVersion(command: PluginCommand, v: unknown, supported: readonly string[]): string {
  if (v !== undefined && v !== null && typeof v !== 'string') {
    throw new CniError(ErrorCode.DecodingFailure, `cniVersion: expected string, received ${typeof v}`);
  }
  // The reference reads a missing cniVersion as 0.1.0, which nothing here speaks.
  const version = typeof v === 'string' && v !== '' ? v : '0.1.0';
  const min = MIN_VERSION[command];
  if (min && compareVersions(version, min) < 0) {
    throw new CniError(
      ErrorCode.IncompatibleVersion,
      `config version does not allow ${command}`,
      `config is ${JSON.stringify(version)}, ${command} needs ${min} or later`,
    );
  }
  requireSupported(version, supported);
  return version;
}

function checkNetns(command: PluginCommand, netns: string, override: boolean, io: SkelIO): void {
  if (netns === '') return; // only DEL gets here without one, and DEL may
  const status = io.netnsStatus(netns);
  if (status === 'not-netns') {
    // DEL must succeed after the namespace is gone; the plugin copes.
    if (command === 'DEL') return;
    throw new CniError(ErrorCode.InvalidNetns, `CNI_NETNS: ${JSON.stringify(netns)} is not a network namespace`);
  }
  if (status === 'own' && !override) {
    // Working "inside" our own namespace would rename or delete host links.
    throw new CniError(
      ErrorCode.InvalidNetns,
      "plugin's netns and netns from CNI_NETNS should not be the same",
      `CNI_NETNS=${netns}`,
    );
  }
}

function readValidAttachments(v: unknown): Attachment[] {
  if (v === undefined || v === null) return [];
  const bad = (why: string) => new CniError(ErrorCode.InvalidNetworkConfig, `cni.dev/valid-attachments: ${why}`);
  if (!Array.isArray(v)) throw bad('expected an array');
  return v.map((a, i) => {
    if (typeof a !== 'object' || a === null || typeof a.containerID !== 'string' || typeof a.ifname !== 'string') {
      throw bad(`entry ${i} must be {"containerID": string, "ifname": string}`);
    }
    return { containerID: a.containerID, ifname: a.ifname };
  });
}
