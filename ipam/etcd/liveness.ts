/**
 * The host's liveness in the etcd IPAM, kept by a long-running process.
 *
 * A host's liveness key (P/alive/<node>, ./keys.ts) lives on an etcd lease.
 * CNI calls create it (./hosts.ts), but a host whose containers never
 * change makes no call for hours, and a runtime on cniVersion 1.0.0 never
 * calls STATUS or GC: the key would expire although the host is alive. So
 * the key is kept by whichever long-running process the host has: the
 * resident daemon (`cni-ts daemon`) or the overlay agent (`cni-ts
 * overlay-agent`); both may run, and then both keep it (one lease, renewed
 * twice as often: harmless).
 *
 * How the keeper knows what to keep: every etcd-IPAM store records how it
 * reaches etcd (endpoints, key prefix, node name, host ID, and the TLS and
 * password FILE paths, never a secret) in one file per (endpoints, key
 * prefix, node) under DEFAULT_LIVENESS_DIR, written atomically, 0600 in a
 * 0700 directory. The keeper reads every record, and for each one keeps the
 * alive key on a lease with etcd's keep-alive: after each renewal it waits a
 * third of the TTL etcd reports for the lease, so expiry is judged by etcd's
 * clock alone, never this host's wall clock. It writes the key only for a
 * node whose registration (P/hosts/<node>) holds this host's ID: a
 * decommissioned host's keeper does not bring it back (its next CNI call
 * registers it again), and it never fights another host over a name.
 *
 * Stopping the keeper does not revoke the lease: a daemon restart must not
 * make the host look gone. And liveness only ever informs: `ipam-maint`
 * frees nothing on its absence (see ./decommission.ts), so a keeper that is not
 * running costs a "suspect" line in the maintenance report, not addresses.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import { fieldsSchema, resolveConnection } from '../../shared/etcd/connection';
import { stderrLog, type Logger } from '../../shared/log';
import { LIVENESS_DIR } from '../../shared/paths';
import { writeFileAtomic } from '../../shared/sys/file';
import { aliveKey, aliveValueSchema, goneKey, hostKey, hostValueSchema, readRecord, type AliveValue } from './keys';
import { EtcdKV } from '../../shared/etcd/kv';

export const DEFAULT_LIVENESS_DIR = LIVENESS_DIR;

// taken out: a record never holds a password
const { password: _password, ...recordedFields } = fieldsSchema;

const recordSchema = z
  .object({
    // the connection fields as a config section has them, endpoints required (and never a password)
    ...recordedFields,
    endpoints: z.array(z.string().min(1)).min(1),
    keyPrefix: z.string().regex(/^\/[^\s]*[^/\s]$/),
    nodeName: z.string().min(1).max(253).regex(/^[A-Za-z0-9][A-Za-z0-9_.-]*$/),
    hostId: z.string().min(1).max(256),
    livenessTtlMs: z.number().int().min(2000),
    requestTimeoutMs: z.number().int().min(100),
  })
  .strict();

/** What a store records for the keeper: where its host's alive key is and how to reach it. */
export type StoreRecord = z.infer<typeof recordSchema>;

/**
 * Records a store's connection (the store calls this once per process).
 * The file is named after what identifies the alive key, so every network
 * of one node under one prefix shares one record; it is rewritten only when
 * its content changed, atomically (temp file 0600, then rename).
 */
export function recordStore(dir: string, record: StoreRecord): void {
  const text = `${JSON.stringify(recordSchema.parse(record), null, 1)}\n`;
  const id = createHash('sha256').update(JSON.stringify([[...record.endpoints].sort(), record.keyPrefix, record.nodeName])).digest('hex').slice(0, 32);
  const file = path.join(dir, `${id}.json`);
  writeFileAtomic(file, text, { mkdir: true, unlessSame: true });
}

export interface LivenessKeeperOptions {
  /** where the stores record themselves; default DEFAULT_LIVENESS_DIR */
  readonly dir?: string;
  /** aborting it stops the keeper (the leases are left to run out, not revoked) */
  readonly signal: AbortSignal;
  /** one line per event worth an operator's eye; default stderr */
  readonly log?: Logger;
  /** how often the directory is read again for new or changed records; default 10 s */
  readonly rescanMs?: number;
  /** filled in as the keeper goes: the records whose host it is keeping alive right now */
  readonly status?: KeeperStatus;
}

/** The records (files) being kept: from the keeper's first attempt on; a failed renewal takes its record out. */
export interface KeeperStatus {
  readonly kept: Set<string>;
}

/**
 * Keeps the liveness key of every store recorded in `dir` alive until
 * `signal` aborts. Resolves once stopped; never rejects (every failure is
 * logged and retried). Call it once per long-running process, without
 * awaiting it before the process is up:
 *
 *   const keeper = startLivenessKeeper({ signal: controller.signal, log });
 *   ... on shutdown: controller.abort(); await keeper;
 */
export async function startLivenessKeeper(options: LivenessKeeperOptions): Promise<void> {
  const dir = options.dir ?? DEFAULT_LIVENESS_DIR;
  const log = options.log ?? stderrLog;
  const rescanMs = options.rescanMs ?? 10_000;
  const running = new Map<string, { text: string; stop: AbortController; done: Promise<void> }>();
  while (!options.signal.aborted) {
    const found = readRecords(dir, log);
    for (const [file, r] of running) {
      if (found.get(file)?.text === r.text) continue;
      r.stop.abort();
      running.delete(file);
    }
    for (const [file, { text, record }] of found) {
      if (running.has(file)) continue;
      const stop = new AbortController();
      const onAbort = (): void => stop.abort();
      options.signal.addEventListener('abort', onAbort, { once: true });
      const done = keep(file, text, record, stop.signal, log, options.status).finally(() => options.signal.removeEventListener('abort', onAbort));
      running.set(file, { text, stop, done });
    }
    await sleep(rescanMs, options.signal);
  }
  for (const r of running.values()) r.stop.abort();
  await Promise.all([...running.values()].map((r) => r.done));
}

