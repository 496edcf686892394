/**
 * Publishing on IPv6 localhost (::1), portmap's side: which mappings the
 * relay serves, its records, and making sure it runs (launch.ts) and serves
 * them (relay.ts, `cni-ts port-proxy`) before the plugin answers.
 *
 *  - hostIP "::1": served by the relay only (the kernel cannot DNAT from
 *    ::1). A port the relay cannot bind (another process holds [::1]:port,
 *    or another container published it there) fails the ADD.
 *  - no hostIP, or "::": the kernel publishes it (portmap's DNAT) and, when
 *    the config asks for it (portmap's ipv6Localhost: the caller passes only
 *    the explicit ones otherwise), the relay adds ::1, as Docker's
 *    docker-proxy does. A port taken on ::1 only
 *    is logged and skipped: the kernel's part still works, and the ADD that
 *    succeeded before ::1 was served must not start failing (README).
 *  - tcp and udp only; the target is the container's IPv6 address, else its
 *    IPv4 one.
 *
 * Codes are the caller's (portmap's 110 and 111), so each plugin keeps its
 * own table of codes.
 */
import * as fs from 'node:fs';
import { CniError, ErrorCode } from '../cni/errors';
import { canonicalIp } from '../netlink/ipaddr';
import { ensureRelay, relayCommand, relayRunning, signalRelay, waitStatus } from './launch';
import { bumpSerial, loadRecords, portProxyDir, putRecord, readSerial, readStatus, recordFile, removeRecord, withRecordsLock, type ProxyEntry, type ProxyOwner } from './records';

export type { ProxyEntry, ProxyOwner } from './records';

/** A requested mapping, as portmap's runtimeConfig.portMappings carries it. */
export interface ProxyMapping {
  hostPort: number;
  containerPort: number;
  protocol: string;
  hostIP?: string;
  range?: number;
}

/** One of the container's addresses. */
export interface ProxyAddr {
  family: 'ipv4' | 'ipv6';
  ip: string;
}

export interface ProxyRequest {
  owner: ProxyOwner;
  /** the container's network namespace path: the relay forgets the record once it is gone */
  netns?: string;
  mappings: readonly ProxyMapping[];
  addrs: readonly ProxyAddr[];
}

function hostIpIs(m: ProxyMapping, addr: string): boolean {
  if (!m.hostIP) return false;
  try {
    return canonicalIp(m.hostIP) === addr;
  } catch {
    return false;
  }
}

/** The mappings published on ::1 explicitly (hostIP "::1"). */
export function loopback6Mappings<M extends ProxyMapping>(mappings: readonly M[]): M[] {
  return mappings.filter((m) => hostIpIs(m, '::1'));
}

/** The mappings the kernel serves: all but those on ::1, which the relay serves alone. */
export function kernelMappings<M extends ProxyMapping>(mappings: readonly M[]): M[] {
  return mappings.filter((m) => !hostIpIs(m, '::1'));
}

/** What the relay serves for these mappings (see the header); two ::1 mappings competing for a port are code 7. */
export function proxyEntries(mappings: readonly ProxyMapping[], addrs: readonly ProxyAddr[]): ProxyEntry[] {
  const target = addrs.find((a) => a.family === 'ipv6') ?? addrs.find((a) => a.family === 'ipv4');
  if (!target) return [];
  const out = new Map<string, ProxyEntry>();
  // explicit ::1 mappings first: they win a port a wildcard mapping also names
  const ordered = [...mappings.filter((m) => hostIpIs(m, '::1')), ...mappings.filter((m) => !m.hostIP || hostIpIs(m, '::'))];
  for (const m of ordered) {
    if (m.protocol !== 'tcp' && m.protocol !== 'udp') continue;
    const explicit = hostIpIs(m, '::1');
    const n = m.range && m.range > 1 ? m.range : 1;
    for (let i = 0; i < n; i++) {
      const e: ProxyEntry = { protocol: m.protocol, hostPort: m.hostPort + i, containerIP: target.ip, containerPort: m.containerPort + i, explicit };
      const key = `${e.protocol}/${e.hostPort}`;
      const held = out.get(key);
      if (held && explicit && held.containerPort !== e.containerPort) {
        throw new CniError(ErrorCode.InvalidNetworkConfig, `runtimeConfig.portMappings: two mappings compete for ${e.protocol} [::1]:${e.hostPort}`);
      }
      if (!held) out.set(key, e);
    }
  }
  return [...out.values()];
}

