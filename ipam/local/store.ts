/**
 * The local store: allocations as files under dataDir/<network>/, laid out
 * as host-local lays them out, so an operator reads them the same way:
 *
 *   lock                         flock(2) target, shared with host-local's own lock file name
 *   10.1.0.5                     one file per address: "containerID\r\nifname"
 *   last_reserved_ip.0           per range set: the address last handed out (round-robin)
 *   owner@<id>@<ifname>@10.1.0.5 a hard link to the address file, named by its owner
 *
 * The owner links are ours (host-local scans and reads every address file to
 * find a container's addresses). Finding or releasing an owner's addresses
 * is then one readdir and no file reads; GC, the one caller that needs every
 * allocation, still reads the address files.
 *
 * Crash safety, i.e. what a kill -9 or power loss at any instruction leaves:
 *  - reserve writes and fsyncs the owner link's content first, then link(2)s
 *    the address file to it. link is atomic and fails if the address is
 *    taken, so an address file is either absent or complete, and always
 *    reachable from its owner's name. A crash before the link leaves an owner
 *    name whose address file is missing: every reader checks the two names
 *    share an inode, so it is ignored, and GC or the owner's DEL removes it.
 *  - last_reserved_ip.N is replaced by write-temp, rename, without an fsync:
 *    it is only round-robin's starting point, and a power cut that loses or
 *    tears it costs nothing but that (an unreadable value is no hint); a
 *    stale temp file is never read and GC removes it. One fsync less inside
 *    the lock, which every ADD on the network queues for.
 *  - the directory is fsynced before the lock is released, so whatever the
 *    next holder of the lock sees is also what survives a power loss.
 *  - the lock is flock(2) on an open file: the kernel drops it when the
 *    holder dies, so a killed plugin never leaves the network locked.
 *
 * Cost of an ADD: open/readdir/close, then per new address a stat, a
 * write+fsync, a link and the last_reserved rename, one directory fsync:
 * two fsyncs under the lock.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CniError, ErrorCode } from '../../shared/cni/errors';
import { LOCK_EX, LOCK_UN, flock } from '../../shared/sys/flock';
import { writeFileAtomic } from '../../shared/sys/file';
import type { Allocation, AllocationStore, Owner } from '../allocator';
import { formatIP, parseIP, type IP } from '../../shared/ip';

const LOCK_FILE = 'lock';
const LAST_RESERVED_PREFIX = 'last_reserved_ip.';
const OWNER_PREFIX = 'owner@';
const TMP_SUFFIX = '.tmp';
/** NAME_MAX on Linux file systems; longer owner keys are hashed */
const NAME_MAX = 255;

export interface LocalStoreOptions {
  /** flock(2); injectable so logic tests can run without the native binding */
  flock?: (fd: number, operation: number) => void;
}

export class LocalStore implements AllocationStore {
  private dirty = false;
  private locked = false;
  private closed = false;

  private constructor(
    /** dataDir/<network> */
    readonly dir: string,
    private readonly lockFd: number,
    private readonly flock: (fd: number, operation: number) => void,
  ) {}

  /** Opens (creating if needed) the store of one network; does not lock it. */
  static open(dataDir: string, network: string, options: LocalStoreOptions = {}): LocalStore {
    if (network === '' || network === '.' || network === '..' || network.includes('/')) {
      throw new CniError(ErrorCode.InvalidNetworkConfig, `invalid network name "${network}" for the local IPAM store`);
    }
    const dir = path.join(dataDir, network);
    let lockFd: number;
    try {
      const created = fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
      // A directory that appears in this call must itself survive a crash.
      if (created !== undefined) fsyncDir(path.dirname(dir));
      lockFd = fs.openSync(path.join(dir, LOCK_FILE), fs.constants.O_RDWR | fs.constants.O_CREAT, 0o644);
    } catch (err) {
      throw ioError(`open the store in ${dir}`, err);
    }
    return new LocalStore(dir, lockFd, options.flock ?? flock);
  }

