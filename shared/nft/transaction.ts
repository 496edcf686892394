/**
 * Transaction: queue nftables commands, render them as ONE nft script.
 *
 * Modeled on knftables: callers queue objects (table, chain, rule, set, map,
 * element) with a verb, and the whole batch is applied atomically by
 * `nft -f -` (the kernel commits all of it or none of it). Queueing never
 * throws: the first invalid object is remembered and surfaces as an
 * NftError('invalid') from run(), exactly as nft's own errors do, so plugin
 * code handles one error path.
 *
 * Rule text and element keys are nft syntax written by the caller
 * ("ip saddr 10.0.0.0/24 masquerade", "\"eth0\"", "1.2.3.4 . 80"). The
 * checks below do not parse that syntax; they only refuse what would let
 * one command spill into the next (newlines, ';', '#', and for elements
 * ',', '{', '}'), so every command is exactly one script line and error
 * line numbers map back to commands.
 *
 * Names are checked against nft's identifier syntax and keyword list: nft
 * 1.0.6 cannot quote a table/chain/set name, so a chain called "fwd" or
 * "counter" is a syntax error. We refuse those up front.
 */
import { NftError } from './errors';
import type { ChainType, Family, Hook, Policy, SetFlag, TableRef } from './types';

export type PriorityName = 'raw' | 'mangle' | 'dstnat' | 'filter' | 'security' | 'srcnat';
/** A number, a standard name, or a name with an offset ("srcnat + 5", "filter - 10"). */
export type Priority = number | PriorityName | `${PriorityName} + ${number}` | `${PriorityName} - ${number}`;

export interface Table extends TableRef {
  kind: 'table';
  comment?: string;
}

export interface ChainRef extends TableRef {
  kind: 'chain';
  name: string;
}

/** A regular chain, or a base chain when type, hook and priority are all given. */
export interface Chain extends ChainRef {
  type?: ChainType;
  hook?: Hook;
  priority?: Priority;
  /** Base chains only. */
  policy?: Policy;
  comment?: string;
}

export interface Rule extends TableRef {
  kind: 'rule';
  chain: string;
  /** nft rule syntax, without the comment. */
  rule: string;
  comment?: string;
  /**
   * add: place after the rule with this handle; insert: before it;
   * replace: the rule to replace (required). nft's `index N` is not offered:
   * nft resolves it against the ruleset as it was before the batch (and
   * appends when N is out of range), so it cannot be used reliably in a
   * transaction.
   */
  handle?: number;
}

export interface RuleRef extends TableRef {
  kind: 'rule';
  chain: string;
  handle: number;
}

export interface SetRef extends TableRef {
  kind: 'set' | 'map';
  name: string;
}

export interface NftSet extends SetRef {
  kind: 'set';
  /** Data type(s): "ipv4_addr", or ["ipv4_addr", "inet_service"] for a concatenation. */
  type: string | readonly string[];
  flags?: readonly SetFlag[];
  comment?: string;
}

export interface NftMap extends SetRef {
  kind: 'map';
  type: string | readonly string[];
  /** "verdict", "ipv4_addr", ["ipv4_addr", "inet_service"]... */
  valueType: string | readonly string[];
  flags?: readonly SetFlag[];
  comment?: string;
}

export interface Element extends TableRef {
  kind: 'element';
  /** Name of the set or map. */
  set: string;
  /** nft text; an array is a concatenation ("1.2.3.4", "80" -> "1.2.3.4 . 80"). */
  key: string | readonly string[];
  /** Maps only (ignored by delete). */
  value?: string | readonly string[];
  comment?: string;
}

export type NftObject = Table | Chain | Rule | NftSet | NftMap | Element;
export type Verb = 'add' | 'create' | 'insert' | 'replace' | 'delete' | 'flush';

/** One line of the rendered script. */
export interface Command {
  verb: Verb;
  obj: NftObject | ChainRef | RuleRef | SetRef;
  text: string;
}

export const FAMILIES: readonly Family[] = ['inet', 'ip', 'ip6'];
const CHAIN_TYPES: readonly ChainType[] = ['filter', 'nat', 'route'];
const HOOKS: readonly Hook[] = ['prerouting', 'input', 'forward', 'output', 'postrouting'];
const SET_FLAGS: readonly SetFlag[] = ['constant', 'interval', 'timeout', 'dynamic'];

/** NF_IP_PRI_* values, as nft names them. */
export const STD_PRIORITIES: Readonly<Record<PriorityName, number>> = {
  raw: -300,
  mangle: -150,
  dstnat: -100,
  filter: 0,
  security: 50,
  srcnat: 100,
};

