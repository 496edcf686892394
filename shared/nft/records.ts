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

export class FirewallRecords {
  /** `dir` is the table's own directory (see recordsFor). */
  constructor(private readonly dirOf: () => string) {}

  get dir(): string {
    return this.dirOf();
  }

  private file(key: string): string {
    return path.join(this.dir, `${createHash('sha256').update(key).digest('hex').slice(0, 32)}.json`);
  }

  /** Write (or replace) the record of `key` atomically; nothing is written when it already holds `value`. */
  put(key: string, value: unknown): void {
    const text = JSON.stringify({ key, value } satisfies FirewallRecord);
    const file = this.file(key);
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    writeFileAtomic(file, text, { unlessSame: true });
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
    let names: string[];
    try {
      names = fs.readdirSync(this.dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw e;
    }
    const out: FirewallRecord[] = [];
    for (const name of names) {
      if (!/^[0-9a-f]{32}\.json$/.test(name)) continue;
      try {
        const rec = JSON.parse(fs.readFileSync(path.join(this.dir, name), 'utf8')) as Partial<FirewallRecord>;
        if (typeof rec.key === 'string' && this.file(rec.key).endsWith(name)) out.push({ key: rec.key, value: rec.value });
      } catch {
        // a record removed while we listed, or not JSON: not a record
      }
    }
    return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }
}

/** The records of table `ref` in the namespace at netnsPath (the calling thread's by default), under root. */
export function recordsFor(ref: TableRef, opts: { root?: string; netnsPath?: string } = {}): FirewallRecords {
  // Resolved on use: a plugin that never writes a record never stats its namespace.
  return new FirewallRecords(() => path.join(opts.root ?? FIREWALL_STATE_DIR, netnsId(opts.netnsPath), `${ref.family}-${ref.table}`));
}
