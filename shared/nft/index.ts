/**
 * nftables layer: build a Transaction, run it on an Nft (realNft or
 * FakeNft) as one atomic `nft -f -`; owned.ts has the project's table and
 * tag conventions and the ADD/DEL helpers built on them.
 */
export * from './nft-interface';
export * from './errors';
export * from './transaction';
export { realNft, type RealNftOptions } from './real';
export { FakeNft } from './fake';
export * from './owned';