const describe = (e: Pick<ProxyEntry, 'protocol' | 'hostPort'>): string => `${e.protocol} [::1]:${e.hostPort}`;
const describeOwner = (o: ProxyOwner): string => `container ${o.containerID} (network ${o.network}, ${o.ifname})`;

/** The ports listening on ::1 in the calling thread's namespace, as "tcp/8080", read from /proc (TCP: LISTEN; UDP: bound). */
export function loopback6Listening(): Set<string> {
  const out = new Set<string>();
  // ::1 as /proc prints it: four 32-bit words, each in host (little-endian) order
  const LO6 = '00000000000000000000000001000000';
  for (const [protocol, state] of [
    ['tcp', '0A'],
    ['udp', '07'],
  ] as const) {
    let text = '';
    try {
      text = fs.readFileSync(`/proc/thread-self/net/${protocol}6`, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 4 || f[3] !== state) continue;
      const [addr, port] = f[1].split(':');
      if (addr === LO6) out.add(`${protocol}/${parseInt(port, 16)}`);
    }
  }
  return out;
}

export interface PortProxyOptions {
  /** the records directory (default: the calling thread's namespace's, records.ts) */
  dir?: () => string;
  /** portmap's "port published by another" code */
  conflictCode: number;
  /** portmap's CHECK "mappings not installed" code */
  missingCode: number;
  /** how long ADD waits for the relay to serve its record (default 5 s) */
  timeoutMs?: number;
}

/** portmap's one call per verb. */
export interface PortProxy {
  /** Record the attachment's ::1 mappings and wait until the relay serves them (or forget its record when it has none). */
  add(req: ProxyRequest, log: (msg: string) => void): void;
  /** Forget the attachment's record; idempotent. */
  del(owner: ProxyOwner): void;
  /** The relay runs and listens on ::1 for every mapping of the attachment. */
  check(req: ProxyRequest): void;
  /** Forget the records of `network` whose attachment `valid` does not list. */
  gc(network: string, valid: ReadonlyArray<{ containerID: string; ifname: string }>): void;
}