/**
 * Words nft's scanner turns into keywords in any context (union of nft
 * 1.0.6 and later releases, from src/scanner.l); a name equal to one of
 * these does not parse.
 */
const KEYWORDS = new Set(
  (
    'accept add ah all and arp auto-merge bridge cgroup chain comment comp constant continue counter cpu create ct ' +
    'day dccp define delete describe destroy device devices dnat drop dst dup dynamic ecn element elements eq esp ' +
    'ether exists expires export exthdr fib flags flow flowtable flush frag fwd gc-interval ge geneve get goto gre ' +
    'gretap gt handle hbh hook hour ibriport ibrname icmp icmpv6 igmp iif iifgroup iifname iiftype import include ' +
    'index inet insert interval ip ip6 ipsec jhash jump last le limit list log lshift lt map mark masquerade meta ' +
    'meter mh missing monitor ne netdev nftrace not notrack numgen obriport obrname offload oif oifgroup oifname ' +
    'oiftype or osf pkttype policy position priority queue quota random redefine redirect reject rename replace ' +
    'reset return rshift rt rt0 rt2 rtclassid rule ruleset sctp secmark set size skgid skuid snat socket srh ' +
    'symhash synproxy table tcp th time timeout tproxy tunnel type typeof udp udplite undefine update vlan vmap ' +
    'vni vxlan xor xt'
  ).split(' '),
);

/** NFT_NAME_MAXLEN is 256 including the NUL. */
const MAX_NAME = 255;
/** nft refuses longer comments ("comment too long, 128 characters maximum allowed"). */
export const MAX_COMMENT = 128;

/** Why `name` cannot be an nft table/chain/set name, or undefined when it can. */
export function nameProblem(name: string): string | undefined {
  if (!/^[A-Za-z_][A-Za-z0-9_-]*$/.test(name)) return `invalid name "${name}": use letters, digits, "_" and "-", not starting with a digit or "-"`;
  if (name.length > MAX_NAME) return `name "${name.slice(0, 20)}..." is longer than ${MAX_NAME} characters`;
  if (KEYWORDS.has(name)) return `name "${name}" is an nft keyword`;
  return undefined;
}

