/**
 * Calling the IPAM plugin a network configuration names.
 *
 * Our own IPAM (cluster-ipam) runs in-process: it is the same executable, so
 * exec'ing it would only pay a second process start per container. Any
 * other IPAM type (host-local, dhcp, static, ...) is found in CNI_PATH and
 * executed exactly as libcni would: same environment, the complete network
 * configuration on stdin, its result or error JSON on stdout.
 */
import { spawnSync } from '../spawn';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CniError, ErrorCode } from './errors';
import { parsePrevResult } from './result';
import type { Result } from './types';
import { stderrLog, type Logger } from '../log';

export const OWN_IPAM = 'cluster-ipam';

export interface DelegateCall {
  command: 'ADD' | 'DEL' | 'CHECK' | 'GC' | 'STATUS';
  /** the IPAM type, e.g. "host-local" */
  type: string;
  /** the complete network configuration as the runtime gave it */
  stdin: Buffer | string;
  env: NodeJS.ProcessEnv;
  cniVersion: string;
  /** where the plugin's stderr goes (the call's logger, ctx.log); default this process's stderr */
  log?: Logger;
}

export function findPlugin(type: string, cniPath: readonly string[]): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(type)) {
    throw new CniError(ErrorCode.InvalidNetworkConfig, `invalid plugin type ${JSON.stringify(type)}`);
  }
  for (const dir of cniPath) {
    const candidate = path.join(dir, type);
    try {
      fs.accessSync(candidate, fs.constants.X_OK);
      return candidate;
    } catch {
      // keep looking
    }
  }
  throw new CniError(ErrorCode.InvalidNetworkConfig, `failed to find plugin "${type}" in path [${cniPath.join(' ')}]`);
}

/** Exec a delegated plugin; its result (ADD) in the internal shape, or undefined for the other verbs. */
export function execDelegate(call: DelegateCall): Result | undefined {
  const cniPath = (call.env.CNI_PATH ?? '').split(':').filter(Boolean);
  const binary = findPlugin(call.type, cniPath);
  const r = spawnSync(binary, [], {
    env: { ...call.env, CNI_COMMAND: call.command },
    input: call.stdin,
    encoding: 'utf8',
    maxBuffer: 16 << 20,
  });
  if (r.error) throw new CniError(ErrorCode.IOFailure, `failed to run ${binary}`, r.error.message);
  if (r.stderr) (call.log ?? stderrLog)(r.stderr.replace(/\n$/, ''));
  const out = (r.stdout ?? '').trim();
  if (r.status !== 0) {
    let parsed: { code?: unknown; msg?: unknown; details?: unknown } = {};
    try {
      parsed = JSON.parse(out);
    } catch {
      // not JSON: report what it printed
    }
    const code = typeof parsed.code === 'number' ? parsed.code : ErrorCode.Internal;
    const msg = typeof parsed.msg === 'string' ? parsed.msg : `${call.type} ${call.command} failed (exit ${r.status})`;
    throw new CniError(code, msg, typeof parsed.details === 'string' ? parsed.details : out || undefined);
  }
  if (call.command !== 'ADD') return undefined;
  let raw: unknown;
  try {
    raw = JSON.parse(out);
  } catch {
    throw new CniError(ErrorCode.DecodingFailure, `${call.type} returned a result that is not JSON`, out.slice(0, 200));
  }
  return parsePrevResult(raw, call.cniVersion);
}
