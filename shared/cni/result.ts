/**
 * Converting results between the internal (1.1.0) shape and the wire shape
 * of each supported spec version.
 *
 * What differs between versions (SPEC.md at the spec-v* tags):
 *  - 0.3.0, 0.3.1, 0.4.0: each ips entry carries `version: "4" | "6"`;
 *    interfaces have only name/mac/sandbox, routes only dst/gw.
 *  - 1.0.0: drops ips[].version; otherwise the same fields as 0.4.0.
 *  - 1.1.0: adds interfaces[].mtu/socketPath/pciID and
 *    routes[].mtu/advmss/priority/table/scope.
 * Output is always emitted in the version the runtime asked for, leaving out
 * fields that version does not define (the reference library keeps them,
 * but a strict reader of an older spec may not expect them).
 */
import { CniError, ErrorCode } from './errors';
import { ipFamilyOfCidr, isCidr, isIP } from '../ip';
import type { DNS, IPConfig, Interface, Result, Route } from './types';
import { SUPPORTED_VERSIONS, requireSupported } from './version';

/** Versions whose results use the 0.3.0-0.4.0 shape. */
const PRE_1_0 = new Set(['0.3.0', '0.3.1', '0.4.0']);

/** The JSON object to print for `r`, in the shape of spec version `cniVersion`. Throws CniError 1 for other versions. */
export function formatResult(r: Result, cniVersion: string): object {
  requireSupported(cniVersion);
  const old = PRE_1_0.has(cniVersion);
  const is110 = cniVersion === '1.1.0';
  const out: Record<string, unknown> = { cniVersion };
  if (r.interfaces?.length) {
    out.interfaces = r.interfaces.map((i) => {
      const o: Record<string, unknown> = { name: i.name };
      if (i.mac !== undefined) o.mac = i.mac;
      if (is110 && i.mtu !== undefined) o.mtu = i.mtu;
      if (i.sandbox !== undefined) o.sandbox = i.sandbox;
      if (is110 && i.socketPath !== undefined) o.socketPath = i.socketPath;
      if (is110 && i.pciID !== undefined) o.pciID = i.pciID;
      return o;
    });
  }
  if (r.ips?.length) {
    out.ips = r.ips.map((ip) => {
      const o: Record<string, unknown> = {};
      if (old) o.version = ipFamilyOfCidr(ip.address);
      if (ip.interface !== undefined) o.interface = ip.interface;
      o.address = ip.address;
      if (ip.gateway !== undefined) o.gateway = ip.gateway;
      return o;
    });
  }
  if (r.routes?.length) {
    out.routes = r.routes.map((rt) => {
      const o: Record<string, unknown> = { dst: rt.dst };
      if (rt.gw !== undefined) o.gw = rt.gw;
      if (is110) {
        for (const k of ROUTE_110_FIELDS) if (rt[k] !== undefined) o[k] = rt[k];
      }
      return o;
    });
  }
  const dns = formatDns(r.dns);
  if (dns) out.dns = dns;
  return out;
}

const ROUTE_110_FIELDS = ['mtu', 'advmss', 'priority', 'table', 'scope'] as const;

function formatDns(d: DNS | undefined): DNS | undefined {
  if (!d) return undefined;
  const o: DNS = {};
  if (d.nameservers?.length) o.nameservers = [...d.nameservers];
  if (d.domain) o.domain = d.domain;
  if (d.search?.length) o.search = [...d.search];
  if (d.options?.length) o.options = [...d.options];
  // The reference omits an empty dns object; so do we.
  return Object.keys(o).length ? o : undefined;
}

/**
 * Read a prevResult (or any plugin's result) in any supported version into
 * the internal shape. A result without cniVersion takes the config's version,
 * as the reference's ParsePrevResult does. Unknown keys are dropped.
 *
 * Errors: CniError 6 when a value has the wrong JSON type or is not a valid
 * IP/CIDR (the reference fails to decode those too), 1 for a version we do
 * not speak, 7 for an `interface` index that points at no interface.
 */
