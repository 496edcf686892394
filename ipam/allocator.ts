/**
 * Range-set allocation, as host-local's backend/allocator does it, over an
 * AllocationStore so the local files and the etcd store (issue 5) share it.
 *
 * Per range set an ADD gets one address:
 *  - the container+ifname already holds one in the set: that one again
 *    (a repeated ADD is idempotent instead of host-local's "duplicate
 *    allocation" error);
 *  - a static request (ips capability, CNI_ARGS IP=, args.cni.ips) falling
 *    in the set: exactly that address, or an error;
 *  - otherwise round-robin: the first free address after the set's last
 *    reserved one, wrapping across the set's ranges and around, so a
 *    crash-looping container does not get the same address back until the
 *    whole set has been used. Network, IPv4 broadcast and gateway addresses
 *    are skipped.
 * Every step runs inside one store operation (withinOperation), so concurrent
 * ADDs never see each other's half-done state.
 */
import { CniError } from '../shared/cni/errors';
import { allocatable, describeRangeSet, rangeContains, type IpamRange, type RangeSet } from './config';
import { addressUnavailable, IpamErrorCode, noFreeAddress } from './errors';
import { formatIP, ipEqual, type IP } from '../shared/ip';

/** Who holds an address: CNI's attachment key. */
export interface Owner {
  readonly containerId: string;
  readonly ifname: string;
}

export interface Allocation extends Owner {
  readonly ip: IP;
}

/**
 * Where allocations live. The allocator makes every change inside
 * withinOperation(), so implementations need no further synchronisation
 * between callers on the same store.
 */
export interface AllocationStore {
  /**
   * Runs fn as one operation: its calls see no other operation's half-done
   * state, on this host or any other the store spans. Each store does this
   * its own way: the local store holds its file lock for the scope; the etcd
   * store holds nothing (its transactions compare-and-swap) and gives the
   * scope one time budget and one read of this host's blocks. Operations do
   * not nest.
   */
  withinOperation<T>(fn: () => Promise<T>): Promise<T>;
  /** Records ip for the owner if nobody holds it; false if it is taken.
   *  On success the address is also the set's last reserved one. */
  reserve(containerId: string, ifname: string, ip: IP, rangeSetId: string): Promise<boolean>;
  /** The address last reserved in the range set (for round-robin), if known. */
  lastReserved(rangeSetId: string): Promise<IP | undefined>;
  /** Frees everything the owner holds; returns what was freed. Nothing held is not an error. */
  releaseByOwner(containerId: string, ifname: string): Promise<IP[]>;
  getByOwner(containerId: string, ifname: string): Promise<IP[]>;
  listAll(): Promise<Allocation[]>;
  /** Frees every allocation whose owner is not in `keep`, and any leftovers
   *  of interrupted operations; returns what was freed. */
  gc(keep: readonly Owner[]): Promise<Allocation[]>;
  /** Gives up the store's resources (file descriptors, connections). */
  close(): Promise<void>;
}

/** One address handed out, with what the result needs about its range. */
export interface IpAssignment {
  readonly ip: IP;
  readonly prefix: number;
  readonly gateway: IP;
  /** index of the range set it came from */
  readonly rangeSet: number;
}

export function rangeFor(set: RangeSet, ip: IP): IpamRange | undefined {
  return set.find((r) => rangeContains(r, ip));
}

/**
 * One address per range set for the owner. If any set fails, everything the
 * owner holds is released again (as host-local does) and the error is thrown:
 * the runtime will DEL a failed ADD anyway, and a half-served owner is worse
 * than none.
 */
export async function allocate(
  store: AllocationStore,
  rangeSets: readonly RangeSet[],
  owner: Owner,
  requested: readonly IP[] = [],
): Promise<IpAssignment[]> {
  return store.withinOperation(async () => {
    const { containerId, ifname } = owner;
    const held = await store.getByOwner(containerId, ifname);
    // Each requested address must fall into some range set, one per set.
    const pending = [...requested];
    const bySet = rangeSets.map((set) => {
      const i = pending.findIndex((ip) => rangeFor(set, ip) !== undefined);
      return i < 0 ? undefined : pending.splice(i, 1)[0];
    });
    if (pending.length > 0) {
      const ip = pending[0]!;
      const set = rangeSets.findIndex((s) => rangeFor(s, ip) !== undefined);
      throw addressUnavailable(
        set < 0
          ? `requested IP address ${formatIP(ip)} is not in any configured range`
          : `requested IP address ${formatIP(ip)} is a second request for range set ${set}`,
        `one address per range set; range sets: ${rangeSets.map((s, i) => `${i}: ${describeRangeSet(s)}`).join('; ')}`,
      );
    }

    const out: IpAssignment[] = [];
    try {
      for (let i = 0; i < rangeSets.length; i++) {
        out.push(await allocateInSet(store, rangeSets[i]!, i, owner, held, bySet[i]));
      }
    } catch (err) {
      await store.releaseByOwner(containerId, ifname);
      throw err;
    }
    return out;
  });
}

