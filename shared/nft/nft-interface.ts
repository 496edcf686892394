/**
 * The seam between firewall logic and nftables.
 *
 * Plugin code builds a Transaction (transaction.ts) and hands it to an `Nft`.
 * Two implementations: `realNft()` (real.ts) pipes the rendered script into
 * one `nft -f -`, which the kernel applies atomically (and writes element
 * batches over netlink, with no process); `FakeNft` (fake.ts)
 * applies it to an in-memory model with the same errors, so bridge/portmap
 * logic is tested against golden `dump()` text without a kernel.
 *
 * Synchronous on purpose: a CNI plugin is a one-shot process doing one
 * operation, and spawnSync is what lets realNft run nft inside a network
 * namespace (see real.ts).
 */
import type { Transaction } from './transaction';
import type { ElementOp, Family, Listing, SetLayout } from './types';

export type * from './types';

export interface Nft {
  /**
   * Apply every queued command as one atomic batch: all of it or none of it.
   * Throws NftError (validation errors of the Transaction included).
   * An empty transaction does nothing and starts no process.
   */
  run(tx: Transaction): void;
  /** Like run, but only checks the batch (`nft -c -f -`): nothing changes. */
  check(tx: Transaction): void;
  /**
   * One table with its chains (rule handles and comments, not rule text),
   * sets and maps (with elements). `nft -j -a list table FAMILY NAME`.
   * Returns undefined when the table does not exist.
   */
  list(family: Family, table: string): Listing | undefined;
  /**
   * Add and delete set/map elements of one table as one atomic batch, with
   * no nft process (realNft: an nfnetlink batch, shared/netlink/
   * nft-elements.ts; FakeNft: its model). The same semantics and NftError
   * kinds as the `add element` / `delete element` lines of run(). Absent:
   * OwnedTable renders the batch for run().
   */
  elements?(family: Family, table: string, layouts: Readonly<Record<string, SetLayout>>, ops: readonly ElementOp[]): void;
}
