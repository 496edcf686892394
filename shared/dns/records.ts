/**
 * The resolver's records on disk: one directory per network under the data
 * directory (default /run/cni-ts/dns), holding the network's description
 * (network.json: where the resolver listens, the subnets it answers, the
 * domain, upstream, internal) and one file per attachment (its names and
 * addresses). Plugins write, the resolver (server.ts) reads.
 *
 * Crash safety: every file is written to a temporary name and renamed
 * (atomic on one filesystem), and writers hold the directory's lock
 * (withFileLock), so a killed plugin leaves either the old file or the new
 * one, never half of one, and two plugins never interleave a
 * read-modify-write of the same network. The resolver reads without the
 * lock: it only ever sees whole files. Records read back are validated
 * (zod): a corrupt or foreign file is skipped, never trusted.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import { isIp } from '../netlink/ipaddr';
import { withFileLock } from '../sys';
import { isDnsName } from './config';
import { writeFileAtomic } from '../sys/file';
import { clusterRefSchema } from './cluster';

const ip = z.string().refine(isIp, 'not an IP address');
const cidr = z.string().regex(/^[0-9a-fA-F:.]+\/\d{1,3}$/);

export const networkSchema = z.object({
  name: z.string().regex(/^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/).max(128),
  domain: z.string().refine(isDnsName),
  internal: z.boolean(),
  /** where the resolver answers for this network: its gateway addresses */
  listen: z.array(ip).max(16),
  /** only sources inside these are answered */
  subnets: z.array(cidr).min(1).max(16),
  /** overrides /etc/resolv.conf for forwarded names */
  upstream: z.array(z.string()).max(8).optional(),
  /**
   * the listen address is shared with other networks (the overlay's gateway
   * bridge): a source is served only when an entry of this network lists it
   * in `clients`
   */
  clientsOnly: z.boolean().optional(),
  /** the network's names are cluster-wide: where in etcd (cluster.ts) */
  cluster: clusterRefSchema.optional(),
});
export type DnsNetwork = z.infer<typeof networkSchema>;

/**
 * A container's network namespace as ADD saw it (CNI_NETNS, its device and
 * inode, and its SO_NETNS_COOKIE as decimal text): where a 127.0.0.11
 * listener goes (netns-listener.ts). The kernel reuses a freed namespace's
 * inode, never its cookie (unique for the boot), so only the three together
 * name one namespace. A record without the cookie (written before it was
 * kept) fails this schema: it is skipped as any invalid record, and no
 * listener is opened for it.
 */
export const netnsRefSchema = z.object({
  path: z.string().startsWith('/').max(4096),
  dev: z.number().int().nonnegative(),
  ino: z.number().int().nonnegative(),
  cookie: z.string().regex(/^[1-9][0-9]{0,19}$/),
});
export type NetnsRef = z.infer<typeof netnsRefSchema>;

export const entrySchema = z.object({
  containerId: z.string().min(1).max(256),
  ifname: z.string().min(1).max(16),
  /** the container's name and aliases (the short ID is derived from containerId) */
  names: z.array(z.string().refine(isDnsName)).max(64),
  v4: z.array(ip).max(16),
  v6: z.array(ip).max(16),
  /** set on networks answered at 127.0.0.11 inside the container (macvlan, ipvlan): the container's namespace */
  netns: netnsRefSchema.optional(),
  /** the addresses this attachment asks from, on a clientsOnly network */
  clients: z.array(ip).max(16).optional(),
});
export type DnsEntry = z.infer<typeof entrySchema>;

export interface LoadedNetwork extends DnsNetwork {
  entries: DnsEntry[];
}

const NETWORK_FILE = 'network.json';
/** bumped by every change (under the lock); the resolver writes the serial it has loaded to LOADED_FILE */
export const SERIAL_FILE = 'serial';
export const LOADED_FILE = 'loaded';

export function readSerial(dir: string, file = SERIAL_FILE): number {
  try {
    const n = Number(fs.readFileSync(path.join(dir, file), 'utf8').trim());
    return Number.isSafeInteger(n) && n >= 0 ? n : 0;
  } catch {
    return 0;
  }
}

/** Called holding the lock: the next serial, written. */
function bumpSerial(dir: string): number {
  const n = readSerial(dir) + 1;
  writeAtomic(path.join(dir, SERIAL_FILE), `${n}\n`);
  return n;
}

/** The resolver: records which serial it now serves. */
export function writeLoaded(dir: string, serial: number): void {
  writeAtomic(path.join(dir, LOADED_FILE), `${serial}\n`);
}

function netDir(dir: string, network: string): string {
  if (!/^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/.test(network)) throw new Error(`bad network name ${JSON.stringify(network)}`);
  return path.join(dir, 'networks', network);
}

