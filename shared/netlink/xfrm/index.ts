/**
 * xfrm over NETLINK_XFRM: IPsec security associations (states) and security
 * policies, the kernel half of encrypted overlays.
 *
 * Two layers, as vishvananda/netlink's nl/xfrm_*.go and xfrm_*_linux.go:
 *   - pure encoders/decoders, one per kernel struct, each with the C struct
 *     from /usr/include/linux/xfrm.h quoted above it and its x86-64 size
 *     (the kernel rejects a message whose header is a byte short);
 *   - XfrmHandle, the typed verbs on one network namespace, each saying
 *     which `ip xfrm` command it equals.
 *
 * Byte order: xfrm structs are host order (little-endian here) except the
 * fields the header marks __be: addresses, SPI and ports.
 *
 * Only what encrypted overlays need is offered: ESP with an AEAD
 * (rfc4106(gcm(aes))), transport or tunnel mode, extended sequence numbers,
 * marks, and policies with templates. Keys pass through here and are never
 * put into an error message.
 *
 * Files, as the rtnetlink side (link/addr/route/neigh.ts under handle.ts):
 *   consts.ts   message and attribute types, modes, struct sizes
 *   common.ts   the structs both embed: address, selector, lifetimes, mark
 *   state.ts    security associations: structs, requests, reply parser
 *   policy.ts   security policies and templates: structs, requests, parser
 *   handle.ts   XfrmHandle, the verbs on one namespace
 */
export * from './consts';
export type { XfrmMode, XfrmDir, XfrmMark, XfrmSelector, XfrmLifetimeCur, XfrmRequest } from './common';
export {
  encodeXfrmAddress,
  decodeXfrmAddress,
  encodeSelector,
  decodeSelector,
  encodeLifetimeCfgInfinite,
  decodeLifetimeCur,
  encodeMark,
  decodeMark,
} from './common';
export * from './state';
export * from './policy';
export * from './handle';