function commentProblem(comment: string): string | undefined {
  if (/["\n\r]/.test(comment)) return `comment ${JSON.stringify(comment)} contains a double quote or a newline`;
  if (Buffer.byteLength(comment) > MAX_COMMENT) return `comment too long, ${MAX_COMMENT} characters maximum allowed`;
  return undefined;
}

function fragmentProblem(what: string, text: string, forbidden: RegExp): string | undefined {
  if (text.trim() === '') return `${what} is empty`;
  if (forbidden.test(text)) return `${what} ${JSON.stringify(text)} contains a character that would end the command`;
  return undefined;
}

const RULE_FORBIDDEN = /[\n\r;#]/;
const ELEMENT_FORBIDDEN = /[\n\r;#,{}]/;
const TYPE_RE = /^[a-z][a-z0-9_]*$/;

/** Numeric value of a Priority, or undefined when it is malformed. */
export function priorityValue(p: Priority): number | undefined {
  if (typeof p === 'number') return Number.isInteger(p) ? p : undefined;
  const m = /^(raw|mangle|dstnat|filter|security|srcnat)(?: ([+-]) (\d+))?$/.exec(p);
  if (!m) return undefined;
  const base = STD_PRIORITIES[m[1] as PriorityName];
  if (!m[2]) return base;
  return m[2] === '+' ? base + Number(m[3]) : base - Number(m[3]);
}

/** nft 1.0.6 accepts dstnat only on prerouting and srcnat only on postrouting (rule.c, std_prio_family_hook_compat). */
function priorityNameProblem(p: Priority, hook: Hook): string | undefined {
  if (typeof p === 'number') return undefined;
  if (p.startsWith('dstnat') && hook !== 'prerouting') return 'invalid priority expression value in this context.';
  if (p.startsWith('srcnat') && hook !== 'postrouting') return 'invalid priority expression value in this context.';
  return undefined;
}

export function joinConcat(v: string | readonly string[]): string {
  return typeof v === 'string' ? v.trim() : v.map((s) => s.trim()).join(' . ');
}

const quote = (s: string): string => `"${s}"`;

function validate(verb: Verb, obj: Command['obj']): string | undefined {
  if (!FAMILIES.includes(obj.family)) return `unknown family "${obj.family}"`;
  const tableName = nameProblem(obj.table);
  if (tableName) return tableName;
  const comment = (obj as { comment?: string }).comment;
  if (comment !== undefined) {
    const c = commentProblem(comment);
    if (c) return c;
  }
  switch (obj.kind) {
    case 'table':
      return undefined;
    case 'chain': {
      const c = obj as Chain;
      const n = nameProblem(c.name);
      if (n) return n;
      if (verb !== 'add' && verb !== 'create') return undefined;
      const base = [c.type, c.hook, c.priority].filter((x) => x !== undefined).length;
      if (base !== 0 && base !== 3) return `chain ${c.name}: a base chain needs type, hook and priority together`;
      if (base === 0 && c.policy !== undefined) return `chain ${c.name}: policy applies only to base chains`;
      if (c.type !== undefined && !CHAIN_TYPES.includes(c.type)) return `chain ${c.name}: unknown type "${c.type}"`;
      if (c.hook !== undefined && !HOOKS.includes(c.hook)) return `chain ${c.name}: unknown hook "${c.hook}"`;
      if (c.policy !== undefined && c.policy !== 'accept' && c.policy !== 'drop') return `chain ${c.name}: unknown policy "${c.policy}"`;
      if (c.priority !== undefined) {
        if (priorityValue(c.priority) === undefined) return `chain ${c.name}: invalid priority "${c.priority}"`;
        const p = priorityNameProblem(c.priority, c.hook as Hook);
        if (p) return p;
      }
      return undefined;
    }
    case 'rule': {
      const r = obj as Rule;
      const n = nameProblem(r.chain);
      if (n) return n;
      if (r.handle !== undefined && (!Number.isInteger(r.handle) || r.handle < 0)) return 'rule handle must be a non-negative integer';
      if ((verb === 'replace' || verb === 'delete') && r.handle === undefined) return `${verb} rule needs a handle`;
      if (verb === 'delete') return undefined;
      return fragmentProblem('rule', r.rule ?? '', RULE_FORBIDDEN);
    }
    case 'set':
    case 'map': {
      const s = obj as NftSet | NftMap;
      const n = nameProblem(s.name);
      if (n) return n;
      if (verb !== 'add' && verb !== 'create') return undefined;
      const types = [s.type, ...(s.kind === 'map' ? [s.valueType] : [])];
      for (const t of types) {
        const parts = typeof t === 'string' ? t.split('.').map((x) => x.trim()) : (t ?? []);
        if (parts.length === 0 || parts.some((x) => !TYPE_RE.test(x))) return `${s.kind} ${s.name}: invalid type ${JSON.stringify(t)}`;
      }
      for (const f of s.flags ?? []) if (!SET_FLAGS.includes(f)) return `${s.kind} ${s.name}: unknown flag "${f}"`;
      return undefined;
    }
    case 'element': {
      const e = obj as Element;
      const n = nameProblem(e.set);
      if (n) return n;
      const keyParts = typeof e.key === 'string' ? [e.key] : e.key;
      if (keyParts.length === 0) return 'element key is empty';
      for (const k of keyParts) {
        const p = fragmentProblem('element key', k, ELEMENT_FORBIDDEN);
        if (p) return p;
      }
      if (e.value !== undefined && verb !== 'delete') {
        const valueParts = typeof e.value === 'string' ? [e.value] : e.value;
        if (valueParts.length === 0) return 'element value is empty';
        for (const v of valueParts) {
          const p = fragmentProblem('element value', v, ELEMENT_FORBIDDEN);
          if (p) return p;
        }
      }
      return undefined;
    }
  }
}

function render(verb: Verb, obj: Command['obj']): string {
  const where = `${obj.family} ${obj.table}`;
  switch (obj.kind) {
    case 'table': {
      const t = obj as Table;
      const spec = (verb === 'add' || verb === 'create') && t.comment !== undefined ? ` { comment ${quote(t.comment)} ; }` : '';
      return `${verb} table ${where}${spec}`;
    }
    case 'chain': {
      const c = obj as Chain;
      const head = `${verb} chain ${where} ${c.name}`;
      if (verb !== 'add' && verb !== 'create') return head;
      const parts: string[] = [];
      if (c.type !== undefined) parts.push(`type ${c.type} hook ${c.hook} priority ${c.priority}`);
      if (c.policy !== undefined) parts.push(`policy ${c.policy}`);
      if (c.comment !== undefined) parts.push(`comment ${quote(c.comment)}`);
      return parts.length ? `${head} { ${parts.map((p) => `${p} ;`).join(' ')} }` : head;
    }
    case 'rule': {
      const r = obj as Rule;
      const head = `${verb} rule ${where} ${r.chain}`;
      if (verb === 'delete') return `${head} handle ${r.handle}`;
      const body = r.rule.trim() + (r.comment !== undefined ? ` comment ${quote(r.comment)}` : '');
      if (verb === 'replace') return `${head} handle ${r.handle} ${body}`;
      if (r.handle !== undefined) return `${head} position ${r.handle} ${body}`;
      return `${head} ${body}`;
    }
    case 'set':
    case 'map': {
      const s = obj as NftSet | NftMap;
      const head = `${verb} ${s.kind} ${where} ${s.name}`;
      if (verb !== 'add' && verb !== 'create') return head;
      const type = joinConcat(s.type) + (s.kind === 'map' ? ` : ${joinConcat(s.valueType)}` : '');
      const parts = [`type ${type}`];
      if (s.flags?.length) parts.push(`flags ${s.flags.join(',')}`);
      if (s.comment !== undefined) parts.push(`comment ${quote(s.comment)}`);
      return `${head} { ${parts.map((p) => `${p} ;`).join(' ')} }`;
    }
    case 'element': {
      const e = obj as Element;
      let item = joinConcat(e.key);
      if (verb !== 'delete') {
        if (e.comment !== undefined) item += ` comment ${quote(e.comment)}`;
        if (e.value !== undefined) item += ` : ${joinConcat(e.value)}`;
      }
      return `${verb} element ${where} ${e.set} { ${item} }`;
    }
  }
}

export class Transaction {
  private readonly cmds: Command[] = [];
  private invalid: NftError | undefined;

  /** `nft add`: create if missing, no error if present (rules: append, or after `handle`). */
  add(obj: NftObject): this {
    return this.queue('add', obj);
  }

  /** `nft create`: like add, but an existing object is an error (NftError 'exists'). */
  create(obj: Table | Chain | NftSet | NftMap | Element): this {
    return this.queue('create', obj);
  }

  /** `nft insert rule`: at the start of the chain, or before `handle`. */
  insert(rule: Rule): this {
    return this.queue('insert', rule);
  }

  /** `nft replace rule ... handle N`. */
  replace(rule: Rule): this {
    return this.queue('replace', rule);
  }

  /** `nft delete`: the object must exist (NftError 'not-found' otherwise); rules by handle. */
  delete(obj: Table | ChainRef | SetRef | RuleRef | Element): this {
    return this.queue('delete', obj);
  }

  /** `nft flush`: a table's or chain's rules, a set's or map's elements. Flushing a table keeps its sets' elements. */
  flush(obj: Table | ChainRef | SetRef): this {
    return this.queue('flush', obj);
  }

  /**
   * Delete if present, no error if missing. nft 1.0.6 has no `destroy`
   * (1.0.8 and kernel 6.3 do), so this renders knftables' idiom: `add` then
   * `delete` (a chain is flushed in between, so its rules go with it).
   * A chain's table must exist; a chain still jumped to stays an error.
   */
  destroy(obj: Table | ChainRef): this {
    if (obj.kind === 'table') return this.queue('add', { kind: 'table', family: obj.family, table: obj.table }).queue('delete', obj);
    const ref: ChainRef = { kind: 'chain', family: obj.family, table: obj.table, name: obj.name };
    return this.queue('add', ref).queue('flush', ref).queue('delete', ref);
  }

  /** Queued commands, one per script line. */
  get commands(): readonly Command[] {
    return this.cmds;
  }

  get size(): number {
    return this.cmds.length;
  }

  /** The first validation error, if any (run() throws it). */
  get error(): NftError | undefined {
    return this.invalid;
  }

  /** The script for `nft -f -`. Throws the validation error, if any. */
  render(): string {
    if (this.invalid) throw this.invalid;
    return this.cmds.map((c) => c.text).join('\n') + (this.cmds.length ? '\n' : '');
  }

  /** The script, with a trailing "# ERROR" line when invalid (for logs and test failures). */
  toString(): string {
    const body = this.cmds.map((c) => `${c.text}\n`).join('');
    return this.invalid ? `${body}# ERROR: ${this.invalid.detail}\n` : body;
  }

  private queue(verb: Verb, obj: Command['obj']): this {
    if (this.invalid) return this;
    const problem = validate(verb, obj);
    if (problem) {
      this.invalid = new NftError('invalid', problem, '', -1, this.cmds.length + 1);
      return this;
    }
    // Copy, so a caller reusing and mutating its object cannot change a queued command.
    this.cmds.push({ verb, obj: structuredClone(obj), text: render(verb, obj) });
    return this;
  }
}