  /**
   * Runs fn holding the network's file lock (flock(2) on dataDir/<network>/lock,
   * as host-local takes it, so the two never interleave), then fsyncs the
   * directory if fn changed it and releases the lock, however fn ends.
   */
  async withinOperation<T>(fn: () => Promise<T>): Promise<T> {
    if (this.closed) throw new CniError(ErrorCode.Internal, 'local IPAM store used after close');
    // flock on the same descriptor again would succeed at once, and the inner
    // release would then drop the outer operation's lock.
    if (this.locked) throw new CniError(ErrorCode.Internal, 'local IPAM store: an operation started inside another');
    // Blocking: a plugin has nothing else to do until it holds the lock, and
    // the kernel queues waiters without the latency of polling.
    this.flock(this.lockFd, LOCK_EX);
    this.locked = true;
    try {
      return await fn();
    } finally {
      try {
        if (this.dirty) {
          fsyncDir(this.dir);
          this.dirty = false;
        }
      } finally {
        this.locked = false;
        this.flock(this.lockFd, LOCK_UN);
      }
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // closing the descriptor drops the lock if an operation still held it
    fs.closeSync(this.lockFd);
  }

  async reserve(containerId: string, ifname: string, ip: IP, rangeSetId: string): Promise<boolean> {
    this.assertLocked();
    const name = formatIP(ip);
    const file = path.join(this.dir, name);
    // Cheap pre-check: round-robin probes taken addresses often, and those
    // must not cost a write and fsync each. link() below is the real test.
    if (fs.existsSync(file)) return false;
    const link = path.join(this.dir, ownerPrefix(containerId, ifname) + name);
    try {
      writeDurable(link, `${containerId.trim()}\r\n${ifname}`);
      this.dirty = true;
      try {
        fs.linkSync(link, file);
      } catch (err) {
        unlinkQuiet(link);
        if (errno(err) === 'EEXIST') return false;
        throw err;
      }
      replaceHint(path.join(this.dir, LAST_RESERVED_PREFIX + rangeSetId), name);
    } catch (err) {
      throw ioError(`reserve ${name}`, err);
    }
    return true;
  }

  async lastReserved(rangeSetId: string): Promise<IP | undefined> {
    let text: string;
    try {
      text = fs.readFileSync(path.join(this.dir, LAST_RESERVED_PREFIX + rangeSetId), 'utf8');
    } catch (err) {
      if (errno(err) === 'ENOENT') return undefined;
      throw ioError(`read ${LAST_RESERVED_PREFIX}${rangeSetId}`, err);
    }
    // An unreadable value only costs round-robin its starting point.
    return parseIP(text.trim());
  }

  async getByOwner(containerId: string, ifname: string): Promise<IP[]> {
    return this.ownerLinks(containerId, ifname)
      .filter((l) => l.live)
      .map((l) => l.ip);
  }

  async releaseByOwner(containerId: string, ifname: string): Promise<IP[]> {
    this.assertLocked();
    const released: IP[] = [];
    try {
      for (const l of this.ownerLinks(containerId, ifname)) {
        // Address file before owner link: a crash in between leaves a stale
        // owner link, which every reader already ignores.
        if (l.live) {
          fs.unlinkSync(path.join(this.dir, l.ipName));
          released.push(l.ip);
        }
        unlinkQuiet(path.join(this.dir, l.name));
        this.dirty = true;
      }
    } catch (err) {
      throw ioError(`release the addresses of ${containerId}/${ifname}`, err);
    }
    return released;
  }

  async listAll(): Promise<Allocation[]> {
    const out: Allocation[] = [];
    for (const name of this.readdir()) {
      const ip = addressFileName(name);
      if (!ip) continue;
      const owner = this.readOwner(name);
      if (owner) out.push({ ...owner, ip });
    }
    return out;
  }

  /**
   * Frees every address whose owner is not kept, then removes what
   * interrupted operations left: owner links whose address file is gone or
   * belongs to someone else, and temp files (no writer is active while we
   * hold the lock, so any temp file is stale).
   */
  async gc(keep: readonly Owner[]): Promise<Allocation[]> {
    this.assertLocked();
    const keepKeys = new Set(keep.map((o) => ownerKey(o.containerId, o.ifname)));
    // Files written by old host-local versions name only the container.
    const keepIds = new Set(keep.map((o) => o.containerId));
    const released: Allocation[] = [];
    try {
      const names = this.readdir();
      for (const name of names) {
        const ip = addressFileName(name);
        if (!ip) continue;
        const owner = this.readOwner(name);
        if (!owner) continue;
        const kept = owner.ifname === '' ? keepIds.has(owner.containerId) : keepKeys.has(ownerKey(owner.containerId, owner.ifname));
        if (kept) continue;
        fs.unlinkSync(path.join(this.dir, name));
        unlinkQuiet(path.join(this.dir, ownerPrefix(owner.containerId, owner.ifname) + name));
        released.push({ ...owner, ip });
        this.dirty = true;
      }
      for (const name of names) {
        if (name.endsWith(TMP_SUFFIX)) {
          unlinkQuiet(path.join(this.dir, name));
          this.dirty = true;
        } else if (name.startsWith(OWNER_PREFIX)) {
          const ipName = name.slice(name.lastIndexOf('@') + 1);
          if (!sameFile(path.join(this.dir, name), path.join(this.dir, ipName))) {
            unlinkQuiet(path.join(this.dir, name));
            this.dirty = true;
          }
        }
      }
    } catch (err) {
      throw ioError('collect garbage', err);
    }
    return released;
  }

  private ownerLinks(containerId: string, ifname: string): { name: string; ipName: string; ip: IP; live: boolean }[] {
    const prefix = ownerPrefix(containerId, ifname);
    const out: { name: string; ipName: string; ip: IP; live: boolean }[] = [];
    for (const name of this.readdir()) {
      if (!name.startsWith(prefix)) continue;
      const ipName = name.slice(prefix.length);
      const ip = addressFileName(ipName);
      if (!ip) continue;
      out.push({ name, ipName, ip, live: sameFile(path.join(this.dir, name), path.join(this.dir, ipName)) });
    }
    return out;
  }

  private readOwner(name: string): Owner | undefined {
    let text: string;
    try {
      text = fs.readFileSync(path.join(this.dir, name), 'utf8');
    } catch (err) {
      if (errno(err) === 'ENOENT') return undefined;
      throw ioError(`read ${name}`, err);
    }
    const [id = '', ifname = ''] = text.split('\r\n');
    return { containerId: id.trim(), ifname: ifname.trim() };
  }

  private readdir(): string[] {
    try {
      return fs.readdirSync(this.dir);
    } catch (err) {
      throw ioError(`list ${this.dir}`, err);
    }
  }

  private assertLocked(): void {
    if (!this.locked) throw new CniError(ErrorCode.Internal, 'local IPAM store modified without holding its lock');
  }
}

/** The address a file name stands for, if the name is exactly an address's canonical text. */
function addressFileName(name: string): IP | undefined {
  const ip = parseIP(name);
  return ip && formatIP(ip) === name ? ip : undefined;
}

function ownerKey(containerId: string, ifname: string): string {
  return `${escapeName(containerId.trim())}@${escapeName(ifname)}`;
}

/**
 * "owner@<id>@<ifname>@": '@' never survives escaping, so the parts cannot
 * run into each other. Keys too long for a file name (with an IPv6 address
 * appended) are replaced by their SHA-256; crypto is loaded only then.
 */
function ownerPrefix(containerId: string, ifname: string): string {
  let key = ownerKey(containerId, ifname);
  if (OWNER_PREFIX.length + key.length + 1 + 39 > NAME_MAX) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { createHash } = require('node:crypto') as typeof import('node:crypto');
    key = `sha256-${createHash('sha256').update(key).digest('hex')}`;
  }
  return `${OWNER_PREFIX}${key}@`;
}

