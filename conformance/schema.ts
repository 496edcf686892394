/**
 * The shapes the CNI spec gives a plugin's output, checked by hand so each
 * problem names the field it is about ("ips[0].version: ...").
 *
 * Written from the spec texts (SPEC.md at spec-v0.3.0 .. spec-v1.1.0), not
 * from this project's shared/cni: the suite judges our plugins, so it must
 * not inherit their mistakes.
 */
import { isIP } from 'node:net';

/** Versions whose result format the suite knows (0.1.0/0.2.0 used ip4/ip6 and are out of scope). */
export const RESULT_VERSIONS = ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] as const;

const SEMVER = /^\d+\.\d+\.\d+$/;
const MAC = /^([0-9a-f]{2}:){5}[0-9a-f]{2}$|^([0-9a-f]{2}:){19}[0-9a-f]{2}$/i;

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
type Obj = Record<string, unknown>;

/** Compare two x.y.z versions; NaN-free for well-formed input. */
export function compareVersions(a: string, b: string): number {
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  for (let i = 0; i < 3; i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

export function versionAtLeast(v: string, min: string): boolean {
  return SEMVER.test(v) && compareVersions(v, min) >= 0;
}

function isObj(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** "a.b.c.d/n" or "x::y/n" with a prefix length that fits the family. */
export function parseCidr(s: unknown): { ip: string; prefix: number; family: 4 | 6 } | undefined {
  if (typeof s !== 'string') return undefined;
  const m = /^([^/]+)\/(\d{1,3})$/.exec(s);
  if (!m) return undefined;
  const family = isIP(m[1]);
  const prefix = Number(m[2]);
  if (family === 4 && prefix <= 32) return { ip: m[1], prefix, family: 4 };
  if (family === 6 && prefix <= 128) return { ip: m[1], prefix, family: 6 };
  return undefined;
}

class Problems {
  readonly list: string[] = [];
  add(where: string, what: string): void {
    this.list.push(`${where}: ${what}`);
  }
}

function optString(p: Problems, o: Obj, key: string, where: string): void {
  if (o[key] !== undefined && typeof o[key] !== 'string') p.add(`${where}.${key}`, 'must be a string');
}

function optUint(p: Problems, o: Obj, key: string, where: string): void {
  const v = o[key];
  if (v !== undefined && !(typeof v === 'number' && Number.isInteger(v) && v >= 0)) {
    p.add(`${where}.${key}`, 'must be a non-negative integer');
  }
}

function optStringList(p: Problems, o: Obj, key: string, where: string): void {
  const v = o[key];
  if (v === undefined) return;
  if (!Array.isArray(v) || v.some((x) => typeof x !== 'string')) p.add(`${where}.${key}`, 'must be a list of strings');
}

/**
 * Problems with an ADD result for the requested version; empty means valid.
 * `ipam` relaxes the rules for a delegated IPAM plugin's abbreviated result
 * (no interfaces, no interface index).
 */
export function validateAddResult(result: unknown, version: string, opts: { ipam?: boolean } = {}): string[] {
  const p = new Problems();
  if (!isObj(result)) {
    p.add('result', 'must be a JSON object');
    return p.list;
  }
  if (result.cniVersion !== version) {
    p.add('cniVersion', `must be the requested "${version}", got ${JSON.stringify(result.cniVersion)}`);
  }
  const v1 = versionAtLeast(version, '1.0.0');
  const v11 = versionAtLeast(version, '1.1.0');

  let interfaceCount = 0;
  if (result.interfaces !== undefined) {
    if (!Array.isArray(result.interfaces)) {
      p.add('interfaces', 'must be a list');
    } else {
      interfaceCount = result.interfaces.length;
      result.interfaces.forEach((iface, i) => {
        const w = `interfaces[${i}]`;
        if (!isObj(iface)) return p.add(w, 'must be an object');
        if (typeof iface.name !== 'string' || iface.name === '') p.add(`${w}.name`, 'must be a non-empty string');
        if (iface.mac !== undefined && (typeof iface.mac !== 'string' || (iface.mac !== '' && !MAC.test(iface.mac)))) {
          p.add(`${w}.mac`, `must be a hardware address, got ${JSON.stringify(iface.mac)}`);
        }
        optString(p, iface, 'sandbox', w);
        if (v11) {
          optUint(p, iface, 'mtu', w);
          optString(p, iface, 'socketPath', w);
          optString(p, iface, 'pciID', w);
        }
      });
    }
  }

  if (result.ips !== undefined) {
    if (!Array.isArray(result.ips)) {
      p.add('ips', 'must be a list');
    } else {
      result.ips.forEach((ipc, i) => {
        const w = `ips[${i}]`;
        if (!isObj(ipc)) return p.add(w, 'must be an object');
        const cidr = parseCidr(ipc.address);
        if (!cidr) p.add(`${w}.address`, `must be an address in CIDR notation, got ${JSON.stringify(ipc.address)}`);
        if (ipc.gateway !== undefined) {
          const fam = typeof ipc.gateway === 'string' ? isIP(ipc.gateway) : 0;
          if (fam === 0) p.add(`${w}.gateway`, `must be an IP address, got ${JSON.stringify(ipc.gateway)}`);
          else if (cidr && fam !== cidr.family) p.add(`${w}.gateway`, 'is not in the address family of address');
        }
        if (v1) {
          // 1.0.0 dropped "version": a reader of the 1.x format does not expect it.
          if (ipc.version !== undefined) p.add(`${w}.version`, 'belongs to the 0.x result format, not to ' + version);
        } else if (ipc.version !== '4' && ipc.version !== '6') {
          p.add(`${w}.version`, `is required in ${version} and must be "4" or "6", got ${JSON.stringify(ipc.version)}`);
        } else if (cidr && ipc.version !== String(cidr.family)) {
          p.add(`${w}.version`, `says "${ipc.version}" but the address is IPv${cidr.family}`);
        }
        if (ipc.interface !== undefined) {
          if (opts.ipam) {
            p.add(`${w}.interface`, 'a delegated IPAM result has no interface index');
          } else if (!(typeof ipc.interface === 'number' && Number.isInteger(ipc.interface) && ipc.interface >= 0)) {
            p.add(`${w}.interface`, 'must be a non-negative integer');
          } else if (ipc.interface >= interfaceCount) {
            p.add(`${w}.interface`, `index ${ipc.interface} is outside interfaces (${interfaceCount} entries)`);
          }
        }
      });
    }
  }

  if (result.routes !== undefined) {
    if (!Array.isArray(result.routes)) {
      p.add('routes', 'must be a list');
    } else {
      result.routes.forEach((r, i) => {
        const w = `routes[${i}]`;
        if (!isObj(r)) return p.add(w, 'must be an object');
        const dst = parseCidr(r.dst);
        if (!dst) p.add(`${w}.dst`, `must be a destination in CIDR notation, got ${JSON.stringify(r.dst)}`);
        if (r.gw !== undefined) {
          const fam = typeof r.gw === 'string' ? isIP(r.gw) : 0;
          if (fam === 0) p.add(`${w}.gw`, `must be an IP address, got ${JSON.stringify(r.gw)}`);
          else if (dst && fam !== dst.family) p.add(`${w}.gw`, 'is not in the address family of dst');
        }
        if (v11) {
          for (const k of ['mtu', 'advmss', 'priority', 'table', 'scope']) optUint(p, r, k, w);
        }
      });
    }
  }

  if (result.dns !== undefined) {
    if (!isObj(result.dns)) {
      p.add('dns', 'must be an object');
    } else {
      optStringList(p, result.dns, 'nameservers', 'dns');
      optString(p, result.dns, 'domain', 'dns');
      optStringList(p, result.dns, 'search', 'dns');
      optStringList(p, result.dns, 'options', 'dns');
    }
  }
  return p.list;
}

/** Problems with a VERSION answer. */
export function validateVersionResult(answer: unknown): string[] {
  const p = new Problems();
  if (!isObj(answer)) {
    p.add('answer', 'must be a JSON object');
    return p.list;
  }
  if (typeof answer.cniVersion !== 'string' || !SEMVER.test(answer.cniVersion)) {
    p.add('cniVersion', `must be a version string, got ${JSON.stringify(answer.cniVersion)}`);
  }
  if (!Array.isArray(answer.supportedVersions) || answer.supportedVersions.length === 0) {
    p.add('supportedVersions', 'must be a non-empty list');
  } else {
    answer.supportedVersions.forEach((v, i) => {
      if (typeof v !== 'string' || !SEMVER.test(v)) p.add(`supportedVersions[${i}]`, `not a version: ${JSON.stringify(v)}`);
    });
  }
  return p.list;
}

/** Problems with an error answer ({cniVersion, code, msg, details}). */
export function validateErrorResult(answer: unknown): string[] {
  const p = new Problems();
  if (!isObj(answer)) {
    p.add('error', 'must be a JSON object');
    return p.list;
  }
  if (!(typeof answer.code === 'number' && Number.isInteger(answer.code) && answer.code > 0)) {
    p.add('code', `must be a positive integer, got ${JSON.stringify(answer.code)}`);
  }
  if (typeof answer.msg !== 'string' || answer.msg === '') p.add('msg', 'must be a non-empty string');
  optString(p, answer, 'details', 'error');
  optString(p, answer, 'cniVersion', 'error');
  return p.list;
}

/**
 * stdout must hold exactly one JSON value and nothing else (whitespace
 * aside), or be empty. Returns the value, `undefined` for empty output, or
 * throws with what was wrong.
 */
export function parseSingleJson(stdout: string): unknown {
  const text = stdout.trim();
  if (text === '') return undefined;
  try {
    return JSON.parse(text);
  } catch (e) {
    const firstLine = text.split('\n')[0];
    throw new Error(`stdout is not one JSON document (${(e as Error).message}); it starts with ${JSON.stringify(firstLine.slice(0, 80))}`);
  }
}
