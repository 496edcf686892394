/**
 * The ::1 relay's records (what `cni-ts port-proxy` serves) and its status
 * (what it actually serves), on disk:
 *
 *   /run/cni-ts/port-proxy/<netns>/
 *     records.lock          writers' flock (portmap ADD/DEL/GC, the relay's exit decision)
 *     serial                bumped by every change, under the lock
 *     <sha256(owner)>.json  one attachment's mappings: {owner, seq, entries}
 *     status.json           the relay: the serial it loaded, what listens, what could not bind
 *     relay.lock, relay.pid, relay.log   the relay's own (launch.ts)
 *
 * <netns> is the network namespace the relay serves ("<st_dev>-<st_ino>",
 * shared/nft/records.ts' netnsId): ::1 is per namespace, and a test's "host"
 * namespace must never share a relay with the real host.
 *
 * Records are written whole and renamed (shared/sys/file.ts), 0600 in 0700
 * directories, so the relay reads without the lock and only ever sees whole
 * files. Everything read back is validated (zod): a corrupt or foreign file
 * is skipped, and a target on loopback, unspecified or multicast is refused,
 * so no record can make the relay connect to the host's own services.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import { netnsId } from '../nft/records';
import { canonicalIp, isIp } from '../netlink/ipaddr';
import { PORT_PROXY_DIR } from '../paths';
import { withFileLock } from '../sys';
import { writeFileAtomic } from '../sys/file';

/** Every namespace's relay directory lives under this one. */
export const PORT_PROXY_ROOT = PORT_PROXY_DIR;

/** The relay directory of a network namespace (default: the calling thread's). */
export function portProxyDir(netns?: string): string {
  return path.join(PORT_PROXY_ROOT, netnsId(netns));
}

export const RECORDS_LOCK = 'records.lock';
export const SERIAL_FILE = 'serial';
export const STATUS_FILE = 'status.json';

export type ProxyProtocol = 'tcp' | 'udp';

/** A container address the relay may connect to: a unicast address, never the host's own loopback. */
function isRelayTarget(ip: string): boolean {
  if (!isIp(ip)) return false;
  const c = canonicalIp(ip);
  if (c === '::' || c === '::1' || c === '0.0.0.0') return false;
  if (/^127\./.test(c) || /^::ffff:127\./.test(c)) return false;
  if (/^(22[4-9]|23\d|24\d|25[0-5])\./.test(c) || /^ff/i.test(c)) return false;
  return true;
}

const port = z.number().int().min(1).max(65535);

export const entrySchema = z.object({
  protocol: z.enum(['tcp', 'udp']),
  /** served on [::1]:hostPort, and only there */
  hostPort: port,
  containerIP: z.string().refine(isRelayTarget, 'not a container address the relay may reach'),
  containerPort: port,
  /** hostIP "::1" (true): the ADD fails when the port cannot be bound; a wildcard mapping (false) is skipped then */
  explicit: z.boolean(),
});
export type ProxyEntry = z.infer<typeof entrySchema>;

export const ownerSchema = z.object({
  network: z.string().min(1).max(256),
  containerID: z.string().min(1).max(256),
  ifname: z.string().min(1).max(64),
});
export type ProxyOwner = z.infer<typeof ownerSchema>;

export const recordSchema = z.object({
  owner: ownerSchema,
  /** the serial this record was written at: earlier records win a contested port */
  seq: z.number().int().min(0),
  /** the container's network namespace (CNI_NETNS): once it is gone, so is the record (pruneGone) */
  netns: z.string().max(4096).optional(),
  entries: z.array(entrySchema).max(65535 * 2),
});
export type ProxyRecord = z.infer<typeof recordSchema>;

const listenSchema = z.object({ protocol: z.enum(['tcp', 'udp']), hostPort: port, file: z.string() });
export const statusSchema = z.object({
  serial: z.number().int().min(0),
  pid: z.number().int(),
  listening: z.array(listenSchema),
  failed: z.array(listenSchema.extend({ error: z.string() })),
});
export type ProxyStatus = z.infer<typeof statusSchema>;

