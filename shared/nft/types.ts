/**
 * The plain data types of the nftables layer: families, table references
 * and what a listing returns. No imports, so every other module of the
 * layer (and the netlink read path below it) can use them without a cycle.
 */
/** Address families this project uses. `inet` covers IPv4 and IPv6 (NAT included, kernel >= 5.2). */
export type Family = 'inet' | 'ip' | 'ip6';

/** Names one table. Every object in a transaction carries one. */
export interface TableRef {
  family: Family;
  table: string;
}

/**
 * What `list` returns: enough to find things by comment and delete them by
 * handle. Table and chain comments are not included: nft 1.0.6's JSON
 * output leaves them out.
 */
export interface Listing extends TableRef {
  /** In the order nft lists them (creation order). */
  chains: ListedChain[];
  /** Sets and maps, in the order nft lists them. */
  sets: ListedSet[];
}

export interface ListedChain {
  name: string;
  handle: number;
  /** Base chains only. */
  type?: ChainType;
  hook?: Hook;
  /** Numeric priority (srcnat = 100, dstnat = -100, filter = 0 ...). */
  priority?: number;
  policy?: Policy;
  rules: ListedRule[];
}

export interface ListedRule {
  handle: number;
  comment?: string;
  /** Chains this rule jumps or goes to: a chain referenced by a rule cannot be deleted. */
  jumps: string[];
  /** Sets and maps this rule looks up (`@name`): a referenced set cannot be deleted. */
  sets: string[];
}

export interface ListedSet {
  kind: 'set' | 'map';
  name: string;
  handle: number;
  /** Key type, concatenations joined with " . " (e.g. "ipv4_addr . inet_service"). */
  type: string;
  /** Maps only: value type, e.g. "verdict" or "ipv4_addr . inet_service". */
  valueType?: string;
  flags: SetFlag[];
  comment?: string;
  elements: ListedElement[];
}

/** Element text as nft prints it: "10.0.0.0/24", "1.2.3.4 . 80", "\"eth0\"", "jump x". */
export interface ListedElement {
  key: string;
  value?: string;
  comment?: string;
}

export type ChainType = 'filter' | 'nat' | 'route';
export type Hook = 'prerouting' | 'input' | 'forward' | 'output' | 'postrouting';
export type Policy = 'accept' | 'drop';
export type SetFlag = 'constant' | 'interval' | 'timeout' | 'dynamic';

/** Field types of set and map elements written over netlink (nft's names). */
export type FieldType = 'nf_proto' | 'inet_proto' | 'inet_service' | 'ipv4_addr' | 'ipv6_addr';

/** A set's layout, as its definition gives it: key fields, value fields (maps), concatenated ranges (`flags interval`). */
export interface SetLayout {
  key: readonly FieldType[];
  value?: readonly FieldType[];
  interval?: boolean;
}

/** One `add element` / `delete element` of an element batch, as nft text per field. */
export interface ElementOp {
  verb: 'add' | 'delete';
  set: string;
  /** One nft text per key field: "10.1.0.0/24", "tcp", "8000-8010". */
  key: readonly string[];
  /** Maps: one nft text per value field (ignored on delete). */
  value?: readonly string[];
  comment?: string;
}
