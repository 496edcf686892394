/**
 * nftables layer: build a Transaction, run it on an Nft (realNft, or the
 * test kit's FakeNft) as one atomic `nft -f -`; table.ts binds all of it to
 * one owned table (tags, markers, DEL by owner, the table's lock).
 */
export * from './nft-interface';
export * from './errors';
export * from './transaction';
export { realNft, realTable, type RealNftOptions, type RealTableOptions } from './real';
export * from './table';
export * from './records';
