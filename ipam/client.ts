/**
 * What a main plugin (bridge, macvlan, ipvlan, overlay) calls to get
 * addresses: cluster-ipam in-process, any other IPAM type through CNI_PATH
 * like libcni would (shared/cni/delegate.ts).
 */
import type { CniContext } from '../shared/cni/skel';
import { OWN_IPAM, execDelegate } from '../shared/cni/delegate';
import { CniError, ErrorCode } from '../shared/cni/errors';
import type { Attachment, Result } from '../shared/cni/types';

type Ctx = CniContext<{ ipam?: { type: string } }>;

function ipamType(ctx: Ctx): string {
  const type = ctx.config.ipam?.type;
  if (!type) throw new CniError(ErrorCode.InvalidNetworkConfig, 'ipam: a "type" is required');
  return type;
}

function rawConfig(ctx: Ctx): unknown {
  return JSON.parse(ctx.stdinData.toString('utf8'));
}

function own(ctx: Ctx) {
  return { containerId: ctx.containerId, ifname: ctx.ifname, args: ctx.args, config: rawConfig(ctx), prevResult: ctx.prevResult, log: ctx.log };
}

function delegate(ctx: Ctx, command: 'ADD' | 'DEL' | 'CHECK' | 'GC' | 'STATUS'): Result | undefined {
  return execDelegate({ command, type: ipamType(ctx), stdin: ctx.stdinData, env: ctx.env, cniVersion: ctx.cniVersion, log: ctx.log });
}

export function hasIpam(ctx: Ctx): boolean {
  return ctx.config.ipam !== undefined;
}

export async function ipamAdd(ctx: Ctx): Promise<Result> {
  if (ipamType(ctx) === OWN_IPAM) return (await import('./plugin')).ipamAdd(own(ctx));
  return delegate(ctx, 'ADD')!;
}

export async function ipamDel(ctx: Ctx): Promise<void> {
  if (ipamType(ctx) === OWN_IPAM) return (await import('./plugin')).ipamDel(own(ctx));
  delegate(ctx, 'DEL');
}

export async function ipamCheck(ctx: Ctx): Promise<void> {
  if (ipamType(ctx) === OWN_IPAM) return (await import('./plugin')).ipamCheck(own(ctx));
  delegate(ctx, 'CHECK');
}

export async function ipamGc(ctx: Ctx, valid: Attachment[]): Promise<void> {
  if (ipamType(ctx) === OWN_IPAM) {
    await (await import('./plugin')).ipamGc(own(ctx), valid);
    return;
  }
  delegate(ctx, 'GC');
}

export async function ipamStatus(ctx: Ctx): Promise<void> {
  if (ipamType(ctx) === OWN_IPAM) return (await import('./plugin')).ipamStatus(own(ctx));
  delegate(ctx, 'STATUS');
}