function readRecords(dir: string, log: Logger): Map<string, { text: string; record: StoreRecord }> {
  const out = new Map<string, { text: string; record: StoreRecord }>();
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return out; // no etcd store has run on this host yet
  }
  for (const name of names) {
    if (!name.endsWith('.json') || name.startsWith('.')) continue;
    const file = path.join(dir, name);
    try {
      const text = fs.readFileSync(file, 'utf8');
      const parsed = recordSchema.safeParse(JSON.parse(text));
      if (parsed.success) out.set(file, { text, record: parsed.data });
      else log(`liveness: skipping malformed record ${file}: ${parsed.error.issues[0]!.path.join('.')}: ${parsed.error.issues[0]!.message}`);
    } catch (err) {
      log(`liveness: skipping unreadable record ${file}: ${(err as Error).message}`);
    }
  }
  return out;
}

/**
 * Keeps one record's alive key until `signal` aborts, or until etcd says the
 * node name is not this host's (decommissioned, or another host's): then the
 * record is removed, and the host's next CNI call, which registers it again,
 * writes it again.
 */
async function keep(file: string, text: string, record: StoreRecord, signal: AbortSignal, log: Logger, status?: KeeperStatus): Promise<void> {
  const ttlMs = record.livenessTtlMs;
  // etcd unreachable: retry from 1 s, doubling, up to a sixth of the TTL (at most a minute)
  const maxRetryMs = Math.max(1000, Math.min(60_000, Math.floor(ttlMs / 6)));
  let retryMs = 1000;
  let kv: EtcdKV | undefined;
  let lastProblem = '';
  const report = (problem: string): void => {
    // one line per change of state, not one per retry
    if (problem !== lastProblem && problem !== '') log(`liveness: ${record.nodeName} under ${record.keyPrefix} (${file}): ${problem}`);
    lastProblem = problem;
  };
  // Counted as kept from the start: the first renewal (loading etcd3, a slow
  // etcd) can take seconds, and a daemon asked to idle out must not leave in
  // that window; a failed attempt takes the record out again.
  status?.kept.add(file);
  while (!signal.aborted) {
    let waitMs = retryMs;
    try {
      kv ??= new EtcdKV({ ...resolveConnection(record, `liveness record ${file}`), requestTimeoutMs: record.requestTimeoutMs });
      const r = await tick(kv, record);
      retryMs = 1000;
      if (r.notOurs) {
        report(`${r.notOurs}; record removed (the next CNI call of this node records it again)`);
        removeIfUnchanged(file, text);
        break;
      }
      waitMs = r.waitMs;
      status?.kept.add(file);
      report('');
    } catch (err) {
      status?.kept.delete(file);
      report((err as Error).message);
      retryMs = Math.min(maxRetryMs, retryMs * 2);
    }
    await sleep(waitMs, signal);
  }
  status?.kept.delete(file);
  kv?.close();
}

/**
 * One renewal: keep the alive key's lease alive when the key is this
 * host's, else put the key on a new lease (compare-and-swap on what was
 * read). Returns how long to wait: a third of the TTL etcd reported.
 */
async function tick(kv: EtcdKV, record: StoreRecord): Promise<{ waitMs: number; notOurs?: string }> {
  const ttlMs = record.livenessTtlMs;
  const deadline = Date.now() + record.requestTimeoutMs;
  const hk = hostKey(record.keyPrefix, record.nodeName);
  const ak = aliveKey(record.keyPrefix, record.nodeName);
  const quiet = (): void => {};
  const { results } = await kv.txn({ success: [{ get: hk }, { get: ak }] }, deadline);
  const registration = results[0]![0] && readRecord(hostValueSchema, results[0]![0], quiet);
  if (registration?.hostId !== record.hostId) {
    return {
      waitMs: 0,
      notOurs: registration ? `node name registered by another host (${registration.hostId}); not kept` : 'not registered (decommissioned?); not kept',
    };
  }
  const alive = results[1]![0];
  const value = alive && readRecord(aliveValueSchema, alive, quiet);
  if (alive && value?.hostId === record.hostId && alive.lease !== '0') {
    const ttl = await kv.leaseKeepAlive(alive.lease, deadline);
    if (ttl > 0) return { waitMs: Math.floor((ttl * 1000) / 3) };
  }
  // Missing, not ours, or its lease ran out: a new lease with the key on it.
  const ttlSeconds = Math.ceil(ttlMs / 1000);
  const lease = await kv.leaseGrant(ttlSeconds, deadline);
  const next: AliveValue = { hostId: record.hostId, renewAfter: Date.now() + Math.floor(ttlMs / 2) };
  const r = await kv.txn(
    {
      compare: [alive ? { key: ak, target: 'mod', value: alive.modRevision } : { key: ak, target: 'version', value: 0n }],
      success: [
        { put: ak, value: JSON.stringify(next), lease },
        { delete: goneKey(record.keyPrefix, record.nodeName), prefix: true },
      ],
    },
    deadline,
  );
  // Lost to a CNI call putting it at the same moment: adopt its lease at once.
  return { waitMs: r.succeeded ? Math.floor((ttlSeconds * 1000) / 3) : 0 };
}

/** Removes the record, unless a store rewrote it since it was read. */
function removeIfUnchanged(file: string, text: string): void {
  try {
    if (fs.readFileSync(file, 'utf8') === text) fs.unlinkSync(file);
  } catch {
    // already gone
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
  });
}

