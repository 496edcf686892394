/**
 * realNft: the Nft seam backed by the nft binary.
 *
 * One process per operation: run() pipes the whole Transaction into one
 * `nft -f -` (the kernel commits the batch atomically), list() is one
 * `nft -j -a list table`. Nothing is listed unless a caller asks.
 * elements() starts no process: set/map elements go to the kernel as one
 * nfnetlink batch (shared/netlink/nft-elements.ts), its NetlinkErrors
 * turned into NftErrors of the kinds nft's messages give.
 *
 * Namespaces: with `netnsPath`, the JavaScript thread enters the namespace
 * (withNetns) around spawnSync. spawnSync forks from that thread, so the
 * nft child starts in the namespace and its netlink socket talks to that
 * namespace's nf_tables; then the thread comes back. This is why the API is
 * synchronous: an async spawn would fork from libuv's machinery on a thread
 * that never entered the namespace.
 *
 * CNI runtimes may exec plugins with a bare environment (no PATH), so the
 * binary is looked up in the usual sbin directories first. LC_ALL=C keeps
 * strerror texts untranslated, which errors.ts relies on.
 */
import { spawnSync } from '../spawn';
import * as fs from 'node:fs';
import { withNetns } from '../netns/netns';
import { NftError, kindOf, parseNftFailure } from './errors';

/** strerror texts of the errnos an element batch meets, as nft prints them (errors.ts derives the kind). */
const ERRNO_TEXT: Record<number, string> = { 2: 'No such file or directory', 16: 'Device or resource busy', 17: 'File exists', 22: 'Invalid argument', 95: 'Operation not supported' };
import type {
  ElementOp,
  SetLayout,
  ChainType,
  Family,
  Hook,
  ListedChain,
  ListedElement,
  ListedRule,
  ListedSet,
  Listing,
  Nft,
  Policy,
  SetFlag,
} from './nft-interface';
import { FAMILIES, nameProblem, type Transaction } from './transaction';
import { OwnedTable } from './table';
import { recordsFor } from './records';
import type { TableRef } from './types';
import { nftGetChain, nftListTable } from '../netlink/nftables';
import { nftElementBatch } from '../netlink/nft-elements';
import { NetlinkError } from '../netlink/errors';

export interface RealNftOptions {
  /** Run nft inside this network namespace (a /var/run/netns/X or /proc/PID/ns/net path). */
  netnsPath?: string;
  /** The nft binary; default: the first of /usr/sbin/nft, /sbin/nft, /usr/bin/nft, /usr/local/sbin/nft, else "nft" on PATH. */
  nftPath?: string;
}

const CANDIDATES = ['/usr/sbin/nft', '/sbin/nft', '/usr/bin/nft', '/usr/local/sbin/nft'];
let defaultBinary: string | undefined;

function findNft(): string {
  defaultBinary ??= CANDIDATES.find((p) => fs.existsSync(p)) ?? 'nft';
  return defaultBinary;
}

export function realNft(opts: RealNftOptions = {}): Nft {
  return new RealNft(opts.nftPath ?? findNft(), opts.netnsPath);
}

class RealNft implements Nft {
  constructor(
    private readonly binary: string,
    private readonly netnsPath: string | undefined,
  ) {}

  run(tx: Transaction): void {
    const script = tx.render();
    if (tx.size === 0) return;
    this.exec(['-f', '-'], script);
  }

  check(tx: Transaction): void {
    const script = tx.render();
    if (tx.size === 0) return;
    this.exec(['-c', '-f', '-'], script);
  }

  list(family: Family, table: string): Listing | undefined {
    const problem = !FAMILIES.includes(family) ? `unknown family "${family}"` : nameProblem(table);
    if (problem) throw new NftError('invalid', problem, '', -1);
    try {
      return parseListing(this.exec(['-j', '-a', 'list', 'table', family, table]), family, table);
    } catch (err) {
      if (err instanceof NftError && err.kind === 'not-found') return undefined;
      throw err;
    }
  }

  elements(family: Family, table: string, layouts: Readonly<Record<string, SetLayout>>, ops: readonly ElementOp[]): void {
    try {
      nftElementBatch(family, table, layouts, ops, this.netnsPath);
    } catch (err) {
      if (!(err instanceof NetlinkError)) throw new NftError('invalid', (err as Error).message, '', -1);
      const detail = ERRNO_TEXT[err.errno] ?? `${err.code}${err.kernelMessage ? ` (${err.kernelMessage})` : ''}`;
      throw new NftError(kindOf(detail), detail, '', -1, undefined, err.op);
    }
  }

  private exec(args: string[], input?: string): string {
    const res = withNetns(this.netnsPath, () =>
      spawnSync(this.binary, args, {
        input: input ?? '',
        encoding: 'utf8',
        env: { ...process.env, LC_ALL: 'C' },
        maxBuffer: 256 * 1024 * 1024,
      }),
    );
    if (res.error) throw new NftError('exec', `cannot run ${this.binary}: ${res.error.message}`, '', -1);
    if (res.status === null) throw new NftError('exec', `${this.binary} killed by ${res.signal}`, res.stderr ?? '', -1);
    if (res.status !== 0) throw parseNftFailure(res.stderr, res.status, input);
    return res.stdout;
  }
}

// ---- `nft -j` output -> Listing -------------------------------------------------

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
type JsonObj = { [k: string]: Json };

const isObj = (v: Json | undefined): v is JsonObj => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Data types nft prints as quoted strings. */
const STRING_TYPES = new Set(['ifname', 'string']);

const VERDICTS = ['accept', 'drop', 'continue', 'return'];

/**
 * One JSON value of a set element as nft text. `types` are the key's (or
 * value's) concatenated data types, used to quote string types.
 */
