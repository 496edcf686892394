/**
 * The etcd key layout and the values under it, shared by the store (the
 * plugin's side) and the maintenance command (the operator's side), so the
 * two can never disagree on where a thing lives.
 *
 * P = keyPrefix, N = P/networks/<network>:
 *   P/hosts/<node>                 {hostId}: who this node name belongs to
 *   P/alive/<node>                 {hostId, renewAfter}: lease-backed; gone when the host stops calling
 *   P/gone/<node>/<network>        {firstSeen, allocations}: the maintenance command's first sighting
 *   P/ranges/<network>             {ranges}: the network's address ranges, for the overlap check
 *   P/ranges-head                  bumped by every change under P/ranges/: the registry's compare target
 *   N/blocks/<block>               <node>: the claim, the compare-and-swap target
 *   N/hostblocks/<node>/<block>    {cidr, seq, last, used: {offset: seq}}: the block's state
 *   N/ips/<ip>                     {containerId, ifname, node, block, blockKey, seq}
 *   N/owners/<cid>/<ifname>/<ip>   {node, blockKey}: index by attachment
 *   N/leaks/<node>/<ip>            {seq, createRevision, firstSeen}: GC's first sighting
 */

/** What the block state key holds. Offsets are decimal (address - block network). */
export interface BlockData {
  cidr: string;
  host: string;
  seq: number;
  last?: string;
  used: Record<string, number>;
}

export interface AddressValue {
  containerId: string;
  ifname: string;
  node: string;
  block: string;
  blockKey: string;
  seq: number;
  borrowed?: boolean;
}

export interface AliveValue {
  hostId: string;
  /** epoch ms by the host's own clock: calls after this renew the lease */
  renewAfter: number;
}

/** One allocatable range of a registered network, as text. */
export interface RegisteredRange {
  subnet: string;
  start: string;
  end: string;
}

export interface RangesValue {
  ranges: RegisteredRange[];
}

/** The maintenance command's record of a host seen without liveness. */
export interface GoneValue {
  firstSeen: number;
  /** ip -> create revision of each allocation the host held when first seen gone */
  allocations: Record<string, string>;
}

export function hostKey(prefix: string, node: string): string {
  return `${prefix}/hosts/${node}`;
}

export function aliveKey(prefix: string, node: string): string {
  return `${prefix}/alive/${node}`;
}

/** With network undefined: the prefix of every sighting of the node. */
export function goneKey(prefix: string, node: string, network?: string): string {
  return `${prefix}/gone/${node}/${network ?? ''}`;
}

export function rangesKey(prefix: string, network: string): string {
  return `${prefix}/ranges/${network}`;
}

export function rangesHeadKey(prefix: string): string {
  return `${prefix}/ranges-head`;
}

export function networkKey(prefix: string, network: string): string {
  return `${prefix}/networks/${network}`;
}

/** The owner index prefix of one attachment; the address follows it. */
export function ownerPrefixKey(net: string, containerId: string, ifname: string): string {
  return `${net}/owners/${encodeURIComponent(containerId.trim())}/${encodeURIComponent(ifname)}/`;
}

export function parseJSON<T>(text: string): T | undefined {
  try {
    return JSON.parse(text) as T;
  } catch {
    return undefined;
  }
}

/** The last path element of a key. */
export function lastElement(key: string): string {
  return key.slice(key.lastIndexOf('/') + 1);
}