/** Keeps [A-Za-z0-9_.-] (all a spec-conformant container ID uses); %XX for every other byte. */
function escapeName(s: string): string {
  return s.replace(/[^A-Za-z0-9_.-]/g, (c) =>
    Array.from(Buffer.from(c, 'utf8'), (b) => `%${b.toString(16).toUpperCase().padStart(2, '0')}`).join(''),
  );
}

function sameFile(a: string, b: string): boolean {
  try {
    const sa = fs.lstatSync(a);
    const sb = fs.lstatSync(b);
    return sa.ino === sb.ino && sa.dev === sb.dev;
  } catch (err) {
    if (errno(err) === 'ENOENT') return false;
    throw err;
  }
}

function writeDurable(file: string, data: string): void {
  const fd = fs.openSync(file, 'w', 0o644);
  try {
    fs.writeSync(fd, data);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Atomic replace of a hint: readers see the old content or the new, never a torn file (0644, as host-local's); not fsynced (see the header). */
function replaceHint(file: string, data: string): void {
  writeFileAtomic(file, data, { mode: 0o644, durable: false });
}

function fsyncDir(dir: string): void {
  const fd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

function unlinkQuiet(file: string): void {
  try {
    fs.unlinkSync(file);
  } catch (err) {
    if (errno(err) !== 'ENOENT') throw err;
  }
}

function errno(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}

function ioError(what: string, err: unknown): CniError {
  if (err instanceof CniError) return err;
  return new CniError(ErrorCode.Internal, `local IPAM store: cannot ${what}`, (err as Error | undefined)?.message ?? String(err));
}