export function jsonValueToText(v: Json, types: readonly string[] = []): string {
  if (typeof v === 'string') return STRING_TYPES.has(types[0] ?? '') ? `"${v}"` : v;
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  if (v === null) return '';
  if (Array.isArray(v)) return v.map((x) => jsonValueToText(x, types)).join(',');
  if (isObj(v.prefix)) return `${jsonValueToText(v.prefix.addr as Json, types)}/${v.prefix.len}`;
  if (Array.isArray(v.range)) return `${jsonValueToText(v.range[0], types)}-${jsonValueToText(v.range[1], types)}`;
  if (Array.isArray(v.concat)) return v.concat.map((x, i) => jsonValueToText(x, types.slice(i, i + 1))).join(' . ');
  if (isObj(v.elem)) return jsonValueToText(v.elem.val as Json, types);
  for (const j of ['jump', 'goto']) {
    const t = v[j];
    if (isObj(t)) return `${j} ${t.target}`;
  }
  for (const verdict of VERDICTS) if (verdict in v) return verdict;
  return JSON.stringify(v);
}

function splitType(t: Json | undefined): string[] {
  if (Array.isArray(t)) return t.map(String);
  if (typeof t === 'string') return t.split(' . ');
  return [];
}

function elementOf(raw: Json, keyTypes: string[], valueTypes: string[] | undefined): ListedElement {
  const [k, v] = valueTypes && Array.isArray(raw) ? [raw[0], raw[1]] : [raw, undefined];
  const el: ListedElement = { key: jsonValueToText(k, keyTypes) };
  if (v !== undefined) el.value = jsonValueToText(v, valueTypes);
  if (isObj(k) && isObj(k.elem) && typeof k.elem.comment === 'string') el.comment = k.elem.comment;
  return el;
}

/** Chains a rule jumps or goes to and sets it uses, found anywhere in its expressions. */
function references(expr: Json, jumps: Set<string>, sets: Set<string>): void {
  if (typeof expr === 'string') {
    if (expr.startsWith('@')) sets.add(expr.slice(1));
    return;
  }
  if (Array.isArray(expr)) {
    for (const e of expr) references(e, jumps, sets);
    return;
  }
  if (!isObj(expr)) return;
  for (const [k, v] of Object.entries(expr)) {
    if ((k === 'jump' || k === 'goto') && isObj(v) && typeof v.target === 'string') jumps.add(v.target);
    else references(v, jumps, sets);
  }
}

export function parseListing(stdout: string, family: Family, table: string): Listing {
  const doc = JSON.parse(stdout) as { nftables?: JsonObj[] };
  const listing: Listing = { family, table, chains: [], sets: [] };
  const chains = new Map<string, ListedChain>();
  for (const item of doc.nftables ?? []) {
    if (isObj(item.chain)) {
      const c = item.chain;
      const chain: ListedChain = { name: String(c.name), handle: Number(c.handle), rules: [] };
      if (typeof c.type === 'string') chain.type = c.type as ChainType;
      if (typeof c.hook === 'string') chain.hook = c.hook as Hook;
      if (typeof c.prio === 'number') chain.priority = c.prio;
      if (typeof c.policy === 'string') chain.policy = c.policy as Policy;
      chains.set(chain.name, chain);
      listing.chains.push(chain);
    } else if (isObj(item.set) || isObj(item.map)) {
      const isMap = isObj(item.map);
      const s = (isMap ? item.map : item.set) as JsonObj;
      const keyTypes = splitType(s.type);
      const valueTypes = isMap ? splitType(s.map) : undefined;
      const set: ListedSet = {
        kind: isMap ? 'map' : 'set',
        name: String(s.name),
        handle: Number(s.handle),
        type: keyTypes.join(' . '),
        flags: Array.isArray(s.flags) ? (s.flags.map(String) as SetFlag[]) : [],
        elements: Array.isArray(s.elem) ? s.elem.map((e) => elementOf(e, keyTypes, valueTypes)) : [],
      };
      if (valueTypes) set.valueType = valueTypes.join(' . ');
      if (typeof s.comment === 'string') set.comment = s.comment;
      listing.sets.push(set);
    } else if (isObj(item.rule)) {
      const r = item.rule;
      const jumps = new Set<string>();
      const sets = new Set<string>();
      references(r.expr ?? [], jumps, sets);
      const rule: ListedRule = { handle: Number(r.handle), jumps: [...jumps], sets: [...sets] };
      if (typeof r.comment === 'string') rule.comment = r.comment;
      chains.get(String(r.chain))?.rules.push(rule);
    }
  }
  return listing;
}

// ---- an owned table on this host --------------------------------------------------

export interface RealTableOptions extends RealNftOptions {
  /** The table's lock file; default /run/cni-ts/<table>.lock. */
  lockFile?: string;
  /** Root of the firewall records (records.ts); default /run/cni-ts/firewall. */
  recordsRoot?: string;
}

/**
 * The owned table `ref` on this host (or in opts.netnsPath): written with
 * nft, read over netlink (a listing and a marker each cost a few netlink
 * requests instead of an nft process).
 */
export function realTable(ref: TableRef, opts: RealTableOptions = {}): OwnedTable {
  return new OwnedTable(ref, {
    nft: realNft(opts),
    list: (r) => nftListTable(r.family, r.table, opts.netnsPath),
    chain: (r, name) => nftGetChain(r.family, r.table, name, opts.netnsPath),
    ...(opts.lockFile !== undefined && { lockFile: opts.lockFile }),
    records: recordsFor(ref, { root: opts.recordsRoot, netnsPath: opts.netnsPath }),
  });
}