/** One attachment's file name: its container ID and interface, hashed (fixed length, no path characters). */
export function entryFile(containerId: string, ifname: string): string {
  return `${createHash('sha256').update(`${containerId}/${ifname}`).digest('hex').slice(0, 24)}.json`;
}

function writeAtomic(file: string, data: string): void {
  writeFileAtomic(file, data);
}

/** The records directory's lock (writers hold it; the resolver only to decide it may exit). */
export function withLock<T>(dir: string, fn: () => T): T {
  return withFileLock(path.join(dir, 'lock'), fn);
}

/**
 * ADD: (re)writes the network's description and the attachment's record.
 * `then` runs still holding the lock (starting or signalling the resolver:
 * a resolver deciding to exit because it has nothing to serve takes the
 * same lock, so it cannot exit between our write and our signal).
 */
export function putEntry(dir: string, network: DnsNetwork, entry: DnsEntry, then: () => void = () => {}): number {
  const net = networkSchema.parse(network);
  const e = entrySchema.parse(entry);
  return withLock(dir, () => {
    const d = netDir(dir, net.name);
    fs.mkdirSync(d, { recursive: true, mode: 0o700 });
    writeAtomic(path.join(d, NETWORK_FILE), JSON.stringify(net));
    writeAtomic(path.join(d, entryFile(e.containerId, e.ifname)), JSON.stringify(e));
    const serial = bumpSerial(dir);
    then();
    return serial;
  });
}

/**
 * DEL: removes the attachment's record (absent is fine: DEL is idempotent);
 * the network's directory goes with its last record, so the resolver stops
 * listening there. Returns the new serial, or undefined when nothing changed.
 */
export function removeEntry(dir: string, network: string, containerId: string, ifname: string): number | undefined {
  return withLock(dir, () => removeWhere(dir, network, (f) => f === entryFile(containerId, ifname)));
}

/** GC: removes every record of the network whose attachment is not in valid. */
export function gcEntries(dir: string, network: string, valid: ReadonlyArray<{ containerID: string; ifname: string }>): number | undefined {
  const keep = new Set(valid.map((a) => entryFile(a.containerID, a.ifname)));
  return withLock(dir, () => removeWhere(dir, network, (f) => !keep.has(f)));
}

function removeWhere(dir: string, network: string, drop: (file: string) => boolean): number | undefined {
  const d = netDir(dir, network);
  let files: string[];
  try {
    files = fs.readdirSync(d);
  } catch {
    return undefined;
  }
  let changed = false;
  for (const f of files) {
    if (f === NETWORK_FILE || !f.endsWith('.json')) continue;
    if (drop(f)) {
      fs.rmSync(path.join(d, f), { force: true });
      changed = true;
    }
  }
  if (!fs.readdirSync(d).some((f) => f !== NETWORK_FILE && f.endsWith('.json'))) {
    fs.rmSync(d, { recursive: true, force: true });
    changed = true;
  }
  return changed ? bumpSerial(dir) : undefined;
}

/** The records of one attachment, or undefined. */
export function getEntry(dir: string, network: string, containerId: string, ifname: string): DnsEntry | undefined {
  return readJson(path.join(netDir(dir, network), entryFile(containerId, ifname)), entrySchema);
}

function readJson<T>(file: string, schema: z.ZodType<T, z.ZodTypeDef, unknown>): T | undefined {
  try {
    const parsed = schema.safeParse(JSON.parse(fs.readFileSync(file, 'utf8')));
    return parsed.success ? parsed.data : undefined;
  } catch {
    return undefined;
  }
}

/** Every network with its records, as the resolver serves them; unreadable files are skipped. */
export function loadAll(dir: string, warn: (msg: string) => void = () => {}): LoadedNetwork[] {
  const root = path.join(dir, 'networks');
  let names: string[];
  try {
    names = fs.readdirSync(root);
  } catch {
    return [];
  }
  const out: LoadedNetwork[] = [];
  for (const name of names) {
    const d = path.join(root, name);
    const net = readJson(path.join(d, NETWORK_FILE), networkSchema);
    if (!net || net.name !== name) {
      warn(`dns: skipping network directory ${name}: no valid ${NETWORK_FILE}`);
      continue;
    }
    const entries: DnsEntry[] = [];
    let files: string[] = [];
    try {
      files = fs.readdirSync(d);
    } catch {
      continue;
    }
    for (const f of files) {
      if (f === NETWORK_FILE || !/^[0-9a-f]{24}\.json$/.test(f)) continue;
      const e = readJson(path.join(d, f), entrySchema);
      if (e) entries.push(e);
      else warn(`dns: skipping invalid record ${name}/${f}`);
    }
    out.push({ ...net, entries });
  }
  return out;
}