export function portProxy(opts: PortProxyOptions): PortProxy {
  const dirOf = opts.dir ?? (() => portProxyDir());
  const timeoutMs = opts.timeoutMs ?? 5000;

  /** After a change at `serial`: a running relay reloads, and DEL returns once the port is closed. */
  function afterRemoval(dir: string, serial: number): void {
    if (!relayRunning(dir)) return;
    signalRelay(dir);
    waitStatus(dir, serial, 3000, { start: false });
  }

  function del(owner: ProxyOwner): void {
    const dir = dirOf();
    if (!fs.existsSync(dir)) return;
    const serial = withRecordsLock(dir, () => (removeRecord(dir, owner) ? bumpSerial(dir) : undefined));
    if (serial !== undefined) afterRemoval(dir, serial);
  }

  function add(req: ProxyRequest, log: (msg: string) => void): void {
    const entries = proxyEntries(req.mappings, req.addrs);
    if (entries.length === 0) return del(req.owner);
    const dir = dirOf();
    const file = recordFile(req.owner);
    const serial = withRecordsLock(dir, () => {
      // explicit ::1 ports another attachment's record names: refused here,
      // under the lock, so the answer never depends on which record the relay read first
      const mine = new Map(entries.map((e) => [`${e.protocol}/${e.hostPort}`, e]));
      for (const r of loadRecords(dir)) {
        if (r.file === file) continue;
        for (const held of r.record.entries) {
          const e = mine.get(`${held.protocol}/${held.hostPort}`);
          if (!e) continue;
          if (e.explicit) throw new CniError(opts.conflictCode, `host port ${describe(e)} is already published by ${describeOwner(r.record.owner)}`, 'nothing was applied');
          log(`portmap: ${describe(e)} is published on ::1 by ${describeOwner(r.record.owner)}: the wildcard mapping is served everywhere else`);
        }
      }
      if (!relayCommand()) {
        const msg = 'this process cannot start the ::1 port relay (not the cni-ts executable or bundle)';
        if (!entries.some((e) => e.explicit)) {
          log(`portmap: ${msg}: ::1 is not served`);
          return undefined;
        }
        throw new CniError(ErrorCode.TryAgainLater, msg);
      }
      // the record first, the serial last: the relay reloads when the serial
      // changes, and the status it then writes must cover this record
      putRecord(dir, { owner: req.owner, seq: readSerial(dir) + 1, ...(req.netns && { netns: req.netns }), entries });
      const seq = bumpSerial(dir);
      // under the lock: a relay deciding to exit for lack of records decides under it too
      ensureRelay(dir);
      return seq;
    });
    if (serial === undefined) return;
    const status = waitStatus(dir, serial, timeoutMs, { start: true });
    if (!status) {
      const msg = `the ::1 port relay did not serve ${describeOwner(req.owner)}'s mappings within ${timeoutMs} ms`;
      // wildcard mappings work without it (the kernel publishes them everywhere else); the record stays for the relay to catch up
      if (!entries.some((e) => e.explicit)) return log(`portmap: ${msg}; see ${dir}/relay.log`);
      throw new CniError(ErrorCode.TryAgainLater, msg, `see ${dir}/relay.log`);
    }
    for (const f of status.failed) {
      if (f.file !== file) continue;
      const e = entries.find((x) => x.protocol === f.protocol && x.hostPort === f.hostPort);
      if (!e) continue;
      if (e.explicit) throw new CniError(opts.conflictCode, `host port ${describe(e)} cannot be published: ${f.error === 'EADDRINUSE' ? 'another process listens there' : f.error}`, 'nothing was applied');
      log(`portmap: ${describe(e)} is not served (${f.error}); the wildcard mapping is served everywhere else`);
    }
  }

  function check(req: ProxyRequest): void {
    const entries = proxyEntries(req.mappings, req.addrs);
    if (entries.length === 0) return;
    const dir = dirOf();
    const file = recordFile(req.owner);
    const record = loadRecords(dir).find((r) => r.file === file)?.record;
    // wildcard mappings added before this host served ::1 (or by a process
    // that could not start the relay) have no record: the kernel serves them
    if (!record && !entries.some((e) => e.explicit)) return;
    const problems: string[] = [];
    const running = relayRunning(dir);
    if (!running) problems.push('the ::1 port relay is not running');
    const recorded = record?.entries ?? [];
    const status = running ? readStatus(dir) : undefined;
    const kernel = loopback6Listening();
    for (const e of entries) {
      const key = `${e.protocol}/${e.hostPort}`;
      const same = (x: { protocol: string; hostPort: number }) => x.protocol === e.protocol && x.hostPort === e.hostPort;
      if (!recorded.some((r) => same(r) && r.containerIP === e.containerIP && r.containerPort === e.containerPort)) {
        problems.push(`${describe(e)} is not recorded`);
        continue;
      }
      if (!running) continue;
      const served = status?.listening.some((l) => same(l) && l.file === file) ?? false;
      if (served && kernel.has(key)) continue;
      // a wildcard port someone else holds on ::1 was skipped at ADD, as logged then
      if (!e.explicit && status?.failed.some((f) => same(f) && f.file === file)) continue;
      problems.push(`${describe(e)} is not listening`);
    }
    if (problems.length) throw new CniError(opts.missingCode, `::1 port mappings of ${describeOwner(req.owner)} are not served`, problems.join('; '));
  }

  function gc(network: string, valid: ReadonlyArray<{ containerID: string; ifname: string }>): void {
    const dir = dirOf();
    if (!fs.existsSync(dir)) return;
    const keep = new Set(valid.map((a) => recordFile({ network, containerID: a.containerID, ifname: a.ifname })));
    const serial = withRecordsLock(dir, () => {
      let removed = false;
      for (const r of loadRecords(dir)) {
        if (r.record.owner.network !== network || keep.has(r.file)) continue;
        removed = removeRecord(dir, r.record.owner) || removed;
      }
      return removed ? bumpSerial(dir) : undefined;
    });
    if (serial !== undefined) afterRemoval(dir, serial);
  }

  return { add, del, check, gc };
}
