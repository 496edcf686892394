/**
 * FakeNft: an in-memory nftables with the real one's semantics where plugin
 * logic can trip over them, for tests that need no kernel.
 *
 * Like knftables' Fake: a Transaction is applied command by command to a
 * copy of the state and committed only if every command succeeds, so
 * atomicity holds; failures are NftErrors of the same kind, at the same
 * script line, as nft gives (missing table/chain/set/element/handle ->
 * 'not-found'; `create` of an existing object, conflicting set definition
 * -> 'exists'; deleting a chain with rules or one still jumped to, or a set
 * a rule uses -> 'busy'; a NAT statement reachable from a non-NAT base
 * chain or the wrong hook, changing a base chain's hook or priority ->
 * 'not-supported'; jump loops reachable from a base chain -> 'invalid'). dump() renders the ruleset in
 * `nft list ruleset` format: golden text for bridge/portmap tests, and valid
 * input for `nft -f`.
 *
 * The graph check runs after each command; the kernel sometimes defers it to
 * the end of the batch, so a batch that passes through an invalid state on
 * its way to a valid one can be refused here and accepted by the kernel.
 *
 * What it does not model: rule syntax (rule text is kept verbatim, nft
 * would normalize "meta secpath missing" to "meta ipsec missing"), element
 * syntax (keys compare as text, so use the canonical forms nft prints:
 * numeric ports, compressed IPv6, quoted ifnames), interval overlap, timeouts.
 */
import { OwnedTable } from '../shared/nft/table';
import type { TableRef } from '../shared/nft/types';
import { NftError, formatNftStderr, type NftErrorKind } from '../shared/nft/errors';
import type { ChainType, ElementOp, Family, Hook, ListedElement, ListedSet, Listing, Nft, Policy, SetLayout } from '../shared/nft/nft-interface';
import {
  FAMILIES,
  STD_PRIORITIES,
  joinConcat,
  nameProblem,
  priorityValue,
  type Chain,
  type Command,
  type Element,
  type NftMap,
  type NftSet,
  type Rule,
  Transaction as BatchTx,
  type Transaction,
} from '../shared/nft/transaction';

interface FRule {
  handle: number;
  text: string;
  comment?: string;
  jumps: string[];
  sets: string[];
  nat: string[];
}

interface FChain {
  name: string;
  handle: number;
  type?: ChainType;
  hook?: Hook;
  priority?: number;
  policy?: Policy;
  comment?: string;
  rules: FRule[];
}

type FElement = ListedElement;

/** A set as listed, its elements kept by key. */
interface FSet extends Omit<ListedSet, 'elements'> {
  elements: Map<string, FElement>;
}

interface FTable {
  family: Family;
  name: string;
  handle: number;
  comment?: string;
  nextHandle: number;
  chains: Map<string, FChain>;
  sets: Map<string, FSet>;
}

interface State {
  tables: Map<string, FTable>;
  nextTableHandle: number;
}

/** Thrown inside apply and turned into an NftError carrying the command's line. */
class Failure {
  constructor(
    readonly kind: NftErrorKind,
    readonly detail: string,
    readonly fromKernel = true,
  ) {}
}

const ENOENT = (): Failure => new Failure('not-found', 'No such file or directory');
const EEXIST = (): Failure => new Failure('exists', 'File exists');
const EBUSY = (): Failure => new Failure('busy', 'Device or resource busy');
const EOPNOTSUPP = (): Failure => new Failure('not-supported', 'Operation not supported');

/** Hooks each chain type may attach to (kernel: nft_chain_filter/nat/route type tables). */
const TYPE_HOOKS: Record<ChainType, readonly Hook[]> = {
  filter: ['prerouting', 'input', 'forward', 'output', 'postrouting'],
  nat: ['prerouting', 'input', 'output', 'postrouting'],
  route: ['output'],
};

/** Hooks each NAT statement is valid at (kernel: nft_nat_validate, nft_masq_validate, nft_redir_validate). */
const NAT_HOOKS: Record<string, readonly Hook[]> = {
  masquerade: ['postrouting'],
  snat: ['postrouting', 'input'],
  dnat: ['prerouting', 'output'],
  redirect: ['prerouting', 'output'],
};

const IDENT = '[A-Za-z_][A-Za-z0-9_-]*';

function natStatements(text: string): string[] {
  const bare = text
    .replace(/"[^"]*"/g, '""')
    // "ct status dnat" matches conntrack state; it is not a NAT statement
    .replace(/\bct\s+(?:original\s+|reply\s+)?status\s+\S+/g, '');
  return [...bare.matchAll(/\b(snat|dnat|masquerade|redirect)\b/g)].map((m) => m[1]);
}