/** The record file of an owner: a digest, so no owner's text can name a path. */
export function recordFile(owner: ProxyOwner): string {
  return `${createHash('sha256').update(`${owner.network}\n${owner.containerID}\n${owner.ifname}`).digest('hex').slice(0, 32)}.json`;
}

const RECORD_RE = /^[0-9a-f]{32}\.json$/;

/** Runs fn holding the writers' lock of `dir` (created 0700 when missing). */
export function withRecordsLock<T>(dir: string, fn: () => T): T {
  return withFileLock(path.join(dir, RECORDS_LOCK), fn);
}

export function readSerial(dir: string): number {
  try {
    const n = Number(fs.readFileSync(path.join(dir, SERIAL_FILE), 'utf8').trim());
    return Number.isSafeInteger(n) && n >= 0 ? n : 0;
  } catch {
    return 0;
  }
}

/** Called holding the lock: the next serial, written. */
export function bumpSerial(dir: string): number {
  const n = readSerial(dir) + 1;
  writeFileAtomic(path.join(dir, SERIAL_FILE), `${n}\n`, { mkdir: true });
  return n;
}

/** Called holding the lock. */
export function putRecord(dir: string, record: ProxyRecord): void {
  writeFileAtomic(path.join(dir, recordFile(record.owner)), JSON.stringify(recordSchema.parse(record)), { mkdir: true });
}

/** Called holding the lock; true when there was a record to remove. */
export function removeRecord(dir: string, owner: ProxyOwner): boolean {
  const file = path.join(dir, recordFile(owner));
  if (!fs.existsSync(file)) return false;
  fs.rmSync(file, { force: true });
  return true;
}

export interface LoadedRecord {
  file: string;
  record: ProxyRecord;
}

/** Every valid record of `dir`, in file-name order; anything else is skipped. */
export function loadRecords(dir: string, log?: (msg: string) => void): LoadedRecord[] {
  let names: string[];
  try {
    names = fs.readdirSync(dir).sort();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
  const out: LoadedRecord[] = [];
  for (const name of names) {
    if (!RECORD_RE.test(name)) continue;
    try {
      const record = recordSchema.parse(JSON.parse(fs.readFileSync(path.join(dir, name), 'utf8')));
      // a record must sit under its owner's name: a copied file is not trusted
      if (recordFile(record.owner) !== name) throw new Error('file name does not match its owner');
      out.push({ file: name, record });
    } catch (e) {
      log?.(`port-proxy: skipping record ${name}: ${(e as Error).message}`);
    }
  }
  return out;
}

/**
 * Forget the records whose container's network namespace is gone (a
 * container that died without DEL, a test's deleted namespace), so their
 * ports close and a relay with nothing left exits instead of living on in a
 * namespace nobody uses. Asynchronous stat: a path that hangs (a stuck
 * filesystem) must not stop the relay's event loop. Returns the new serial
 * when something was removed.
 */
export async function pruneGone(dir: string, log: (msg: string) => void): Promise<number | undefined> {
  const gone: LoadedRecord[] = [];
  for (const r of loadRecords(dir)) {
    const ns = r.record.netns;
    if (!ns || !path.isAbsolute(ns)) continue;
    try {
      await fs.promises.stat(ns);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') gone.push(r);
    }
  }
  if (gone.length === 0) return undefined;
  return withRecordsLock(dir, () => {
    let removed = false;
    for (const r of gone) {
      // still the record we saw, not one a new ADD wrote since
      const now = loadRecords(dir).find((x) => x.file === r.file);
      if (!now || now.record.seq !== r.record.seq) continue;
      removed = removeRecord(dir, r.record.owner) || removed;
      log(`port-proxy: ${r.record.netns} is gone: forgot the ports of container ${r.record.owner.containerID} (network ${r.record.owner.network})`);
    }
    return removed ? bumpSerial(dir) : undefined;
  });
}

export function writeStatus(dir: string, status: ProxyStatus): void {
  writeFileAtomic(path.join(dir, STATUS_FILE), JSON.stringify(status));
}

export function readStatus(dir: string): ProxyStatus | undefined {
  try {
    return statusSchema.parse(JSON.parse(fs.readFileSync(path.join(dir, STATUS_FILE), 'utf8')));
  } catch {
    return undefined;
  }
}
