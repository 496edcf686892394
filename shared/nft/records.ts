/**
 * Firewall records: what an owned table was built from, kept on disk so
 * that `cni-ts firewall-reload` (and the daemon's table watch) can rebuild
 * the table after `nft flush ruleset` without any container being re-added,
 * as netavark keeps its firewall state for `netavark firewall-reload`.
 *
 *   /run/cni-ts/firewall/<netns>/<family>-<table>/<sha256(key)>.json   {"key": ..., "value": ...}
 *
 * <netns> is the network namespace whose nf_tables the table lives in
 * ("<st_dev>-<st_ino>-<cookie>" of its nsfs file and its SO_NETNS_COOKIE:
 * the kernel reuses a freed namespace's inode, never its cookie, so the
 * records of a namespace that is gone are never read back into a later one
 * that happens to get its inode): plugins may run for several
 * "hosts" (a test's namespace, a nested node), and a reload must only ever
 * rebuild the tables of its own namespace from that namespace's records.
 * Volatile (tmpfs) on purpose: the containers the records describe do not
 * survive a reboot either.
 *
 * One file per owner (a network, an attachment), written whole to a
 * temporary file and renamed over the old one, so a reader sees the old
 * record or the new one, never half of either; 0600 in a 0700 directory.
 * The file name is a digest of the key, so no key can name a path. Values
 * are read back with the owner's zod schema: a record is trusted no more
 * than a config.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FIREWALL_STATE_DIR } from '../paths';
import type { TableRef } from './types';
import { writeFileAtomic } from '../sys/file';
import { native } from '../sys/native';

export interface FirewallRecord {
  key: string;
  value: unknown;
}

/** "<st_dev>-<st_ino>-<netns cookie>" of a network namespace file; default: the calling thread's. */
export function netnsId(netnsPath = '/proc/thread-self/ns/net'): string {
  const fd = fs.openSync(netnsPath, 'r');
  try {
    const st = fs.fstatSync(fd);
    return `${st.dev}-${st.ino}-${native().netnsCookie(fd)}`;
  } finally {
    fs.closeSync(fd);
  }
}

/** A record's file name: a digest of its key, so no key can name a path. */
function fileNameOf(key: string): string {
  return `${createHash('sha256').update(key).digest('hex').slice(0, 32)}.json`;
}

export class FirewallRecords {
  /** `dir` is the table's own directory (see recordsFor). */
  constructor(private readonly dirOf: () => string) {}

  get dir(): string {
    return this.dirOf();
  }

  /** The record file of `key` in `dir` (the table's directory, resolved once per operation: it stats the namespace). */
  private file(key: string, dir = this.dir): string {
    return path.join(dir, fileNameOf(key));
  }

  /** Write (or replace) the record of `key` atomically; nothing is written when it already holds `value`. */
  put(key: string, value: unknown): void {
    const text = JSON.stringify({ key, value } satisfies FirewallRecord);
    const dir = this.dir;
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    writeFileAtomic(this.file(key, dir), text, { unlessSame: true });
  }

  /** The record of `key` alone (one file read); undefined when there is none or it is not a record of that key. */
  get(key: string): FirewallRecord | undefined {
    try {
      const rec = JSON.parse(fs.readFileSync(this.file(key), 'utf8')) as Partial<FirewallRecord>;
      return rec.key === key ? { key, value: rec.value } : undefined;
    } catch {
      return undefined;
    }
  }

  /** Remove the record of `key`; a missing record is fine (DEL is idempotent). */
  remove(key: string): void {
    fs.rmSync(this.file(key), { force: true });
  }

  /** Every record, in key order; files that are not records (a torn temporary, a stray) are skipped. */
  all(): FirewallRecord[] {
    const dir = this.dir;
    let names: string[];
    try {
      names = fs.readdirSync(dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw e;
    }
    const out: FirewallRecord[] = [];
    const listed = new Set<string>();
    for (const name of names) {
      if (!/^[0-9a-f]{32}\.json$/.test(name)) continue;
      const file = path.join(dir, name);
      listed.add(file);
      try {
        const rec = readRecord(file, name);
        if (rec) out.push(rec);
      } catch {
        // a record removed while we listed, or not JSON: not a record
      }
    }
    forgetUnlisted(dir, listed);
    return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }
}

/**
 * Records read before, by file, for a process that reads them again and
 * again (a daemon worker: every portmap ADD reads every record of the
 * table). A record is only ever replaced by renaming a new file over it, so
 * a file whose inode, size and times are unchanged holds what was read
 * last time; the stat costs less than reading and parsing it again. The
 * object handed out is the same while the file is (readers of records never
 * change them: see recordedPlans, which keeps its own checked copy by it).
 */
const readBefore = new Map<string, { stamp: string; rec: FirewallRecord | undefined }>();
const RACY_MS = 100;

/** The record in `file` (named `name`), or undefined when it is not a record of the key its name is the digest of. */
function readRecord(file: string, name: string): FirewallRecord | undefined {
  const st = fs.statSync(file, { bigint: true });
  const stamp = `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
  const before = readBefore.get(file);
  if (before?.stamp === stamp) return before.rec;
  // Read after the stat: if the file was replaced in between, the newer
  // content is kept under the older stamp, and the next read reads again.
  const parsed = JSON.parse(fs.readFileSync(file, 'utf8')) as Partial<FirewallRecord>;
  const rec = typeof parsed.key === 'string' && fileNameOf(parsed.key) === name ? { key: parsed.key, value: parsed.value } : undefined;
  // File times tick coarsely (a few ms): a file changed in place within the
  // same tick as this read would keep its stamp. Only a file left alone for
  // a while is kept (git's "racily clean" rule).
  if (Date.now() - Number(st.mtimeNs / 1_000_000n) > RACY_MS) readBefore.set(file, { stamp, rec });
  else readBefore.delete(file);
  return rec;
}

/** Drop what was read before from files of dir that are gone. */
function forgetUnlisted(dir: string, listed: ReadonlySet<string>): void {
  const prefix = dir + path.sep;
  for (const file of readBefore.keys()) if (file.startsWith(prefix) && !listed.has(file)) readBefore.delete(file);
}

/** The records of table `ref` in the namespace at netnsPath (the calling thread's by default), under root. */
export function recordsFor(ref: TableRef, opts: { root?: string; netnsPath?: string } = {}): FirewallRecords {
  // Resolved on use: a plugin that never writes a record never stats its namespace.
  return new FirewallRecords(() => path.join(opts.root ?? FIREWALL_STATE_DIR, netnsId(opts.netnsPath), `${ref.family}-${ref.table}`));
}