export function parsePrevResult(raw: unknown, cniVersion: string): Result {
  const r = new Reader('prevResult');
  const obj = r.object(raw, 'prevResult');
  const v = obj.cniVersion;
  let version: string;
  if (v === undefined || v === null || v === '') version = cniVersion;
  else if (typeof v === 'string') version = v;
  else throw r.fail('prevResult.cniVersion', 'a string', v);
  if (!SUPPORTED_VERSIONS.includes(version)) {
    throw new CniError(
      ErrorCode.IncompatibleVersion,
      `prevResult has unsupported cniVersion ${JSON.stringify(version)}`,
      `supported: ${SUPPORTED_VERSIONS.join(', ')}`,
    );
  }
  const old = PRE_1_0.has(version);
  const result: Result = { cniVersion: version };

  const interfaces = r.array(obj.interfaces, 'prevResult.interfaces');
  if (interfaces) {
    result.interfaces = interfaces.map((item, i): Interface => {
      const at = `prevResult.interfaces[${i}]`;
      const o = r.object(item, at);
      const intf: Interface = { name: r.string(o.name, `${at}.name`, true)! };
      assign(intf, 'mac', r.string(o.mac, `${at}.mac`));
      assign(intf, 'mtu', r.uint(o.mtu, `${at}.mtu`));
      assign(intf, 'sandbox', r.string(o.sandbox, `${at}.sandbox`));
      assign(intf, 'socketPath', r.string(o.socketPath, `${at}.socketPath`));
      assign(intf, 'pciID', r.string(o.pciID, `${at}.pciID`));
      return intf;
    });
  }

  const ips = r.array(obj.ips, 'prevResult.ips');
  if (ips) {
    result.ips = ips.map((item, i): IPConfig => {
      const at = `prevResult.ips[${i}]`;
      const o = r.object(item, at);
      const address = r.cidr(o.address, `${at}.address`, true)!;
      if (old && o.version !== undefined && o.version !== null) {
        if (o.version !== '4' && o.version !== '6') throw r.fail(`${at}.version`, '"4" or "6"', o.version);
      }
      const ip: IPConfig = { address };
      assign(ip, 'gateway', r.ip(o.gateway, `${at}.gateway`));
      const index = r.uint(o.interface, `${at}.interface`);
      if (index !== undefined) {
        if (index >= (result.interfaces?.length ?? 0)) {
          throw new CniError(
            ErrorCode.InvalidNetworkConfig,
            `${at}.interface: index ${index} points past the interfaces list (${result.interfaces?.length ?? 0} entries)`,
          );
        }
        ip.interface = index;
      }
      return ip;
    });
  }

  const routes = r.array(obj.routes, 'prevResult.routes');
  if (routes) {
    result.routes = routes.map((item, i): Route => {
      const at = `prevResult.routes[${i}]`;
      const o = r.object(item, at);
      const route: Route = { dst: r.cidr(o.dst, `${at}.dst`, true)! };
      assign(route, 'gw', r.ip(o.gw, `${at}.gw`));
      for (const k of ROUTE_110_FIELDS) assign(route, k, r.uint(o[k], `${at}.${k}`));
      return route;
    });
  }

  if (obj.dns !== undefined && obj.dns !== null) {
    const o = r.object(obj.dns, 'prevResult.dns');
    const dns: DNS = {};
    assign(dns, 'nameservers', r.strings(o.nameservers, 'prevResult.dns.nameservers'));
    assign(dns, 'domain', r.string(o.domain, 'prevResult.dns.domain'));
    assign(dns, 'search', r.strings(o.search, 'prevResult.dns.search'));
    assign(dns, 'options', r.strings(o.options, 'prevResult.dns.options'));
    if (Object.keys(dns).length) result.dns = dns;
  }
  return result;
}

function assign<T, K extends keyof T>(target: T, key: K, value: T[K] | undefined): void {
  if (value !== undefined) target[key] = value;
}

/**
 * Typed field readers. JSON null counts as absent, as it does for Go's
 * decoder; a wrong type is a decoding failure (code 6) naming the path.
 */
class Reader {
  constructor(private readonly what: string) {}

  fail(path: string, expected: string, got: unknown): CniError {
    return new CniError(ErrorCode.DecodingFailure, `${path}: expected ${expected}, got ${describe(got)}`, `invalid ${this.what}`);
  }

  object(v: unknown, path: string): Record<string, unknown> {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw this.fail(path, 'an object', v);
    return v as Record<string, unknown>;
  }

  array(v: unknown, path: string): unknown[] | undefined {
    if (v === undefined || v === null) return undefined;
    if (!Array.isArray(v)) throw this.fail(path, 'an array', v);
    return v;
  }

  string(v: unknown, path: string, required = false): string | undefined {
    if (v === undefined || v === null) {
      if (required) throw this.fail(path, 'a string', v);
      return undefined;
    }
    if (typeof v !== 'string') throw this.fail(path, 'a string', v);
    return v;
  }

  strings(v: unknown, path: string): string[] | undefined {
    const a = this.array(v, path);
    return a?.map((s, i) => this.string(s, `${path}[${i}]`, true)!);
  }

  uint(v: unknown, path: string): number | undefined {
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) throw this.fail(path, 'a non-negative integer', v);
    return v;
  }

  ip(v: unknown, path: string): string | undefined {
    const s = this.string(v, path);
    if (s === undefined || s === '') return undefined;
    if (!isIP(s)) throw this.fail(path, 'an IP address', v);
    return s;
  }

  cidr(v: unknown, path: string, required = false): string | undefined {
    const s = this.string(v, path, required);
    if (s === undefined) return undefined;
    if (!isCidr(s)) throw this.fail(path, 'an address in CIDR notation', v);
    return s;
  }
}

function describe(v: unknown): string {
  if (v === undefined) return 'nothing';
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'string') return JSON.stringify(v.length > 64 ? `${v.slice(0, 64)}...` : v);
  if (typeof v === 'object') return 'an object';
  return `${typeof v} ${String(v)}`;
}
