/**
 * xfrm constants: message types, attribute types, modes, directions and the
 * x86-64 sizes of the kernel structs (xfrm.h, in.h). The kernel rejects a
 * message whose header is a byte short, so each size is checked by the codec
 * tests against the offsets the encoders write at.
 */


export const XFRM_MSG_NEWSA = 0x10;
export const XFRM_MSG_DELSA = 0x11;
export const XFRM_MSG_GETSA = 0x12;
export const XFRM_MSG_NEWPOLICY = 0x13;
export const XFRM_MSG_DELPOLICY = 0x14;
export const XFRM_MSG_GETPOLICY = 0x15;
export const XFRM_MSG_UPDPOLICY = 0x19;
export const XFRM_MSG_UPDSA = 0x1a;
export const XFRM_MSG_FLUSHSA = 0x1c;
export const XFRM_MSG_FLUSHPOLICY = 0x1d;

export const XFRMA_TMPL = 5;
export const XFRMA_SRCADDR = 13;
export const XFRMA_POLICY_TYPE = 16;
export const XFRMA_ALG_AEAD = 18;
export const XFRMA_MARK = 21;
export const XFRMA_REPLAY_ESN_VAL = 23;

export const XFRM_MODE_TRANSPORT = 0;
export const XFRM_MODE_TUNNEL = 1;

export const XFRM_POLICY_IN = 0;
export const XFRM_POLICY_OUT = 1;
export const XFRM_POLICY_FWD = 2;
export const XFRM_POLICY_ALLOW = 0;
export const XFRM_POLICY_BLOCK = 1;

export const XFRM_STATE_ESN = 128;
export const XFRM_SHARE_ANY = 0;
/** XFRM_INF: no limit, for every field of xfrm_lifetime_cfg */
export const XFRM_INF = 0xffff_ffff_ffff_ffffn;

export const IPPROTO_UDP = 17;
export const IPPROTO_ESP = 50;

/** XFRMA_REPLAY_ESN_MAX is in bytes of bitmap: at most 4096*8 packets of window */
export const XFRM_REPLAY_ESN_MAX_WINDOW = 4096 * 8;

export const SIZEOF_XFRM_ADDRESS = 16;
export const SIZEOF_XFRM_ID = 24;
export const SIZEOF_XFRM_SELECTOR = 56;
export const SIZEOF_XFRM_LIFETIME_CFG = 64;
export const SIZEOF_XFRM_LIFETIME_CUR = 32;
export const SIZEOF_XFRM_STATS = 12;
export const SIZEOF_XFRM_USERSA_INFO = 224;
export const SIZEOF_XFRM_USERSA_ID = 24;
export const SIZEOF_XFRM_ALGO_AEAD = 72;
export const SIZEOF_XFRM_REPLAY_STATE_ESN = 24;
export const SIZEOF_XFRM_MARK = 8;
export const SIZEOF_XFRM_USERPOLICY_INFO = 168;
export const SIZEOF_XFRM_USERPOLICY_ID = 64;
export const SIZEOF_XFRM_USER_TMPL = 64;
export const SIZEOF_XFRM_USERSA_FLUSH = 4; // 1 byte, padded by netlink alignment