async function allocateInSet(
  store: AllocationStore,
  set: RangeSet,
  index: number,
  owner: Owner,
  held: readonly IP[],
  requested: IP | undefined,
): Promise<IpAssignment> {
  const assignment = (ip: IP, range: IpamRange): IpAssignment => ({
    ip,
    prefix: range.subnet.prefix,
    gateway: range.gateway,
    rangeSet: index,
  });
  const rangeSetId = String(index);

  const mine = held.find((ip) => rangeFor(set, ip) !== undefined);
  if (mine) {
    if (requested && !ipEqual(requested, mine)) {
      throw addressUnavailable(
        `${owner.containerId}/${owner.ifname} already holds ${formatIP(mine)} in range set ${index}; cannot also take requested ${formatIP(requested)}`,
        'DEL the attachment first to change its address',
      );
    }
    return assignment(mine, rangeFor(set, mine)!);
  }

  if (requested) {
    const range = rangeFor(set, requested)!;
    if (!allocatable(range, requested.value)) {
      const what = ipEqual(requested, range.gateway) ? "the subnet's gateway" : 'the network or broadcast address';
      throw addressUnavailable(`requested IP address ${formatIP(requested)} is ${what}`);
    }
    if (!(await store.reserve(owner.containerId, owner.ifname, requested, rangeSetId))) {
      throw addressUnavailable(`requested IP address ${formatIP(requested)} is already in use`);
    }
    return assignment(requested, range);
  }

  const last = await store.lastReserved(rangeSetId);
  for (const { ip, range } of candidates(set, last)) {
    if (await store.reserve(owner.containerId, owner.ifname, ip, rangeSetId)) return assignment(ip, range);
  }
  throw noFreeAddress(index, describeRangeSet(set));
}

/**
 * Every allocatable address of the set exactly once, starting right after
 * `last` when it lies in the set (wrapping to the next range, and from the
 * last range back to the first), else at the first range's start.
 */
export function* candidates(set: RangeSet, last?: IP): Generator<{ ip: IP; range: IpamRange }> {
  const n = set.length;
  let idx = 0;
  let first = set[0]!.rangeStart.value;
  if (last) {
    const at = set.findIndex((r) => rangeContains(r, last));
    if (at >= 0) {
      idx = at;
      first = last.value + 1n;
    }
  }
  // Walk ranges idx, idx+1, ..., idx (again): the first visit starts at
  // `first`, the last visit covers what the first one skipped.
  for (let k = 0; k <= n; k++) {
    const range = set[(idx + k) % n]!;
    const family = range.subnet.network.family;
    const from = k === 0 ? first : range.rangeStart.value;
    const to = k === n ? first - 1n : range.rangeEnd.value;
    for (let v = from; v <= to; v++) {
      if (allocatable(range, v)) yield { ip: { family, value: v }, range };
    }
  }
}

/** DEL: frees everything the owner holds. Idempotent. */
export async function release(store: AllocationStore, owner: Owner): Promise<IP[]> {
  return store.withinOperation(() => store.releaseByOwner(owner.containerId, owner.ifname));
}

/** GC: frees every allocation whose owner is not among the valid attachments. */
export async function collectGarbage(store: AllocationStore, valid: readonly Owner[]): Promise<Allocation[]> {
  return store.withinOperation(() => store.gc(valid));
}

/** CHECK: the owner holds an address in every range set; returns what it holds. */
export async function verify(store: AllocationStore, rangeSets: readonly RangeSet[], owner: Owner): Promise<IP[]> {
  const held = await store.withinOperation(() => store.getByOwner(owner.containerId, owner.ifname));
  rangeSets.forEach((set, i) => {
    const inSet = held.filter((ip) => rangeFor(set, ip) !== undefined);
    if (inSet.length === 0) {
      throw new CniError(
        IpamErrorCode.AllocationMissing,
        `${owner.containerId}/${owner.ifname} holds no address in range set ${i}`,
        `range set ${i}: ${describeRangeSet(set)}`,
      );
    }
  });
  return held;
}