function jumpTargets(text: string): string[] {
  return [...text.replace(/"[^"]*"/g, '""').matchAll(new RegExp(`\\b(?:jump|goto)\\s+(${IDENT})`, 'g'))].map((m) => m[1]);
}

function setRefs(text: string): string[] {
  return [...new Set([...text.replace(/"[^"]*"/g, '""').matchAll(new RegExp(`@(${IDENT})`, 'g'))].map((m) => m[1]))];
}

const normalize = (s: string): string => s.trim().replace(/\s+/g, ' ');

export class FakeNft implements Nft {
  private state: State = { tables: new Map(), nextTableHandle: 1 };
  /** How many nft processes the real implementation would have started (run, check, list). */
  execs = 0;
  /** Every script run() applied successfully, in order: what a test can assert on besides dump(). */
  readonly applied: string[] = [];
  /** How many element batches elements() applied (netlink on a host: no nft process). */
  batches = 0;
  /** Every element batch applied, as the `add/delete element` lines nft would take for it. */
  readonly appliedBatches: string[] = [];

  run(tx: Transaction): void {
    const script = tx.render();
    if (tx.size === 0) return;
    this.execs++;
    this.state = this.apply(tx.commands, script);
    this.applied.push(script);
  }

  /** Nft.elements: the batch as `add/delete element` lines, applied atomically to the model like run(), counted apart. */
  elements(family: Family, table: string, layouts: Readonly<Record<string, SetLayout>>, ops: readonly ElementOp[]): void {
    if (ops.length === 0) return;
    const tx = new BatchTx();
    for (const op of ops) {
      if (!layouts[op.set]) throw new NftError('invalid', `nft element: unknown set ${op.set}`, '', -1);
      const obj = { kind: 'element' as const, family, table, set: op.set, key: op.key };
      if (op.verb === 'add') tx.add({ ...obj, ...(op.value && { value: op.value }), ...(op.comment !== undefined && { comment: op.comment }) });
      else tx.delete(obj);
    }
    const script = tx.render();
    this.state = this.apply(tx.commands, script);
    this.batches++;
    this.appliedBatches.push(script);
  }

  check(tx: Transaction): void {
    const script = tx.render();
    if (tx.size === 0) return;
    this.execs++;
    this.apply(tx.commands, script);
  }

  list(family: Family, table: string): Listing | undefined {
    const problem = !FAMILIES.includes(family) ? `unknown family "${family}"` : nameProblem(table);
    if (problem) throw new NftError('invalid', problem, '', -1);
    this.execs++;
    const t = this.state.tables.get(`${family} ${table}`);
    if (!t) return undefined;
    const listing: Listing = {
      family,
      table,
      sets: [...t.sets.values()].map((s) => ({
        kind: s.kind,
        name: s.name,
        handle: s.handle,
        type: s.type,
        ...(s.valueType !== undefined && { valueType: s.valueType }),
        flags: [...s.flags],
        ...(s.comment !== undefined && { comment: s.comment }),
        elements: [...s.elements.values()].map((e) => ({ ...e }) as ListedElement),
      })),
      chains: [...t.chains.values()].map((c) => ({
        name: c.name,
        handle: c.handle,
        ...(c.type !== undefined && { type: c.type, hook: c.hook, priority: c.priority, policy: c.policy ?? 'accept' }),
        rules: c.rules.map((r) => ({
          handle: r.handle,
          ...(r.comment !== undefined && { comment: r.comment }),
          jumps: [...r.jumps],
          sets: [...r.sets],
        })),
      })),
    };
    return listing;
  }

  /** A chain's comment, as shared/netlink's nftGetChain reads it from the kernel (for an OwnedTable's markers). */
  chainInfo(family: Family, table: string, chain: string): { comment?: string } | undefined {
    const c = this.state.tables.get(`${family} ${table}`)?.chains.get(chain);
    return c && (c.comment !== undefined ? { comment: c.comment } : {});
  }

  /** The ruleset as `nft list ruleset` prints it, or one table (`nft list table`). */
  dump(family?: Family, table?: string): string {
    const tables = [...this.state.tables.values()].filter(
      (t) => (family === undefined || t.family === family) && (table === undefined || t.name === table),
    );
    return tables.map(dumpTable).join('');
  }

  /** Forget everything (like `nft flush ruleset`), counters included. */
  reset(): void {
    this.state = { tables: new Map(), nextTableHandle: 1 };
    this.execs = 0;
    this.applied.length = 0;
    this.batches = 0;
    this.appliedBatches.length = 0;
  }

  /**
   * The kernel checks the chain graph (jumps, NAT hooks, loops) at every
   * rule and verdict element. Doing that per command made a transaction of
   * N rules cost N whole-graph walks; so the walk runs once, at the end,
   * and only a transaction that fails it is applied again command by
   * command to find the line the kernel would have named.
   */
  private apply(cmds: readonly Command[], script: string): State {
    const deferred = this.applyAll(cmds, script, true);
    try {
      for (const t of deferred.touched) validateGraph(t);
      return deferred.state;
    } catch (err) {
      if (!(err instanceof Failure)) throw err;
      return this.applyAll(cmds, script, false).state;
    }
  }

  private applyAll(cmds: readonly Command[], script: string, deferGraph: boolean): { state: State; touched: Set<FTable> } {
    const next = structuredClone(this.state);
    const touched = new Set<FTable>();
    graphCheck = deferGraph ? (t) => touched.add(t) : validateGraph;
    try {
      cmds.forEach((cmd, i) => {
        try {
          applyOne(next, cmd);
        } catch (err) {
          if (!(err instanceof Failure)) throw err;
          const stderr = formatNftStderr(i + 1, cmd.text, err.detail, err.fromKernel);
          throw new NftError(err.kind, err.detail, stderr, 1, i + 1, script.split('\n')[i]);
        }
      });
    } finally {
      graphCheck = validateGraph;
    }
    // a table deleted later in the batch needs no check
    return { state: next, touched: new Set([...touched].filter((t) => next.tables.get(`${t.family} ${t.name}`) === t)) };
  }
}

/** Where applyRule/applyElement send a table whose graph changed: validateGraph, or FakeNft.apply's deferral. */
let graphCheck: (t: FTable) => void = (t) => validateGraph(t);

function tableOf(state: State, obj: { family: Family; table: string }): FTable {
  const t = state.tables.get(`${obj.family} ${obj.table}`);
  if (!t) throw ENOENT();
  return t;
}

function chainOf(t: FTable, name: string): FChain {
  const c = t.chains.get(name);
  if (!c) throw ENOENT();
  return c;
}

function setOf(t: FTable, name: string, kind?: 'set' | 'map'): FSet {
  const s = t.sets.get(name);
  if (!s || (kind && s.kind !== kind)) throw ENOENT();
  return s;
}

function applyOne(state: State, cmd: Command): void {
  const { verb, obj } = cmd;
  switch (obj.kind) {
    case 'table': {
      const key = `${obj.family} ${obj.table}`;
      const existing = state.tables.get(key);
      if (verb === 'add' || verb === 'create') {
        if (existing) {
          if (verb === 'create') throw EEXIST();
          return;
        }
        const t: FTable = {
          family: obj.family,
          name: obj.table,
          handle: state.nextTableHandle++,
          nextHandle: 1,
          chains: new Map(),
          sets: new Map(),
        };
        if ('comment' in obj && obj.comment !== undefined) t.comment = obj.comment;
        state.tables.set(key, t);
        return;
      }
      if (!existing) throw ENOENT();
      if (verb === 'delete') state.tables.delete(key);
      else for (const c of existing.chains.values()) c.rules = [];
      return;
    }
    case 'chain':
      return applyChain(tableOf(state, obj), verb, obj as Chain);
    case 'rule':
      return applyRule(tableOf(state, obj), verb, obj as Rule);
    case 'set':
    case 'map':
      return applySet(tableOf(state, obj), verb, obj as NftSet | NftMap);
    case 'element':
      return applyElement(tableOf(state, obj), verb, obj as Element);
  }
}

function applyChain(t: FTable, verb: Command['verb'], c: Chain): void {
  const existing = t.chains.get(c.name);
  const prio = c.priority === undefined ? undefined : priorityValue(c.priority);
  if (verb === 'add' || verb === 'create') {
    if (existing) {
      if (verb === 'create') throw EEXIST();
      if (c.type === undefined) return;
      if (existing.type === undefined) throw EEXIST();
      if (existing.type !== c.type || existing.hook !== c.hook || existing.priority !== prio) throw EOPNOTSUPP();
      if (c.policy !== undefined) existing.policy = c.policy;
      return;
    }
    if (c.type !== undefined && !TYPE_HOOKS[c.type].includes(c.hook as Hook)) throw EOPNOTSUPP();
    const chain: FChain = { name: c.name, handle: t.nextHandle++, rules: [] };
    if (c.type !== undefined) Object.assign(chain, { type: c.type, hook: c.hook, priority: prio, policy: c.policy ?? 'accept' });
    if (c.comment !== undefined) chain.comment = c.comment;
    t.chains.set(c.name, chain);
    return;
  }
  const chain = chainOf(t, c.name);
  if (verb === 'flush') {
    chain.rules = [];
    return;
  }
  // delete: the chain's rules go with it (nft sends no NLM_F_NONREC), but
  // the kernel refuses while a rule or a verdict map element jumps here
  if (chainReferenced(t, c.name)) throw EBUSY();
  t.chains.delete(c.name);
}

function chainReferenced(t: FTable, name: string): boolean {
  for (const ch of t.chains.values()) for (const r of ch.rules) if (r.jumps.includes(name)) return true;
  for (const s of t.sets.values())
    for (const e of s.elements.values()) if (e.value !== undefined && jumpTargets(e.value).includes(name)) return true;
  return false;
}

function checkJumpTargets(t: FTable, targets: string[]): void {
  for (const target of targets) {
    const c = t.chains.get(target);
    if (!c) throw ENOENT();
    if (c.type !== undefined) throw EOPNOTSUPP();
  }
}

function applyRule(t: FTable, verb: Command['verb'], r: Rule): void {
  const chain = chainOf(t, r.chain);
  const at = (handle: number): number => {
    const i = chain.rules.findIndex((x) => x.handle === handle);
    if (i < 0) throw ENOENT();
    return i;
  };
  if (verb === 'delete') {
    chain.rules.splice(at(r.handle as number), 1);
    return;
  }
  const text = normalize(r.rule);
  const jumps = jumpTargets(text);
  const sets = setRefs(text);
  checkJumpTargets(t, jumps);
  for (const s of sets) setOf(t, s);
  const rule: FRule = { handle: 0, text, jumps, sets, nat: natStatements(text) };
  if (r.comment !== undefined) rule.comment = r.comment;
  if (verb === 'replace') {
    const i = at(r.handle as number);
    rule.handle = chain.rules[i].handle;
    chain.rules[i] = rule;
  } else {
    let pos: number;
    if (r.handle !== undefined) pos = at(r.handle) + (verb === 'add' ? 1 : 0);
    else pos = verb === 'add' ? chain.rules.length : 0;
    rule.handle = t.nextHandle++;
    chain.rules.splice(pos, 0, rule);
  }
  graphCheck(t);
}

/**
 * The kernel validates every base chain against everything it can reach
 * (rules' jumps, and verdict maps the rules consult): NAT statements need a
 * nat base chain on a hook they support, and jumps must not loop (EMLINK).
 * Chains no base chain reaches are not checked, loops among them included.
 */
function validateGraph(t: FTable): void {
  const edges = (c: FChain): string[] => {
    const out: string[] = [];
    for (const r of c.rules) {
      out.push(...r.jumps);
      for (const s of r.sets) {
        const set = t.sets.get(s);
        for (const e of set?.elements.values() ?? []) if (e.value !== undefined) out.push(...jumpTargets(e.value));
      }
    }
    return out;
  };
  const visit = (c: FChain, path: string[], base: FChain): void => {
    if (path.includes(c.name)) throw new Failure('invalid', 'Too many links');
    for (const r of c.rules)
      for (const stmt of r.nat) {
        if (base.type !== 'nat' || !NAT_HOOKS[stmt].includes(base.hook as Hook)) throw EOPNOTSUPP();
      }
    for (const next of edges(c)) {
      const n = t.chains.get(next);
      if (n) visit(n, [...path, c.name], base);
    }
  };
  for (const c of t.chains.values()) if (c.type !== undefined) visit(c, [], c);
}

function applySet(t: FTable, verb: Command['verb'], s: NftSet | NftMap): void {
  const existing = t.sets.get(s.name);
  if (verb === 'add' || verb === 'create') {
    const type = joinConcat(s.type);
    const valueType = s.kind === 'map' ? joinConcat(s.valueType) : undefined;
    const flags = [...(s.flags ?? [])];
    if (existing) {
      if (verb === 'create') throw EEXIST();
      const same =
        existing.kind === s.kind &&
        existing.type === type &&
        existing.valueType === valueType &&
        [...existing.flags].sort().join() === [...flags].sort().join();
      if (!same) throw EEXIST();
      return;
    }
    const set: FSet = { kind: s.kind, name: s.name, handle: t.nextHandle++, type, flags, elements: new Map() };
    if (valueType !== undefined) set.valueType = valueType;
    if (s.comment !== undefined) set.comment = s.comment;
    t.sets.set(s.name, set);
    return;
  }
  const set = setOf(t, s.name, s.kind);
  if (verb === 'flush') {
    set.elements.clear();
    return;
  }
  for (const c of t.chains.values()) for (const r of c.rules) if (r.sets.includes(s.name)) throw EBUSY();
  t.sets.delete(s.name);
}

function applyElement(t: FTable, verb: Command['verb'], e: Element): void {
  const set = setOf(t, e.set);
  const key = normalize(joinConcat(e.key));
  const existing = set.elements.get(key);
  if (verb === 'delete') {
    if (!existing) throw set.flags.includes('interval') ? new Failure('not-found', 'element does not exist', false) : ENOENT();
    set.elements.delete(key);
    return;
  }
  const value = e.value === undefined ? undefined : normalize(joinConcat(e.value));
  if (set.kind === 'map' && value === undefined) throw new Failure('invalid', `map ${set.name} needs a value for element ${key}`, false);
  if (set.kind === 'set' && value !== undefined) throw new Failure('invalid', `set ${set.name} takes no value for element ${key}`, false);
  if (existing) {
    if (verb === 'create' || existing.value !== value) throw EEXIST();
    return;
  }
  if (value !== undefined) checkJumpTargets(t, jumpTargets(value));
  const el: FElement = { key };
  if (value !== undefined) el.value = value;
  if (e.comment !== undefined) el.comment = e.comment;
  set.elements.set(key, el);
  if (value !== undefined && jumpTargets(value).length) graphCheck(t);
}

// ---- dump ---------------------------------------------------------------------

/** nft's prio2str (src/rule.c): a standard name, +/- an offset within 10, when valid for the hook. */
export function priorityText(prio: number, hook: Hook): string {
  for (const [name, value] of Object.entries(STD_PRIORITIES) as Array<[string, number]>) {
    if (Math.abs(prio - value) > 10) continue;
    const compatible =
      (name !== 'dstnat' && name !== 'srcnat') || (name === 'dstnat' ? hook === 'prerouting' : hook === 'postrouting');
    if (!compatible) break;
    const off = prio - value;
    return off > 0 ? `${name} + ${off}` : off < 0 ? `${name} - ${-off}` : name;
  }
  return String(prio);
}

function dumpTable(t: FTable): string {
  const blocks: string[] = [];
  for (const s of t.sets.values()) {
    const lines = [`\t${s.kind} ${s.name} {`, `\t\ttype ${s.type}${s.kind === 'map' ? ` : ${s.valueType}` : ''}`];
    if (s.flags.length) lines.push(`\t\tflags ${s.flags.join(',')}`);
    if (s.comment !== undefined) lines.push(`\t\tcomment "${s.comment}"`);
    if (s.elements.size) {
      const items = [...s.elements.values()].map(
        (e) => e.key + (e.comment !== undefined ? ` comment "${e.comment}"` : '') + (e.value !== undefined ? ` : ${e.value}` : ''),
      );
      lines.push(`\t\telements = { ${items.join(', ')} }`);
    }
    lines.push('\t}');
    blocks.push(lines.join('\n'));
  }
  for (const c of t.chains.values()) {
    const lines = [`\tchain ${c.name} {`];
    if (c.comment !== undefined) lines.push(`\t\tcomment "${c.comment}"`);
    if (c.type !== undefined) {
      const prio = priorityText(c.priority as number, c.hook as Hook);
      lines.push(`\t\ttype ${c.type} hook ${c.hook} priority ${prio}; policy ${c.policy ?? 'accept'};`);
    }
    for (const r of c.rules) lines.push(`\t\t${r.text}${r.comment !== undefined ? ` comment "${r.comment}"` : ''}`);
    lines.push('\t}');
    blocks.push(lines.join('\n'));
  }
  const head = [`table ${t.family} ${t.name} {`];
  if (t.comment !== undefined) head.push(`\tcomment "${t.comment}"`);
  return [head.join('\n'), ...(blocks.length ? [blocks.join('\n\n')] : []), '}'].join('\n') + '\n';
}

/**
 * An owned table on a FakeNft, as realTable is on the host: markers read
 * from the fake's model (as netlink reads the kernel's), the lock a plain
 * call unless the test passes one.
 */
export function fakeTable(ref: TableRef, nft: FakeNft, lock?: <T>(fn: () => T) => T): OwnedTable {
  return new OwnedTable(ref, {
    nft,
    chain: (r, name) => nft.chainInfo(r.family, r.table, name),
    lock: lock ?? ((fn) => fn()),
  });
}
